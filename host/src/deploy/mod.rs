//! Cluster-wide deploy of plug-ins: Tomcat's FarmWarDeployer, for `.wasm`.
//!
//! `POST /api/deploy/{name}` (what `shoal plugin deploy` calls) hands a node
//! a component, its manifest and the operator's signature over the
//! manifest. The node checks them, then sends the offer and the component,
//! in chunks of [`CHUNK_BYTES`], to every member over the channel (each
//! acknowledged), and swaps the component in itself. Every member checks
//! the signature against its own `[deploy] keys` before it accepts a byte,
//! assembles the component, checks its SHA-256, swaps it in as
//! `shoal plugin swap` does, stores it (so a restart keeps it), and reports
//! back. A member that refuses or fails keeps its old version.

pub mod sign;
pub mod wire;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::chain::{ChainHandle, ChangeReport, SwapError};
use crate::channel::{Channel, ListenerError, ReceivedMessage};
use crate::member::MemberId;
use crate::session::SessionEngine;
use crate::session::policy::POLICY_NAME;
use crate::wire::SendOptions;
use sign::{AuthError, Manifest, TrustedKeys};
use wire::{Msg, Report};

/// Bytes of the component per message.
pub const CHUNK_BYTES: usize = 256 * 1024;
/// Largest component a deploy carries (as `PUT /api/plugins/{name}`).
pub const MAX_COMPONENT_BYTES: u64 = 64 * 1024 * 1024;
/// Deploys a member assembles at once.
const MAX_ASSEMBLIES: usize = 4;
/// A deploy whose bytes stop arriving is dropped after this long.
const ASSEMBLY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the relaying node waits for a member's report once it has
/// sent every byte (compiling a large component takes seconds).
const REPORT_TIMEOUT: Duration = Duration::from_secs(120);
/// A manifest issued longer ago (or further ahead) than this is refused:
/// an old, signed deploy cannot be replayed later.
const MAX_AGE_MS: i64 = 10 * 60 * 1000;

/// Why a deploy was refused by the node asked to relay it.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// The signature or the keys.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// The manifest does not fit the request or this node.
    #[error("{0}")]
    Refused(String),
}

/// Counters, for `/metrics`.
#[derive(Debug, Default)]
pub struct DeployMetrics {
    offers: AtomicU64,
    applied: AtomicU64,
    failed: AtomicU64,
    refused_auth: AtomicU64,
    refused_stale: AtomicU64,
    refused_tampered: AtomicU64,
    refused_other: AtomicU64,
    bad_messages: AtomicU64,
}

/// One member's line of a deploy's result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemberResult {
    /// The member's node name ("" if it never answered).
    pub node: String,
    /// Its receiver address.
    pub address: String,
    /// Whether it runs the component now.
    pub ok: bool,
    /// "replaced", "unchanged", or why not.
    pub message: String,
    /// SHA-256 it ran before, hex.
    pub old_sha256: Option<String>,
    /// SHA-256 it runs now, hex.
    pub new_sha256: Option<String>,
    /// From the offer to its swap, ms.
    pub ms: f64,
}

impl MemberResult {
    /// A member's report, seen from `address`, `ms` after the offer.
    fn from_report(r: Report, address: String, ms: f64) -> Self {
        Self {
            node: r.node,
            address,
            ok: r.ok,
            message: r.message,
            old_sha256: r.old_sha256,
            new_sha256: r.new_sha256,
            ms,
        }
    }
}

struct Assembly {
    manifest: Manifest,
    manifest_json: String,
    signature: String,
    bytes: Vec<u8>,
    started: Instant,
}

/// Who waits for which member's report of which deploy.
type Waiting = HashMap<(u64, [u8; 16]), tokio::sync::oneshot::Sender<Report>>;
/// Per plug-in: when the deploy it runs was issued, and its component.
type Applied = HashMap<String, (i64, Arc<[u8]>)>;

