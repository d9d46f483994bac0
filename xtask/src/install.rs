//! Installing the system packages the tests need (Dovecot, Redis, curl, Python) on
//! Debian, as root, without letting the packages start system services; and, apart from
//! those, the peer proxies the `peers` load scenario compares with.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use crate::error::XtaskError;
use crate::run::{on_path, run, succeeds};

/// Debian's hook that `invoke-rc.d` consults; exit 101 means "action forbidden", so
/// installing `dovecot-imapd` does not start a system Dovecot on ports 143/993.
const POLICY_RC_D: &str = "/usr/sbin/policy-rc.d";

/// A tool the tests need and the Debian package that provides it.
struct Requirement {
    present: fn() -> bool,
    package: &'static str,
}

/// Everything `cargo xtask test` needs: Dovecot for every integration test,
/// redis-server for the Redis directory and fleet mode, curl and python3 for real-client tests, Chromium for
/// the console's browser tests.
const TEST_REQUIREMENTS: [Requirement; 5] = [
    Requirement {
        present: || imapproxy_testkit::find_dovecot().is_some(),
        package: "dovecot-imapd",
    },
    Requirement {
        present: || on_path("redis-server").is_some(),
        package: "redis-server",
    },
    Requirement {
        present: || on_path("curl").is_some(),
        package: "curl",
    },
    Requirement {
        present: || on_path("python3").is_some(),
        package: "python3",
    },
    Requirement {
        present: || on_path("chromium").is_some(),
        package: "chromium",
    },
];

/// Installs whatever of Dovecot, redis-server, curl, python3 and Chromium is missing.
pub fn ensure_test_tools() -> Result<(), XtaskError> {
    let missing: Vec<&str> = TEST_REQUIREMENTS
        .iter()
        .filter(|r| !(r.present)())
        .map(|r| r.package)
        .collect();
    apt_install(&missing)
}

/// Installs Dovecot if it is missing (for `demo`).
pub fn ensure_dovecot() -> Result<(), XtaskError> {
    if imapproxy_testkit::find_dovecot().is_some() {
        return Ok(());
    }
    apt_install(&["dovecot-imapd"])
}

/// The peers `loadbench peers` compares imapproxy with, and the Debian packages that
/// provide them: optional, for the bench only (`cargo xtask test` never installs them).
const BENCH_PEERS: [Requirement; 3] = [
    Requirement {
        present: || sbin("haproxy"),
        package: "haproxy",
    },
    Requirement {
        present: || sbin("nginx"),
        package: "nginx",
    },
    Requirement {
        present: || sbin("imapproxyd"),
        package: "imapproxy",
    },
];

/// nginx's mail module, a package of its own in Debian (`nginx -V`:
/// `--with-mail=dynamic`).
const NGINX_MAIL_MODULE: (&str, &str) = (
    "/usr/lib/nginx/modules/ngx_mail_module.so",
    "libnginx-mod-mail",
);

/// Where the packages' init scripts would keep the PID of a service they started, and
/// the process name to expect there.
const PEER_PIDFILES: [(&str, &str); 3] = [
    ("/run/haproxy.pid", "haproxy"),
    ("/run/nginx.pid", "nginx"),
    ("/run/imapproxy.pid", "imapproxyd"),
];

/// Installs whatever of HAProxy, nginx with its mail module and up-imapproxy is missing
/// (`--no-install-recommends`, services kept stopped), stops any of their system services
/// that runs anyway, by the PID in its pidfile, and disables the units of those it
/// installed (each package's service has the package's name).
pub fn ensure_bench_peers() -> Result<(), XtaskError> {
    let mut missing: Vec<&str> = BENCH_PEERS
        .iter()
        .filter(|r| !(r.present)())
        .map(|r| r.package)
        .collect();
    if !Path::new(NGINX_MAIL_MODULE.0).exists() {
        missing.push(NGINX_MAIL_MODULE.1);
    }
    apt_install_with(&missing, &["--no-install-recommends"])?;
    for (pidfile, name) in PEER_PIDFILES {
        stop_service(pidfile, name);
    }
    // Nor at the next boot: the packages enable their units. Only those installed just
    // now; a peer that was already there is the machine owner's to decide about.
    if on_path("systemctl").is_some() {
        for service in missing.iter().filter(|p| **p != NGINX_MAIL_MODULE.1) {
            let _ = Command::new("systemctl")
                .args(["disable", "--quiet", service])
                .status();
        }
    }
    Ok(())
}

