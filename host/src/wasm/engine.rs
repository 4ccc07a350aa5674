//! The one wasmtime [`Engine`] of the node, its epoch ticker, and compiled
//! components cached on disk (keyed by content hash and engine version) so a
//! restart does not recompile.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::{Config, Engine};

/// Epoch granularity: deadlines are counted in ticks of this length.
pub const EPOCH_TICK: Duration = Duration::from_millis(1);

/// The ticker stops after this many ticks with no guest call in flight.
const LINGER_TICKS: u32 = 100;

/// A brief call ([`GuestCall::enter_brief`]) does not wake the parked
/// ticker: it looks this often whether one is still running, and ticks from
/// then on. A runaway control call is so stopped within this plus twice its
/// deadline, and a node whose only calls are its heartbeat and timer calls
/// wakes no more often than this for the ticker.
pub const BRIEF_WATCH: Duration = Duration::from_millis(1000);

/// Guest calls in flight, counted per thread (each thread mostly alone on
/// its cache line, so entering a call costs no contention); see
/// [`GuestCall`].
static IN_FLIGHT: [Padded; IN_FLIGHT_SLOTS] =
    [const { Padded(AtomicUsize::new(0)) }; IN_FLIGHT_SLOTS];
const IN_FLIGHT_SLOTS: usize = 64;
/// The epoch thread is parked (or about to park).
static PARKED: AtomicBool = AtomicBool::new(false);
/// The last call to end was a brief one ([`GuestCall::enter_brief`]): the
/// ticker may park as soon as no call is in flight.
static PARK_SOON: AtomicBool = AtomicBool::new(false);
/// The epoch thread, to wake it.
static TICKER: OnceLock<std::thread::Thread> = OnceLock::new();

#[repr(align(64))]
struct Padded(AtomicUsize);

std::thread_local! {
    static MY_SLOT: usize = {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        NEXT.fetch_add(1, Ordering::Relaxed) % IN_FLIGHT_SLOTS
    };
}

fn any_in_flight() -> bool {
    IN_FLIGHT.iter().any(|c| c.0.load(Ordering::SeqCst) > 0)
}

/// Marks a guest call (or an instantiation, which runs guest code) in
/// flight for as long as it lives: the epoch advances only while one is, so
/// an idle node does not wake up every millisecond, and a runaway guest is
/// still interrupted at its deadline.
#[derive(Debug)]
pub struct GuestCall(usize, bool);

impl GuestCall {
    /// Enters a guest call; wakes the epoch thread if it sleeps. After it
    /// ends the thread keeps ticking for [`LINGER_TICKS`] so that a stream
    /// of message calls does not park and wake it for each.
    pub fn enter() -> Self {
        Self::start(false)
    }

    /// Enters a rare guest call (a control call: membership, heartbeat,
    /// probe result, timer), which nearly always ends within microseconds:
    /// it does not wake a parked epoch thread, which finds it at its next
    /// look ([`BRIEF_WATCH`]) if it still runs; and once it ends, and no
    /// other is in flight, a ticking epoch thread parks without lingering.
    pub fn enter_brief() -> Self {
        Self::start(true)
    }

    fn start(brief: bool) -> Self {
        if !brief {
            PARK_SOON.store(false, Ordering::Relaxed);
        }
        let slot = MY_SLOT.with(|s| *s);
        // SeqCst with the ticker's store-then-check: either the ticker sees
        // this call and does not park, or a message call sees PARKED and
        // wakes it (a brief one is found at the ticker's next look).
        IN_FLIGHT[slot].0.fetch_add(1, Ordering::SeqCst);
        if !brief
            && PARKED.load(Ordering::SeqCst)
            && let Some(t) = TICKER.get()
        {
            t.unpark();
        }
        Self(slot, brief)
    }
}