struct Inner {
    node: String,
    channel: Channel,
    plugins: Arc<ChainHandle>,
    sessions: Option<SessionEngine>,
    keys: TrustedKeys,
    store: Option<PathBuf>,
    assemblies: Mutex<HashMap<([u8; 16], u64), Assembly>>,
    waiting: Mutex<Waiting>,
    /// Per plug-in, the deployed component it runs and when its deploy
    /// was issued (a SIGHUP keeps it; an older deploy is refused).
    applied: Mutex<Applied>,
    metrics: DeployMetrics,
}

/// The deploy service of a node. Cheap to clone.
#[derive(Clone)]
pub struct Deployer {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Deployer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deployer")
            .field("keys", &self.inner.keys)
            .field("store", &self.inner.store)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A component stored by an earlier deploy, checked again when read.
#[derive(Debug)]
pub struct Persisted {
    /// The plug-in's name.
    pub name: String,
    /// The component.
    pub bytes: Vec<u8>,
    /// Its manifest.
    pub manifest: Manifest,
}

#[derive(Serialize, Deserialize)]
struct StoredDeploy {
    manifest: String,
    signature: String,
}

/// Reads the components stored in `dir` by earlier deploys: each must still
/// carry a valid signature by one of `keys` and match its SHA-256; any
/// other file is skipped with a warning.
pub fn read_persisted(dir: &Path, keys: &TrustedKeys) -> Vec<Persisted> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let path = e.path();
        if path.extension().and_then(|x| x.to_str()) != Some("json") {
            continue;
        }
        let read = || -> Result<Persisted, String> {
            let text = std::fs::read_to_string(&path).map_err(|e| e.to_string())?;
            let stored: StoredDeploy = serde_json::from_str(&text).map_err(|e| e.to_string())?;
            let manifest = keys
                .verify(&stored.manifest, &stored.signature)
                .map_err(|e| e.to_string())?;
            let wasm = path.with_extension("wasm");
            if path.file_stem().and_then(|s| s.to_str()) != Some(manifest.name.as_str()) {
                return Err("the file's name is not the manifest's".into());
            }
            let bytes = std::fs::read(&wasm).map_err(|e| format!("{}: {e}", wasm.display()))?;
            if sha256_hex(&bytes) != manifest.sha256 {
                return Err(format!(
                    "{}: SHA-256 differs from its manifest",
                    wasm.display()
                ));
            }
            Ok(Persisted {
                name: manifest.name.clone(),
                bytes,
                manifest,
            })
        };
        match read() {
            Ok(p) => out.push(p),
            Err(e) => tracing::warn!(file = %path.display(), "stored deploy ignored: {e}"),
        }
    }
    out
}

impl Deployer {
    /// The deploy service of the node `node` (its name), listening on
    /// `channel`; `applied` are the stored deploys the node started with.
    pub fn start(
        node: String,
        channel: Channel,
        plugins: Arc<ChainHandle>,
        sessions: Option<SessionEngine>,
        keys: TrustedKeys,
        store: Option<PathBuf>,
        applied: &[Persisted],
    ) -> Self {
        let d = Self {
            inner: Arc::new(Inner {
                node,
                channel: channel.clone(),
                plugins,
                sessions,
                keys,
                store,
                assemblies: Mutex::new(HashMap::new()),
                waiting: Mutex::new(HashMap::new()),
                applied: Mutex::new(
                    applied
                        .iter()
                        .map(|p| {
                            (
                                p.name.clone(),
                                (p.manifest.issued_ms, Arc::from(p.bytes.as_slice())),
                            )
                        })
                        .collect(),
                ),
                metrics: DeployMetrics::default(),
            }),
        };
        let me = d.clone();
        channel.add_listener(Arc::new(move |m: &ReceivedMessage| me.on_message(m)));
        d
    }

