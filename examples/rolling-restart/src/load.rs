//! The bounded load generator: `users` users, each with its own
//! `JSESSIONID` and the cart it expects, served by `workers` threads
//! through the front end. A user's requests are sequential (one worker owns
//! it), so what its cart must hold is always known.
//!
//! A step is `POST /cart/set?item=iK&qty=V` (idempotent, so a retry is
//! safe; `V` = 0 removes the line) whose answer — the cart after the change
//! — is compared with what the user expects; every
//! [`LoadSpec::check_every`]th step is a `GET /cart`, compared too. A
//! request that fails (transport error, timeout or 5xx) is retried once at
//! once (httpd fails it over to another node when its node is gone); if the
//! retry fails too the request counts as *failed*, and the line it tried to
//! set may hold either value from then on. At the end every user reads its
//! cart once more: a user whose cart is not exactly what it put in, or
//! whose session was replaced by a new one, is a *lost session*.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::bail;
use serde_json::Value;

/// How much load.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    /// Users (sessions).
    pub users: usize,
    /// Threads, each serving `users / workers` users in turn: the number of
    /// requests in flight.
    pub workers: usize,
    /// Cart lines a user cycles over.
    pub items: u64,
    /// Every this many steps a user reads its cart (`GET /cart`).
    pub check_every: u64,
    /// Per request (connect, send, answer).
    pub timeout: Duration,
}

/// One logical request (a retry included): when it started (since the
/// load's start), how long it took, whether it failed after its retry.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// Start, µs since [`Load::t0`].
    pub at_us: u64,
    /// Duration, µs.
    pub lat_us: u32,
    /// Failed after its retry.
    pub failed: bool,
}

/// What one user saw.
#[derive(Debug, Clone, Default)]
pub struct UserResult {
    /// Its final cart was what it put in and it kept its session.
    pub intact: bool,
    /// Answers (during the run) whose cart differed from what it had put in.
    pub stale: u64,
    /// Times the server gave it a new session (a different id).
    pub new_sessions: u64,
    /// Times its id was rebound to another node (failover).
    pub rebinds: u64,
    /// Why it is not intact, for the report.
    pub why: Option<String>,
}

/// Counters shared by the workers.
#[derive(Debug, Default)]
struct Counters {
    sent: AtomicU64,
    retried: AtomicU64,
    failed: AtomicU64,
    ready_workers: AtomicUsize,
}

/// Running load; [`Load::finish`] stops it and checks every cart.
#[derive(Debug)]
pub struct Load {
    /// Time zero of [`Sample::at_us`]: when every user had its session.
    pub t0: Instant,
    stop: Arc<AtomicBool>,
    skip_final: Arc<AtomicBool>,
    counters: Arc<Counters>,
    workers: Vec<JoinHandle<WorkerResult>>,
}

/// The outcome of a run of load.
#[derive(Debug, Default)]
pub struct LoadResult {
    /// Logical requests sent after set-up (a retry is not counted again).
    pub sent: u64,
    /// Requests retried once.
    pub retried: u64,
    /// Requests that failed after their retry.
    pub failed: u64,
    /// Every request, in no particular order.
    pub samples: Vec<Sample>,
    /// Every user.
    pub users: Vec<UserResult>,
    /// Some answers that failed (status or error), for the report.
    pub failures: Vec<String>,
    /// Why some requests needed their retry (the first attempt's error).
    pub retry_reasons: Vec<String>,
}

#[derive(Debug, Default)]
struct WorkerResult {
    samples: Vec<Sample>,
    users: Vec<UserResult>,
    failures: Vec<String>,
    retry_reasons: Vec<String>,
}

/// How long [`Load::start`] waits for every user's first request.
const SETUP_TIMEOUT: Duration = Duration::from_secs(60);
/// Failure descriptions kept per worker.
const MAX_FAILURES_KEPT: usize = 20;

