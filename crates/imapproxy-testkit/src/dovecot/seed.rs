//! Known mailbox contents, written straight into each user's maildir.
//!
//! Writing files into `cur/` is much faster than one `doveadm save` per message.
//! Dovecot assigns UIDs to new maildir files in the order of the timestamp at the
//! start of their names, so messages are named with increasing timestamps and get
//! UIDs 1, 2, 3 ... in the order given.

use std::fs;
use std::io;
use std::os::unix::fs::{PermissionsExt, chown};
use std::path::Path;

/// Size of the big message in `user1`'s INBOX: exactly 1 MiB.
pub const BIG_MESSAGE_SIZE: usize = 1 << 20;

/// Every message is named with this timestamp plus its position, so UID order is
/// seed order (and names are stable from run to run).
const BASE_TIME: u64 = 1_700_000_000;

/// Mailbox contents for each user: `(user name, INBOX messages in UID order)`.
/// Messages are raw RFC 5322 bytes and should use CRLF line ends.
pub type Seed = Vec<(String, Vec<Vec<u8>>)>;

/// Small message number `n` (from 1) of `user`: `Subject: Test n`, a few lines.
pub fn small_message(user: &str, n: usize) -> Vec<u8> {
    format!(
        "From: Sender <sender@example.org>\r\n\
         To: {user} <{user}@example.org>\r\n\
         Subject: Test {n}\r\n\
         Date: Tue, 14 Nov 2023 22:13:{n:02} +0000\r\n\
         Message-ID: <{user}.{n}@imapproxy.test>\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=us-ascii\r\n\
         \r\n\
         This is test message {n} for {user}.\r\n"
    )
    .into_bytes()
}

/// The deterministic 1 MiB message (exactly [`BIG_MESSAGE_SIZE`] bytes, CRLF lines of
/// printable ASCII), so tests can compare fetched bytes with it.
pub fn big_message() -> Vec<u8> {
    let mut m = b"From: Sender <sender@example.org>\r\n\
To: user1 <user1@example.org>\r\n\
Subject: Big message\r\n\
Date: Tue, 14 Nov 2023 22:14:00 +0000\r\n\
Message-ID: <big@imapproxy.test>\r\n\
MIME-Version: 1.0\r\n\
Content-Type: text/plain; charset=us-ascii\r\n\
\r\n"
        .to_vec();
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut line_no = 0usize;
    while m.len() < BIG_MESSAGE_SIZE {
        let room = BIG_MESSAGE_SIZE - m.len();
        // 76 characters + CRLF, the last line shortened to land on the exact size.
        let len = room.min(78).saturating_sub(2);
        let prefix = format!("{line_no:08} ");
        let mut line: Vec<u8> = prefix.into_bytes();
        let mut k = line_no;
        while line.len() < len {
            line.push(ALPHABET.get(k % ALPHABET.len()).copied().unwrap_or(b'x'));
            k += 1;
        }
        line.truncate(len);
        if room >= 2 {
            line.extend_from_slice(b"\r\n");
        } else {
            line.resize(room, b'.');
        }
        m.extend_from_slice(&line);
        line_no += 1;
    }
    m
}

/// The default contents for `users`: five small messages each (`Subject: Test 1`..`5`),
/// and `user1`, if present, also has [`big_message`] as its sixth.
pub fn default_seed<S: AsRef<str>>(users: &[S]) -> Seed {
    users
        .iter()
        .map(|u| {
            let u = u.as_ref();
            let mut msgs: Vec<Vec<u8>> = (1..=5).map(|n| small_message(u, n)).collect();
            if u == "user1" {
                msgs.push(big_message());
            }
            (u.to_owned(), msgs)
        })
        .collect()
}

/// Writes `seed` below `mail_root` (`<root>/<user>/{cur,new,tmp}`), owned by
/// `uid:gid`. A user whose maildir already exists is left alone, so two instances
/// sharing one store do not seed it twice.
pub(crate) fn write(mail_root: &Path, seed: &Seed, uid: u32, gid: u32) -> io::Result<()> {
    for (user, msgs) in seed {
        let dir = mail_root.join(user);
        if dir.exists() {
            continue;
        }
        for sub in ["", "cur", "new", "tmp"] {
            let d = dir.join(sub);
            fs::create_dir_all(&d)?;
            fs::set_permissions(&d, fs::Permissions::from_mode(0o700))?;
            chown(&d, Some(uid), Some(gid))?;
        }
        for (i, msg) in msgs.iter().enumerate() {
            // Maildir name: <time>.<unique>.<host>,S=<size>,W=<virtual size>:2,<flags>.
            // The content uses CRLF, so the virtual (CRLF) size equals the file size.
            let name = format!(
                "{}.M{i}P0.imapproxy-testkit,S={len},W={len}:2,",
                BASE_TIME + i as u64,
                len = msg.len()
            );
            let path = dir.join("cur").join(name);
            fs::write(&path, msg)?;
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600))?;
            chown(&path, Some(uid), Some(gid))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn big_message_is_exactly_one_mib_of_crlf_lines() {
        let m = big_message();
        assert_eq!(m.len(), BIG_MESSAGE_SIZE);
        assert!(m.ends_with(b"\r\n"));
        assert!(
            m.iter()
                .all(|&b| b == b'\r' || b == b'\n' || (b' '..=b'~').contains(&b))
        );
        assert_eq!(m, big_message());
    }

    #[test]
    fn default_seed_gives_user1_the_big_message() {
        let s = default_seed(&["user1", "user2"]);
        assert_eq!(s[0].1.len(), 6);
        assert_eq!(s[1].1.len(), 5);
        assert!(String::from_utf8_lossy(&s[1].1[2]).contains("Subject: Test 3\r\n"));
    }
}