    /// Replaces, in `specs`, each interceptor this node runs a deployed
    /// version of by that version (a SIGHUP keeps deployed components).
    pub fn override_specs(&self, specs: &mut [crate::plugins::InterceptorSpec]) {
        let applied = lock(&self.inner.applied);
        for s in specs {
            if let Some((_, bytes)) = applied.get(&s.name) {
                s.source = crate::plugins::PluginSource::Uploaded(bytes.clone());
            }
        }
    }

    fn known(&self, name: &str) -> bool {
        (name == POLICY_NAME && self.inner.sessions.is_some())
            || self
                .inner
                .plugins
                .current()
                .interceptors()
                .iter()
                .any(|i| i.name() == name)
    }

    /// The checks every node makes before it accepts a byte.
    fn check_offer(&self, manifest_json: &str, signature: &str) -> Result<Manifest, DeployError> {
        let m = &self.inner.metrics;
        let manifest = self
            .inner
            .keys
            .verify(manifest_json, signature)
            .inspect_err(|_| {
                m.refused_auth.fetch_add(1, Ordering::Relaxed);
            })?;
        let refuse = |counter: &AtomicU64, msg: String| {
            counter.fetch_add(1, Ordering::Relaxed);
            DeployError::Refused(msg)
        };
        if !self.known(&manifest.name) {
            return Err(refuse(
                &m.refused_other,
                format!("no plug-in named {:?} on this node", manifest.name),
            ));
        }
        if manifest.size == 0 || manifest.size > MAX_COMPONENT_BYTES {
            return Err(refuse(
                &m.refused_other,
                format!(
                    "component size {} (1..={MAX_COMPONENT_BYTES})",
                    manifest.size
                ),
            ));
        }
        if manifest.sha256.len() != 64 || hex::decode(&manifest.sha256).is_err() {
            return Err(refuse(
                &m.refused_other,
                "the manifest's sha256 is not 64 hex digits".into(),
            ));
        }
        let now = crate::clock::now_ms();
        if (now - manifest.issued_ms).abs() > MAX_AGE_MS {
            return Err(refuse(
                &m.refused_stale,
                format!(
                    "the manifest was issued {:.0} s from now (at most {} s either way): refused as a possible replay",
                    (manifest.issued_ms - now) as f64 / 1000.0,
                    MAX_AGE_MS / 1000
                ),
            ));
        }
        if let Some((at, _)) = lock(&self.inner.applied).get(&manifest.name)
            && manifest.issued_ms <= *at
        {
            return Err(refuse(
                &m.refused_stale,
                "not newer than the deploy this node runs: refused as a possible replay".into(),
            ));
        }
        Ok(manifest)
    }

    /// Deploys the component `bytes`, described by `manifest_json` and
    /// signed by `signature`, to this node and every member. Answers one
    /// line per node, this one first.
    pub async fn deploy(
        &self,
        manifest_json: String,
        signature: String,
        bytes: Vec<u8>,
    ) -> Result<Vec<MemberResult>, DeployError> {
        let manifest = self.check_offer(&manifest_json, &signature)?;
        if bytes.len() as u64 != manifest.size || sha256_hex(&bytes) != manifest.sha256 {
            self.inner
                .metrics
                .refused_tampered
                .fetch_add(1, Ordering::Relaxed);
            return Err(DeployError::Refused(
                "the component's size or SHA-256 differs from its signed manifest".into(),
            ));
        }
        let deploy: u64 = rand::random();
        let bytes = Arc::new(bytes);
        tracing::info!(
            plugin = %manifest.name,
            sha256 = %&manifest.sha256[..12],
            bytes = bytes.len(),
            members = self.inner.channel.members().len(),
            "deploying to the cluster"
        );
        let local = {
            let me = self.clone();
            let (manifest, json, sig, bytes) = (
                manifest.clone(),
                manifest_json.clone(),
                signature.clone(),
                bytes.clone(),
            );
            async move {
                let started = Instant::now();
                let r = me
                    .apply(deploy, &manifest, &json, &sig, &bytes, started)
                    .await;
                let ms = r.ms;
                MemberResult::from_report(r, me.inner.channel.local_id().to_string(), ms)
            }
        };
        let remote = self.inner.channel.members().into_iter().map(|member| {
            let me = self.clone();
            let (json, sig, bytes) = (manifest_json.clone(), signature.clone(), bytes.clone());
            async move { me.send_to(deploy, member.id, json, sig, bytes).await }
        });
        let (local, mut remote) = tokio::join!(local, futures_util::future::join_all(remote));
        remote.sort_by(|a, b| a.address.cmp(&b.address));
        let mut all = vec![local];
        all.extend(remote);
        Ok(all)
    }

