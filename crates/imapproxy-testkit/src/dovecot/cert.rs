//! A throwaway CA and a server certificate for `localhost` / `127.0.0.1`, made at start.

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

use crate::error::TestkitError;

/// PEM texts of one test PKI.
pub(crate) struct TestPki {
    /// The CA certificate tests trust to verify the server.
    pub(crate) ca_pem: String,
    /// Server certificate followed by the CA (a full chain, as Dovecot serves it).
    pub(crate) chain_pem: String,
    /// The server's private key.
    pub(crate) key_pem: String,
}

/// Generates a CA and a server certificate signed by it, valid for `localhost` and
/// `127.0.0.1` (rcgen's default validity covers any test run).
pub(crate) fn generate() -> Result<TestPki, TestkitError> {
    let err = |e: rcgen::Error| TestkitError::Certificate(e.to_string());

    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "imapproxy-testkit CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().map_err(err)?;
    let ca_cert = ca_params.self_signed(&ca_key).map_err(err)?;
    let ca_pem = ca_cert.pem();
    let issuer = Issuer::new(ca_params, ca_key);

    let mut params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .map_err(err)?;
    params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    let key = KeyPair::generate().map_err(err)?;
    let cert = params.signed_by(&key, &issuer).map_err(err)?;

    Ok(TestPki {
        chain_pem: format!("{}{}", cert.pem(), ca_pem),
        ca_pem,
        key_pem: key.serialize_pem(),
    })
}
