//! The rolling restart end to end under traffic with 0 sessions lost
//! (issue 12): the driver, in a short mode, for both rolls — node by node
//! onto a new filter in the config, and one cluster-wide `shoal plugin
//! deploy` followed by restarts with the configs unchanged. Each must lose
//! no session, fail no request (after one retry), answer no stale cart, and
//! end with filter version 2 on every node (version 1 on every node
//! before).
//!
//! The driver runs the `shoal` and `webapp` binaries of this profile
//! (`target/debug/`); `cargo test --workspace` builds them, for this
//! package alone run `cargo build -p shoal -p shoal-webapp` first.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use serde_json::Value;

/// `target/<profile>/`, where the driver and the binaries it runs are.
fn bin_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_rolling-restart"))
        .parent()
        .expect("the driver's directory")
        .to_path_buf()
}

/// Users in the short rolls.
const USERS: u64 = 50;

/// Runs one roll, short: 50 users, 4 threads, 2 s before and after.
fn run(mode: &str) -> Value {
    let dir = bin_dir();
    for bin in ["shoal", "webapp"] {
        assert!(
            dir.join(bin).is_file(),
            "{} is missing: `cargo test --workspace` builds it; for this package alone run \
             `cargo build -p shoal -p shoal-webapp` first",
            dir.join(bin).display()
        );
    }
    let json = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "rolling-restart-{mode}-{}.json",
        std::process::id()
    ));
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_rolling-restart"))
        .args([
            "--mode",
            mode,
            "--users",
            &USERS.to_string(),
            "--workers",
            "4",
        ])
        .args(["--pre", "2", "--post", "2", "--json"])
        .arg(&json)
        .output()
        .expect("the driver runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!(
        "--- {mode} roll ({:.1} s) ---\n{stdout}{}",
        started.elapsed().as_secs_f64(),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&json)
        .unwrap_or_else(|e| panic!("no report from the {mode} roll ({e}); exit {}", out.status));
    let _ = std::fs::remove_file(&json);
    let report: Value = serde_json::from_str(&text).expect("the report is JSON");
    assert!(
        out.status.success() == report["ok"].as_bool().unwrap_or(false),
        "exit status {} disagrees with the report",
        out.status
    );
    report
}

fn check(mode: &str, r: &Value) {
    let during = &r["phases"][1];
    assert!(
        during["requests"].as_u64().unwrap_or(0) >= 50,
        "{mode}: hardly any traffic during the roll: {during}"
    );
    assert_eq!(r["lost"], 0, "{mode}: sessions lost: {}", r["problems"]);
    assert_eq!(
        r["failed"], 0,
        "{mode}: requests failed after a retry: {}",
        r["problems"]
    );
    assert_eq!(r["stale"], 0, "{mode}: stale carts: {}", r["problems"]);
    let (v1, v2) = (&r["filter_v1"], &r["filter_v2"]);
    assert_ne!(v1, v2);
    for (i, (b, a)) in r["filter_before"]
        .as_array()
        .expect("hashes")
        .iter()
        .zip(r["filter_after"].as_array().expect("hashes"))
        .enumerate()
    {
        assert_eq!(b, v1, "{mode}: node {} did not start on filter v1", i + 1);
        assert_eq!(a, v2, "{mode}: node {} did not end on filter v2", i + 1);
    }
    assert_eq!(r["filter_after"].as_array().map(Vec::len), Some(3));
    // Every restarted node came back with every session (delta: a copy of
    // each on every node), i.e. its state transfer really copied them.
    for s in r["steps"].as_array().expect("steps") {
        if s["node"] != "all" {
            assert_eq!(
                s["sessions"], USERS,
                "{mode}: {} was ready without every session",
                s["node"]
            );
        }
    }
    assert_eq!(
        r["unclean"],
        serde_json::json!([]),
        "{mode}: a node had to be killed"
    );
    assert_eq!(r["ok"], true);
}

#[test]
fn rolling_restart_and_cluster_wide_deploy_lose_no_session_under_traffic() {
    let r = run("restart");
    check("restart", &r);
    // Three restarts, each onto v2.
    let steps = r["steps"].as_array().expect("steps");
    assert_eq!(steps.len(), 3);
    assert!(steps.iter().all(|s| s["hash"] == r["filter_v2"]));

    let r = run("deploy");
    check("deploy", &r);
    assert_eq!(r["deploy_ok"], true, "{}", r["deploy_output"]);
    let out = r["deploy_output"].as_str().unwrap_or("");
    assert!(
        out.contains("deployed to 3 of 3 nodes"),
        "the deploy did not reach every node: {out}"
    );
    // The deploy, then three restarts with the configs still naming v1:
    // each node comes back on the deployed v2.
    let steps = r["steps"].as_array().expect("steps");
    assert_eq!(steps.len(), 4);
    assert!(steps.iter().all(|s| s["hash"] == r["filter_v2"]));
}
