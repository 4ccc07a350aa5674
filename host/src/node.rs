//! A node: wires config, receiver, sender, channel, membership and the admin
//! API together, and owns start-up and shutdown.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use tokio::task::JoinHandle;

use crate::api::ApiServer;
use crate::chain::{Chain, ChainHandle, ControlEvent};
use crate::channel::Channel;
use crate::config::{Config, MembershipKind};
use crate::dispatch::Dispatcher;
use crate::member::{Member, MemberId};
use crate::membership::Membership;
use crate::metrics::Metrics;
use crate::plugins::{InterceptorSpec, NodeCtx, PluginOptions, Reporter};
use crate::transport::receiver::{self, Receiver, ReceiverError};
use crate::transport::sender::Sender;
use crate::transport::watch::Watcher;
use crate::wire::fingerprint::{self, ChainEntry, FingerprintError};
use crate::wire::{FrameEncoder, MemberPacket};
use std::collections::HashMap;

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The receiver could not bind.
    #[error(transparent)]
    Receiver(#[from] ReceiverError),
    /// The membership socket could not be set up.
    #[error(transparent)]
    Membership(#[from] crate::membership::MembershipError),
    /// The admin API could not bind.
    #[error("cannot listen for the admin API on {addr}: {cause}")]
    Api {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        cause: std::io::Error,
    },
    /// An interceptor could not be loaded.
    #[error(transparent)]
    Plugin(#[from] crate::plugins::PluginLoadError),
    /// The cluster key file cannot be used.
    #[error(transparent)]
    Key(#[from] crate::security::KeyFileError),
    /// Another I/O failure during start-up.
    #[error("start-up failed: {0}")]
    Io(#[from] std::io::Error),
}

/// A running node.
#[derive(Debug)]
pub struct Node {
    name: String,
    channel: Channel,
    membership: Option<Membership>,
    receiver: Option<Receiver>,
    api: Option<ApiServer>,
    events: Option<JoinHandle<()>>,
    /// Reads the cluster key file again when it changes.
    key_reload: Option<JoinHandle<()>>,
    ready: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
    drain_deadline: Duration,
    plugins: Arc<ChainHandle>,
    sessions: Option<crate::session::SessionEngine>,
    session_api: Option<ApiServer>,
    deployer: crate::deploy::Deployer,
    watcher: Option<Arc<Watcher>>,
}

/// Resolves `receiver.address`: an IP, or "auto" for the address of the
/// interface that routes to the membership group (a route lookup; nothing is sent).
fn resolve_address(cfg: &Config) -> IpAddr {
    if let crate::config::ReceiverAddress::Ip(ip) = cfg.receiver.address {
        return ip;
    }
    if let Some(bind) = cfg.membership.bind {
        return IpAddr::V4(bind);
    }
    let probe = || -> std::io::Result<IpAddr> {
        let s = std::net::UdpSocket::bind("0.0.0.0:0")?;
        s.connect(SocketAddr::new(
            IpAddr::V4(cfg.membership.address),
            cfg.membership.port,
        ))?;
        Ok(s.local_addr()?.ip())
    };
    match probe() {
        Ok(ip) if !ip.is_unspecified() => ip,
        _ => {
            tracing::warn!("receiver.address = \"auto\" found no route; using 127.0.0.1");
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        }
    }
}

impl Node {
    /// Validates `cfg` and starts every part of the node. Returns once the
    /// receiver, membership and API are up; the node reports ready on the admin
    /// API after an initial discovery window of two heartbeats (as Tomcat's
    /// McastService waits 2 × frequency on start).
    pub async fn start(cfg: Config) -> Result<Self, StartError> {
        cfg.validate()?;
        let metrics = Arc::new(Metrics::default());
        let ip = resolve_address(&cfg);
        let listener = receiver::bind(ip, &cfg.receiver).await?;
        let bound = listener.local_addr()?;

        let mut local = MemberPacket {
            alive_ms: 0,
            port: i32::from(bound.port()),
            secure_port: -1,
            udp_port: -1,
            host: MemberPacket::host_bytes(ip),
            command: Bytes::new(),
            domain: cfg
                .node
                .domain
                .chars()
                .map(|c| c as u8)
                .collect::<Vec<u8>>()
                .into(),
            unique_id: new_unique_id(),
            payload: Bytes::new(),
        };
        let local_id = MemberId {
            host: ip,
            port: bound.port(),
            unique_id: local.unique_id,
        };

        // The cluster key: heartbeats and frames are authenticated (and
        // frames encrypted) among the nodes that hold it.
        let security = match cfg.security.key_path(cfg.base_dir.as_deref()) {
            Some(path) => {
                let ring = crate::security::KeyRing::load(&path)?;
                let (send, all) = ring.ids();
                tracing::info!(
                    file = %path.display(),
                    sealing_with = format!("{send:08x}"),
                    accepting = ?all.iter().map(|k| format!("{k:08x}")).collect::<Vec<_>>(),
                    "cluster key loaded: heartbeats authenticated, frames sealed (not Tomcat-compatible)"
                );
                Some(Arc::new(crate::security::Security::new(
                    ring,
                    Duration::from_millis(cfg.security.max_clock_skew_ms),
                    metrics.clone(),
                )))
            }
            None => None,
        };
        let encoder = Arc::new(
            FrameEncoder::new(&local, cfg.receiver.max_frame_bytes).with_security(security.clone()),
        );
        let (control_tx, mut control_rx) = tokio::sync::mpsc::unbounded_channel();
        let local_member =
            Member::from_packet(&local).map_err(|e| std::io::Error::other(e.to_string()))?;
        let reports = control_tx.clone();
        let node_ctx = Arc::new(NodeCtx::new(
            local_member,
            encoder.address().clone(),
            metrics.clone(),
            Reporter::new(move |ev| {
                let _ = reports.send(ControlEvent::Plugin(ev));
            }),
        ));
        let plugin_options = PluginOptions::from_config(&cfg.plugins);
        let loader = crate::session::policy::PolicyLoader {
            settings: crate::plugins::settings_strings(&cfg.session.settings),
            failure_mode: cfg.session.failure_mode,
            opts: plugin_options.clone(),
            node: node_ctx.clone(),
        };
        // Components deployed earlier (`shoal plugin deploy`) replace the
        // config's versions of the same plug-ins.
        let deploy_keys = crate::deploy::sign::TrustedKeys::parse(&cfg.deploy.keys)
            .map_err(|e| std::io::Error::other(format!("deploy.keys: {e}")))?;
        let deploy_store = cfg.deploy.store_dir(cfg.base_dir.as_deref());
        let persisted = deploy_store
            .as_deref()
            .map(|d| crate::deploy::read_persisted(d, &deploy_keys))
            .unwrap_or_default();
        for p in &persisted {
            tracing::info!(
                plugin = %p.name,
                sha256 = %&p.manifest.sha256[..12],
                "running the deployed version (stored by `shoal plugin deploy`), not the config's"
            );
        }
        let deployed_policy: Option<Vec<u8>> = persisted
            .iter()
            .find(|p| p.name == crate::session::policy::POLICY_NAME)
            .map(|p| p.bytes.clone());
        let policy = if cfg.session.enabled {
            let (source, base, l) = (
                cfg.session.policy.clone(),
                cfg.base_dir.clone(),
                loader.clone(),
            );
            let loaded = tokio::task::spawn_blocking(move || match deployed_policy {
                Some(bytes) => l.load_bytes(&bytes),
                None => l.load(&source, base.as_deref()),
            })
            .await
            .map_err(|e| {
                std::io::Error::other(format!("loading the session policy panicked: {e}"))
            })??;
            Some(loaded)
        } else {
            None
        };
        let mut specs = InterceptorSpec::list_from(&cfg);
        for s in &mut specs {
            if let Some(p) = persisted.iter().find(|p| p.name == s.name) {
                s.source = crate::plugins::PluginSource::Uploaded(p.bytes.as_slice().into());
            }
        }
        let chain = Arc::new(ArcSwap::from_pointee(
            Chain::load(specs, &plugin_options, node_ctx.clone()).await?,
        ));
        let watch_reports = control_tx.clone();
        let plugins = Arc::new(ChainHandle::new(
            chain.clone(),
            node_ctx.clone(),
            plugin_options,
            control_tx,
        ));
        // Heartbeats advertise the chain's fingerprint (updated on a swap)
        // and the node's labels.
        let labels: Vec<(&'static str, String)> = match &policy {
            Some(p) => vec![
                (crate::session::LABEL_SESSIONS, p.source.clone()),
                (crate::session::LABEL_ZONE, cfg.node.zone.clone()),
                (crate::session::LABEL_ROUTE, cfg.node.route().to_owned()),
            ],
            None => vec![(crate::session::LABEL_ZONE, cfg.node.zone.clone())],
        };
        let encode_payload = move |entries: &[ChainEntry]| -> Bytes {
            let l: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
            fingerprint::encode_with_labels(entries, &l).into()
        };
        local.payload = encode_payload(&chain.load().fingerprint());
        let sender = Arc::new(
            Sender::new(cfg.sender.clone(), metrics.clone()).with_security(security.clone()),
        );
        let dispatch = Dispatcher::start(
            cfg.dispatch.clone(),
            sender.clone(),
            encoder.clone(),
            metrics.clone(),
        );
        let channel = Channel::new(
            local.clone(),
            local_id,
            encoder,
            chain,
            sender,
            dispatch,
            metrics.clone(),
        );
        let sessions = policy.map(|p| {
            crate::session::SessionEngine::start(
                cfg.session.clone(),
                cfg.node.route().to_owned(),
                cfg.node.zone.clone(),
                channel.clone(),
                p,
                loader,
            )
        });
        let deployer = crate::deploy::Deployer::start(
            cfg.node.name.clone(),
            channel.clone(),
            plugins.clone(),
            sessions.clone(),
            deploy_keys,
            deploy_store,
            &persisted,
        );
        let receiver = Receiver::start(
            listener,
            &cfg.receiver,
            channel.handler(),
            metrics.clone(),
            security.clone(),
        )?;

        let (mut membership, mut events) = Membership::start(
            &cfg.membership,
            local,
            SocketAddr::new(ip, bound.port()),
            metrics.clone(),
            security.clone(),
        )
        .await?;
        let key_reload = security.map(|sec| {
            let every = Duration::from_millis(cfg.security.reload_ms);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    match sec.ring().reload_if_changed() {
                        Ok(false) => {}
                        Ok(true) => {
                            let (send, all) = sec.ring().ids();
                            tracing::info!(
                                sealing_with = format!("{send:08x}"),
                                accepting = ?all.iter().map(|k| format!("{k:08x}")).collect::<Vec<_>>(),
                                "cluster keys reloaded"
                            );
                        }
                        Err(e) => tracing::error!("{e}; the keys loaded before stay in use"),
                    }
                }
            })
        });
        channel.attach_table(membership.table());
        let _ = node_ctx.table.set(membership.table());
        // The control loop: membership events, plug-in probes and timers, and
        // the channel heartbeat, one at a time through the chain.
        let ch = channel.clone();
        let heartbeat = Duration::from_millis(cfg.plugins.heartbeat_ms);
        let payload = membership.payload_handle();
        let mut payload_changes = membership
            .take_payload_changes()
            .expect("payload changes taken once");
        let table = membership.table();
        let mut watch = FingerprintWatch::default();
        let mut arrivals = membership
            .take_arrivals()
            .expect("heartbeat arrivals taken once");
        let arrivals_wanted = membership.arrivals_wanted();
        let flush = membership.flush_handle();
        arrivals_wanted.store(channel.chain().wants_member_heartbeats(), Ordering::Relaxed);
        // One idle connection to every member in the table: a crash breaks
        // it at once, and the failure detector hears of it.
        let watcher = cfg.membership.watch.then(|| {
            Arc::new(Watcher::new(
                Arc::new(move |m, cause| {
                    let _ = watch_reports.send(ControlEvent::ConnectionLost(m, cause));
                }),
                metrics.clone(),
            ))
        });
        let loop_watcher = watcher.clone();
        let started = node_ctx.started;
        let events_task = tokio::spawn(async move {
            let first = crate::clock::align(tokio::time::Instant::now() + heartbeat, heartbeat);
            let mut tick = tokio::time::interval_at(first, heartbeat);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let ev = tokio::select! {
                    ev = events.recv() => match ev {
                        Some(ev) => {
                            if let Some(w) = &loop_watcher {
                                w.reconcile(&crate::membership::lock(&table).members());
                            }
                            ControlEvent::Member(ev)
                        }
                        None => break,
                    },
                    Some(ev) = control_rx.recv() => ev,
                    Some((m, at)) = arrivals.recv() => {
                        if !ch.chain().wants_member_heartbeats() {
                            continue;
                        }
                        let at = at.saturating_duration_since(started).as_millis() as u64;
                        ControlEvent::MemberHeartbeat(m, at)
                    }
                    Some(peer) = payload_changes.recv() => {
                        watch.check(&ch.chain().fingerprint(), &peer);
                        continue;
                    }
                    _ = tick.tick() => {
                        // Also catches payload changes the bounded change
                        // queue dropped (the table has every latest payload).
                        let peers = crate::membership::lock(&table).members();
                        let local = ch.chain().fingerprint();
                        for p in &peers {
                            watch.check(&local, p);
                        }
                        ControlEvent::Heartbeat
                    }
                };
                let up = match ev {
                    ControlEvent::Apply(change) => {
                        let up = change.apply(ch.chain_cell(), &ch.members()).await;
                        arrivals_wanted
                            .store(ch.chain().wants_member_heartbeats(), Ordering::Relaxed);
                        let local = ch.chain().fingerprint();
                        payload.set(encode_payload(&local));
                        watch.recheck(&local, &crate::membership::lock(&table).members());
                        up
                    }
                    ev @ ControlEvent::ConnectionLost(..) => {
                        // A member that stops gracefully announces it, then
                        // closes its receiver: the announcement may still
                        // wait in a batch of the membership socket.
                        flush.flush().await;
                        ch.chain().control(ev).await
                    }
                    ev => ch.chain().control(ev).await,
                };
                for e in up {
                    ch.on_member_event(e);
                }
            }
        });

        let api_auth = crate::api::ApiAuth {
            token: cfg
                .api
                .token(cfg.base_dir.as_deref())
                .map_err(std::io::Error::other)?,
            open_health: cfg.api.open_health,
        };
        let ready = Arc::new(AtomicBool::new(false));
        let session_routes = sessions.as_ref().map(|e| {
            crate::session::api::router(e.clone(), cfg.session.max_session_bytes + 64 * 1024)
        });
        let (merged, own) = match (session_routes, cfg.session.listen) {
            (Some(r), Some(addr)) => (None, Some((r, addr))),
            (r, _) => (r, None),
        };
        let session_api = match own {
            Some((r, addr)) => Some(
                ApiServer::serve(addr, r)
                    .await
                    .map_err(|cause| StartError::Api { addr, cause })?,
            ),
            None => None,
        };
        let api = match cfg.api.listen_addr() {
            Some(addr) => Some(
                ApiServer::start(
                    addr,
                    cfg.node.name.clone(),
                    channel.clone(),
                    plugins.clone(),
                    metrics.clone(),
                    ready.clone(),
                    sessions.clone(),
                    Some(deployer.clone()),
                    merged,
                    api_auth,
                )
                .await
                .map_err(|cause| StartError::Api { addr, cause })?,
            ),
            None => None,
        };
        let window = Duration::from_millis(2 * cfg.membership.frequency_ms);
        let r = ready.clone();
        let transfer = sessions.clone();
        tokio::spawn(async move {
            tokio::time::sleep(window).await;
            // A joining node is ready once its session state is copied.
            if let Some(e) = transfer {
                e.transfer().await;
            }
            r.store(true, Ordering::Relaxed);
        });

        let via = match cfg.membership.kind {
            MembershipKind::Multicast => format!(
                "multicast {}:{} on {}",
                cfg.membership.address,
                cfg.membership.port,
                cfg.membership
                    .bind
                    .map(|b| b.to_string())
                    .unwrap_or_else(|| "the default interface".into())
            ),
            MembershipKind::Static => format!("static list of {}", cfg.membership.members.len()),
            MembershipKind::Dns => format!(
                "DNS name {} (every {} ms, {})",
                cfg.membership.dns_name,
                cfg.membership.dns_refresh_ms,
                cfg.membership
                    .dns_server_addr()
                    .map_or("the system's resolvers".into(), |s| format!("server {s}"))
            ),
        };
        tracing::info!(
            name = %cfg.node.name,
            id = %local_id.unique_hex(),
            receiver = %bound,
            api = %api.as_ref().map(|a| a.local_addr().to_string()).unwrap_or_else(|| "off".into()),
            "node started; membership by {via}"
        );
        Ok(Self {
            name: cfg.node.name.clone(),
            channel,
            membership: Some(membership),
            receiver: Some(receiver),
            api,
            events: Some(events_task),
            key_reload,
            watcher,
            ready,
            metrics,
            drain_deadline: Duration::from_millis(cfg.sender.timeout_ms),
            plugins,
            sessions,
            session_api,
            deployer,
        })
    }

    /// The deploy service (`shoal plugin deploy`).
    pub fn deployer(&self) -> &crate::deploy::Deployer {
        &self.deployer
    }

    /// The channel, to send and to register listeners.
    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    /// The session engine (none with `[session] enabled = false`).
    pub fn sessions(&self) -> Option<&crate::session::SessionEngine> {
        self.sessions.as_ref()
    }

    /// The session API's own listener, if `[session] listen` is set.
    pub fn session_api_addr(&self) -> Option<SocketAddr> {
        self.session_api.as_ref().map(ApiServer::local_addr)
    }

    /// The interceptor chain: read it, swap a plug-in, apply a changed list.
    pub fn plugins(&self) -> &ChainHandle {
        &self.plugins
    }

    /// Applies the `[[interceptor]]` list of a changed config (SIGHUP): only
    /// the difference is loaded; unchanged plug-ins keep their instances.
    /// Other sections of `cfg` are not applied (they need a restart).
    pub async fn reload_plugins(
        &self,
        cfg: &Config,
    ) -> Result<crate::chain::ChangeReport, crate::chain::SwapError> {
        let mut specs = InterceptorSpec::list_from(cfg);
        self.deployer.override_specs(&mut specs);
        self.plugins.apply_specs(specs).await
    }

    /// This node's identity.
    pub fn id(&self) -> MemberId {
        self.channel.local_id()
    }

    /// The receiver's bound address.
    pub fn receiver_addr(&self) -> SocketAddr {
        self.receiver
            .as_ref()
            .map(Receiver::local_addr)
            .unwrap_or_else(|| self.id().addr())
    }

    /// The admin API's bound address, if enabled.
    pub fn api_addr(&self) -> Option<SocketAddr> {
        self.api.as_ref().map(ApiServer::local_addr)
    }

    /// Members in the channel's view.
    pub fn members(&self) -> Vec<Member> {
        self.channel.members()
    }

    /// The node's counters.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Whether the initial discovery window has passed (and shutdown has not begun).
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// Graceful stop: become not-ready, announce the departure over membership,
    /// drain the asynchronous queue (bounded by the sender timeout), stop the
    /// receiver, close connections, stop the API.
    pub async fn shutdown(mut self) {
        tracing::info!(name = %self.name, "shutting down: leaving the cluster");
        self.ready.store(false, Ordering::Relaxed);
        if let Some(e) = &self.sessions {
            e.stop_serving();
        }
        if let Some(m) = self.membership.take() {
            m.stop().await;
        }
        if let Some(w) = self.watcher.take() {
            w.stop();
        }
        if !self.channel.drain(self.drain_deadline).await {
            // What was still queued is not sent: said, with its size.
            tracing::warn!(
                abandoned_bytes = self.metrics.async_queue_bytes.load(Ordering::Relaxed),
                "asynchronous queue not drained within {:?}; the messages still queued are not sent",
                self.drain_deadline
            );
        }
        if let Some(r) = self.receiver.take() {
            r.stop().await;
        }
        // Deliveries a plug-in deferred: let them finish (bounded).
        self.channel.drain_deferred(self.drain_deadline).await;
        self.channel.close_sender();
        if let Some(t) = self.events.take() {
            t.abort();
        }
        if let Some(t) = self.key_reload.take() {
            t.abort();
        }
        if let Some(a) = self.api.take() {
            a.stop().await;
        }
        if let Some(a) = self.session_api.take() {
            a.stop().await;
        }
        tracing::info!(name = %self.name, "stopped");
    }
}