/// `name` in `/usr/sbin` or on `PATH`.
fn sbin(name: &str) -> bool {
    Path::new("/usr/sbin").join(name).is_file() || on_path(name).is_some()
}

/// SIGTERM to the PID in `pidfile` when that process is `name` (a pidfile left behind
/// may name a PID reused by something else).
fn stop_service(pidfile: &str, name: &str) {
    let Some(pid) = fs::read_to_string(pidfile)
        .ok()
        .and_then(|t| t.trim().parse::<u32>().ok())
    else {
        return;
    };
    let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    if comm.trim() == name {
        eprintln!("xtask: stopping the {name} service the package started (PID {pid})");
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
    }
}

fn apt_install(packages: &[&str]) -> Result<(), XtaskError> {
    apt_install_with(packages, &[])
}

fn apt_install_with(packages: &[&str], options: &[&str]) -> Result<(), XtaskError> {
    if packages.is_empty() {
        return Ok(());
    }
    let list = packages.join(" ");
    if !is_root() || !Path::new("/etc/debian_version").exists() {
        return Err(XtaskError::Missing(format!(
            "missing system packages: {list}. Install them (Debian/Ubuntu: \
             `apt-get install -y {list}`) or run `cargo xtask` as root on Debian, \
             which installs them without starting their services"
        )));
    }
    eprintln!("xtask: installing {list} (services kept stopped by {POLICY_RC_D})");
    let _policy = PolicyRcGuard::install()?;
    run(Command::new("apt-get")
        .arg("update")
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    run(Command::new("apt-get")
        .args(["install", "-y"])
        .args(options)
        .args(packages)
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    // `_policy` is dropped here, and also on every early return above.
    Ok(())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Writes `policy-rc.d` for the duration of an install and removes it afterwards,
/// also on failure. A file that was already there is someone else's: left alone.
struct PolicyRcGuard {
    created: bool,
}

impl PolicyRcGuard {
    fn install() -> Result<PolicyRcGuard, XtaskError> {
        let path = Path::new(POLICY_RC_D);
        if path.exists() {
            return Ok(PolicyRcGuard { created: false });
        }
        fs::write(
            path,
            "#!/bin/sh\n# Written by cargo xtask while installing test packages.\nexit 101\n",
        )
        .map_err(XtaskError::io(format!("writing {POLICY_RC_D}")))?;
        let guard = PolicyRcGuard { created: true };
        fs::set_permissions(path, fs::Permissions::from_mode(0o755))
            .map_err(XtaskError::io(format!("chmod {POLICY_RC_D}")))?;
        Ok(guard)
    }
}

impl Drop for PolicyRcGuard {
    fn drop(&mut self) {
        if self.created
            && let Err(e) = fs::remove_file(POLICY_RC_D)
        {
            eprintln!("xtask: warning: could not remove {POLICY_RC_D}: {e}");
        }
    }
}

/// Makes sure `cargo fmt` and `cargo clippy` exist, adding the rustup components if not.
pub fn ensure_rust_components() -> Result<(), XtaskError> {
    let have = |sub: &str| succeeds(crate::run::cargo().args([sub, "--version"]));
    if have("fmt") && have("clippy") {
        return Ok(());
    }
    if on_path("rustup").is_none() {
        return Err(XtaskError::Missing(
            "cargo fmt / cargo clippy are missing and rustup is not available to add them".into(),
        ));
    }
    run(Command::new("rustup").args(["component", "add", "rustfmt", "clippy"]))
}