    /// Sends the offer and the bytes to `to` and waits for its report.
    async fn send_to(
        &self,
        deploy: u64,
        to: MemberId,
        manifest: String,
        signature: String,
        bytes: Arc<Vec<u8>>,
    ) -> MemberResult {
        let started = Instant::now();
        let (tx, mut rx) = tokio::sync::oneshot::channel();
        lock(&self.inner.waiting).insert((deploy, to.unique_id), tx);
        let failed = |message: String| MemberResult {
            node: String::new(),
            address: to.to_string(),
            ok: false,
            message,
            old_sha256: None,
            new_sha256: None,
            ms: started.elapsed().as_secs_f64() * 1000.0,
        };
        let acked = SendOptions::USE_ACK | SendOptions::SYNCHRONIZED_ACK;
        let ch = &self.inner.channel;
        let mut sent = ch
            .send(
                &[to],
                &Msg::Offer {
                    deploy,
                    manifest,
                    signature,
                }
                .encode(),
                acked,
            )
            .await
            .map_err(|e| format!("refused the offer ({e})"));
        if sent.is_ok() {
            for (i, chunk) in bytes.chunks(CHUNK_BYTES).enumerate() {
                let body = Msg::Chunk {
                    deploy,
                    offset: (i * CHUNK_BYTES) as u64,
                    bytes: chunk.to_vec(),
                }
                .encode();
                if let Err(e) = ch.send(&[to], &body, acked).await {
                    sent = Err(format!("refused the component's bytes ({e})"));
                    break;
                }
            }
        }
        // A member that refuses says why in a report of its own.
        let wait = if sent.is_ok() {
            REPORT_TIMEOUT
        } else {
            Duration::from_secs(2)
        };
        let report = tokio::time::timeout(wait, &mut rx).await;
        lock(&self.inner.waiting).remove(&(deploy, to.unique_id));
        match (report, sent) {
            (Ok(Ok(r)), _) => MemberResult::from_report(
                r,
                to.to_string(),
                started.elapsed().as_secs_f64() * 1000.0,
            ),
            (_, Err(e)) => failed(e),
            (_, Ok(())) => failed(format!(
                "no report within {} s after the last byte",
                wait.as_secs()
            )),
        }
    }

