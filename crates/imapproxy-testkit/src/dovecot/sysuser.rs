//! The system user that owns the sandbox's mail store.
//!
//! Dovecot refuses to access mail as root, so `mail_uid`/`mail_gid` need an
//! unprivileged account; a dedicated system user keeps test mail away from real
//! accounts.

use std::process::{Command, Stdio};

use crate::error::TestkitError;

/// Name of the system user (and group) the testkit creates to own test mail.
pub const MAIL_USER: &str = "imapproxy-test";

/// uid and gid of [`MAIL_USER`], creating the user with `useradd --system` if missing.
pub(crate) fn ensure() -> Result<(u32, u32), TestkitError> {
    if let Some(ids) = lookup() {
        return Ok(ids);
    }
    let out = Command::new("useradd")
        .args([
            "--system",
            "--user-group",
            "--no-create-home",
            "--home-dir",
            "/nonexistent",
            "--shell",
            "/usr/sbin/nologin",
            MAIL_USER,
        ])
        .stdin(Stdio::null())
        .output();
    // Another test binary may have created it at the same moment: look again
    // before reporting failure.
    if let Some(ids) = lookup() {
        return Ok(ids);
    }
    let reason = match out {
        Ok(o) => format!(
            "useradd failed ({}): {}",
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => format!("cannot run useradd: {e}"),
    };
    Err(TestkitError::MailUser {
        user: MAIL_USER.to_owned(),
        reason,
    })
}

fn lookup() -> Option<(u32, u32)> {
    let id = |flag: &str| -> Option<u32> {
        let out = Command::new("id")
            .args([flag, MAIL_USER])
            .stderr(Stdio::null())
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    };
    Some((id("-u")?, id("-g")?))
}
