//! Apache httpd (Debian's `apache2`) as the web tier's front end, for tests
//! and benches: `mod_proxy_balancer` with one `route=` per member and
//! `stickysession=JSESSIONID|jsessionid`, the standard front end of a Tomcat
//! cluster (session ids `HEX.ROUTE`; the balancer sends a request to the
//! member whose route follows the first `.` of the id, and to another member
//! when that one is down).
//!
//! [`Httpd::start`] writes a config into a fresh temporary directory (its own
//! ServerRoot, PidFile, ErrorLog, runtime directory and mutex files, so it
//! needs no Debian service and no root), runs `apache2 -DFOREGROUND -f CONF`
//! listening on 127.0.0.1 only, and returns once httpd answers. Dropping the
//! [`Httpd`] stops it (SIGTERM, then SIGKILL after [`STOP_GRACE`]) and removes
//! the directory. [`config`] is the same config as text;
//! `examples/webapp/httpd.conf` is its commented version for
//! `/etc/apache2`.
//!
//! Only std: include it with `#[path = "common/httpd.rs"] mod httpd;` (a
//! test) or `#[path = "../tests/common/httpd.rs"] mod httpd;` (a bench).
//!
//! Environment: `SHOAL_APACHE2` overrides the binary (default
//! [`APACHE2`]); `SHOAL_HTTPD_LOGLEVEL` overrides `LogLevel` (e.g.
//! `proxy:debug proxy_balancer:debug` shows every routing decision in
//! [`Httpd::error_log`]).
#![allow(dead_code)] // each test or bench uses a part

use std::fmt::Write as _;
use std::fs;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime};

/// Debian's httpd binary (package `apache2`, installed by scripts/setup.sh).
pub const APACHE2: &str = "/usr/sbin/apache2";
/// Where Debian's `apache2-bin` keeps the loadable modules.
pub const MODULES: &str = "/usr/lib/apache2/modules";
/// The modules the config loads: the event MPM, access control
/// (`Require`), the proxy, its HTTP scheme, the balancer with its
/// request-counting method and the shared memory the balancer keeps worker
/// state in.
pub const MODULE_LIST: [(&str, &str); 7] = [
    ("mpm_event_module", "mod_mpm_event.so"),
    ("authz_core_module", "mod_authz_core.so"),
    ("proxy_module", "mod_proxy.so"),
    ("proxy_http_module", "mod_proxy_http.so"),
    ("slotmem_shm_module", "mod_slotmem_shm.so"),
    ("proxy_balancer_module", "mod_proxy_balancer.so"),
    ("lbmethod_byrequests_module", "mod_lbmethod_byrequests.so"),
];
/// The balancer's name (`balancer://shoal`).
pub const BALANCER: &str = "shoal";
/// A path httpd serves itself (the balancer-manager page: worker states,
/// routes, request counts), not passed to the members; [`Httpd::start`]
/// waits until it answers.
pub const MANAGER_PATH: &str = "/balancer-manager";
/// How long [`Httpd::start`] waits for httpd to answer.
pub const START_TIMEOUT: Duration = Duration::from_secs(15);
/// How long Drop waits after SIGTERM before SIGKILL (httpd's graceless stop
/// gives its children 3 s and then kills them itself).
pub const STOP_GRACE: Duration = Duration::from_secs(5);
/// How many ports [`Httpd::start`] tries when asked for port 0 and the one
/// it picked was taken before httpd bound it.
const PORT_TRIES: usize = 5;

/// A running httpd; Drop stops it and removes its directory.
#[derive(Debug)]
pub struct Httpd {
    child: Option<Child>,
    dir: PathBuf,
    port: u16,
}

