//! The admin API's bearer token (`[api] token_file`): every route needs
//! it (health and metrics only if so configured), the CLI sends it, and
//! without one the API refuses to listen beyond loopback.

mod common;

use std::process::Command;

use common::free_port;

fn config(dir: &std::path::Path, extra: &str) -> String {
    format!(
        "[node]\nname = \"auth\"\n[membership]\nkind = \"static\"\nmembers = [\"127.0.0.1:9\"]\n\
         [receiver]\naddress = \"127.0.0.1\"\nport = {}\nauto_bind = 50\n\
         [api]\nlisten = \"127.0.0.1:{}\"\n{extra}\n[session]\nenabled = false\n\
         [plugins]\ncache_dir = \"{}/component-cache\"\n",
        free_port(),
        free_port(),
        dir.display()
    )
}

fn status(url: &str, token: Option<&str>) -> u16 {
    let mut req = ureq::get(url).config().http_status_as_error(false).build();
    if let Some(t) = token {
        req = req.header("authorization", &format!("Bearer {t}"));
    }
    req.call().map(|r| r.status().as_u16()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_token_every_route_needs_it_and_the_cli_sends_it() {
    let dir = std::env::temp_dir().join(format!("shoal-api-auth-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let token = "0123456789abcdef0123456789abcdef";
    std::fs::write(dir.join("token"), format!("{token}\n")).expect("token");
    let path = dir.join("node.toml");
    std::fs::write(&path, config(&dir, "token_file = \"token\"")).expect("config");
    let node = shoal::Node::start(shoal::Config::load(&path).expect("config"))
        .await
        .expect("node");
    let api = node.api_addr().expect("api");
    let base = format!("http://{api}");
    let token_path = dir.join("token");
    let (t, b) = tokio::task::spawn_blocking(move || {
        let s = |p: &str, t: Option<&str>| status(&format!("{base}{p}"), t);
        let results = [
            s("/api/members", None),
            s("/api/members", Some("wrong-token-wrong-token")),
            s("/api/members", Some(token)),
            s("/api/plugins", None),
            s("/metrics", None),
            s("/api/ready", None),
        ];
        // The CLI reads the token from SHOAL_API_TOKEN_FILE.
        let cli = |env: Option<&std::path::Path>| {
            let mut c = Command::new(env!("CARGO_BIN_EXE_shoal"));
            c.args(["members", "--api", &api.to_string()]);
            if let Some(f) = env {
                c.env("SHOAL_API_TOKEN_FILE", f);
            }
            c.output().expect("shoal members").status.success()
        };
        (results, (cli(None), cli(Some(&token_path))))
    })
    .await
    .expect("blocking");
    assert_eq!(t[..5], [401, 401, 200, 401, 200]);
    assert!(
        matches!(t[5], 200 | 503),
        "/api/ready answers without the token: {}",
        t[5]
    );
    assert_eq!(b, (false, true), "the CLI without / with the token");
    node.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_can_be_closed_too_and_a_bad_token_file_stops_the_start() {
    let dir = std::env::temp_dir().join(format!("shoal-api-auth2-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(dir.join("token"), "0123456789abcdef0123456789abcdef\n").expect("token");
    let path = dir.join("node.toml");
    std::fs::write(
        &path,
        config(&dir, "token_file = \"token\"\nopen_health = false"),
    )
    .expect("config");
    let node = shoal::Node::start(shoal::Config::load(&path).expect("config"))
        .await
        .expect("node");
    let base = format!("http://{}", node.api_addr().expect("api"));
    let codes = tokio::task::spawn_blocking(move || {
        [
            status(&format!("{base}/metrics"), None),
            status(&format!("{base}/api/ready"), None),
        ]
    })
    .await
    .expect("blocking");
    assert_eq!(codes, [401, 401]);
    node.shutdown().await;
    // Too short a token: the node does not start.
    std::fs::write(dir.join("token"), "short\n").expect("token");
    let err = shoal::Node::start(shoal::Config::load(&path).expect("config"))
        .await
        .expect_err("a short token is refused");
    assert!(err.to_string().contains("api.token_file"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn without_a_token_the_api_refuses_a_non_loopback_address() {
    let text = "[api]\nlisten = \"0.0.0.0:8080\"\n";
    let err = shoal::Config::parse(text, "n.toml".as_ref()).expect_err("refused");
    let msg = err.to_string();
    assert!(
        msg.contains("api.listen") && msg.contains("token_file"),
        "{msg}"
    );
    let ok = "[api]\nlisten = \"0.0.0.0:8080\"\ntoken_file = \"t\"\n";
    assert!(shoal::Config::parse(ok, "n.toml".as_ref()).is_ok());
}
