//! A real dnsmasq on a loopback port, serving one name from a hosts
//! directory that the test rewrites while it runs (`--hostsdir` re-reads
//! changed files and forgets removed records by itself). Killed on drop.
//! Shared by the DNS discovery test and bench.
#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long dnsmasq may take to answer after a start or a change.
const READY_DEADLINE: Duration = Duration::from_secs(20);
/// Ports tried when the one picked was taken meanwhile.
const START_TRIES: usize = 5;

/// The dnsmasq binary, if installed (Debian's dnsmasq-base puts it in /usr/sbin,
/// often not on a user's PATH).
pub fn binary() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>());
    on_path
        .chain(["/usr/sbin".into(), "/usr/local/sbin".into()])
        .map(|d| d.join("dnsmasq"))
        .find(|p| p.is_file())
}

/// The binary, or `None` after a loud message when it is absent outside CI;
/// in CI (`CI=true`) its absence fails the test: scripts/setup.sh installs it.
pub fn binary_or_skip(test: &str) -> Option<PathBuf> {
    let b = binary();
    if b.is_none() {
        let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
        assert!(
            !ci,
            "dnsmasq is not installed; scripts/setup.sh installs it (Debian: dnsmasq-base)"
        );
        eprintln!(
            "\n!!! SKIPPING {test}: dnsmasq is not installed (run scripts/setup.sh, or \
             `apt-get install dnsmasq-base`) !!!\n"
        );
    }
    b
}

/// A running dnsmasq answering for one name.
pub struct Dnsmasq {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
    name: String,
}

impl Dnsmasq {
    /// Starts dnsmasq on 127.0.0.1 (a port of its own) answering `name` with
    /// `ips` (A records; AAAA for IPv6 addresses); other names in the
    /// name's parent domain get NXDOMAIN. Returns once it answers.
    pub fn start(bin: &Path, tag: &str, name: &str, ips: &[IpAddr]) -> Self {
        let dir = std::env::temp_dir().join(format!("shoal-dnsmasq-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let domain = name.split_once('.').map_or(name, |(_, d)| d);
        let mut last_log = String::new();
        for _ in 0..START_TRIES {
            // Made at each try: a failed try's drop removes it.
            std::fs::create_dir_all(dir.join("hosts")).expect("dnsmasq dir");
            let port = UdpSocket::bind("127.0.0.1:0")
                .and_then(|s| s.local_addr())
                .expect("a free UDP port")
                .port();
            let log = std::fs::File::create(dir.join("dnsmasq.log")).expect("log file");
            let child = Command::new(bin)
                .args([
                    "--no-daemon", // foreground, no pid file, no change of user
                    "--log-facility=-",
                    "--bind-interfaces",
                    "--listen-address=127.0.0.1",
                    "--no-resolv", // never forwards anywhere
                    "--no-hosts",
                    "--no-negcache",
                ])
                .arg(format!("--port={port}"))
                .arg(format!("--local=/{domain}/"))
                .arg(format!("--hostsdir={}", dir.join("hosts").display()))
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log"))
                .stderr(log)
                .spawn()
                .expect("spawn dnsmasq");
            let mut d = Self {
                child,
                addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
                dir: dir.clone(),
                name: name.to_owned(),
            };
            d.write_records(ips);
            if d.wait_answer(ips) {
                return d;
            }
            // Exited (the port was taken meanwhile) or never answered: next
            // port (dropping `d` stops it and removes its directory).
            last_log = std::fs::read_to_string(dir.join("dnsmasq.log")).unwrap_or_default();
        }
        panic!("dnsmasq did not start in {START_TRIES} tries; the last one's log: {last_log}");
    }

    /// Where it listens (UDP and TCP).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Replaces the name's records (none: NXDOMAIN) and returns once
    /// dnsmasq answers with exactly these addresses.
    pub fn set(&mut self, ips: &[IpAddr]) {
        self.write_records(ips);
        assert!(
            self.wait_answer(ips),
            "dnsmasq did not pick up the records {ips:?}; its log: {}",
            std::fs::read_to_string(self.dir.join("dnsmasq.log")).unwrap_or_default()
        );
    }

    /// Writes the hosts file beside the directory and renames it in, so
    /// dnsmasq never reads half a file.
    fn write_records(&self, ips: &[IpAddr]) {
        let text: String = ips
            .iter()
            .map(|ip| format!("{ip} {}\n", self.name))
            .collect();
        let tmp = self.dir.join("records.tmp");
        std::fs::write(&tmp, text).expect("write records");
        std::fs::rename(&tmp, self.dir.join("hosts").join("records")).expect("rename records");
    }

    /// Polls until the A answer is `ips` (IPv4 ones, order ignored); false if
    /// dnsmasq exited or the deadline passed.
    fn wait_answer(&mut self, ips: &[IpAddr]) -> bool {
        let mut want: Vec<Ipv4Addr> = ips
            .iter()
            .filter_map(|ip| match ip {
                IpAddr::V4(v4) => Some(*v4),
                IpAddr::V6(_) => None,
            })
            .collect();
        want.sort_unstable();
        let start = Instant::now();
        while start.elapsed() < READY_DEADLINE {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return false;
            }
            if let Some(mut got) = query_a(self.addr, &self.name) {
                got.sort_unstable();
                if got == want {
                    return true;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One A query over UDP: the addresses answered (empty for NXDOMAIN or no
/// record), or `None` if no well-formed answer came within a second.
pub fn query_a(server: SocketAddr, name: &str) -> Option<Vec<Ipv4Addr>> {
    let sock = UdpSocket::bind("127.0.0.1:0").ok()?;
    sock.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    let id = (std::process::id() as u16) ^ 0x5a5a;
    let mut q = Vec::with_capacity(64);
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]); // RD, one question
    for label in name.trim_end_matches('.').split('.') {
        q.push(u8::try_from(label.len()).ok()?);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]); // root, type A, class IN
    sock.send_to(&q, server).ok()?;
    let mut buf = [0u8; 1500];
    let (n, _) = sock.recv_from(&mut buf).ok()?;
    let r = &buf[..n];
    if r.len() < 12 || r[..2] != id.to_be_bytes() {
        return None;
    }
    let answers = u16::from_be_bytes([r[6], r[7]]);
    // Skip the echoed question (same bytes as sent, after the header).
    let mut at = q.len();
    let mut out = Vec::new();
    for _ in 0..answers {
        // Owner name: a compression pointer or labels.
        loop {
            let len = *r.get(at)?;
            if len & 0xc0 == 0xc0 {
                at += 2;
                break;
            }
            at += 1 + usize::from(len);
            if len == 0 {
                break;
            }
        }
        let rtype = u16::from_be_bytes([*r.get(at)?, *r.get(at + 1)?]);
        let rdlen = usize::from(u16::from_be_bytes([*r.get(at + 8)?, *r.get(at + 9)?]));
        let rdata = r.get(at + 10..at + 10 + rdlen)?;
        if rtype == 1 && rdlen == 4 {
            out.push(Ipv4Addr::new(rdata[0], rdata[1], rdata[2], rdata[3]));
        }
        at += 10 + rdlen;
    }
    Some(out)
}
