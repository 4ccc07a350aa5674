//! DNS discovery (`kind = "dns"`): the heartbeat targets are the addresses a
//! name resolves to (A and AAAA), all at one port, looked up again every
//! `dns_refresh_ms` by a task of its own.
//!
//! The membership service reads the targets from a `watch` channel at each
//! heartbeat, and sends one heartbeat at once when they change. What follows
//! for members:
//!
//! * a node whose record appears gets our heartbeats from the next lookup on,
//!   and appears in our table when its own heartbeats reach us;
//! * a node whose record goes gets no more heartbeats from us, so it drops us
//!   by the normal expiry (`drop_time_ms`); we drop it the same way once it
//!   stops sending to us. A removed node that still resolves us keeps
//!   sending, so we keep it while it runs (a one-way view, as with an
//!   asymmetric static list); a graceful stop announces itself as usual;
//! * a lookup that fails or finds no address changes nothing: the last good
//!   list stays (a DNS outage or an empty answer during a rollout must not
//!   make nodes forget each other). It is counted
//!   (`shoal_dns_lookup_failures_total`) and logged, at most one warning per
//!   [`WARN_PERIOD`].
//!
//! shoal keeps no DNS cache of its own: every refresh asks the server (whose
//! own cache and TTL, 5 s for CoreDNS's headless Services, still apply).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    ConnectionConfig, LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::MembershipError;
use crate::config::MembershipConfig;
use crate::metrics::Metrics;

/// Where heartbeats go: fixed for multicast and static lists, updated by the
/// lookup task for DNS. Read with `borrow()` per heartbeat (never held
/// across an await).
pub(crate) type Targets = watch::Receiver<Arc<[SocketAddr]>>;

/// Targets that never change (the sender is gone; `borrow` keeps the value).
pub(crate) fn fixed(list: Vec<SocketAddr>) -> Targets {
    watch::channel(Arc::from(list)).1
}

/// Most addresses one node heartbeats to: every target gets a datagram per
/// `frequency_ms`, so a name with thousands of records must not turn a node
/// into a flooder. Far above any Tribes cluster's size.
pub(crate) const MAX_TARGETS: usize = 256;
/// At most one warning about failing lookups per this period (later
/// failures in it are counted and summed up in the next warning).
pub(crate) const WARN_PERIOD: Duration = Duration::from_secs(60);
/// Longest wait for one query's answer (two attempts): cluster DNS answers
/// in milliseconds, and a lookup should not outlast the default refresh
/// period. Shorter refresh periods wait one period, but never less than
/// [`MIN_QUERY_TIMEOUT`].
const MAX_QUERY_TIMEOUT: Duration = Duration::from_secs(2);
/// Shortest wait for one query's answer.
const MIN_QUERY_TIMEOUT: Duration = Duration::from_millis(500);

/// Starts the lookup task for `cfg.dns_name`; `own` (this node's heartbeat
/// address) is never a target. The first lookup runs at once. The task ends
/// when the returned [`Targets`] is dropped (or when aborted).
pub(crate) fn start(
    cfg: &MembershipConfig,
    own: SocketAddr,
    metrics: Arc<Metrics>,
) -> Result<(Targets, JoinHandle<()>), MembershipError> {
    let refresh = Duration::from_millis(cfg.dns_refresh_ms);
    let timeout = refresh.clamp(MIN_QUERY_TIMEOUT, MAX_QUERY_TIMEOUT);
    let resolver = build_resolver(cfg.dns_server_addr(), timeout)?;
    let (tx, rx) = watch::channel(Arc::from(Vec::new()));
    let lookup = Lookup {
        name: cfg.dns_name.clone(),
        port: cfg.dns_port.unwrap_or(own.port()),
        own,
        refresh,
        resolver,
        metrics,
    };
    Ok((rx, tokio::spawn(lookup.run(tx))))
}

