//! The relay framer on a live IMAP stream: connect to a server, log in, fetch, and print one
//! line per response message with its kind, tag and literal bytes — without decoding anything.
//!
//! ```sh
//! cargo run -p imapproxy-examples --example codec_on_a_stream -- 127.0.0.1:143 user1 pass1
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used)]

use imapproxy_codec::{Direction, Framer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:143".into());
    let user = args.next().unwrap_or_else(|| "user1".into());
    let pass = args.next().unwrap_or_else(|| "pass1".into());

    let mut tcp = TcpStream::connect(&addr).await?;
    let script = format!(
        "a LOGIN \"{user}\" \"{pass}\"\r\nb SELECT INBOX\r\nc FETCH 1:* (FLAGS BODY.PEEK[])\r\nd LOGOUT\r\n"
    );
    tcp.write_all(script.as_bytes()).await?;

    let mut framer = Framer::new(Direction::Server);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = tcp.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        let mut chunk = &buf[..n];
        while let Some((used, frame)) = framer.advance(chunk) {
            let tag = frame
                .tag
                .map(|t| t.to_string())
                .unwrap_or_else(|| "-".into());
            println!(
                "{:<28} tag={tag:<4} len={:<8} literal={}",
                format!("{:?}", frame.kind),
                frame.len,
                frame.literal_bytes
            );
            chunk = &chunk[used..];
        }
    }
    Ok(())
}
