//! Builds the guest components in `../guests` for wasm32-wasip2 so the
//! built-in interceptors can be embedded in the `shoal` binary.
//!
//! Pitfalls handled (see wasmtime-notes): the nested cargo gets its own target
//! directory (sharing the outer one deadlocks in release builds), a clean
//! environment (the outer RUSTFLAGS etc. must not leak into the guest build),
//! `rerun-if-changed` for every input and output, its stderr on failure, and
//! the wasm32-wasip2 target is installed first if it is missing (rustup does
//! not do it by itself when RUSTUP_AUTO_INSTALL=0).

use std::path::{Path, PathBuf};
use std::process::Command;

const GUESTS: [&str; 5] = [
    "tcp_failure_detector",
    "message_dispatch",
    "throughput",
    "domain_filter",
    "testkit",
];

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let root = manifest.parent().expect("workspace root").to_path_buf();
    let guests = root.join("guests");
    let wit = root.join("wit");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    // OUT_DIR = <target>/[<triple>/]<profile>/build/<pkg>-<hash>/out: the
    // guests go to <target>/guests, shared by every profile.
    let target_root = out_dir
        .ancestors()
        .find(|p| p.file_name().is_some_and(|n| n == "build"))
        .and_then(|b| b.parent())
        .and_then(|p| p.parent())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| root.join("target"));
    let guest_target = target_root.join("guests");

    rerun_if_changed(&guests);
    rerun_if_changed(&root.join("examples").join("custom-interceptor"));
    println!("cargo:rerun-if-changed={}", wit.display());
    println!(
        "cargo:rerun-if-changed={}",
        root.join("rust-toolchain.toml").display()
    );

    ensure_wasm_target(&root);

    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&guests)
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--target-dir",
        ])
        .arg(&guest_target);
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET_DIR",
        "CARGO_MAKEFLAGS",
        "CARGO_PRIMARY_PACKAGE",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_PROFILE_RELEASE_DEBUG",
    ] {
        cmd.env_remove(var);
    }
    let out = cmd
        .output()
        .expect("running cargo to build the guest components");
    if !out.status.success() {
        panic!(
            "building the guest components (guests/, wasm32-wasip2) failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let wasm_dir = guest_target.join("wasm32-wasip2").join("release");
    for g in GUESTS {
        let f = wasm_dir.join(format!("{g}.wasm"));
        assert!(f.exists(), "guest build did not produce {}", f.display());
        println!("cargo:rerun-if-changed={}", f.display());
    }
    println!("cargo:rustc-env=SHOAL_GUEST_DIR={}", wasm_dir.display());
}

fn rerun_if_changed(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        let name = e.file_name();
        if name == "target" {
            continue;
        }
        if p.is_dir() {
            rerun_if_changed(&p);
        } else if p
            .extension()
            .is_some_and(|x| x == "rs" || x == "toml" || x == "lock")
        {
            println!("cargo:rerun-if-changed={}", p.display());
        }
    }
}

fn ensure_wasm_target(root: &Path) {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .current_dir(root)
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l.trim() == "wasm32-wasip2")
        });
    match installed {
        Ok(true) => {}
        Ok(false) => {
            println!(
                "cargo:warning=installing the wasm32-wasip2 target (rustup toolchain install)"
            );
            let ok = Command::new("rustup")
                .arg("toolchain")
                .arg("install")
                .current_dir(root)
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                panic!(
                    "the wasm32-wasip2 target is missing and `rustup toolchain install` failed; run it by hand"
                );
            }
        }
        // No rustup: let the guest build report what is missing.
        Err(_) => {}
    }
}
