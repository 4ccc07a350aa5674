//! Was the machine quiet? A sampler thread that, every
//! [`PERIOD`], splits the machine's busy CPU time into this run's own
//! (the driver, the nodes — also ones started during the window — and
//! httpd with its children), the kernel threads' (loopback traffic is partly
//! processed there) and everyone else's, and adds it to the current phase.
//! The figures of host/benches/common/measure.rs, sampled because a rolling
//! restart changes the set of processes mid-window.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::measure::{children_of, kernel_thread_ticks, machine_busy_ticks, pid_ticks};

/// Sampling period.
pub const PERIOD: Duration = Duration::from_millis(250);
/// Phases the sampler adds to; [`NO_PHASE`] adds nowhere.
pub const PHASES: usize = 3;
/// Not measuring (set-up, final checks).
pub const NO_PHASE: usize = usize::MAX;
/// Clock ticks per second of /proc (USER_HZ).
const HZ: f64 = 100.0;

/// CPU used during one phase, in cores (1.0 = one core busy all along).
#[derive(Debug, Clone, Copy, Default)]
pub struct PhaseCpu {
    /// This run's processes.
    pub own: f64,
    /// Kernel threads.
    pub kernel: f64,
    /// Everything else: other work on the machine, and steal.
    pub other: f64,
}

#[derive(Debug, Default, Clone, Copy)]
struct Acc {
    secs: f64,
    busy: u64,
    own: u64,
    kernel: u64,
}

/// The sampler thread; [`CpuSampler::finish`] stops it.
#[derive(Debug)]
pub struct CpuSampler {
    phase: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    handle: JoinHandle<[Acc; PHASES]>,
}

impl CpuSampler {
    /// Starts sampling; `pids` is the current list of node processes (the
    /// cluster updates it), `httpd` the front end's parent process.
    pub fn start(pids: Arc<Mutex<Vec<u32>>>, httpd: Option<u32>) -> Self {
        let phase = Arc::new(AtomicUsize::new(NO_PHASE));
        let stop = Arc::new(AtomicBool::new(false));
        let (ph, st) = (phase.clone(), stop.clone());
        let handle = std::thread::spawn(move || {
            let own_pids = || {
                let mut v = pids.lock().unwrap_or_else(|p| p.into_inner()).clone();
                v.push(std::process::id());
                if let Some(h) = httpd {
                    v.push(h);
                    v.extend(children_of(h));
                }
                v
            };
            // Ticks of each process at its last sample; a process first
            // seen later was started during the run and counts from 0.
            let mut last: HashMap<u32, u64> =
                own_pids().into_iter().map(|p| (p, pid_ticks(p))).collect();
            let mut busy = machine_busy_ticks();
            let mut kernel = kernel_thread_ticks();
            let mut at = Instant::now();
            let mut acc = [Acc::default(); PHASES];
            while !st.load(Ordering::Acquire) {
                std::thread::sleep(PERIOD);
                let mut own = 0;
                let mut now_ticks = HashMap::new();
                for p in own_pids() {
                    let t = pid_ticks(p);
                    own += t.saturating_sub(last.get(&p).copied().unwrap_or(0));
                    now_ticks.insert(p, t);
                }
                last = now_ticks;
                let (b, k, now) = (machine_busy_ticks(), kernel_thread_ticks(), Instant::now());
                if let Some(a) = acc.get_mut(ph.load(Ordering::Acquire)) {
                    a.secs += now.duration_since(at).as_secs_f64();
                    a.busy += b.saturating_sub(busy);
                    a.own += own;
                    a.kernel += k.saturating_sub(kernel);
                }
                (busy, kernel, at) = (b, k, now);
            }
            acc
        });
        Self {
            phase,
            stop,
            handle,
        }
    }

    /// From now on, add to `phase` (0..[`PHASES`], or [`NO_PHASE`]).
    pub fn phase(&self, phase: usize) {
        self.phase.store(phase, Ordering::Release);
    }

    /// Stops the sampler; answers each phase's figures.
    pub fn finish(self) -> [PhaseCpu; PHASES] {
        self.stop.store(true, Ordering::Release);
        let acc = self.handle.join().unwrap_or_default();
        acc.map(|a| {
            let secs = a.secs.max(1e-3) * HZ;
            let other = a.busy.saturating_sub(a.own + a.kernel);
            PhaseCpu {
                own: a.own as f64 / secs,
                kernel: a.kernel as f64 / secs,
                other: other as f64 / secs,
            }
        })
    }
}
