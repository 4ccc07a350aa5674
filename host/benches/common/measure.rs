//! What the side-by-side benches share: the CPU accounting (was the
//! machine quiet while we measured?) and the median-and-spread figure.
//! Included with `#[path]` by each bench binary.

use std::time::Instant;

/// Busy clock ticks of the whole machine: user, nice, system and steal time
/// (not idle, iowait, or interrupts, which loopback traffic itself causes).
pub fn machine_busy_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(cpu) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return 0;
    };
    let f: Vec<u64> = cpu
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    [0, 1, 2, 7].iter().filter_map(|&i| f.get(i)).sum()
}

/// utime + stime of a process (all its threads), in clock ticks.
pub fn pid_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    f.get(11..13)
        .map_or(0, |x| x.iter().filter_map(|v| v.parse::<u64>().ok()).sum())
}

/// The processes whose parent is `pid` (from /proc).
#[allow(dead_code)] // used by the web bench and the rolling-restart driver
pub fn children_of(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat")).is_ok_and(|s| {
                // "pid (comm) state ppid ...": comm may hold spaces.
                s.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok())
                    == Some(pid)
            })
        })
        .collect()
}

/// CPU of every kernel thread (ksoftirqd, kworkers: loopback traffic is
/// partly processed there, so it is the benchmark's own load), in ticks.
pub fn kernel_thread_ticks() -> u64 {
    const PF_KTHREAD: u64 = 0x0020_0000;
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let rest = stat.rsplit_once(')')?.1.to_owned();
            let f: Vec<&str> = rest.split_whitespace().collect();
            let flags: u64 = f.get(6)?.parse().ok()?;
            (flags & PF_KTHREAD != 0).then(|| {
                f.get(11..13)
                    .map_or(0, |x| x.iter().filter_map(|v| v.parse::<u64>().ok()).sum())
            })
        })
        .sum()
}

/// A measuring window: CPU used by the machine, by the benchmark's own
/// live processes and by kernel threads between `open` and `foreign`.
pub struct CpuWindow {
    at: Instant,
    busy: u64,
    own: u64,
    kernel: u64,
}

impl CpuWindow {
    pub fn own(pids: &[u32]) -> u64 {
        pid_ticks(std::process::id()) + pids.iter().map(|p| pid_ticks(*p)).sum::<u64>()
    }

    pub fn open(pids: &[u32]) -> Self {
        Self {
            at: Instant::now(),
            busy: machine_busy_ticks(),
            own: Self::own(pids),
            kernel: kernel_thread_ticks(),
        }
    }

    /// Share of one core used by other processes (and stolen by the
    /// hypervisor) since `open`: the machine's user, system and steal time
    /// less the benchmark's processes and kernel threads. Ticks are
    /// USER_HZ = 100 per second.
    pub fn foreign(&self, pids: &[u32]) -> f64 {
        let busy = machine_busy_ticks().saturating_sub(self.busy) as f64;
        let own = Self::own(pids).saturating_sub(self.own) as f64;
        let kernel = kernel_thread_ticks().saturating_sub(self.kernel) as f64;
        ((busy - own - kernel).max(0.0) / 100.0) / self.at.elapsed().as_secs_f64().max(1e-3)
    }
}

/// Median and spread of a list of figures.
#[derive(Debug, Clone, Copy, Default)]
pub struct Stat {
    /// Median.
    pub median: f64,
    /// Smallest.
    pub min: f64,
    /// Largest.
    pub max: f64,
}

impl Stat {
    pub fn of(v: &[f64]) -> Self {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        if v.is_empty() {
            return Self::default();
        }
        Self {
            median: v[v.len() / 2],
            min: v[0],
            max: v[v.len() - 1],
        }
    }

    /// `median (min–max)` with `digits` decimals.
    pub fn show(&self, digits: usize) -> String {
        format!(
            "{:.d$} ({:.d$}–{:.d$})",
            self.median,
            self.min,
            self.max,
            d = digits
        )
    }
}

/// The machine's CPU model, from /proc/cpuinfo.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_default()
}

/// The second line of `java -version` (the runtime and its version).
pub fn java_version(java: &std::path::Path) -> String {
    std::process::Command::new(java)
        .arg("-version")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stderr)
                .lines()
                .nth(1)
                .unwrap_or("")
                .to_owned()
        })
        .unwrap_or_default()
}