impl Drop for GuestCall {
    fn drop(&mut self) {
        if self.1 {
            PARK_SOON.store(true, Ordering::Relaxed);
        }
        IN_FLIGHT[self.0].0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The process-wide engine, with epoch interruption on and the
/// component-model async runtime off (2–3× cheaper calls, wasmtime-notes.md).
/// A background thread advances the epoch every [`EPOCH_TICK`] while guest
/// calls are in flight ([`GuestCall`]), and sleeps from 100 idle ticks
/// after the last one ended until the next message call starts, looking
/// every [`BRIEF_WATCH`] for a control call still running.
pub fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let mut cfg = Config::new();
        cfg.wasm_component_model(true);
        cfg.epoch_interruption(true);
        cfg.concurrency_support(false);
        let engine = Engine::new(&cfg)
            .unwrap_or_else(|e| panic!("wasmtime engine configuration is invalid: {e}"));
        let weak = engine.weak();
        let ticker = std::thread::Builder::new()
            .name("shoal-epoch".into())
            .spawn(move || {
                let mut idle = 0u32;
                while let Some(e) = weak.upgrade() {
                    e.increment_epoch();
                    drop(e);
                    std::thread::sleep(EPOCH_TICK);
                    if any_in_flight() {
                        idle = 0;
                        continue;
                    }
                    idle += 1;
                    if idle >= LINGER_TICKS || PARK_SOON.swap(false, Ordering::Relaxed) {
                        PARKED.store(true, Ordering::SeqCst);
                        while !any_in_flight() {
                            // Woken by the next message call, or to look
                            // for a control call (or spuriously).
                            std::thread::park_timeout(BRIEF_WATCH);
                        }
                        PARKED.store(false, Ordering::SeqCst);
                        idle = 0;
                    }
                }
            })
            .unwrap_or_else(|e| panic!("cannot start the epoch thread: {e}"));
        let _ = TICKER.set(ticker.thread().clone());
        engine
    })
}

/// Where compiled components are cached: `$SHOAL_CACHE_DIR`, else
/// `$XDG_CACHE_HOME/shoal/components`, else `~/.cache/shoal/components`;
/// `None` (no cache: components are compiled at each start) when none of
/// these is set. Never a shared directory such as `/tmp`: the cache holds
/// native code the node runs.
pub fn default_cache_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("SHOAL_CACHE_DIR") {
        return Some(PathBuf::from(d));
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("shoal").join("components"))
}

/// The deadline of the call running in a store, counted in epoch ticks of
/// wall time but judged by CPU time: a call whose wall-clock deadline
/// passes while its thread was descheduled (a loaded machine, a container's
/// CPU quota throttling the node) is not stopped for time it did not run.
///
/// When the deadline passes the thread's CPU time is read and the call gets
/// another deadline's worth of ticks; at each later expiry it is stopped
/// once the CPU it used since the first expiry reaches the deadline, or
/// after [`MAX_PERIODS`] deadlines of wall time in all. A runaway guest on an
/// idle machine is so stopped at twice its deadline; a call that needed its
/// deadline's CPU but got half a core still finishes. Nothing is read per
/// call: the CPU clock is read only at expiries.
#[derive(Debug, Default)]
pub struct CallDeadline {
    ticks: u64,
    /// The thread's CPU time at the first expiry, and the expiries so far.
    overrun: Option<(Duration, u32)>,
}

/// Wall-clock deadlines a descheduled call may take in all.
pub const MAX_PERIODS: u32 = 50;

impl CallDeadline {
    /// A new call of `ticks` starts.
    pub fn arm(&mut self, ticks: u64) {
        self.ticks = ticks;
        self.overrun = None;
    }

    /// The epoch deadline passed: another period, or stop the call.
    pub fn expired(&mut self) -> wasmtime::UpdateDeadline {
        use wasmtime::UpdateDeadline::{Continue, Interrupt};
        let Some(now) = thread_cpu_time() else {
            return Interrupt;
        };
        let budget = EPOCH_TICK * u32::try_from(self.ticks).unwrap_or(u32::MAX);
        match &mut self.overrun {
            None => {
                self.overrun = Some((now, 1));
                Continue(self.ticks)
            }
            Some((first, periods)) => {
                *periods += 1;
                if now.saturating_sub(*first) >= budget || *periods >= MAX_PERIODS {
                    Interrupt
                } else {
                    Continue(self.ticks)
                }
            }
        }
    }
}

/// CPU time the calling thread has used.
#[allow(unsafe_code)]
fn thread_cpu_time() -> Option<Duration> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the call's duration.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    (rc == 0).then(|| Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
}

/// The effective user id of this process.
#[allow(unsafe_code)]
fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Why `path` (the cache directory or a file in it) must not be trusted:
/// owned by another user, or writable by group or others, so someone else
/// could plant native code in it. `None`: it may be used.
fn untrusted(path: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let m = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) => return Some(format!("cannot read its metadata: {e}")),
    };
    if m.uid() != euid() {
        return Some(format!(
            "it is owned by uid {}, not by this node's user (uid {})",
            m.uid(),
            euid()
        ));
    }
    if m.mode() & 0o022 != 0 {
        return Some(format!(
            "it is writable by group or others (mode {:o}); chmod go-w it",
            m.mode() & 0o7777
        ));
    }
    None
}

