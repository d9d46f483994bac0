//! End-to-end handshakes between `ServerTls` and `BackendTls`, over in-memory pipes and
//! loopback TCP, with certificates made by rcgen and by the `openssl` command.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use imapproxy_tls::rustls::pki_types::CertificateDer;
use imapproxy_tls::rustls::pki_types::pem::PemObject;
use imapproxy_tls::tokio_rustls::{client, server};
use imapproxy_tls::{BackendTls, BackendVerify, Error, ServerTls};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

const TIMEOUT: Duration = Duration::from_secs(10);

/// Runs both sides of a handshake over a duplex pipe.
async fn handshake(
    server: &ServerTls,
    client: &BackendTls,
    name: &str,
) -> (
    Result<server::TlsStream<DuplexStream>, Error>,
    Result<client::TlsStream<DuplexStream>, Error>,
) {
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    tokio::join!(
        server.accept(server_io, TIMEOUT),
        client.connect(client_io, name, TIMEOUT)
    )
}

fn peer_certificate<IO>(stream: &client::TlsStream<IO>) -> CertificateDer<'static> {
    stream.get_ref().1.peer_certificates().unwrap()[0]
        .clone()
        .into_owned()
}

fn first_cert(pem: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
}

/// Runs `openssl` with `args` in `dir`, failing the test with its stderr.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the `openssl` command is needed to make PKCS#1 and SEC1 keys for this test");
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A self-signed certificate for `localhost` with a key made by `genkey` (openssl args),
/// written to `dir`; returns (cert path, key path, cert PEM).
fn openssl_cert(dir: &Path, stem: &str, genkey: &[&str]) -> (PathBuf, PathBuf, String) {
    let key = format!("{stem}.key");
    let cert = format!("{stem}.crt");
    let mut args: Vec<&str> = genkey.to_vec();
    args.extend(["-out", &key]);
    openssl(dir, &args);
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-new",
            "-key",
            &key,
            "-out",
            &cert,
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            // openssl's default x509 extensions mark the certificate as a CA, which webpki
            // refuses as a server certificate.
            "-addext",
            "basicConstraints=critical,CA:FALSE",
        ],
    );
    let pem = std::fs::read_to_string(dir.join(&cert)).unwrap();
    (dir.join(cert), dir.join(key), pem)
}

/// A self-signed certificate from rcgen (PKCS#8 key) written to `dir`.
fn rcgen_cert(dir: &Path, stem: &str) -> (PathBuf, PathBuf, String) {
    let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert = dir.join(format!("{stem}.crt"));
    let key = dir.join(format!("{stem}.key"));
    std::fs::write(&cert, generated.cert.pem()).unwrap();
    std::fs::write(&key, generated.signing_key.serialize_pem()).unwrap();
    (cert, key, generated.cert.pem())
}

#[tokio::test]
async fn self_signed_server_and_ca_pem_client_exchange_data() {
    let (server, cert_pem) = ServerTls::self_signed(&[]).unwrap();
    let client = BackendTls::new(BackendVerify::CaPem(cert_pem.clone())).unwrap();
    for name in ["localhost", "127.0.0.1"] {
        let (s, c) = handshake(&server, &client, name).await;
        let (mut s, mut c) = (s.unwrap(), c.unwrap());
        assert_eq!(peer_certificate(&c), first_cert(&cert_pem));
        // Both sides offered "imap", so it is negotiated.
        assert_eq!(c.get_ref().1.alpn_protocol(), Some(&b"imap"[..]));
        assert_eq!(
            s.get_ref().1.server_name(),
            (name == "localhost").then_some("localhost")
        );

        c.write_all(b"a1 NOOP\r\n").await.unwrap();
        c.flush().await.unwrap();
        let mut line = [0u8; 9];
        s.read_exact(&mut line).await.unwrap();
        assert_eq!(&line, b"a1 NOOP\r\n");
    }
}

