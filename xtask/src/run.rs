//! Running commands, echoing them first, and finding things on this machine.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::XtaskError;

/// The workspace root (xtask lives one level below it).
pub fn root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_owned()
}

/// The cargo that runs us (`$CARGO`), so toolchain overrides carry over.
pub fn cargo() -> Command {
    let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.current_dir(root());
    c
}

/// A printable command line.
pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs `cmd` with inherited stdio; a non-zero exit becomes [`XtaskError::Failed`]
/// carrying its exit code.
pub fn run(cmd: &mut Command) -> Result<(), XtaskError> {
    let command = describe(cmd);
    eprintln!("$ {command}");
    let status = cmd.status().map_err(|source| XtaskError::Spawn {
        command: command.clone(),
        source,
    })?;
    if status.success() {
        Ok(())
    } else {
        Err(XtaskError::Failed {
            command,
            status: status.to_string(),
            code: status.code().unwrap_or(1),
        })
    }
}

/// Whether `cmd` runs and exits 0 (output discarded); for probing tools.
pub fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The first `name` on `PATH`.
pub fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}
