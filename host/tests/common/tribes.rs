//! A real Apache Tomcat Tribes peer for interop tests: `tests/interop/TribesPeer.java`,
//! compiled once against Debian's `libtomcat10-java` jars and run as a child
//! process that speaks JSON lines on stdout and takes commands on stdin.
//!
//! When Java or the jars are missing the helpers panic with what to install:
//! interop tests fail loudly, they never pass by skipping.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{DEADLINE, wait_for};

pub use super::java::{JULI_JAR, TRIBES_JAR};
use super::java::{javac, jdk_tool};

/// The Java source of the peer, in the repository.
fn peer_source() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/interop/TribesPeer.java")
}

fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Compiles the peer once per source version into the cargo target dir and
/// returns the class directory. Safe against parallel tests (a `OnceLock`) and
/// parallel test processes (each compiles into its own temporary directory
/// and renames it into place; the first rename wins).
pub fn peer_classes() -> &'static Path {
    static CLASSES: OnceLock<PathBuf> = OnceLock::new();
    CLASSES.get_or_init(|| {
        for jar in [TRIBES_JAR, JULI_JAR] {
            assert!(
                Path::new(jar).is_file(),
                "{jar} is missing: the Tomcat interop tests need Debian's libtomcat10-java \
                 (run scripts/setup.sh as root, or `apt-get install libtomcat10-java`)"
            );
        }
        let src = peer_source();
        let text = std::fs::read(&src)
            .unwrap_or_else(|e| panic!("reading the Java peer {}: {e}", src.display()));
        let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("interop-classes");
        let dir = root.join(format!("{:016x}", fnv1a(&text)));
        if dir.join("TribesPeer.class").is_file() {
            return dir;
        }
        std::fs::create_dir_all(&root).expect("creating the class directory");
        let tmp = root.join(format!("tmp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).expect("creating a temporary class directory");
        javac(&src, &tmp);
        if std::fs::rename(&tmp, &dir).is_err() {
            // Another test process got there first; its classes are the same.
            let _ = std::fs::remove_dir_all(&tmp);
            assert!(
                dir.join("TribesPeer.class").is_file(),
                "compiled classes missing in {}",
                dir.display()
            );
        }
        dir
    })
}

/// How to start one Tomcat peer.
#[derive(Debug, Clone)]
pub struct PeerArgs {
    /// Channel name (also names the log file).
    pub name: String,
    /// First receiver port tried (autoBind 20).
    pub port: u16,
    /// Multicast port of the group (address 228.0.0.4, bind 127.0.0.1).
    pub group_port: u16,
    /// Cluster domain; `None` leaves Tomcat's default (none).
    pub domain: Option<String>,
    /// McastService frequency.
    pub frequency_ms: u64,
    /// McastService dropTime.
    pub drop_time_ms: u64,
    /// Tomcat's EncryptInterceptor: `(encryptionKey in hex, encryptionAlgorithm
    /// or None for Tomcat's default)`; `None`: no encryption.
    pub encrypt: Option<(String, Option<String>)>,
}

/// The peer's identity, from its `started` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    /// Unique id, 32 hex digits.
    pub id: String,
    /// Receiver host.
    pub host: String,
    /// Receiver port.
    pub port: u16,
}

/// A running Tomcat Tribes peer; killed (SIGKILL) when dropped.
pub struct TribesPeer {
    name: String,
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    events: Arc<Mutex<Vec<Value>>>,
    log: PathBuf,
    info: Option<PeerInfo>,
    tags: AtomicU64,
}