    /// Checks the assembled component, swaps it in, stores it.
    async fn apply(
        &self,
        deploy: u64,
        manifest: &Manifest,
        manifest_json: &str,
        signature: &str,
        bytes: &[u8],
        started: Instant,
    ) -> Report {
        let m = &self.inner.metrics;
        let mut report = Report {
            deploy,
            node: self.inner.node.clone(),
            ok: false,
            message: String::new(),
            old_sha256: None,
            new_sha256: None,
            ms: 0.0,
        };
        if bytes.len() as u64 != manifest.size || sha256_hex(bytes) != manifest.sha256 {
            m.refused_tampered.fetch_add(1, Ordering::Relaxed);
            report.message =
                "refused: the bytes received do not match the signed SHA-256 (corrupted or tampered with)"
                    .into();
            tracing::warn!(plugin = %manifest.name, "deploy not applied: {}", report.message);
            report.ms = started.elapsed().as_secs_f64() * 1000.0;
            return report;
        }
        let swapped: Result<ChangeReport, SwapError> = match &self.inner.sessions {
            Some(e) if manifest.name == POLICY_NAME => e.swap_policy(bytes.to_vec()).await,
            _ => {
                self.inner
                    .plugins
                    .swap(&manifest.name, bytes.to_vec())
                    .await
            }
        };
        report.ms = started.elapsed().as_secs_f64() * 1000.0;
        match swapped {
            Ok(r) => {
                let change = r.plugins.iter().find(|p| p.name == manifest.name);
                report.ok = true;
                report.message = change
                    .map(|c| format!("{:?}", c.change).to_lowercase())
                    .unwrap_or_else(|| "replaced".into());
                report.old_sha256 = change.and_then(|c| c.old_sha256.clone());
                report.new_sha256 = change.and_then(|c| c.new_sha256.clone());
                m.applied.fetch_add(1, Ordering::Relaxed);
                lock(&self.inner.applied).insert(
                    manifest.name.clone(),
                    (manifest.issued_ms, Arc::from(bytes)),
                );
                if let Err(e) = self.persist(manifest, manifest_json, signature, bytes) {
                    report.message.push_str(&format!(
                        "; NOT stored (a restart would run the old version): {e}"
                    ));
                    tracing::error!(plugin = %manifest.name, "deployed component not stored: {e}");
                }
                tracing::info!(plugin = %manifest.name, sha256 = %&manifest.sha256[..12], ms = report.ms, "deploy applied");
            }
            Err(e) => {
                m.failed.fetch_add(1, Ordering::Relaxed);
                report.message = format!("failed, the old version keeps running: {e}");
                tracing::warn!(plugin = %manifest.name, "deploy failed: {e}");
            }
        }
        report
    }

    /// Stores the component and its signed manifest (a restart runs it).
    fn persist(
        &self,
        manifest: &Manifest,
        manifest_json: &str,
        signature: &str,
        bytes: &[u8],
    ) -> std::io::Result<()> {
        let Some(dir) = &self.inner.store else {
            return Ok(());
        };
        create_private_dir(dir)?;
        let write = |name: String, data: &[u8]| -> std::io::Result<()> {
            let tmp = dir.join(format!(".{name}.tmp"));
            std::fs::write(&tmp, data)?;
            std::fs::rename(&tmp, dir.join(name))
        };
        // The component first: a manifest never names a missing file.
        write(format!("{}.wasm", manifest.name), bytes)?;
        let stored = serde_json::to_vec_pretty(&StoredDeploy {
            manifest: manifest_json.to_owned(),
            signature: signature.to_owned(),
        })
        .map_err(std::io::Error::other)?;
        write(format!("{}.json", manifest.name), &stored)
    }

