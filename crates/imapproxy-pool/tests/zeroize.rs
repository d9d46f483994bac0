//! After a login the password is nowhere in the process's writable memory but where the
//! caller keeps it (issue #12 item 5): every buffer the connector built it into (SASL PLAIN
//! data, its base64, the command) was zeroed before it was freed.
//!
//! The check reads the process's own memory through `/proc/self/mem` (plain file I/O, no
//! `unsafe`), against a Dovecot running in another process, so that no in-process server
//! keeps copies of what it received. Alone in its test binary: nothing else runs meanwhile.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::time::{SystemTime, UNIX_EPOCH};

use imapproxy_pool::{BackendConn, BackendTarget, Credentials, Secret};
use imapproxy_testkit::Dovecot;

/// Occurrences of `needle` in every private writable mapping (heap, anonymous memory, thread
/// stacks, `.data`), skipping `scratch`, the buffer this reads into.
fn count_in_memory(needle: &[u8], scratch: &mut [u8]) -> usize {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let mut mem = File::open("/proc/self/mem").unwrap();
    let skip = scratch.as_ptr() as u64..scratch.as_ptr() as u64 + scratch.len() as u64;
    let finder = memchr::memmem::Finder::new(needle);
    let mut found = 0;
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let (Some(range), Some(perms)) = (fields.next(), fields.next()) else {
            continue;
        };
        if !perms.starts_with("rw") {
            continue;
        }
        let Some((a, b)) = range.split_once('-') else {
            continue;
        };
        let (a, b) = (
            u64::from_str_radix(a, 16).unwrap(),
            u64::from_str_radix(b, 16).unwrap(),
        );
        // The mapping without the scratch buffer.
        let pieces = if skip.start < b && a < skip.end {
            vec![(a, skip.start.max(a)), (skip.end.min(b), b)]
        } else {
            vec![(a, b)]
        };
        for (start, end) in pieces {
            let mut at = start;
            while at < end {
                let n = (scratch.len() as u64).min(end - at) as usize;
                let chunk = &mut scratch[..n];
                let read = mem.seek(SeekFrom::Start(at)).and_then(|_| mem.read(chunk));
                let Ok(got) = read else {
                    at += n as u64;
                    continue;
                };
                if got == 0 {
                    break;
                }
                found += finder.find_iter(&chunk[..got]).count();
                // Overlap by the needle's length so that no occurrence straddles two reads.
                let step = (got as u64).saturating_sub(needle.len() as u64 - 1).max(1);
                at += if got < n { got as u64 } else { step };
            }
        }
    }
    found
}

#[tokio::test(flavor = "current_thread")]
async fn a_login_leaves_no_copy_of_the_password_behind() {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let password = format!("zq{nanos:09}x{}kv", std::process::id()).repeat(3);
    let dovecot = Dovecot::builder()
        .users(0)
        .add_user("secretive", &password)
        .start()
        .unwrap();
    let creds = Credentials {
        username: "secretive".into(),
        password: Secret::new(password.into_bytes()),
    };
    let mut conn = BackendConn::connect(&BackendTarget::plain(dovecot.imap_addr().to_string()))
        .await
        .unwrap();
    assert!(conn.has_capability("SASL-IR") && conn.has_capability("AUTH=PLAIN"));

    // Big enough to be a mapping of its own, allocated before the first count.
    let mut scratch = vec![0u8; 4 << 20];
    // The password without its first 16 bytes: the allocator writes its free-list links
    // over the start of a freed block, which would hide a copy there.
    let needle = &creds.password.expose()[16..];
    let before = count_in_memory(needle, &mut scratch);
    assert!(before >= 1, "the scan does not even see the credentials");
    for _ in 0..3 {
        let mut c = BackendConn::connect(&BackendTarget::plain(dovecot.imap_addr().to_string()))
            .await
            .unwrap();
        c.login(&creds, &[]).await.unwrap();
    }
    conn.login(&creds, &[]).await.unwrap();
    let after = count_in_memory(needle, &mut scratch);
    assert!(
        after <= before,
        "{} more copies of the password in memory after four logins ({before} before)",
        after - before
    );
    eprintln!("password copies in memory: {before} before the logins, {after} after");
}
