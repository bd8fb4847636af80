//! The C ABI from C++: `tests/cpp/ffi_test.cpp`, written against the header-only wrapper
//! `bindings/cpp/bsn.hpp`, compiled with the strict flags against `libbsn.so` and run on a
//! 20-block regtest chain (two engines on 127.0.0.1, ports picked by the system).

mod common;

use common::ffi::{crate_dir, have, lib_dir, skip, write_chain};
use common::TempDir;
use std::path::Path;
use std::process::{Command, Output};

const BLOCKS: usize = 20;

/// Whether a C++ compiler is there, installing g++ with apt-get when it is not (and it can be).
fn cxx_available() -> Result<(), String> {
    if have("c++") {
        return Ok(());
    }
    if !have("apt-get") {
        return Err("no c++ and no apt-get to install g++".into());
    }
    let apt = |args: &[&str]| {
        Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .output()
    };
    let mut install = apt(&["install", "-y", "-q", "g++"]);
    if !matches!(&install, Ok(o) if o.status.success()) {
        // the package lists may be missing: fetch them once and try again
        let _ = apt(&["update", "-q"]);
        install = apt(&["install", "-y", "-q", "g++"]);
    }
    match install {
        Ok(o) if o.status.success() && have("c++") => Ok(()),
        Ok(o) => Err(format!(
            "no c++, and apt-get install -y g++ failed ({}): {}",
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Err(format!("no c++, and apt-get does not run: {e}")),
    }
}

fn show(o: &Output) -> String {
    format!(
        "status: {}\n--- stdout\n{}\n--- stderr\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn compile(lib: &Path, out: &Path) -> Output {
    let dir = crate_dir();
    Command::new("c++")
        .args(["-std=c++17", "-Wall", "-Wextra", "-Werror"])
        .arg("-I")
        .arg(dir.join("include"))
        .arg("-I")
        .arg(dir.join("bindings/cpp"))
        .arg(dir.join("tests/cpp/ffi_test.cpp"))
        .arg(format!("-L{}", lib.display()))
        .arg("-lbsn")
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .arg("-o")
        .arg(out)
        .output()
        .expect("c++ runs")
}

#[test]
fn the_cpp_wrapper_drives_two_engines() {
    if let Err(why) = cxx_available() {
        skip("ffi_cpp::the_cpp_wrapper_drives_two_engines", &why);
        return;
    }
    let lib = lib_dir();
    let tmp = TempDir::new("ffi_cpp");
    let chain = tmp.0.join("chain.bin");
    let hashes = write_chain(&chain, BLOCKS);
    assert_eq!(hashes.len(), BLOCKS);

    let exe = tmp.0.join("ffi_test");
    let built = compile(&lib, &exe);
    assert!(
        built.status.success(),
        "tests/cpp/ffi_test.cpp does not compile:\n{}",
        show(&built)
    );

    let run = Command::new(&exe)
        .arg(&chain)
        .arg(BLOCKS.to_string())
        .output()
        .expect("the C++ test runs");
    assert!(run.status.success(), "the C++ test failed:\n{}", show(&run));
    let out = String::from_utf8_lossy(&run.stdout);
    assert!(
        out.contains(", 0 failed"),
        "unexpected output:\n{}",
        show(&run)
    );
    println!("{}", out.trim());
}
