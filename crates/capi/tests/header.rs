//! The committed header is what cbindgen makes of the sources now.

use std::path::Path;

#[test]
fn the_committed_header_is_current() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(dir.join("cbindgen.toml")).expect("cbindgen.toml");
    let mut fresh = Vec::new();
    cbindgen::Builder::new()
        .with_config(config)
        .with_src(dir.join("src/lib.rs"))
        .generate()
        .expect("cbindgen parses src/")
        .write(&mut fresh);
    let path = dir.join("include/pagemesh.h");
    if std::env::var_os("PAGEMESH_BLESS_HEADER").is_some() {
        std::fs::write(&path, &fresh).expect("write include/pagemesh.h");
    }
    let committed = std::fs::read(&path).unwrap_or_default();
    assert!(
        committed == fresh,
        "{} is stale: the C API in crates/capi/src changed. Regenerate it with\n    \
         PAGEMESH_BLESS_HEADER=1 cargo test -p pagemesh-capi --test header\nand commit it.",
        path.display()
    );
}