/// Warns once per peer and fingerprint when a peer's chain differs from
/// this node's in a plug-in that changes the bytes on the wire.
#[derive(Default)]
struct FingerprintWatch {
    warned: HashMap<MemberId, Bytes>,
    /// Peers warned about running other versions, with the payload seen.
    versions: HashMap<MemberId, Bytes>,
}

impl FingerprintWatch {
    fn check(&mut self, local: &[ChainEntry], peer: &Member) {
        let chain = match fingerprint::decode(&peer.payload) {
            Ok(c) => c,
            Err(FingerprintError::NotShoal) => return, // a Tomcat node, say
            Err(e) => {
                tracing::debug!(peer = %peer.id, "unreadable chain fingerprint: {e}");
                return;
            }
        };
        self.check_versions(local, &chain, peer);
        let bad = fingerprint::wire_mismatches(local, &chain);
        if bad.is_empty() {
            self.warned.remove(&peer.id);
            return;
        }
        if self.warned.get(&peer.id) == Some(&peer.payload) {
            return;
        }
        if self.warned.len() >= 4096 {
            self.warned.clear();
        }
        self.warned.insert(peer.id, peer.payload.clone());
        let show = |c: &[ChainEntry]| {
            c.iter()
                .filter(|e| bad.contains(&e.name))
                .map(|e| format!("{} {}", e.name, &e.sha256_hex()[..12]))
                .collect::<Vec<_>>()
                .join(", ")
        };
        tracing::warn!(
            peer = %peer.id,
            "peer's interceptor chain differs in plug-ins that change the wire ({}): here [{}], there [{}]; \
             messages between the two may be unreadable",
            bad.join(", "),
            show(local),
            show(&chain)
        );
    }