#[tokio::test]
async fn handshake_over_loopback_tcp() {
    let (server, cert_pem) = ServerTls::self_signed(&["localhost".to_owned()]).unwrap();
    let client = BackendTls::new(BackendVerify::CaPem(cert_pem)).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();

    let accept = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut tls = server.accept(tcp, TIMEOUT).await.unwrap();
        tls.write_all(b"* OK hello\r\n").await.unwrap();
        tls.shutdown().await.unwrap();
    });
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut tls = client.connect(tcp, "localhost", TIMEOUT).await.unwrap();
    let mut all = Vec::new();
    tls.read_to_end(&mut all).await.unwrap();
    assert_eq!(all, b"* OK hello\r\n");
    accept.await.unwrap();
}

#[tokio::test]
async fn ca_pem_client_rejects_a_name_the_certificate_lacks() {
    let (server, cert_pem) = ServerTls::self_signed(&["localhost".to_owned()]).unwrap();
    let client = BackendTls::new(BackendVerify::CaPem(cert_pem)).unwrap();
    let (_, c) = handshake(&server, &client, "imap.example.org").await;
    let err = c.unwrap_err();
    assert!(err.is_certificate_error(), "{err}");
}

#[tokio::test]
async fn insecure_client_accepts_an_unknown_certificate() {
    let (server, _) = ServerTls::self_signed(&[]).unwrap();
    let client = BackendTls::new(BackendVerify::Insecure).unwrap();
    // Not even the name has to match.
    let (s, c) = handshake(&server, &client, "anything.invalid").await;
    s.unwrap();
    c.unwrap();
}

#[tokio::test]
async fn system_roots_reject_a_self_signed_certificate() {
    let (server, _) = ServerTls::self_signed(&[]).unwrap();
    let client = BackendTls::new(BackendVerify::SystemRoots).unwrap();
    let (s, c) = handshake(&server, &client, "localhost").await;
    let err = c.unwrap_err();
    assert!(err.is_certificate_error(), "{err}");
    assert!(s.is_err(), "the server sees the client's alert");
}

#[tokio::test]
async fn pkcs8_pkcs1_and_sec1_keys_load_from_files() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("pkcs8", rcgen_cert(dir.path(), "pkcs8")),
        (
            "pkcs1",
            openssl_cert(dir.path(), "pkcs1", &["genrsa", "-traditional"]),
        ),
        (
            "sec1",
            openssl_cert(
                dir.path(),
                "sec1",
                &["ecparam", "-name", "prime256v1", "-genkey", "-noout"],
            ),
        ),
    ];
    for (kind, (cert, key, cert_pem)) in cases {
        let key_text = std::fs::read_to_string(&key).unwrap();
        let marker = match kind {
            "pkcs8" => "BEGIN PRIVATE KEY",
            "pkcs1" => "BEGIN RSA PRIVATE KEY",
            _ => "BEGIN EC PRIVATE KEY",
        };
        assert!(key_text.contains(marker), "{kind}: {key_text}");

        let server = ServerTls::from_pem_files(&cert, &key).unwrap();
        let client = BackendTls::new(BackendVerify::CaFile(cert.clone())).unwrap();
        let (s, c) = handshake(&server, &client, "localhost").await;
        s.unwrap_or_else(|e| panic!("{kind}: {e}"));
        assert_eq!(
            peer_certificate(&c.unwrap()),
            first_cert(&cert_pem),
            "{kind}"
        );
    }
}

#[tokio::test]
async fn reload_swaps_the_certificate_for_new_handshakes() {
    let dir = tempfile::tempdir().unwrap();
    let (cert_a, key_a, pem_a) = rcgen_cert(dir.path(), "a");
    let (cert_b, key_b, pem_b) = rcgen_cert(dir.path(), "b");
    let server = ServerTls::from_pem_files(&cert_a, &key_a).unwrap();
    let listener_copy = server.clone();
    let client = BackendTls::new(BackendVerify::Insecure).unwrap();

    let (_, c) = handshake(&listener_copy, &client, "localhost").await;
    assert_eq!(peer_certificate(&c.unwrap()), first_cert(&pem_a));

    server.reload_from_pem_files(&cert_b, &key_b).unwrap();
    let (_, c) = handshake(&listener_copy, &client, "localhost").await;
    assert_eq!(peer_certificate(&c.unwrap()), first_cert(&pem_b));

    // A failed reload keeps the current certificate.
    let err = server.reload_from_pem_files(&cert_a, &key_b).unwrap_err();
    assert!(matches!(err, Error::Rustls(_)), "{err}");
    let (_, c) = handshake(&listener_copy, &client, "localhost").await;
    assert_eq!(peer_certificate(&c.unwrap()), first_cert(&pem_b));
}

