//! `include/bsn.h` is what the pinned cbindgen makes of `src/ffi`: this test regenerates it and
//! fails when the committed header differs (`BSN_BLESS=1 cargo test --test ffi_header` writes
//! it).

#[test]
fn the_committed_header_is_what_cbindgen_makes() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(dir.join("cbindgen.toml")).expect("cbindgen.toml");
    let mut out = Vec::new();
    cbindgen::Builder::new()
        .with_crate(dir)
        .with_config(config)
        .generate()
        .expect("cbindgen generates the header")
        .write(&mut out);
    let path = dir.join("include/bsn.h");
    if std::env::var_os("BSN_BLESS").is_some() {
        std::fs::write(&path, &out).unwrap();
    }
    let committed = std::fs::read(&path).unwrap_or_default();
    assert!(
        committed == out,
        "include/bsn.h differs from what cbindgen makes of src/ffi: run \
         BSN_BLESS=1 cargo test --test ffi_header and commit it"
    );
}
