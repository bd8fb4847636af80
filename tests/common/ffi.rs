//! Support for the tests of the C ABI from C, C++ and Python: `libbsn.so` built, a regtest
//! chain in a file, and tools looked up on the PATH.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The crate's directory.
pub fn crate_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The directory holding `libbsn.so` and `libbsn.a`, built once per test process with
/// `cargo build --lib` (`cargo test` builds the library only as an rlib for the tests).
pub fn lib_dir() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let st = Command::new(cargo)
                .args(["build", "--lib", "--quiet"])
                .current_dir(crate_dir())
                .status()
                .expect("cargo runs");
            assert!(st.success(), "cargo build --lib failed");
            // the test binary is target/<profile>/deps/<name>: the library is two levels up
            let exe = std::env::current_exe().unwrap();
            let dir = exe.parent().and_then(Path::parent).unwrap().to_path_buf();
            let dir = if dir.join("libbsn.so").exists() {
                dir
            } else {
                crate_dir().join("target/debug")
            };
            assert!(
                dir.join("libbsn.so").exists(),
                "no libbsn.so in {}",
                dir.display()
            );
            dir
        })
        .clone()
}

/// Writes `n` regtest blocks on genesis (coinbase only, real proof of work) to `path` as
/// records of a 4-byte little-endian length and the block; their hashes in wire order.
pub fn write_chain(path: &Path, n: usize) -> Vec<[u8; 32]> {
    let mut f = std::fs::File::create(path).unwrap();
    let mut hashes = Vec::new();
    for b in super::regtest_blocks(n) {
        let raw = b.raw();
        f.write_all(&(raw.len() as u32).to_le_bytes()).unwrap();
        f.write_all(raw).unwrap();
        hashes.push(b.hash().0);
    }
    hashes
}

/// Whether `program` runs (`program --version` exits, whatever its status).
pub fn have(program: &str) -> bool {
    Command::new(program).arg("--version").output().is_ok()
}

/// Says loudly on stderr that `test` skips and why (the harness shows stderr of passing tests
/// only with --nocapture, so the line also goes to a file CI prints: target/skipped.txt).
pub fn skip(test: &str, why: &str) {
    let line = format!("SKIPPED: {test}: {why}");
    eprintln!("{line}");
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(crate_dir().join("target/skipped.txt"))
    {
        let _ = writeln!(f, "{line}");
    }
}
