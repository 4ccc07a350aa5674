//! Domain filter (Tribes' DomainFilterInterceptor, tribes.md §4.7): members
//! and messages of another domain are dropped. Never reads bodies.
//!
//! Settings: `domain` (text, or a `{1,2,3}` byte literal as in Tomcat;
//! default: empty) and `logInterval` (one warning per this many dropped
//! messages; Tribes: 100).

use shoal_guest_sdk::host::{self, Counter};
use shoal_guest_sdk::*;

struct DomainFilter {
    domain: Vec<u8>,
    log_interval: u64,
    dropped: Counter,
}

fn parse_domain(s: &str) -> Result<Vec<u8>, String> {
    let t = s.trim();
    if let Some(inner) = t.strip_prefix('{').and_then(|x| x.strip_suffix('}')) {
        inner
            .split(',')
            .filter(|p| !p.trim().is_empty())
            .map(|p| {
                p.trim()
                    .parse::<i16>()
                    .map(|v| v as u8)
                    .map_err(|_| format!("setting `domain`: bad byte {p:?}"))
            })
            .collect()
    } else {
        Ok(s.chars().map(|c| c as u32 as u8).collect())
    }
}

impl Interceptor for DomainFilter {
    fn create(settings: &Settings) -> Result<Self, String> {
        settings.only(&["domain", "logInterval"])?;
        let domain = parse_domain(settings.raw("domain").unwrap_or(""))?;
        let log_interval: u64 = settings.get_or("logInterval", 100)?;
        Ok(Self {
            domain,
            log_interval: log_interval.max(1),
            dropped: Counter::register(
                "foreign_messages_dropped",
                "Messages from another domain dropped",
            ),
        })
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::new(Hooks::ON_RECEIVE | Hooks::MEMBER_EVENTS)
            .version(env!("CARGO_PKG_VERSION"))
    }

    fn on_receive(&mut self, msg: &Incoming<'_>) -> Verdict {
        if msg.sender.domain == self.domain {
            return Verdict::Pass;
        }
        let n = self.dropped.add(1);
        if n % self.log_interval == 1 || self.log_interval == 1 {
            host::warn(&format!(
                "dropping messages from another domain ({n} so far), e.g. from {}:{}",
                msg.sender.host, msg.sender.port
            ));
        }
        Verdict::Drop("sender in another domain".into())
    }

    fn member_added(&mut self, m: &Member) -> MemberVerdict {
        if m.domain == self.domain {
            MemberVerdict::Pass
        } else {
            MemberVerdict::Drop("member of another domain".into())
        }
    }

    fn member_disappeared(&mut self, m: &Member, _reason: LeaveReason) -> MemberVerdict {
        self.member_added(m)
    }
}

export_interceptor!(DomainFilter);
