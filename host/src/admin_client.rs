//! The `shoal plugin swap` and `shoal members` commands: small clients of a
//! running node's admin API (part of the binary, not of the library).

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};

fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(timeout))
        .build()
        .into()
}

/// The status and JSON body of an admin API answer, or what went wrong.
fn answer(
    api: &str,
    url: &str,
    resp: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
) -> anyhow::Result<(ureq::http::StatusCode, serde_json::Value)> {
    let mut resp = resp.with_context(|| format!("talking to the node's admin API at {api}"))?;
    let status = resp.status();
    let body = resp
        .body_mut()
        .read_json()
        .with_context(|| format!("reading the answer of {url} (HTTP {status})"))?;
    Ok((status, body))
}

fn error_of(body: &serde_json::Value) -> String {
    body.get("error")
        .and_then(|e| e.as_str())
        .map_or_else(|| body.to_string(), str::to_owned)
}

/// `shoal plugin swap NAME FILE`: sends the component to the node and prints
/// what changed. Fails (non-zero exit) when the node refused it.
pub fn swap(api: &str, name: &str, file: &Path) -> anyhow::Result<()> {
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let url = format!("http://{api}/api/plugins/{name}");
    let resp = agent(Duration::from_secs(60))
        .put(&url)
        .header("content-type", "application/wasm")
        .send(&bytes[..]);
    let (status, body) = answer(api, &url, resp)?;
    if !status.is_success() {
        bail!(
            "the node refused the swap (HTTP {}): {}; the old version keeps running",
            status.as_u16(),
            error_of(&body)
        );
    }
    let ms = body["total_ms"].as_f64().unwrap_or(0.0);
    let load_ms = body["load_ms"].as_f64().unwrap_or(0.0);
    for p in body["plugins"].as_array().into_iter().flatten() {
        if p["name"] != name {
            continue;
        }
        let short = |k: &str| {
            p[k].as_str()
                .map_or_else(|| "-".to_owned(), |h| h[..h.len().min(12)].to_owned())
        };
        let change = p["change"].as_str().unwrap_or("?");
        if change == "unchanged" {
            println!(
                "{name}: unchanged (the node already runs {})",
                short("new_sha256")
            );
        } else {
            println!(
                "{name}: {change} {} -> {} (generation {}, state {}) in {ms:.1} ms ({load_ms:.1} ms loading)",
                short("old_sha256"),
                short("new_sha256"),
                p["generation"],
                if p["state_handed_over"].as_bool() == Some(true) {
                    "handed over"
                } else {
                    "not handed over"
                },
            );
        }
    }
    Ok(())
}

/// `shoal members`: the node's members (and each one's plug-in chain,
/// once members advertise it).
pub fn members(api: &str) -> anyhow::Result<()> {
    let url = format!("http://{api}/api/members");
    let resp = agent(Duration::from_secs(5)).get(&url).call();
    let (status, body) = answer(api, &url, resp)?;
    if !status.is_success() {
        bail!("HTTP {}: {}", status.as_u16(), error_of(&body));
    }
    let list = body.as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        println!("no members");
    }
    for m in list {
        println!(
            "{}  {}:{}  domain {:?}  up {:.1} s",
            m["id"].as_str().unwrap_or("?"),
            m["host"].as_str().unwrap_or("?"),
            m["port"],
            m["domain"].as_str().unwrap_or(""),
            m["alive_ms"].as_f64().unwrap_or(0.0) / 1000.0
        );
        // Each member's plug-in chain, once members advertise it.
        for p in m["chain"].as_array().into_iter().flatten() {
            println!(
                "    {} {} {}",
                p["name"].as_str().unwrap_or("?"),
                p["version"].as_str().unwrap_or(""),
                p["sha256"].as_str().unwrap_or("?")
            );
        }
    }
    Ok(())
}