    fn on_message(&self, m: &ReceivedMessage) -> Result<(), ListenerError> {
        if !Msg::is_deploy(&m.body) {
            return Ok(());
        }
        let metrics = &self.inner.metrics;
        let msg = Msg::decode(&m.body).map_err(|e| {
            let n = metrics.bad_messages.fetch_add(1, Ordering::Relaxed) + 1;
            if n <= 3 || n.is_multiple_of(100) {
                tracing::warn!(from = %m.sender.id, count = n, "deploy message dropped: {e}");
            }
            ListenerError(e)
        })?;
        let from = m.sender.id;
        match msg {
            Msg::Offer {
                deploy,
                manifest,
                signature,
            } => {
                metrics.offers.fetch_add(1, Ordering::Relaxed);
                let checked = self.check_offer(&manifest, &signature);
                let mut asm = lock(&self.inner.assemblies);
                asm.retain(|_, a| a.started.elapsed() < ASSEMBLY_TIMEOUT);
                let refused = match checked {
                    Err(e) => Some(e.to_string()),
                    Ok(_) if asm.len() >= MAX_ASSEMBLIES => {
                        metrics.refused_other.fetch_add(1, Ordering::Relaxed);
                        Some(format!("busy: {MAX_ASSEMBLIES} deploys under way"))
                    }
                    Ok(parsed) => {
                        let size = parsed.size as usize;
                        asm.insert(
                            (from.unique_id, deploy),
                            Assembly {
                                manifest: parsed,
                                manifest_json: manifest,
                                signature,
                                bytes: Vec::with_capacity(size),
                                started: Instant::now(),
                            },
                        );
                        None
                    }
                };
                drop(asm);
                if let Some(reason) = refused {
                    tracing::warn!(from = %from, "deploy refused: {reason}");
                    self.report_to(
                        from,
                        Report {
                            deploy,
                            node: self.inner.node.clone(),
                            ok: false,
                            message: format!("refused: {reason}"),
                            old_sha256: None,
                            new_sha256: None,
                            ms: 0.0,
                        },
                    );
                    return Err(ListenerError(reason));
                }
            }
            Msg::Chunk {
                deploy,
                offset,
                bytes,
            } => {
                let mut asm = lock(&self.inner.assemblies);
                let key = (from.unique_id, deploy);
                let Some(a) = asm.get_mut(&key) else {
                    return Err(ListenerError("no offer for these bytes".into()));
                };
                let fits = offset == a.bytes.len() as u64
                    && (a.bytes.len() + bytes.len()) as u64 <= a.manifest.size;
                if !fits {
                    asm.remove(&key);
                    metrics.refused_tampered.fetch_add(1, Ordering::Relaxed);
                    return Err(ListenerError(
                        "bytes out of order or beyond the signed size".into(),
                    ));
                }
                a.bytes.extend_from_slice(&bytes);
                if a.bytes.len() as u64 == a.manifest.size
                    && let Some(a) = asm.remove(&key)
                {
                    drop(asm);
                    let me = self.clone();
                    tokio::spawn(async move {
                        let r = me
                            .apply(
                                deploy,
                                &a.manifest,
                                &a.manifest_json,
                                &a.signature,
                                &a.bytes,
                                a.started,
                            )
                            .await;
                        me.report_to(from, r);
                    });
                }
            }
            Msg::Report(r) => {
                if let Some(tx) = lock(&self.inner.waiting).remove(&(r.deploy, from.unique_id)) {
                    let _ = tx.send(r);
                }
            }
        }
        Ok(())
    }

    fn report_to(&self, to: MemberId, r: Report) {
        let ch = self.inner.channel.clone();
        tokio::spawn(async move {
            if let Err(e) = ch
                .send(&[to], &Msg::Report(r).encode(), SendOptions::USE_ACK)
                .await
            {
                tracing::warn!(to = %to, "deploy report not delivered: {e}");
            }
        });
    }

    /// Appends the counters to `out` (Prometheus text).
    pub fn render_metrics(&self, out: &mut String) {
        use std::fmt::Write;
        let m = &self.inner.metrics;
        let _ = writeln!(
            out,
            "# HELP shoal_deploys_total Deploys this node received, by outcome.\n# TYPE shoal_deploys_total counter"
        );
        for (outcome, v) in [
            ("applied", &m.applied),
            ("failed", &m.failed),
            ("refused_unauthenticated", &m.refused_auth),
            ("refused_stale", &m.refused_stale),
            ("refused_tampered", &m.refused_tampered),
            ("refused_other", &m.refused_other),
        ] {
            let _ = writeln!(
                out,
                "shoal_deploys_total{{outcome=\"{outcome}\"}} {}",
                v.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP shoal_deploy_offers_total Deploy offers received from members.\n# TYPE shoal_deploy_offers_total counter\nshoal_deploy_offers_total {}",
            m.offers.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP shoal_deploy_bad_messages_total Deploy messages that did not decode.\n# TYPE shoal_deploy_bad_messages_total counter\nshoal_deploy_bad_messages_total {}",
            m.bad_messages.load(Ordering::Relaxed)
        );
    }
}

/// Creates `dir` (owner-only on Unix) if missing.
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
    b.create(dir)
}
