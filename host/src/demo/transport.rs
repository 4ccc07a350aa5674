//! `shoal demo transport`: three nodes walked through discovery,
//! acknowledged messages, failure detection of a SIGKILLed member and a
//! graceful leave.

use std::io::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::bail;

use shoal::api::{MemberJson, SendResult};

use super::{Cluster, DROP_TIME_MS, get_json, member_ids, node_id, wait_until};

fn post_send(api: SocketAddr, options: &str, body: &str) -> anyhow::Result<SendResult> {
    let mut resp = ureq::post(format!("http://{api}/api/send?options={options}"))
        .config()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .send(body)?;
    Ok(resp.body_mut().read_json()?)
}

fn step(n: u32, text: &str) {
    println!("\n── {n}. {text}");
    let _ = std::io::stdout().flush();
}

/// Runs the demo. Returns an error (after stopping every node) if a step fails.
pub fn run() -> anyhow::Result<()> {
    step(1, "Starting 3 nodes on loopback, each its own process");
    let mut cluster = Cluster::new("transport", &["a", "b", "c"], |_| String::new())?;
    for line in &cluster.note {
        println!("   {line}");
    }
    for i in 0..cluster.nodes.len() {
        let pid = cluster.start(i)?;
        let n = &cluster.nodes[i];
        println!(
            "   node {}: pid {pid:>6}  receiver tcp://127.0.0.1:{}  admin http://{}",
            n.name, n.port, n.api
        );
    }
    println!("   logs: {}", cluster.dir.display());

    step(2, "Waiting for every node to discover the other two");
    let t0 = Instant::now();
    for n in &cluster.nodes {
        wait_until(&format!("node {} to see 2 members", n.name), || {
            member_ids(n.api).filter(|m| m.len() == 2)
        })?;
    }
    println!("   converged in {} ms", t0.elapsed().as_millis());
    for n in &cluster.nodes {
        let ms: Vec<MemberJson> = get_json(n.api, "/api/members").unwrap_or_default();
        let list: Vec<String> = ms
            .iter()
            .map(|m| format!("{}:{} ({}…)", m.host, m.port, &m.id[..8]))
            .collect();
        println!("   {} sees {}", n.name, list.join(", "));
    }

    step(
        3,
        "Acknowledged messages (options 7 = byte|use_ack|sync: ACK after the receiver processed it)",
    );
    for (from, text) in [(0usize, "hello from a"), (1, "hello from b")] {
        let n = &cluster.nodes[from];
        let t = Instant::now();
        let r = post_send(n.api, "7", text)?;
        if !r.ok {
            bail!("send from {} failed: {:?}", n.name, r.error);
        }
        println!(
            "   {} → {} members: all ACKed in {:.2} ms",
            n.name,
            r.sent_to,
            t.elapsed().as_secs_f64() * 1e3
        );
    }
    let c = cluster.nodes[2].api;
    let got: Vec<shoal::MessageSummary> = wait_until("node c to receive both messages", || {
        get_json::<Vec<shoal::MessageSummary>>(c, "/api/messages")
            .ok()
            .filter(|v| v.len() >= 2)
    })?;
    for m in got {
        println!(
            "   c received {:?} from {} (options {})",
            m.preview, m.from_addr, m.options
        );
    }

    step(
        4,
        &format!(
            "SIGKILL node c: a and b detect it after dropTime ({DROP_TIME_MS} ms) without a heartbeat"
        ),
    );
    let c_id = node_id(c)?;
    cluster.kill(2)?;
    let killed = Instant::now();
    for n in &cluster.nodes[..2] {
        wait_until(&format!("node {} to drop c", n.name), || {
            member_ids(n.api).filter(|m| !m.contains(&c_id))
        })?;
        println!(
            "   {} dropped c after {} ms",
            n.name,
            killed.elapsed().as_millis()
        );
    }

    step(
        5,
        "SIGTERM node b: it announces its departure, a drops it at once",
    );
    let b_id = node_id(cluster.nodes[1].api)?;
    let stopped = Instant::now();
    cluster.terminate(1)?;
    let a = cluster.nodes[0].api;
    wait_until("node a to drop b", || {
        member_ids(a).filter(|m| !m.contains(&b_id))
    })?;
    println!(
        "   a dropped b after {} ms (shutdown announcement)",
        stopped.elapsed().as_millis()
    );
    let events: Vec<shoal::EventSummary> = get_json(a, "/api/events")?;
    for e in events.iter().filter(|e| e.kind == "disappeared") {
        println!(
            "   a's event log: {} {} ({})",
            e.addr,
            e.kind,
            e.reason.as_deref().unwrap_or("")
        );
    }

    step(6, "Stopping node a");
    cluster.terminate(0)?;
    println!(
        "\nDemo complete; all nodes stopped. Logs are in {}",
        cluster.dir.display()
    );
    Ok(())
}