/// Warns once per directory that the cache is not used, and why.
fn refuse_cache(dir: &Path, why: &str) {
    static WARNED: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());
    let mut warned = WARNED.lock().unwrap_or_else(|p| p.into_inner());
    if !warned.iter().any(|d| d == dir) && warned.len() < 64 {
        warned.push(dir.to_path_buf());
        tracing::warn!(
            dir = %dir.display(),
            "not using the compiled-component cache: {why}; components are compiled at each start"
        );
    }
}

/// SHA-256 of `bytes`, hex.
pub fn content_hash(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn engine_key(engine: &Engine) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut h);
    format!("{:016x}", h.finish())
}

/// Compiles `bytes`, or loads the compiled form from `cache_dir` when this
/// engine compiled the same bytes before. Cache problems are logged and never
/// fatal: the component is then compiled in memory.
pub fn load_component(
    engine: &Engine,
    bytes: &[u8],
    hash: &str,
    cache_dir: Option<&Path>,
) -> wasmtime::Result<Component> {
    let Some(dir) = cache_dir else {
        return Component::new(engine, bytes);
    };
    if dir.exists()
        && let Some(why) = untrusted(dir)
    {
        refuse_cache(dir, &why);
        return Component::new(engine, bytes);
    }
    let file = dir.join(format!("{hash}-{}.cwasm", engine_key(engine)));
    if file.exists()
        && let Some(why) = untrusted(&file)
    {
        refuse_cache(dir, &format!("{}: {why}", file.display()));
        return Component::new(engine, bytes);
    }
    if file.exists() {
        match deserialize(engine, &file) {
            Ok(c) => {
                tracing::debug!(file = %file.display(), "component loaded from cache");
                return Ok(c);
            }
            Err(e) => {
                tracing::warn!(file = %file.display(), error = %e, "ignoring unusable cached component")
            }
        }
    }
    let component = Component::new(engine, bytes)?;
    if let Err(e) = store_cache(&component, dir, &file) {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot cache the compiled component");
    }
    Ok(component)
}

#[allow(unsafe_code)]
fn deserialize(engine: &Engine, file: &Path) -> wasmtime::Result<Component> {
    // Read into memory, not mapped: a file changed in place while mapped
    // (truncated by an editor, a disk-full write, a test) would raise
    // SIGBUS in the node when the code is next touched. Copied, it is the
    // node's own.
    let bytes = std::fs::read(file)?;
    // SAFETY: the file was written by `store_cache` from `Component::serialize`
    // into a cache directory owned by this node's user and writable by no one
    // else (checked before, with the file itself), under a
    // name that binds it to the source's SHA-256 and this engine's
    // compatibility hash; wasmtime checks the header and version on load.
    unsafe { Component::deserialize(engine, &bytes) }
}

fn store_cache(component: &Component, dir: &Path, file: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let bytes = component.serialize().map_err(std::io::Error::other)?;
    // A name of its own per write: two plug-ins (or two nodes of one
    // process) compiling the same component must not share a temporary file.
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = file.with_extension(format!("tmp{}-{n}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime::UpdateDeadline;

    /// Uses `d` of this thread's CPU time.
    fn spin(d: Duration) {
        let start = thread_cpu_time().expect("cpu clock");
        while thread_cpu_time().expect("cpu clock") - start < d {
            std::hint::spin_loop();
        }
    }

    fn stopped(u: UpdateDeadline) -> bool {
        matches!(u, UpdateDeadline::Interrupt)
    }

    #[test]
    fn a_running_call_is_stopped_at_the_second_expiry() {
        let mut d = CallDeadline::default();
        d.arm(5);
        spin(Duration::from_millis(5));
        assert!(
            !stopped(d.expired()),
            "the first expiry only starts counting"
        );
        spin(Duration::from_millis(5));
        assert!(stopped(d.expired()), "a deadline's CPU past the deadline");
    }

    #[test]
    fn a_descheduled_call_gets_more_periods_up_to_the_cap() {
        let mut d = CallDeadline::default();
        d.arm(5);
        let mut periods = 0;
        while !stopped(d.expired()) {
            periods += 1;
            assert!(periods < MAX_PERIODS, "stopped at the cap");
            // Off the CPU for the period, as when descheduled.
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(periods, MAX_PERIODS - 1);
        // A new call starts afresh.
        d.arm(5);
        assert!(!stopped(d.expired()));
    }

    #[test]
    fn cpu_used_while_descheduled_in_part_adds_up() {
        let mut d = CallDeadline::default();
        d.arm(6);
        assert!(!stopped(d.expired()));
        for _ in 0..2 {
            spin(Duration::from_millis(2));
            assert!(!stopped(d.expired()), "less than the deadline so far");
        }
        spin(Duration::from_millis(2));
        assert!(stopped(d.expired()), "the deadline's CPU reached");
    }
}
