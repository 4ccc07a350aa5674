//! A plug-in for the host's tests: its `mode` setting picks a behaviour.
//!
//! | mode | behaviour |
//! |---|---|
//! | `tag` | appends `tag` (setting) to every body on send and on receive (chain order) |
//! | `verdict` | returns `verdict` (pass, drop, defer, modify) for every message |
//! | `trap` | panics (a trap) on every message |
//! | `loop` | loops forever on every message |
//! | `loop-members` | loops forever on every membership event (a control call) |
//! | `alloc` | allocates without bound on every message |
//! | `fail-create` | refuses to start |
//! | `trap-create` | panics in `create` |
//! | `echo-settings` | exports every setting as a gauge named after its key |
//! | `hold` | holds every membership event for `hold_ms` (a timer), then raises it |
//! | `refuse-take-over` | refuses a live swap in `take-over` |
//! | `probe` | when a member is added, probes it and also `probe_host`:`probe_port` (counters `member_probes_started`, `other_probes_started`, `probes_refused`) |
//! | `flip` | on receive, inverts the last byte of every body of at least `min_size` bytes (a faulty or tampering path) |
//!
//! Settings `only_options` (option bits) and `max_size` (bytes) set the
//! message filter of its capabilities; `version` and `changes_wire` (bool)
//! what it declares for the chain fingerprint.

use shoal_guest_sdk::*;

struct Testkit {
    mode: String,
    tag: Vec<u8>,
    verdict: String,
    settings: Vec<(String, f64)>,
    hog: Vec<Vec<u8>>,
    only_options: i32,
    max_size: Option<u32>,
    hold_ms: u32,
    held: Vec<(u64, Member, Option<LeaveReason>)>,
    version: String,
    changes_wire: bool,
    min_size: usize,
    probe_target: Option<(String, u16)>,
}

impl Testkit {
    fn act(&mut self, body: Option<&[u8]>) -> Verdict {
        match self.mode.as_str() {
            "tag" => {
                let mut b = body.unwrap_or_default().to_vec();
                b.extend_from_slice(&self.tag);
                Verdict::Modify {
                    options: None,
                    body: Some(b),
                }
            }
            "verdict" => match self.verdict.as_str() {
                "drop" => Verdict::Drop("dropped by testkit".into()),
                "defer" => Verdict::Defer,
                "modify" => Verdict::Modify {
                    options: None,
                    body: Some(b"modified".to_vec()),
                },
                _ => Verdict::Pass,
            },
            "trap" => panic!("testkit trap"),
            "loop" => {
                let mut x: u64 = 0;
                loop {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
            }
            "alloc" => loop {
                self.hog.push(vec![1u8; 1 << 20]);
            },
            _ => Verdict::Pass,
        }
    }
}

impl Testkit {
    fn hold(&mut self, m: &Member, reason: Option<LeaveReason>) -> MemberVerdict {
        if self.mode == "loop-members" {
            let mut x: u64 = 0;
            loop {
                x = std::hint::black_box(x.wrapping_add(1));
            }
        }
        if self.mode != "hold" {
            return MemberVerdict::Pass;
        }
        match host::set_timer(self.hold_ms) {
            Ok(t) => {
                self.held.push((t, m.clone(), reason));
                MemberVerdict::Hold
            }
            Err(e) => {
                host::warn(&format!("testkit: not holding: {e}"));
                MemberVerdict::Pass
            }
        }
    }
}

impl Interceptor for Testkit {
    fn create(s: &Settings) -> Result<Self, String> {
        let mode = s.raw("mode").unwrap_or("pass").to_string();
        if mode == "fail-create" {
            return Err("testkit refuses to start (mode = fail-create)".into());
        }
        if mode == "trap-create" {
            panic!("testkit traps in create (mode = trap-create)");
        }
        let mut settings = Vec::new();
        if mode == "echo-settings" {
            for key in ["a", "b", "c"] {
                if let Some(v) = s.get::<f64>(key)? {
                    settings.push((key.to_string(), v));
                }
            }
        }
        Ok(Self {
            tag: s.raw("tag").unwrap_or("").as_bytes().to_vec(),
            verdict: s.raw("verdict").unwrap_or("pass").to_string(),
            mode,
            settings,
            hog: Vec::new(),
            only_options: s.get_or("only_options", 0)?,
            max_size: s.get("max_size")?,
            hold_ms: s.get_or("hold_ms", 1000)?,
            held: Vec::new(),
            version: s.raw("version").unwrap_or("").to_string(),
            changes_wire: s.get_or("changes_wire", false)?,
            min_size: s.get_or("min_size", 0)?,
            probe_target: match (s.raw("probe_host"), s.get::<u16>("probe_port")?) {
                (Some(h), Some(p)) => Some((h.to_string(), p)),
                _ => None,
            },
        })
    }

