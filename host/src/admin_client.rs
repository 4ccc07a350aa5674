//! The `shoal plugin swap|deploy|keygen` and `shoal members` commands: small
//! clients of a running node's admin API (part of the binary, not of the
//! library).

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

/// `Authorization` for a node whose API has a token: the first line of the
/// file named by `SHOAL_API_TOKEN_FILE`, if set.
fn bearer() -> anyhow::Result<Option<String>> {
    let Some(path) = std::env::var_os("SHOAL_API_TOKEN_FILE").filter(|p| !p.is_empty()) else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "reading the API token file {} (SHOAL_API_TOKEN_FILE)",
            Path::new(&path).display()
        )
    })?;
    Ok(Some(format!(
        "Bearer {}",
        text.lines().next().unwrap_or("").trim()
    )))
}

/// A request with the bearer token, if there is one.
fn authed<B>(req: ureq::RequestBuilder<B>) -> anyhow::Result<ureq::RequestBuilder<B>> {
    Ok(match bearer()? {
        Some(b) => req.header("authorization", &b),
        None => req,
    })
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
    let resp = authed(
        agent(Duration::from_secs(60))
            .put(&url)
            .header("content-type", "application/wasm"),
    )?
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
    let resp = authed(agent(Duration::from_secs(5)).get(&url))?.call();
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

/// `shoal plugin keygen --out FILE`.
pub fn keygen(out: &Path) -> anyhow::Result<()> {
    use std::io::Write as _;
    let key = shoal::deploy::sign::DeployKey::generate();
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(out).with_context(|| {
        format!(
            "creating {} (an existing file is never overwritten)",
            out.display()
        )
    })?;
    f.write_all(key.to_file_text().as_bytes())
        .with_context(|| format!("writing {}", out.display()))?;
    println!(
        "wrote the secret key to {} (mode 0600; keep it off the nodes)",
        out.display()
    );
    println!(
        "every node's config:\n\n[deploy]\nkeys = [\"{}\"]",
        key.public()
    );
    Ok(())
}

/// `shoal plugin deploy NAME FILE --key KEY`: signs the component's
/// manifest and has the node deploy it to every member; one line per
/// member; an error if any failed.
pub fn deploy(api: &str, name: &str, file: &Path, key: &Path) -> anyhow::Result<()> {
    use sha2::Digest as _;
    let key_text = std::fs::read_to_string(key)
        .with_context(|| format!("reading the key {}", key.display()))?;
    let key = shoal::deploy::sign::DeployKey::from_file_text(&key_text)
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("reading the key {}", key.display()))?;
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let manifest = shoal::deploy::sign::Manifest {
        name: name.to_owned(),
        sha256: hex::encode(sha2::Sha256::digest(&bytes)),
        size: bytes.len() as u64,
        issued_ms: shoal::clock::now_ms(),
        nonce: rand::random(),
    };
    let (manifest_json, signature) = key.sign(&manifest);
    let url = format!("http://{api}/api/deploy/{name}");
    let started = std::time::Instant::now();
    let resp = authed(
        agent(Duration::from_secs(300))
            .post(&url)
            .header("content-type", "application/wasm")
            .header("x-shoal-manifest", &manifest_json)
            .header("x-shoal-signature", &signature),
    )?
    .send(&bytes[..]);
    let (status, body) = answer(api, &url, resp)?;
    if !status.is_success() {
        bail!(
            "the node refused the deploy (HTTP {}): {}; nothing changed",
            status.as_u16(),
            error_of(&body)
        );
    }
    let short = |v: &serde_json::Value| {
        v.as_str()
            .map_or_else(|| "-".to_owned(), |h| h[..h.len().min(12)].to_owned())
    };
    let list = body.as_array().cloned().unwrap_or_default();
    let mut failed = 0;
    for r in &list {
        let ok = r["ok"].as_bool() == Some(true);
        if !ok {
            failed += 1;
        }
        println!(
            "{:<16} {:<22} {:<6} {} -> {}  {:>8.1} ms  {}",
            r["node"].as_str().filter(|n| !n.is_empty()).unwrap_or("?"),
            r["address"].as_str().unwrap_or("?"),
            if ok { "ok" } else { "FAILED" },
            short(&r["old_sha256"]),
            short(&r["new_sha256"]),
            r["ms"].as_f64().unwrap_or(0.0),
            r["message"].as_str().unwrap_or("")
        );
    }
    println!(
        "{name} {} deployed to {} of {} nodes in {:.1} ms",
        &manifest.sha256[..12],
        list.len() - failed,
        list.len(),
        started.elapsed().as_secs_f64() * 1000.0
    );
    if failed > 0 {
        bail!("{failed} node(s) did not take the deploy and keep their old version");
    }
    Ok(())
}
