//! `fuzz [--time SECS] [TARGET]`: run cargo-fuzz targets on the stable toolchain.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use crate::error::XtaskError;
use crate::run::{cargo, describe, root, run, succeeds};

/// Seconds per target when `--time` is not given.
const DEFAULT_SECS: u64 = 60;

/// Parsed `fuzz` arguments.
pub struct FuzzArgs {
    /// Seconds per target.
    pub secs: u64,
    /// Only this target, if given.
    pub target: Option<String>,
}

/// Parses `[--time SECS] [TARGET]`.
pub fn parse_args(args: &[String]) -> Result<FuzzArgs, XtaskError> {
    let usage = || XtaskError::Usage("usage: cargo xtask fuzz [--time SECS] [TARGET]".into());
    let mut out = FuzzArgs {
        secs: DEFAULT_SECS,
        target: None,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--time" {
            out.secs = it.next().and_then(|s| s.parse().ok()).ok_or_else(usage)?;
        } else if let Some(v) = a.strip_prefix("--time=") {
            out.secs = v.parse().map_err(|_| usage())?;
        } else if a.starts_with('-') || out.target.is_some() {
            return Err(usage());
        } else {
            out.target = Some(a.clone());
        }
    }
    Ok(out)
}

/// cargo-fuzz needs nightly-only flags; `RUSTC_BOOTSTRAP=1` unlocks them on stable.
fn cargo_fuzz() -> Command {
    let mut c = cargo();
    c.current_dir(root().join("fuzz"))
        .arg("fuzz")
        .env("RUSTC_BOOTSTRAP", "1");
    c
}

/// `cargo xtask fuzz`.
pub fn fuzz(args: &FuzzArgs) -> Result<(), XtaskError> {
    if !root().join("fuzz").join("Cargo.toml").exists() {
        return Err(XtaskError::Missing(
            "no fuzz/Cargo.toml: there are no fuzz targets yet".into(),
        ));
    }
    if !succeeds(cargo_fuzz().arg("--version")) {
        run(cargo().args(["install", "cargo-fuzz", "--locked"]))?;
    }
    let listed = cargo_fuzz()
        .arg("list")
        .output()
        .map_err(XtaskError::io("cargo fuzz list"))?;
    let all: Vec<String> = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    let targets: Vec<String> = match &args.target {
        Some(t) if all.contains(t) => vec![t.clone()],
        Some(t) => {
            return Err(XtaskError::Usage(format!(
                "unknown fuzz target {t:?}; targets: {}",
                all.join(", ")
            )));
        }
        None => all,
    };
    if targets.is_empty() {
        return Err(XtaskError::Missing(
            "`cargo fuzz list` found no targets".into(),
        ));
    }

    let mut results = Vec::new();
    for t in &targets {
        results.push((t.clone(), run_target(t, args.secs)?));
    }
    println!("\nfuzz summary ({} s per target):", args.secs);
    let mut failed = None;
    for (t, (execs, ok)) in &results {
        let execs = execs.map_or_else(|| "?".to_owned(), |n| n.to_string());
        println!(
            "  {t:<32} {execs:>12} execs  {}",
            if *ok { "ok" } else { "FAILED" }
        );
        if !ok && failed.is_none() {
            failed = Some(t.clone());
        }
    }
    match failed {
        None => Ok(()),
        Some(t) => Err(XtaskError::Failed {
            command: format!("cargo fuzz run {t}"),
            status: "crash or error; see fuzz/artifacts".into(),
            code: 1,
        }),
    }
}

/// Runs one target; returns (exec count, success).
///
/// libFuzzer writes new inputs into the first corpus directory, so that is a scratch
/// directory under `target/`: the committed corpus (`fuzz/corpus/<target>`, read as
/// the second) only changes when someone merges on purpose (`cargo fuzz cmin`).
/// Progress lines (`#N NEW ...`) are not echoed; everything else is.
fn run_target(target: &str, secs: u64) -> Result<(Option<u64>, bool), XtaskError> {
    let scratch = root().join("target").join("fuzz-corpus").join(target);
    std::fs::create_dir_all(&scratch).map_err(XtaskError::io("creating the scratch corpus"))?;
    let committed = root().join("fuzz").join("corpus").join(target);
    let mut cmd = cargo_fuzz();
    cmd.args(["run", target])
        .arg(&scratch)
        .args(committed.is_dir().then_some(&committed))
        .args([
            "--",
            &format!("-max_total_time={secs}"),
            "-print_final_stats=1",
        ])
        .stderr(Stdio::piped());
    let command = describe(&cmd);
    eprintln!("$ RUSTC_BOOTSTRAP=1 {command}");
    let mut child = cmd.spawn().map_err(|source| XtaskError::Spawn {
        command: command.clone(),
        source,
    })?;
    let mut execs = None;
    if let Some(stderr) = child.stderr.take() {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let progress = exec_count(&line);
            if let Some(n) = progress {
                execs = Some(n);
            }
            let noisy = line.starts_with('#') && !line.contains("DONE");
            if !noisy && !line.starts_with("\"") {
                eprintln!("{line}");
            }
        }
    }
    let status = child.wait().map_err(XtaskError::io(command))?;
    Ok((execs, status.success()))
}

/// libFuzzer's progress (`#12345\tpulse ...`) and final (`Done 12345 runs in 60 second(s)`) lines.
fn exec_count(line: &str) -> Option<u64> {
    if let Some(rest) = line.strip_prefix("Done ") {
        return rest.split_whitespace().next()?.parse().ok();
    }
    let rest = line.strip_prefix('#')?;
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_libfuzzer_counts() {
        assert_eq!(exec_count("#4096\tpulse  cov: 12"), Some(4096));
        assert_eq!(exec_count("Done 123456 runs in 10 second(s)"), Some(123456));
        assert_eq!(exec_count("INFO: seed"), None);
    }

    #[test]
    fn parses_arguments() {
        let a = parse_args(&["--time".into(), "5".into(), "framer".into()]).unwrap();
        assert_eq!((a.secs, a.target.as_deref()), (5, Some("framer")));
        assert_eq!(parse_args(&[]).unwrap().secs, DEFAULT_SECS);
        assert!(parse_args(&["--time".into()]).is_err());
        assert!(parse_args(&["a".into(), "b".into()]).is_err());
    }
}
