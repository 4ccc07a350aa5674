//! Builds the guest components in `../guests` for wasm32-wasip2 so the
//! built-in interceptors can be embedded in the `shoal` binary.
//!
//! Pitfalls handled (see wasmtime-notes): the nested cargo gets its own target
//! directory (sharing the outer one deadlocks in release builds), a clean
//! environment (the outer RUSTFLAGS etc. must not leak into the guest build),
//! `rerun-if-changed` for every input and output, its stderr on failure, and
//! the wasm32-wasip2 target is added first if the toolchain in use lacks it
//! (`scripts/wasm-target.sh`: rustup does not do it by itself when
//! RUSTUP_AUTO_INSTALL=0, and inside cargo `rustup toolchain install` ignores
//! rust-toolchain.toml's targets).

use std::path::{Path, PathBuf};
use std::process::Command;

const GUESTS: [&str; 10] = [
    "tcp_failure_detector",
    "phi_accrual_detector",
    "message_dispatch",
    "throughput",
    "domain_filter",
    "size_filter",
    "encrypt",
    "testkit",
    "delta_policy",
    "backup_policy",
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
    rerun_if_changed(&root.join("examples").join("custom-policy"));
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
    let out = match cmd.output() {
        Ok(out) => out,
        Err(e) => fail(&format!(
            "error: could not run cargo to build the guest components: {e}"
        )),
    };
    if !out.status.success() {
        fail(&format!(
            "{}\nerror: building the guest components (guests/, wasm32-wasip2) failed (the compiler's output is above)",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let wasm_dir = guest_target.join("wasm32-wasip2").join("release");
    for g in GUESTS {
        let f = wasm_dir.join(format!("{g}.wasm"));
        if !f.exists() {
            fail(&format!(
                "error: the guest build did not produce {}",
                f.display()
            ));
        }
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

/// Makes sure the toolchain cargo runs under has the wasm32-wasip2 target,
/// through the one script that does it for every path
/// (`scripts/wasm-target.sh`, also run by `scripts/setup.sh`). On failure the
/// build stops with the script's one-line error (which names the command to
/// run), not a panic.
fn ensure_wasm_target(root: &Path) {
    let script = root.join("scripts").join("wasm-target.sh");
    println!("cargo:rerun-if-changed={}", script.display());
    let out = Command::new("bash").arg(&script).current_dir(root).output();
    match out {
        Ok(o) if o.status.success() => {
            let log = String::from_utf8_lossy(&o.stderr);
            for line in log.lines().filter(|l| l.starts_with("shoal: ")) {
                println!("cargo:warning={}", line.trim_start_matches("shoal: "));
            }
        }
        Ok(o) => fail(&String::from_utf8_lossy(&o.stderr)),
        Err(e) => fail(&format!(
            "error: could not run {} ({e}); run `rustup target add wasm32-wasip2`, then build again",
            script.display()
        )),
    }
}

/// Stops the build with a message and no backtrace (cargo shows the build
/// script's stderr).
fn fail(msg: &str) -> ! {
    eprintln!("{}", msg.trim_end());
    std::process::exit(1);
}