impl TribesPeer {
    /// Starts the JVM; does not wait for the channel (see [`TribesPeer::started`]).
    pub fn spawn(args: &PeerArgs) -> Self {
        let classes = peer_classes();
        let logs = Path::new(env!("CARGO_TARGET_TMPDIR")).join("interop-logs");
        std::fs::create_dir_all(&logs).expect("log directory");
        let log = logs.join(format!("{}-{}.log", args.name, args.port));
        let stderr = std::fs::File::create(&log).expect("peer log file");
        let mut cmd = Command::new(jdk_tool("java"));
        cmd.args([
            "-Djava.net.preferIPv4Stack=true",
            "-XX:+UseSerialGC",
            "-XX:TieredStopAtLevel=1",
            "-Xss512k",
        ])
        .arg("-cp")
        .arg(format!("{}:{TRIBES_JAR}:{JULI_JAR}", classes.display()))
        .arg("TribesPeer")
        .arg(format!("name={}", args.name))
        .arg("address=127.0.0.1")
        .arg(format!("port={}", args.port))
        .arg("mcastAddress=228.0.0.4")
        .arg(format!("mcastPort={}", args.group_port))
        .arg("bind=127.0.0.1")
        .arg(format!("frequency={}", args.frequency_ms))
        .arg(format!("dropTime={}", args.drop_time_ms));
        if let Some(d) = &args.domain {
            cmd.arg(format!("domain={d}"));
        }
        if let Some((key, algorithm)) = &args.encrypt {
            cmd.arg(format!("encryptionKey={key}"));
            if let Some(a) = algorithm {
                cmd.arg(format!("encryptionAlgorithm={a}"));
            }
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("starting java");
        let stdout = child.stdout.take().expect("piped stdout");
        let events = Arc::new(Mutex::new(Vec::new()));
        let ev = events.clone();
        let name = args.name.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                match serde_json::from_str::<Value>(&line) {
                    Ok(v) => ev.lock().expect("events").push(v),
                    Err(_) => eprintln!("[{name}] unparsed output: {line}"),
                }
            }
        });
        Self {
            name: args.name.clone(),
            stdin: child.stdin.take(),
            child: Some(child),
            events,
            log,
            info: None,
            tags: AtomicU64::new(0),
        }
    }

    /// Waits until the channel has started (Tribes sleeps 2 × frequency per
    /// membership start level) and returns the peer's identity.
    pub async fn started(&mut self) -> PeerInfo {
        if let Some(i) = &self.info {
            return i.clone();
        }
        let ev = self
            .wait_event(&format!("{} to start", self.name), |e| {
                e["event"] == "started"
            })
            .await;
        let info = PeerInfo {
            id: ev["id"].as_str().expect("id").to_owned(),
            host: ev["host"].as_str().expect("host").to_owned(),
            port: u16::try_from(ev["port"].as_u64().expect("port")).expect("port"),
        };
        self.info = Some(info.clone());
        info
    }

    /// The peer's identity (after [`TribesPeer::started`]).
    pub fn info(&self) -> &PeerInfo {
        self.info.as_ref().expect("peer started")
    }

    /// The peer's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Every event printed so far.
    pub fn events(&self) -> Vec<Value> {
        self.events.lock().expect("events").clone()
    }

    /// The first event so far that matches.
    pub fn find(&self, pred: impl Fn(&Value) -> bool) -> Option<Value> {
        self.events
            .lock()
            .expect("events")
            .iter()
            .find(|e| pred(e))
            .cloned()
    }

    /// Waits (bounded) for an event that matches; panics if the peer exits first.
    pub async fn wait_event(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let what = format!("[{}] {what}", self.name);
        let start = Instant::now();
        loop {
            if let Some(v) = self.find(&pred) {
                return v;
            }
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                // Let the reader thread take the last lines before giving up.
                if let Some(v) = self.find(&pred) {
                    return v;
                }
                panic!(
                    "{what}: the Java peer exited ({status}); log: {}",
                    self.log.display()
                );
            }
            assert!(
                start.elapsed() < DEADLINE,
                "timed out after {DEADLINE:?} waiting for {what}; log: {}",
                self.log.display()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Writes one command line to the peer.
    pub fn command(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("peer stdin open");
        writeln!(stdin, "{line}")
            .and_then(|()| stdin.flush())
            .expect("writing a command to the Java peer");
    }

    /// Asks the peer to send a ByteMessage and returns the command's tag at
    /// once; [`TribesPeer::send_result`] waits for the outcome.
    pub fn start_send(&mut self, to: &str, options: i32, body: &[u8]) -> String {
        let tag = format!("t{}", self.tags.fetch_add(1, Ordering::Relaxed));
        let hex = if body.is_empty() {
            "-".to_owned()
        } else {
            hex::encode(body)
        };
        self.command(&format!("send {tag} {to} {options} {hex}"));
        tag
    }

    /// The `send_result` event of a send started with [`TribesPeer::start_send`].
    pub async fn send_result(&mut self, tag: &str) -> Value {
        self.wait_event(&format!("the result of send {tag}"), |e| {
            e["event"] == "send_result" && e["tag"] == tag
        })
        .await
    }

    /// Sends a ByteMessage; returns the `send_result` event (and, for an
    /// asynchronous send, the tag to wait for `send_complete` with).
    pub async fn send(&mut self, to: &str, options: i32, body: &[u8]) -> (String, Value) {
        let tag = self.start_send(to, options, body);
        let v = self.send_result(&tag).await;
        (tag, v)
    }

    /// Waits for the completion report of an asynchronous send.
    pub async fn send_complete(&mut self, tag: &str) -> Value {
        self.wait_event(&format!("completion of send {tag}"), |e| {
            e["event"] == "send_complete" && e["tag"] == tag
        })
        .await
    }

    /// The channel's member list, in Tribes' order.
    pub async fn members(&mut self) -> Vec<Value> {
        let tag = format!("m{}", self.tags.fetch_add(1, Ordering::Relaxed));
        self.command(&format!("members {tag}"));
        let v = self
            .wait_event("a member list", |e| {
                e["event"] == "members" && e["tag"] == tag.as_str()
            })
            .await;
        v["members"].as_array().expect("members array").clone()
    }

    /// Waits until the member list has exactly the unique ids in `ids` (any order).
    pub async fn wait_members(&mut self, ids: &[String]) -> Vec<Value> {
        let mut want: Vec<&str> = ids.iter().map(String::as_str).collect();
        want.sort_unstable();
        let start = Instant::now();
        loop {
            let ms = self.members().await;
            let mut got: Vec<&str> = ms.iter().filter_map(|m| m["id"].as_str()).collect();
            got.sort_unstable();
            if got == want {
                return ms;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "[{}] timed out after {DEADLINE:?} waiting for members {want:?}, have {got:?}; log: {}",
                self.name,
                self.log.display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Makes the peer's ChannelListener throw (→ FAIL-ACK for sync-ACK senders), or not.
    pub async fn set_listener_throws(&mut self, on: bool) {
        let line = format!("throw {}", if on { "on" } else { "off" });
        self.command(&line);
        self.wait_event(&format!("`{line}` to be taken"), |e| {
            e["event"] == "ok" && e["command"] == line.as_str()
        })
        .await;
    }

    /// Graceful `channel.stop()`; waits (bounded) for the process to exit 0.
    pub async fn stop(&mut self) {
        self.command("stop");
        let status = wait_for(&format!("[{}] to stop", self.name), || {
            let s = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            async move { s }
        })
        .await;
        assert!(status.success(), "[{}] exited with {status}", self.name);
        self.child = None;
    }

    /// Panics if Tribes logged anything at SEVERE level (JULI's console
    /// format: a `SEVERE:` line): a frame or packet it could not handle shows
    /// up there even when the test's own checks pass.
    pub fn assert_no_severe_log(&self) {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let severe: Vec<&str> = text.lines().filter(|l| l.starts_with("SEVERE")).collect();
        assert!(
            severe.is_empty(),
            "[{}] Tribes logged errors ({}): {severe:#?}",
            self.name,
            self.log.display()
        );
    }

    /// The peer's log (Tribes' JULI output) so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL: no shutdown announcement.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().expect("SIGKILL the Java peer");
            let _ = c.wait();
        }
    }
}

impl Drop for TribesPeer {
    fn drop(&mut self) {
        self.stdin = None;
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!("[{}] Tomcat peer log: {}", self.name, self.log.display());
        }
    }
}