impl Load {
    /// Starts the workers against `base` (`http://host:port`); returns once
    /// every user has made its first request (so has a session).
    pub fn start(base: &str, spec: &LoadSpec) -> anyhow::Result<Load> {
        if spec.users == 0 || spec.workers == 0 || spec.items == 0 || spec.check_every == 0 {
            bail!("users, workers, items and check_every must be at least 1");
        }
        let stop = Arc::new(AtomicBool::new(false));
        let skip_final = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(Counters::default());
        let go = Arc::new(AtomicU64::new(0));
        let workers = spec.workers.min(spec.users);
        let mut handles = Vec::new();
        for w in 0..workers {
            let users: Vec<User> = (w..spec.users).step_by(workers).map(User::new).collect();
            let worker = Worker {
                agent: ureq::Agent::config_builder()
                    .timeout_global(Some(spec.timeout))
                    .http_status_as_error(false)
                    .build()
                    .into(),
                base: base.to_owned(),
                spec: spec.clone(),
                users,
                counters: counters.clone(),
                result: WorkerResult::default(),
            };
            let (stop, skip, go) = (stop.clone(), skip_final.clone(), go.clone());
            handles.push(
                std::thread::Builder::new()
                    .name(format!("load-{w}"))
                    .spawn(move || worker.run(&stop, &go, &skip))?,
            );
        }
        let deadline = Instant::now() + SETUP_TIMEOUT;
        while counters.ready_workers.load(Ordering::Acquire) < workers {
            if Instant::now() > deadline {
                skip_final.store(true, Ordering::Release);
                stop.store(true, Ordering::Release);
                go.store(1, Ordering::Release);
                bail!("the users' first requests took longer than {SETUP_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let t0 = Instant::now();
        go.store(1, Ordering::Release);
        Ok(Load {
            t0,
            stop,
            skip_final,
            counters,
            workers: handles,
        })
    }

    /// Requests sent so far (after set-up).
    pub fn sent(&self) -> u64 {
        self.counters.sent.load(Ordering::Relaxed)
    }

    /// Stops the workers without the final reads (the run failed).
    pub fn abandon(self) {
        self.skip_final.store(true, Ordering::Release);
        self.stop.store(true, Ordering::Release);
        for h in self.workers {
            let _ = h.join();
        }
    }

    /// Stops the workers, has every user read its cart once more, and
    /// answers what happened.
    pub fn finish(self) -> LoadResult {
        self.stop.store(true, Ordering::Release);
        let mut out = LoadResult::default();
        for h in self.workers {
            match h.join() {
                Ok(r) => {
                    out.samples.extend(r.samples);
                    out.users.extend(r.users);
                    out.failures.extend(r.failures);
                    out.retry_reasons.extend(r.retry_reasons);
                }
                Err(_) => out.failures.push("a load worker panicked".into()),
            }
        }
        out.sent = self.counters.sent.load(Ordering::Relaxed);
        out.retried = self.counters.retried.load(Ordering::Relaxed);
        out.failed = self.counters.failed.load(Ordering::Relaxed);
        out
    }
}

/// One user: its cookie and the cart it expects.
#[derive(Debug)]
struct User {
    n: usize,
    /// `JSESSIONID` value (`RANDOM.ROUTE`).
    cookie: Option<String>,
    /// The `RANDOM` part of its first id: a different one means a new
    /// session.
    first: Option<String>,
    /// Line → quantity it set last (absent = no line).
    expected: BTreeMap<String, u32>,
    /// Lines whose last set failed after its retry: either value is right.
    unsure: BTreeMap<String, [u32; 2]>,
    step: u64,
    result: UserResult,
}

impl User {
    fn new(n: usize) -> Self {
        Self {
            n,
            cookie: None,
            first: None,
            expected: BTreeMap::new(),
            unsure: BTreeMap::new(),
            step: 0,
            result: UserResult::default(),
        }
    }

    /// Whether a cart answer (`{"items":{ITEM:{"qty":N,..}},..}`) is what
    /// this user put in; if not, why.
    fn differs(&self, answer: &Value) -> Option<String> {
        let Some(items) = answer["items"].as_object() else {
            return Some(format!("not a cart: {answer}"));
        };
        let qty = |k: &str| {
            items
                .get(k)
                .and_then(|l| l["qty"].as_u64())
                .map_or(0, |q| q as u32)
        };
        let mut keys: Vec<&str> = items.keys().map(String::as_str).collect();
        keys.extend(self.expected.keys().map(String::as_str));
        keys.extend(self.unsure.keys().map(String::as_str));
        for k in keys {
            let got = qty(k);
            let ok = match self.unsure.get(k) {
                Some(either) => either.contains(&got),
                None => self.expected.get(k).copied().unwrap_or(0) == got,
            };
            if !ok {
                return Some(format!(
                    "line {k}: {got}, expected {} (from node {})",
                    self.expected.get(k).copied().unwrap_or(0),
                    answer["node"].as_str().unwrap_or("?")
                ));
            }
        }
        None
    }

    /// Takes a `Set-Cookie` value.
    fn set_cookie(&mut self, id: &str) {
        if id.is_empty() {
            self.cookie = None;
            return;
        }
        let (random, _route) = id.split_once('.').unwrap_or((id, ""));
        match &self.first {
            None => self.first = Some(random.to_owned()),
            Some(f) if f != random => self.result.new_sessions += 1,
            Some(_) => {
                if self.cookie.as_deref() != Some(id) {
                    self.result.rebinds += 1;
                }
            }
        }
        self.cookie = Some(id.to_owned());
    }
}

/// An answer: status and parsed body.
struct Answer {
    status: u16,
    body: Value,
}

struct Worker {
    agent: ureq::Agent,
    base: String,
    spec: LoadSpec,
    users: Vec<User>,
    counters: Arc<Counters>,
    result: WorkerResult,
}

impl Worker {
    fn run(mut self, stop: &AtomicBool, go: &AtomicU64, skip_final: &AtomicBool) -> WorkerResult {
        // Set-up: every user's first request creates its session.
        let t = Instant::now();
        for u in 0..self.users.len() {
            if stop.load(Ordering::Acquire) {
                break;
            }
            self.step(u, t, false);
        }
        self.counters.ready_workers.fetch_add(1, Ordering::AcqRel);
        while go.load(Ordering::Acquire) == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        let t0 = Instant::now();
        'run: loop {
            for u in 0..self.users.len() {
                if stop.load(Ordering::Acquire) {
                    break 'run;
                }
                self.step(u, t0, true);
            }
        }
        // The final read of every cart.
        for u in 0..self.users.len() {
            if skip_final.load(Ordering::Acquire) {
                break;
            }
            let (answer, _) = self.call(u, "GET", "/cart");
            let user = &self.users[u];
            let mut r = user.result.clone();
            let why = match &answer {
                Err(e) => Some(format!("final read failed: {e}")),
                Ok(a) => user.differs(&a.body),
            }
            .or_else(|| {
                (r.new_sessions > 0).then(|| format!("got {} new session(s)", r.new_sessions))
            });
            r.intact = why.is_none();
            r.why = why.map(|w| format!("user {}: {w}", user.n));
            self.result.users.push(r);
        }
        self.result
    }

    /// One step of user `u`; records a sample if `record`.
    fn step(&mut self, u: usize, t0: Instant, record: bool) {
        let user = &mut self.users[u];
        user.step += 1;
        let step = user.step;
        let read = record && step.is_multiple_of(self.spec.check_every);
        let (item, qty) = (
            format!("i{}", step % self.spec.items),
            // Changing values, 0 (remove) now and then.
            ((step * 7 + user.n as u64) % 10) as u32,
        );
        let path = if read {
            "/cart".to_owned()
        } else {
            format!("/cart/set?item={item}&qty={qty}")
        };
        let started = Instant::now();
        let (answer, retried) = self.call(u, if read { "GET" } else { "POST" }, &path);
        let lat = started.elapsed();
        let user = &mut self.users[u];
        let failed = answer.is_err();
        match answer {
            Ok(a) => {
                if !read {
                    user.unsure.remove(&item);
                    if qty == 0 {
                        user.expected.remove(&item);
                    } else {
                        user.expected.insert(item, qty);
                    }
                }
                if user.differs(&a.body).is_some() {
                    user.result.stale += 1;
                    if self.result.failures.len() < MAX_FAILURES_KEPT {
                        self.result.failures.push(format!(
                            "user {}: stale answer to {path}: {}",
                            user.n,
                            user.differs(&a.body).unwrap_or_default()
                        ));
                    }
                }
            }
            Err(e) => {
                if !read {
                    let old = user.expected.get(&item).copied().unwrap_or(0);
                    user.unsure.insert(item, [old, qty]);
                }
                if self.result.failures.len() < MAX_FAILURES_KEPT {
                    self.result
                        .failures
                        .push(format!("user {}: {path} failed after a retry: {e}", user.n));
                }
            }
        }
        if record {
            self.counters.sent.fetch_add(1, Ordering::Relaxed);
            if retried {
                self.counters.retried.fetch_add(1, Ordering::Relaxed);
            }
            if failed {
                self.counters.failed.fetch_add(1, Ordering::Relaxed);
            }
            self.result.samples.push(Sample {
                at_us: started.saturating_duration_since(t0).as_micros() as u64,
                lat_us: lat.as_micros().min(u32::MAX as u128) as u32,
                failed,
            });
        }
    }

    /// A request for user `u`, retried once on a transport error or a 5xx;
    /// any other status than 200 fails. Answers the answer and whether it
    /// was retried.
    fn call(&mut self, u: usize, method: &str, path: &str) -> (Result<Answer, String>, bool) {
        let first = self.once(u, method, path);
        match first {
            Ok(a) if a.status == 200 => (Ok(a), false),
            Ok(a) if a.status < 500 => (Err(format!("HTTP {}: {}", a.status, a.body)), false),
            _ => {
                let why_first = match &first {
                    Ok(a) => format!("HTTP {}", a.status),
                    Err(e) => e.clone(),
                };
                if self.result.retry_reasons.len() < MAX_FAILURES_KEPT {
                    self.result.retry_reasons.push(format!(
                        "user {}: {method} {path}: {why_first}",
                        self.users[u].n
                    ));
                }
                match self.once(u, method, path) {
                    Ok(a) if a.status == 200 => (Ok(a), true),
                    Ok(a) => (
                        Err(format!(
                            "{why_first}, then HTTP {}: {}",
                            a.status,
                            a.body.to_string().chars().take(200).collect::<String>()
                        )),
                        true,
                    ),
                    Err(e) => (Err(format!("{why_first}, then {e}")), true),
                }
            }
        }
    }

    fn once(&mut self, u: usize, method: &str, path: &str) -> Result<Answer, String> {
        let url = format!("{}{path}", self.base);
        let user = &mut self.users[u];
        let cookie = user
            .cookie
            .as_ref()
            .map(|c| format!("JSESSIONID={c}"))
            .unwrap_or_default();
        let result = if method == "GET" {
            self.agent.get(&url).header("Cookie", &cookie).call()
        } else {
            self.agent.post(&url).header("Cookie", &cookie).send_empty()
        };
        let mut r = result.map_err(|e| e.to_string())?;
        if let Some(id) = r
            .headers()
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(|v| v.strip_prefix("JSESSIONID="))
            .map(|v| v.split(';').next().unwrap_or("").to_owned())
        {
            user.set_cookie(&id);
        }
        let status = r.status().as_u16();
        let text = r.body_mut().read_to_string().map_err(|e| e.to_string())?;
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok(Answer { status, body })
    }
}