impl Httpd {
    /// Starts httpd on `127.0.0.1:listen_port` (0: a free port, found by
    /// binding port 0, releasing it and retrying with another if httpd
    /// loses the race for it) in front of `members`, each `(route,
    /// address)`; the route must be the suffix after `.` in the member's
    /// session ids (Tomcat's jvmRoute, shoal's `node.jvm_route`: 1 to 64 of
    /// A-Z a-z 0-9 - _, else `InvalidInput`). Returns once httpd
    /// answers [`MANAGER_PATH`]. Blocks for up to [`START_TIMEOUT`].
    pub fn start(listen_port: u16, members: &[(&str, SocketAddr)]) -> io::Result<Httpd> {
        for (route, _) in members {
            // The rule of shoal's `node.jvm_route` (a `.` would end the id).
            if route.is_empty()
                || route.len() > 64
                || !route
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("route {route:?}: use 1 to 64 of A-Z a-z 0-9 - _"),
                ));
            }
        }
        let tries = if listen_port == 0 { PORT_TRIES } else { 1 };
        let mut last = None;
        for _ in 0..tries {
            let port = if listen_port == 0 {
                TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
                    .local_addr()?
                    .port()
            } else {
                listen_port
            };
            match Self::start_on(port, members) {
                Ok(h) => return Ok(h),
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("no port tried")))
    }

    fn start_on(port: u16, members: &[(&str, SocketAddr)]) -> io::Result<Httpd> {
        let dir = temp_dir()?;
        let conf = dir.join("httpd.conf");
        let text = config(&dir, port, members, running_as_root());
        fs::write(&conf, text)?;
        let stderr = fs::File::create(dir.join("stderr.log"))?;
        let bin = std::env::var_os("SHOAL_APACHE2").unwrap_or_else(|| APACHE2.into());
        let spawned = Command::new(&bin)
            .arg("-DFOREGROUND")
            .arg("-f")
            .arg(&conf)
            .env_remove("APACHE_CONFDIR")
            .stdin(Stdio::null())
            .stdout(stderr.try_clone()?)
            .stderr(stderr)
            .spawn();
        let child = match spawned {
            Ok(c) => c,
            Err(e) => {
                let _ = fs::remove_dir_all(&dir);
                return Err(io::Error::new(
                    e.kind(),
                    format!(
                        "running {}: {e} (apt-get install apache2; scripts/setup.sh)",
                        Path::new(&bin).display()
                    ),
                ));
            }
        };
        let mut h = Httpd {
            child: Some(child),
            dir,
            port,
        };
        h.wait_ready()?;
        Ok(h)
    }

    /// Polls [`MANAGER_PATH`] until it answers 200; fails early (with the
    /// error log) if httpd exits.
    fn wait_ready(&mut self) -> io::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                self.child = None;
                let log = format!("{}{}", self.stderr(), self.error_log());
                let kind = if log.contains("Address already in use") {
                    io::ErrorKind::AddrInUse
                } else {
                    io::ErrorKind::Other
                };
                return Err(io::Error::new(
                    kind,
                    format!("httpd exited ({status}) on start:\n{log}"),
                ));
            }
            if let Ok((200, _)) = self.get(MANAGER_PATH) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "httpd did not answer {MANAGER_PATH} within {START_TIMEOUT:?}:\n{}{}",
                        self.stderr(),
                        self.error_log()
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The port httpd listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// `http://127.0.0.1:PORT` + `path` (which starts with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// httpd's process id (the parent; its children serve).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The temporary directory (config, logs, pid file).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The config httpd runs with.
    pub fn config_text(&self) -> String {
        fs::read_to_string(self.dir.join("httpd.conf")).unwrap_or_default()
    }

    /// httpd's error log so far (start-up notices, workers put into error
    /// state, failed connects: `AH00957`, `AH01114`...).
    pub fn error_log(&self) -> String {
        fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }

    /// What httpd wrote to stdout and stderr (errors before the error log
    /// was opened: config syntax, modules).
    pub fn stderr(&self) -> String {
        fs::read_to_string(self.dir.join("stderr.log")).unwrap_or_default()
    }

    /// The balancer-manager page as text (an HTML table per balancer: each
    /// member's route, status `Init Ok` / `Init Err`, elected count),
    /// for diagnostics.
    pub fn balancer_status(&self) -> io::Result<String> {
        self.get(MANAGER_PATH).map(|(_, body)| body)
    }

    /// A one-shot `GET path` over a fresh connection (HTTP/1.0, 2 s
    /// timeouts): (status, body). For readiness and diagnostics, not load.
    pub fn get(&self, path: &str) -> io::Result<(u16, String)> {
        let t = Duration::from_secs(2);
        let mut s = TcpStream::connect_timeout(&self.addr(), t)?;
        s.set_read_timeout(Some(t))?;
        s.set_write_timeout(Some(t))?;
        // The manager page as its own referer: httpd logs AH10187
        // ("cross-site access") for a request to it without one.
        write!(
            s,
            "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nReferer: {}\r\n\r\n",
            self.url(MANAGER_PATH)
        )?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw)?;
        let text = String::from_utf8_lossy(&raw);
        let status = text
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no HTTP status line"))?;
        let body = text
            .split_once("\r\n\r\n")
            .map_or("", |(_, b)| b)
            .to_owned();
        Ok((status, body))
    }

    /// Stops httpd now (as Drop does) and returns its error log.
    pub fn stop(mut self) -> String {
        self.stop_child();
        self.error_log()
    }

    /// SIGTERM (httpd stops its children and exits), SIGKILL to the parent
    /// and any child left after [`STOP_GRACE`].
    fn stop_child(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        let pid = child.id();
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Children first (they would outlive a killed parent), then it.
        for c in children_of(pid) {
            let _ = Command::new("kill")
                .arg("-KILL")
                .arg(c.to_string())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Httpd {
    fn drop(&mut self) {
        self.stop_child();
        if std::env::var_os("SHOAL_HTTPD_KEEP").is_none() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// The httpd config: everything in `dir`, listening on `127.0.0.1:port`,
/// one balancer `balancer://shoal` of `members` (route, address) behind
/// `/`. `as_root` adds `User nobody`/`Group nogroup` (httpd's children
/// never run as root; the directory must then be readable by them).
pub fn config(dir: &Path, port: u16, members: &[(&str, SocketAddr)], as_root: bool) -> String {
    let d = dir.display();
    let level = std::env::var("SHOAL_HTTPD_LOGLEVEL").unwrap_or_else(|_| "warn".into());
    let mut c = String::new();
    // `let _ =`: writing to a String cannot fail.
    let _ = writeln!(
        c,
        "# Written by examples/webapp/tests/common/httpd.rs; the commented\n\
         # version of the proxy part is examples/webapp/httpd.conf.\n\
         ServerRoot \"{d}\"\n\
         DefaultRuntimeDir \"{d}\"\n\
         PidFile \"{d}/httpd.pid\"\n\
         ErrorLog \"{d}/error.log\"\n\
         LogLevel {level}\n\
         Mutex file:{d} default\n\
         ServerName 127.0.0.1\n\
         Listen 127.0.0.1:{port}"
    );
    for (name, file) in MODULE_LIST {
        let _ = writeln!(c, "LoadModule {name} {MODULES}/{file}");
    }
    if as_root {
        let _ = writeln!(c, "User nobody\nGroup nogroup");
    }
    let _ = writeln!(
        c,
        "\n\
         # Two processes of 64 threads: enough for a 2-core bench without\n\
         # process churn (each process keeps its own pool of connections to\n\
         # every member).\n\
         StartServers 2\n\
         ServerLimit 2\n\
         ThreadLimit 64\n\
         ThreadsPerChild 64\n\
         MaxRequestWorkers 128\n\
         MinSpareThreads 64\n\
         MaxSpareThreads 128\n\
         MaxConnectionsPerChild 0\n\
         # Clients keep their connection (no request limit, like Tomcat's\n\
         # maxKeepAliveRequests -1 in the bench).\n\
         KeepAlive On\n\
         MaxKeepAliveRequests 0\n\
         KeepAliveTimeout 30\n\
         Timeout 30\n\
         \n\
         <Proxy \"balancer://{BALANCER}\">"
    );
    for (route, addr) in members {
        let _ = writeln!(
            c,
            "    BalancerMember \"http://{addr}\" route={route} {MEMBER_PARAMS}"
        );
    }
    let _ = writeln!(
        c,
        "    ProxySet {BALANCER_PARAMS}\n\
         </Proxy>\n\
         <Location \"{MANAGER_PATH}\">\n\
         \x20   SetHandler balancer-manager\n\
         </Location>\n\
         ProxyPass \"{MANAGER_PATH}\" \"!\"\n\
         ProxyPass \"/\" \"balancer://{BALANCER}/\" {STICKY_PARAMS}"
    );
    c
}

/// Per member (see examples/webapp/httpd.conf for the reasons):
/// connect within 1 s; a member that failed is skipped for 5 s (httpd's
/// default is 60) and then tried again by the next request routed to it;
/// 10 s for an answer; pooled connections idle for 15 s are closed
/// (before the member's keep-alive timeout: Tomcat's server.xml 20 s).
pub const MEMBER_PARAMS: &str = "connectiontimeout=1 retry=5 timeout=10 ttl=15";
/// The balancer's own: new sessions to the member with the fewest requests
/// so far; a member that let a request time out (`timeout`, a paused or
/// stuck process: its connect still succeeds) is put in error state like a
/// refused one, so its other users fail over instead of each waiting the
/// full timeout (the timed-out request itself gets a 502).
pub const BALANCER_PARAMS: &str = "lbmethod=byrequests failontimeout=On";
/// On `ProxyPass`: the route from the `JSESSIONID` cookie, else from a
/// `;jsessionid=` path parameter ended by `;` too (mod_jk's behaviour, as in
/// httpd's documented Tomcat example); failover on (the sessions are
/// replicated, so a dead member's users may go to any other).
pub const STICKY_PARAMS: &str =
    "stickysession=JSESSIONID|jsessionid scolonpathdelim=On nofailover=Off";

/// A fresh directory under the system temp dir, world-readable (httpd's
/// children run as `nobody` when started by root).
fn temp_dir() -> io::Result<PathBuf> {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    for _ in 0..100 {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("shoal-httpd-{}-{n}-{nanos:x}", std::process::id()));
        match fs::create_dir(&dir) {
            Ok(()) => {
                use std::os::unix::fs::PermissionsExt;
                fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))?;
                return Ok(dir);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other("no fresh temporary directory"))
}

/// Whether this process runs as root (httpd then needs `User`/`Group`).
fn running_as_root() -> bool {
    fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// The processes whose parent is `pid` (from /proc).
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            fs::read_to_string(format!("/proc/{p}/stat")).is_ok_and(|s| {
                // "pid (comm) state ppid ...": comm may hold spaces.
                s.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok())
                    == Some(pid)
            })
        })
        .collect()
}