/// A resolver asking `server` alone (no search domains, no hosts file), or
/// the system's (`/etc/resolv.conf`, `/etc/hosts`). No cache of its own.
fn build_resolver(
    server: Option<SocketAddr>,
    timeout: Duration,
) -> Result<TokioResolver, MembershipError> {
    let err = |e: hickory_resolver::net::NetError| MembershipError::Resolver {
        server,
        cause: Box::new(e),
    };
    let mut builder = match server {
        Some(addr) => {
            let conn = |mut c: ConnectionConfig| {
                c.port = addr.port();
                c
            };
            let ns = NameServerConfig::new(
                addr.ip(),
                true,
                vec![conn(ConnectionConfig::udp()), conn(ConnectionConfig::tcp())],
            );
            let mut b = TokioResolver::builder_with_config(
                ResolverConfig::from_parts(None, Vec::new(), vec![ns]),
                TokioRuntimeProvider::default(),
            );
            b.options_mut().use_hosts_file = ResolveHosts::Never;
            b
        }
        None => TokioResolver::builder_tokio().map_err(err)?,
    };
    let opts = builder.options_mut();
    opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    opts.cache_size = 0;
    opts.timeout = timeout;
    opts.attempts = 2;
    builder.build().map_err(err)
}

struct Lookup {
    name: String,
    port: u16,
    own: SocketAddr,
    refresh: Duration,
    resolver: TokioResolver,
    metrics: Arc<Metrics>,
}

/// What one lookup found.
enum Outcome {
    /// Some addresses.
    Found(Vec<IpAddr>),
    /// The name exists with no A/AAAA record, or does not exist.
    Empty,
    /// No answer (timeout, refused, server failure, unreachable server).
    Failed(hickory_resolver::net::NetError),
}

