//! The Python bindings (`bindings/python`, ctypes over libbsn.so) run by `cargo test`: their
//! unittest suite (two engines on loopback, a regtest chain synced, bans, errors, frees) and
//! the example. Needs python3 (standard library only); skips loudly without it.

mod common;

use common::ffi::{crate_dir, have, lib_dir, skip, write_chain};
use common::TempDir;
use std::fs::File;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What a python3 run came to.
struct Run {
    success: bool,
    status: String,
    stdout: String,
    stderr: String,
}

impl Run {
    fn shown(&self) -> String {
        format!(
            "python3 {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

/// Runs `python3 args` from the crate's directory with the bindings on the path and the
/// library just built, killing it after `timeout`. Output goes to files in `dir` (no pipe to
/// fill up).
fn python(dir: &Path, args: &[&str], env: &[(&str, &Path)], timeout: Duration) -> Run {
    let lib = lib_dir().join("libbsn.so");
    let out = dir.join("stdout.txt");
    let err = dir.join("stderr.txt");
    let mut cmd = Command::new("python3");
    cmd.args(args)
        .current_dir(crate_dir())
        .env("BSN_LIB", &lib)
        .env("PYTHONPATH", crate_dir().join("bindings/python"))
        .env("PYTHONDONTWRITEBYTECODE", "1") // no __pycache__ in the source tree
        .env("PYTHONUNBUFFERED", "1")
        .stdin(Stdio::null())
        .stdout(File::create(&out).unwrap())
        .stderr(File::create(&err).unwrap());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("python3 starts");
    let deadline = Instant::now() + timeout;
    let (success, status) = loop {
        if let Some(st) = child.try_wait().expect("wait for python3") {
            break (st.success(), format!("exited: {st}"));
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break (false, format!("killed after {timeout:?}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Run {
        success,
        status,
        stdout: std::fs::read_to_string(&out).unwrap_or_default(),
        stderr: std::fs::read_to_string(&err).unwrap_or_default(),
    }
}

#[test]
fn python_unittests() {
    if !have("python3") {
        skip("ffi_python::python_unittests", "python3 is not on the PATH");
        return;
    }
    let dir = TempDir::new("ffi-python");
    let chain = dir.0.join("chain.bin");
    let hashes = write_chain(&chain, 20);
    let tip: String = hashes[19].iter().map(|b| format!("{b:02x}")).collect();
    let tip_file = dir.0.join("tip.txt");
    std::fs::write(&tip_file, &tip).unwrap();
    let run = python(
        &dir.0,
        &[
            "-m",
            "unittest",
            "discover",
            "-s",
            "bindings/python/tests",
            "-v",
        ],
        &[("BSN_CHAIN", &chain), ("BSN_CHAIN_TIP_FILE", &tip_file)],
        Duration::from_secs(600),
    );
    assert!(run.success, "the Python tests failed: {}", run.shown());
    // unittest reports on stderr: every test ran (BSN_CHAIN is set: the sync test must not skip)
    assert!(
        run.stderr.contains("\nOK\n") && !run.stderr.contains("skipped"),
        "{}",
        run.shown()
    );
    assert!(run.stderr.contains("test_sync_to_tip"), "{}", run.shown());
    println!("{}", run.shown());
}

#[test]
fn python_example() {
    if !have("python3") {
        skip("ffi_python::python_example", "python3 is not on the PATH");
        return;
    }
    let dir = TempDir::new("ffi-python-example");
    let run = python(
        &dir.0,
        &["bindings/python/examples/events.py", "--seconds", "3"],
        &[],
        Duration::from_secs(120),
    );
    assert!(run.success, "the example failed: {}", run.shown());
    assert!(
        run.stdout
            .lines()
            .any(|l| l.contains("engine: PEER_CONNECTED")),
        "no PEER_CONNECTED line: {}",
        run.shown()
    );
    assert!(run.stdout.contains("\ndone\n"), "{}", run.shown());
    println!("{}", run.shown());
}