    /// A peer that runs another version of a plug-in than this node (a
    /// deploy that did not reach one of the two, or a node started with
    /// an old config): one warning per peer and fingerprint.
    fn check_versions(&mut self, local: &[ChainEntry], chain: &[ChainEntry], peer: &Member) {
        let differ = fingerprint::version_mismatches(local, chain);
        if differ.is_empty() {
            self.versions.remove(&peer.id);
            return;
        }
        if self.versions.get(&peer.id) == Some(&peer.payload) {
            return;
        }
        if self.versions.len() >= 4096 {
            self.versions.clear();
        }
        self.versions.insert(peer.id, peer.payload.clone());
        let list = differ
            .iter()
            .map(|(n, here, there)| format!("{n}: here {}, there {}", &here[..12], &there[..12]))
            .collect::<Vec<_>>()
            .join("; ");
        tracing::warn!(
            peer = %peer.id,
            "peer runs other versions of plug-ins ({list}); `shoal plugin deploy` the current one, or restart the stale node with it"
        );
    }

    /// The local chain changed: every peer is checked again.
    fn recheck(&mut self, local: &[ChainEntry], peers: &[Member]) {
        self.warned.clear();
        self.versions.clear();
        for p in peers {
            self.check(local, p);
        }
    }
}

fn new_unique_id() -> [u8; 16] {
    // UUID v4 bit pattern, as Tribes uses.
    let mut id: [u8; 16] = rand::random();
    id[6] = (id[6] & 0x0f) | 0x40;
    id[8] = (id[8] & 0x3f) | 0x80;
    id
}