impl Lookup {
    async fn run(self, tx: watch::Sender<Arc<[SocketAddr]>>) {
        let mut warn = WarnLimit::default();
        let mut failing = 0u64;
        loop {
            let outcome = tokio::select! {
                o = self.lookup() => o,
                _ = tx.closed() => return,
            };
            Metrics::inc(&self.metrics.dns_lookups_total);
            let why = match outcome {
                Outcome::Found(ips) => {
                    if failing > 0 {
                        tracing::info!(name = %self.name, failed = failing, "DNS lookups answer again");
                        failing = 0;
                    }
                    self.apply(&tx, &ips);
                    None
                }
                Outcome::Empty => Some("no A or AAAA record".to_owned()),
                Outcome::Failed(e) => Some(e.to_string()),
            };
            if let Some(why) = why {
                failing += 1;
                Metrics::inc(&self.metrics.dns_lookup_failures_total);
                if let Some(unlogged) = warn.check(Instant::now()) {
                    tracing::warn!(
                        name = %self.name,
                        error = %why,
                        unlogged_earlier_failures = unlogged,
                        kept = tx.borrow().len(),
                        "DNS lookup for membership failed; keeping the last good list of members' addresses"
                    );
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(self.refresh) => {}
                _ = tx.closed() => return,
            }
        }
    }

    async fn lookup(&self) -> Outcome {
        match self.resolver.lookup_ip(self.name.as_str()).await {
            Ok(found) => {
                // Bounded by one DNS message; cut well before candidates().
                let ips: Vec<IpAddr> = found.iter().take(4 * MAX_TARGETS).collect();
                if ips.is_empty() {
                    Outcome::Empty
                } else {
                    Outcome::Found(ips)
                }
            }
            Err(e) if e.is_no_records_found() => Outcome::Empty,
            Err(e) => Outcome::Failed(e),
        }
    }

    /// Publishes the new targets if they differ, logging what changed.
    fn apply(&self, tx: &watch::Sender<Arc<[SocketAddr]>>, ips: &[IpAddr]) {
        let c = candidates(ips, self.port, self.own);
        if c.unusable > 0 {
            tracing::debug!(name = %self.name, unusable = c.unusable, "ignoring unspecified or multicast addresses in DNS answer");
        }
        self.metrics
            .dns_targets
            .store(c.targets.len() as i64, Ordering::Relaxed);
        let old = tx.borrow().clone();
        if *old == *c.targets {
            return;
        }
        let added: Vec<String> = c
            .targets
            .iter()
            .filter(|t| !old.contains(t))
            .map(ToString::to_string)
            .collect();
        let removed: Vec<String> = old
            .iter()
            .filter(|t| !c.targets.contains(t))
            .map(ToString::to_string)
            .collect();
        tracing::info!(
            name = %self.name,
            targets = c.targets.len(),
            added = %added.join(" "),
            removed = %removed.join(" "),
            "DNS membership targets changed"
        );
        if c.truncated > 0 {
            tracing::warn!(name = %self.name, ignored = c.truncated, "DNS answer has more than {MAX_TARGETS} addresses; heartbeating to the first {MAX_TARGETS} only");
        }
        tx.send_replace(Arc::from(c.targets));
    }
}

/// The heartbeat targets made of a DNS answer.
#[derive(Debug, PartialEq, Eq)]
struct Candidates {
    /// Sorted, without duplicates or `own`, at most [`MAX_TARGETS`].
    targets: Vec<SocketAddr>,
    /// Unspecified or multicast addresses left out.
    unusable: usize,
    /// Addresses left out past [`MAX_TARGETS`].
    truncated: usize,
}

fn candidates(ips: &[IpAddr], port: u16, own: SocketAddr) -> Candidates {
    let usable = |ip: &&IpAddr| !ip.is_unspecified() && !ip.is_multicast();
    let mut targets: Vec<SocketAddr> = ips
        .iter()
        .filter(usable)
        .map(|ip| SocketAddr::new(*ip, port))
        .filter(|a| *a != own)
        .collect();
    let unusable = ips.len() - ips.iter().filter(usable).count();
    targets.sort_unstable();
    targets.dedup();
    let truncated = targets.len().saturating_sub(MAX_TARGETS);
    targets.truncate(MAX_TARGETS);
    Candidates {
        targets,
        unusable,
        truncated,
    }
}

/// One warning per [`WARN_PERIOD`]; fed explicit time.
#[derive(Debug, Default)]
struct WarnLimit {
    last: Option<Instant>,
    unlogged: u64,
}

impl WarnLimit {
    /// Whether to warn at `now`: `Some(n)` with the number of failures not
    /// logged since the last warning, `None` to stay quiet (counted).
    fn check(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(t) if now.saturating_duration_since(t) < WARN_PERIOD => {
                self.unlogged += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.unlogged))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn candidates_skip_own_address_duplicates_and_unusable() {
        let own: SocketAddr = "10.0.0.2:4000".parse().expect("addr");
        let c = candidates(
            &[
                ip("10.0.0.3"),
                ip("10.0.0.2"),
                ip("fd00::7"),
                ip("10.0.0.3"),
                ip("0.0.0.0"),
                ip("228.0.0.4"),
                ip("::"),
            ],
            4000,
            own,
        );
        assert_eq!(
            c.targets,
            vec![
                "10.0.0.3:4000".parse().expect("addr"),
                "[fd00::7]:4000".parse().expect("addr"),
            ]
        );
        assert_eq!((c.unusable, c.truncated), (3, 0));
        // Another port: the own IP is a target (another node on this host).
        let c = candidates(&[ip("10.0.0.2")], 4001, own);
        assert_eq!(c.targets.len(), 1);
    }

    #[test]
    fn candidates_are_bounded() {
        let ips: Vec<IpAddr> = (0..300u32)
            .map(|i| IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i)))
            .collect();
        let c = candidates(&ips, 4000, "127.0.0.1:4000".parse().expect("addr"));
        assert_eq!(
            (c.targets.len(), c.truncated),
            (MAX_TARGETS, 300 - MAX_TARGETS)
        );
    }

    #[test]
    fn warnings_are_rate_limited() {
        let t0 = Instant::now();
        let mut w = WarnLimit::default();
        assert_eq!(w.check(t0), Some(0), "the first failure is logged");
        assert_eq!(w.check(t0 + Duration::from_secs(5)), None);
        assert_eq!(w.check(t0 + Duration::from_secs(59)), None);
        assert_eq!(
            w.check(t0 + WARN_PERIOD),
            Some(2),
            "the next warning counts the quiet ones"
        );
        assert_eq!(w.check(t0 + WARN_PERIOD + Duration::from_secs(1)), None);
    }
}
