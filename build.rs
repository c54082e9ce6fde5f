//! Writes `diffugpt.pc` (pkg-config) next to the built libraries, e.g. `target/release/`, so C,
//! C++ and Go (cgo) programs can build against the in-tree library with
//! `PKG_CONFIG_PATH=target/release pkg-config --cflags --libs diffugpt`.

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets it"));
    // OUT_DIR is <target>/<profile>/build/diffugpt-<hash>/out
    let Some(libdir) = out.ancestors().nth(3) else {
        return;
    };
    let pc = format!(
        "prefix={root}\nlibdir={lib}\nincludedir={root}/include\n\n\
         Name: diffugpt\nDescription: DiffuGPT inference with EoS-first variable-length decoding\n\
         Version: {ver}\nLibs: -L${{libdir}} -ldiffugpt\nLibs.private: -lpthread -ldl -lm -lgcc_s -lc\n\
         Cflags: -I${{includedir}}\n",
        root = manifest.display(),
        lib = libdir.display(),
        ver = std::env::var("CARGO_PKG_VERSION").unwrap_or_default(),
    );
    // Best effort: a read-only target directory must not fail the build.
    let _ = std::fs::write(libdir.join("diffugpt.pc"), pc);
}
