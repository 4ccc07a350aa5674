//! What the node benches share (sessions, the webapp's web tier): the child
//! processes they start and stop, the control calls, and the embedded Tomcat
//! node's build. Included with `#[path]` by each bench binary; each one uses
//! what it needs of it.

use std::fs::File;
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::java::{JULI_JAR, TRIBES_JAR, jdk_tool};

/// Tomcat's jars from Debian's `libtomcat10-java` that an embedded
/// clustered webapp needs besides Tribes and JULI
/// (reference/tomcat-embedded-notes.md).
pub const TOMCAT_JARS: [&str; 10] = [
    "catalina",
    "catalina-ha",
    "coyote",
    "util",
    "util-scan",
    "api",
    "jni",
    "servlet-api",
    "annotations-api",
    "jaspic-api",
];

/// Every process this run started, for the watchdog and the CPU accounting.
pub static PIDS: Mutex<Vec<u32>> = Mutex::new(Vec::new());

pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Sends `sig` to `pid` (errors ignored: it may be gone).
pub fn signal(pid: u32, sig: nix::sys::signal::Signal) {
    if let Ok(p) = i32::try_from(pid) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), sig);
    }
}

/// How a process is asked to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopBy {
    /// "stop" and the end of its stdin (the JVMs and the floor servers: they
    /// also exit if we die).
    Stdin,
    /// SIGTERM (shoal and webapp: leave the cluster gracefully; Redis: shut
    /// down).
    Sigterm,
}

/// A child process with its output in a log file; SIGKILLed when dropped.
#[derive(Debug)]
pub struct Proc {
    pub name: String,
    pub child: Option<Child>,
    pub stdin: Option<ChildStdin>,
    pub pid: u32,
    pub log: PathBuf,
    pub stop_by: StopBy,
    pub spawned: Instant,
}

impl Proc {
    pub fn spawn(
        mut cmd: Command,
        name: &str,
        logs: &Path,
        stop_by: StopBy,
    ) -> Result<Self, String> {
        let log = logs.join(format!("{name}.log"));
        let out = File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let err = out
            .try_clone()
            .map_err(|e| format!("{}: {e}", log.display()))?;
        cmd.stdout(out).stderr(err).stdin(match stop_by {
            StopBy::Stdin => Stdio::piped(),
            StopBy::Sigterm => Stdio::null(),
        });
        let spawned = Instant::now();
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("spawning {name} ({:?}): {e}", cmd.get_program()))?;
        let pid = child.id();
        lock(&PIDS).push(pid);
        Ok(Self {
            name: name.to_owned(),
            stdin: child.stdin.take(),
            child: Some(child),
            pid,
            log,
            stop_by,
            spawned,
        })
    }

    /// `Some(why)` once the process has exited.
    pub fn exited(&mut self) -> Option<String> {
        let c = self.child.as_mut()?;
        match c.try_wait() {
            Ok(Some(st)) => Some(format!(
                "{} exited ({st}); log {}: {}",
                self.name,
                self.log.display(),
                self.log_tail(3)
            )),
            _ => None,
        }
    }

    /// The last `n` non-empty lines of the log, joined.
    pub fn log_tail(&self, n: usize) -> String {
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        lines[lines.len().saturating_sub(n)..].join(" | ")
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Asks the process to stop (does not wait).
    pub fn ask_stop(&mut self) {
        match self.stop_by {
            StopBy::Stdin => {
                if let Some(mut s) = self.stdin.take() {
                    let _ = writeln!(s, "stop").and_then(|()| s.flush());
                }
            }
            StopBy::Sigterm => {
                if self.child.is_some() {
                    signal(self.pid, nix::sys::signal::Signal::SIGTERM);
                }
            }
        }
    }

    /// True once the process is gone (reaped).
    pub fn reaped(&mut self) -> bool {
        match self.child.as_mut() {
            None => true,
            Some(c) => {
                if matches!(c.try_wait(), Ok(Some(_))) {
                    self.child = None;
                    true
                } else {
                    false
                }
            }
        }
    }

    pub fn kill(&mut self) {
        self.stdin = None;
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Resident memory, KiB.
    pub fn rss_kb(&self) -> u64 {
        rss_kb(self.pid)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Stops every process gracefully, all at once; SIGKILL after 15 s.
pub fn stop_all<'a>(procs: impl IntoIterator<Item = &'a mut Proc>) {
    let mut procs: Vec<&mut Proc> = procs.into_iter().collect();
    for p in procs.iter_mut() {
        p.ask_stop();
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline && !procs.iter_mut().all(|p| p.reaped()) {
        std::thread::sleep(Duration::from_millis(50));
    }
    for p in procs {
        if !p.reaped() {
            eprintln!("   {} did not stop within 15 s: SIGKILL", p.name);
            p.kill();
        }
    }
}

/// Resident memory of a process, KiB.
pub fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// A port for a child's config that cannot bind port 0 and report it.
/// Racy by nature: a start that loses the race fails.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("an ephemeral port")
}

/// Polls `probe` every `every` until it returns `Some`, the process exits,
/// or `timeout` passes.
pub fn wait_for<T>(
    p: &mut Proc,
    what: &str,
    timeout: Duration,
    every: Duration,
    mut probe: impl FnMut(&mut Proc) -> Option<T>,
) -> Result<T, String> {
    let start = Instant::now();
    loop {
        if let Some(v) = probe(p) {
            return Ok(v);
        }
        if let Some(why) = p.exited() {
            return Err(format!("waiting for {what}: {why}"));
        }
        if start.elapsed() > timeout {
            return Err(format!(
                "{}: no {what} after {timeout:?}; log {}: {}",
                p.name,
                p.log.display(),
                p.log_tail(2)
            ));
        }
        std::thread::sleep(every);
    }
}

// ---------------------------------------------------------------------------
// Control calls (ureq)
// ---------------------------------------------------------------------------

pub fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(timeout))
        .build()
        .new_agent()
}

