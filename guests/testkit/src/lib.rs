//! A plug-in for the host's tests: its `mode` setting picks a behaviour.
//!
//! | mode | behaviour |
//! |---|---|
//! | `tag` | appends `tag` (setting) to every body on send and on receive (chain order) |
//! | `verdict` | returns `verdict` (pass, drop, defer, modify) for every message |
//! | `trap` | panics (a trap) on every message |
//! | `loop` | loops forever on every message |
//! | `alloc` | allocates without bound on every message |
//! | `fail-create` | refuses to start |
//! | `echo-settings` | exports every setting as a gauge named after its key |
//!
//! Settings `only_options` (option bits) and `max_size` (bytes) set the
//! message filter of its capabilities.

use shoal_guest_sdk::*;

struct Testkit {
    mode: String,
    tag: Vec<u8>,
    verdict: String,
    settings: Vec<(String, f64)>,
    hog: Vec<Vec<u8>>,
    only_options: i32,
    max_size: Option<u32>,
}

impl Testkit {
    fn act(&mut self, body: Option<&[u8]>) -> Verdict {
        match self.mode.as_str() {
            "tag" => {
                let mut b = body.unwrap_or_default().to_vec();
                b.extend_from_slice(&self.tag);
                Verdict::Modify { options: None, body: Some(b) }
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

impl Interceptor for Testkit {
    fn create(s: &Settings) -> Result<Self, String> {
        let mode = s.raw("mode").unwrap_or("pass").to_string();
        if mode == "fail-create" {
            return Err("testkit refuses to start (mode = fail-create)".into());
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
        })
    }

    fn capabilities(&self) -> Capabilities {
        let c = Capabilities::new(Hooks::ON_SEND | Hooks::ON_RECEIVE)
            .with_bodies(BodyAccess::All)
            .only_options(self.only_options);
        match self.max_size {
            Some(n) => c.only_sizes_up_to(n),
            None => c,
        }
    }

    fn on_send(&mut self, msg: &Outgoing<'_>) -> Verdict {
        self.act(msg.body)
    }

    fn on_receive(&mut self, msg: &Incoming<'_>) -> Verdict {
        self.act(msg.body)
    }

    fn stats(&self) -> Vec<Stat> {
        self.settings.iter().map(|(k, v)| Stat::gauge(k, *v, "a setting")).collect()
    }
}

export_interceptor!(Testkit);
