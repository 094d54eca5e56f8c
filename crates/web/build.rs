//! Fetches HTMX from the npm registry at build time (nothing third-party is
//! committed): `npm pack htmx.org@VERSION` into OUT_DIR, checked against the
//! registry's published SHA-512 before `dist/htmx.min.js` is taken out of it.
//! `HTMX_JS=/path/to/htmx.min.js` skips the download (offline builds).

use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine as _;
use sha2::{Digest, Sha512};

const VERSION: &str = "2.0.4";
/// `npm view htmx.org@2.0.4 dist.integrity`
const INTEGRITY: &str =
    "sha512-HLxMCdfXDOJirs3vBZl/ZLoY+c7PfM4Ahr2Ad4YXh6d22T5ltbTXFFkpx9Tgb2vvmWFMbIc3LqN2ToNkZJvyYQ==";

fn main() {
    println!("cargo:rerun-if-env-changed=HTMX_JS");
    println!("cargo:rerun-if-changed=build.rs");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    let target = out.join("htmx.min.js");
    if let Ok(given) = std::env::var("HTMX_JS") {
        std::fs::copy(&given, &target).unwrap_or_else(|e| panic!("copying HTMX_JS={given}: {e}"));
        return;
    }
    if target.exists() {
        return;
    }
    let tarball = out.join(format!("htmx.org-{VERSION}.tgz"));
    if !tarball.exists() {
        let status = Command::new("npm")
            .args(["pack", &format!("htmx.org@{VERSION}"), "--silent"])
            .current_dir(&out)
            .status();
        match status {
            Ok(s) if s.success() => {}
            other => panic!(
                "fetching htmx.org@{VERSION} with npm failed ({other:?}); install npm \
                 (apt-get install -y npm, or run scripts/setup-test-deps) or set \
                 HTMX_JS=/path/to/htmx.min.js"
            ),
        }
    }
    check_integrity(&tarball);
    let status = Command::new("tar")
        .arg("-xzf")
        .arg(&tarball)
        .arg("-C")
        .arg(&out)
        .arg("package/dist/htmx.min.js")
        .status()
        .expect("running tar");
    assert!(
        status.success(),
        "extracting htmx.min.js from {}",
        tarball.display()
    );
    std::fs::rename(out.join("package/dist/htmx.min.js"), &target).expect("moving htmx.min.js");
}

fn check_integrity(tarball: &Path) {
    let bytes = std::fs::read(tarball).expect("reading the htmx tarball");
    let digest = Sha512::digest(&bytes);
    let got = format!(
        "sha512-{}",
        base64::engine::general_purpose::STANDARD.encode(digest)
    );
    if got != INTEGRITY {
        let _ = std::fs::remove_file(tarball);
        panic!(
            "htmx.org-{VERSION}.tgz does not match its published integrity {INTEGRITY} (got {got})"
        );
    }
}