/// `GET url` → (status, body).
pub fn http_get(a: &ureq::Agent, url: &str) -> Result<(u16, String), String> {
    let mut r = a.get(url).call().map_err(|e| format!("GET {url}: {e}"))?;
    let body = r
        .body_mut()
        .read_to_string()
        .map_err(|e| format!("GET {url}: {e}"))?;
    Ok((r.status().as_u16(), body))
}

/// `GET url`, 200 and a JSON body, else `None`.
pub fn get_json(a: &ureq::Agent, url: &str) -> Option<Value> {
    match http_get(a, url) {
        Ok((200, b)) => serde_json::from_str(&b).ok(),
        _ => None,
    }
}

/// The machine's load averages (1, 5, 15 min).
pub fn load_avg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------
// The embedded Tomcat node (tests/interop/TomcatSessions.java)
// ---------------------------------------------------------------------------

/// The Tomcat class path: the compiled node and Debian's jars.
pub fn tomcat_classpath(classes: &Path) -> String {
    let mut cp = vec![
        classes.display().to_string(),
        TRIBES_JAR.to_owned(),
        JULI_JAR.to_owned(),
    ];
    cp.extend(
        TOMCAT_JARS
            .iter()
            .map(|j| format!("/usr/share/java/tomcat10-{j}.jar")),
    );
    cp.join(":")
}

/// Compiles `src` (TomcatSessions.java) into `work/classes`; with `fresh`,
/// what an earlier run left there goes first.
pub fn compile_tomcat_sessions(work: &Path, src: &Path, fresh: bool) -> Result<PathBuf, String> {
    let cp = tomcat_classpath(Path::new("."));
    for jar in cp.split(':').skip(1) {
        if !Path::new(jar).is_file() {
            return Err(format!(
                "{jar} missing: apt-get install libtomcat10-java (scripts/setup.sh)"
            ));
        }
    }
    let classes = work.join("classes");
    if fresh {
        let _ = std::fs::remove_dir_all(&classes);
    }
    std::fs::create_dir_all(&classes).map_err(|e| e.to_string())?;
    let out = Command::new(jdk_tool("javac"))
        .arg("-nowarn")
        .arg("-d")
        .arg(&classes)
        .arg("-cp")
        .arg(&cp)
        .arg(src)
        .output()
        .map_err(|e| format!("running javac: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "javac failed on {}:\n{}",
            src.display(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(classes)
}
