//! A `static` shared Dovecot must not outlive the test binary: run this binary again
//! as a child that starts `Dovecot::shared()` and exits, then look for leftovers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::time::{Duration, Instant};

use imapproxy_testkit::Dovecot;

const CHILD_ENV: &str = "IMAPPROXY_TESTKIT_LEAK_CHILD";

/// In the child: start the shared instance, report it, return (the static leaks).
/// In a normal run: does nothing.
#[test]
fn leak_child() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    let d = Dovecot::shared();
    println!("DIR={}", d.dir().display());
    println!("PID={}", d.pid().unwrap());
}

#[test]
fn no_dovecot_remains_after_the_test_binary_exits() {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["leak_child", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let field = |k: &str| {
        stdout
            .lines()
            .find_map(|l| l.split_once(k).map(|(_, v)| v))
            .unwrap_or_else(|| panic!("child printed no {k}: {stdout}"))
            .trim()
            .to_owned()
    };
    let dir = field("DIR=");
    let pid = field("PID=");
    let name = std::path::Path::new(&dir)
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();

    // The watchdog polls every 200 ms and Dovecot needs about a second to stop.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let pgrep = Command::new("pgrep").args(["-f", &name]).output().unwrap();
        let left = String::from_utf8_lossy(&pgrep.stdout).trim().to_owned();
        let master_alive = std::path::Path::new(&format!("/proc/{pid}")).exists();
        if left.is_empty() && !master_alive && !std::path::Path::new(&dir).exists() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still running after the test binary exited: {left:?} (master {pid} alive: {master_alive}), dir exists: {}",
            std::path::Path::new(&dir).exists()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