    fn capabilities(&self) -> Capabilities {
        let hooks = if matches!(self.mode.as_str(), "hold" | "probe" | "loop-members") {
            Hooks::ON_SEND | Hooks::ON_RECEIVE | Hooks::MEMBER_EVENTS
        } else {
            Hooks::ON_SEND | Hooks::ON_RECEIVE
        };
        let mut c = Capabilities::new(hooks)
            .with_bodies(BodyAccess::All)
            .only_options(self.only_options)
            .version(&self.version);
        if self.changes_wire {
            c = c.changes_wire();
        }
        match self.max_size {
            Some(n) => c.only_sizes_up_to(n),
            None => c,
        }
    }

    fn on_send(&mut self, msg: &Outgoing<'_>) -> Verdict {
        self.act(msg.body)
    }

    fn on_receive(&mut self, msg: &Incoming<'_>) -> Verdict {
        if self.mode == "flip" {
            return match msg.body {
                Some(b) if !b.is_empty() && b.len() >= self.min_size => {
                    let mut b = b.to_vec();
                    if let Some(last) = b.last_mut() {
                        *last = !*last;
                    }
                    Verdict::Modify {
                        options: None,
                        body: Some(b),
                    }
                }
                _ => Verdict::Pass,
            };
        }
        self.act(msg.body)
    }

    fn member_added(&mut self, m: &Member) -> MemberVerdict {
        if self.mode == "probe" {
            let count = |name: &str, ok: bool| {
                host::Counter::register(if ok { name } else { "probes_refused" }, "testkit probes")
                    .add(1);
            };
            let opts = ProbeOptions {
                connect_timeout_ms: 500,
                send_test: false,
                read_test: false,
                read_timeout_ms: 0,
            };
            count("member_probes_started", host::probe(m, opts).is_ok());
            if let Some((h, p)) = &self.probe_target {
                let other = Member {
                    host: h.clone(),
                    port: *p,
                    ..m.clone()
                };
                count("other_probes_started", host::probe(&other, opts).is_ok());
            }
            return MemberVerdict::Pass;
        }
        self.hold(m, None)
    }

    fn member_disappeared(&mut self, m: &Member, reason: LeaveReason) -> MemberVerdict {
        self.hold(m, Some(reason))
    }

    fn on_timer(&mut self, timer: u64) {
        if let Some(i) = self.held.iter().position(|(t, _, _)| *t == timer) {
            let (_, m, reason) = self.held.remove(i);
            match reason {
                None => host::raise_member_added(&m),
                Some(r) => host::raise_member_disappeared(&m, r),
            }
        }
    }

    fn take_over(&mut self, _state: Option<&[u8]>, _members: &[Member]) -> Result<(), String> {
        if self.mode == "refuse-take-over" {
            return Err("testkit refuses to take over (mode = refuse-take-over)".into());
        }
        Ok(())
    }

    fn stats(&self) -> Vec<Stat> {
        self.settings
            .iter()
            .map(|(k, v)| Stat::gauge(k, *v, "a setting"))
            .collect()
    }
}

export_interceptor!(Testkit);
