//! A session policy for the host's tests: places like `delta` (a copy on
//! every node) until it is told to fail.
//!
//! Settings: `fail` = `never` (default), `trap` (panics: a trap), `shape`
//! (answers with one placement too few), `loop` (never returns: the call
//! deadline interrupts it); `after` = how many `place` calls succeed first
//! (default 0).

use core::cell::Cell;

use shoal_policy_sdk::*;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Fail {
    Never,
    Trap,
    Shape,
    Loop,
}

struct Testkit {
    fail: Fail,
    after: u64,
    calls: Cell<u64>,
}

impl Policy for Testkit {
    fn create(settings: &Settings) -> Result<Self, String> {
        settings.only(&["fail", "after"])?;
        let fail: String = settings.get_or("fail", "never".to_owned())?;
        let fail = match fail.as_str() {
            "never" => Fail::Never,
            "trap" => Fail::Trap,
            "shape" => Fail::Shape,
            "loop" => Fail::Loop,
            other => return Err(format!("setting `fail`: unknown mode {other:?}")),
        };
        Ok(Self {
            fail,
            after: settings.get_or("after", 0)?,
            calls: Cell::new(0),
        })
    }

    fn info(&self) -> PolicyInfo {
        PolicyInfo::new(env!("CARGO_PKG_VERSION"), false)
    }

    fn place(&self, cluster: &Cluster, sessions: &Sessions, out: &mut Placements) {
        let n = self.calls.get();
        self.calls.set(n + 1);
        let failing = n >= self.after;
        match self.fail {
            Fail::Trap if failing => panic!("policy-testkit: told to trap"),
            Fail::Loop if failing => {
                let mut x = 0u64;
                loop {
                    x = core::hint::black_box(x.wrapping_add(1));
                }
            }
            _ => {}
        }
        let skip_last = self.fail == Fail::Shape && failing;
        for (i, s) in sessions.iter().enumerate() {
            if skip_last && i + 1 == sessions.len() {
                break;
            }
            let mut p = out.push(s.primary_or_promote(cluster.local()));
            for i in 0..cluster.len() {
                p.add_backup(i);
            }
        }
    }
}

export_policy!(Testkit);