#[tokio::test]
async fn accept_times_out_on_a_silent_peer() {
    let (server, _) = ServerTls::self_signed(&[]).unwrap();
    let (_silent_client, server_io) = tokio::io::duplex(1024);
    let timeout = Duration::from_millis(100);
    let err = server.accept(server_io, timeout).await.unwrap_err();
    assert!(matches!(err, Error::Timeout(t) if t == timeout), "{err}");
}

#[tokio::test]
async fn connect_times_out_on_a_silent_server() {
    let client = BackendTls::new(BackendVerify::Insecure).unwrap();
    let (client_io, _silent_server) = tokio::io::duplex(1024);
    let err = client
        .connect(client_io, "localhost", Duration::from_millis(100))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Timeout(_)), "{err}");
}

#[tokio::test]
async fn accept_fails_cleanly_on_plaintext_imap() {
    let (server, _) = ServerTls::self_signed(&[]).unwrap();
    let (mut client_io, server_io) = tokio::io::duplex(1024);
    client_io
        .write_all(b"a1 LOGIN user pass\r\n")
        .await
        .unwrap();
    let err = server.accept(server_io, TIMEOUT).await.unwrap_err();
    assert!(matches!(err, Error::Io(_)), "{err}");
}

#[test]
fn bad_files_give_actionable_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, _) = rcgen_cert(dir.path(), "c");
    let missing = dir.path().join("missing.pem");

    let err = ServerTls::from_pem_files(&missing, &key).unwrap_err();
    assert!(matches!(err, Error::ReadFile { .. }), "{err}");
    assert!(err.to_string().contains("missing.pem"), "{err}");

    // The certificate file holds no key, the key file no certificate.
    assert!(matches!(
        ServerTls::from_pem_files(&cert, &cert).unwrap_err(),
        Error::NoPrivateKey { .. }
    ));
    assert!(matches!(
        ServerTls::from_pem_files(&key, &key).unwrap_err(),
        Error::NoCertificate { .. }
    ));
}

#[test]
fn self_signed_rejects_invalid_names() {
    let err = ServerTls::self_signed(&["not a name!".to_owned()]).unwrap_err();
    assert!(matches!(err, Error::InvalidServerName(_)), "{err}");
}

#[tokio::test]
async fn clients_offering_other_alpn_protocols_still_connect() {
    use imapproxy_tls::rustls;
    use std::sync::Arc;
    let (server, cert_pem) = ServerTls::self_signed(&[]).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(first_cert(&cert_pem)).unwrap();
    // (offered, agreed): "imap" is agreed when offered; other lists get no ALPN answer
    // instead of an aborted handshake (RFC 7301 §3.2 would allow the abort).
    for (offered, agreed) in [
        (vec![b"h2".to_vec(), b"http/1.1".to_vec()], None),
        (vec![b"h2".to_vec(), b"imap".to_vec()], Some(&b"imap"[..])),
        (vec![], None),
    ] {
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots.clone())
        .with_no_client_auth();
        config.alpn_protocols = offered.clone();
        let connector = imapproxy_tls::tokio_rustls::TlsConnector::from(Arc::new(config));
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let (s, c) = tokio::join!(
            server.accept(server_io, TIMEOUT),
            connector.connect(name, client_io)
        );
        let (mut s, mut c) = (s.unwrap(), c.unwrap());
        assert_eq!(c.get_ref().1.alpn_protocol(), agreed, "{offered:?}");
        c.write_all(b"a1 NOOP\r\n").await.unwrap();
        c.flush().await.unwrap();
        let mut line = [0u8; 9];
        s.read_exact(&mut line).await.unwrap();
        assert_eq!(&line, b"a1 NOOP\r\n");
    }
}
