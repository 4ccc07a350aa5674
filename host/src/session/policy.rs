//! A loaded session policy (the `session-policy` world): where each
//! session's copies belong. One instance, called one at a time, in the same
//! instance pool as interceptors (memory cap, deadline, recreated after a
//! failure). A failing call or a result of the wrong shape is counted and
//! answered by the failure mode: fail-open places a copy on every member,
//! fail-closed moves nothing (current backups stay, no new ones).

use std::sync::Arc;

use wasmtime::Store;
use wasmtime::component::{Linker, ResourceAny};

use super::wire::Uid;
use crate::config::FailureMode;
use crate::member::MemberId;
use crate::plugins::{FailureKind, NodeCtx, PluginLoadError, PluginOptions, PluginShared};
use crate::wasm::bindings::policy::SessionPolicy;
use crate::wasm::bindings::policy::SessionPolicyPre;
use crate::wasm::bindings::policy::shoal::cluster::placement_types as wit;
use crate::wasm::engine::{self, content_hash, engine};
use crate::wasm::host::HostState;
use crate::wasm::pool::{self, InstancePool, PoolLimits};
use crate::wasm::wasi;

/// Built-in policies, embedded at build time from `guests/` (names as
/// [`crate::config::BUILTIN_POLICIES`]).
pub const BUILTIN_POLICIES: [(&str, &[u8]); 2] = [
    (
        "delta",
        include_bytes!(concat!(env!("SHOAL_GUEST_DIR"), "/delta_policy.wasm")),
    ),
    (
        "backup",
        include_bytes!(concat!(env!("SHOAL_GUEST_DIR"), "/backup_policy.wasm")),
    ),
];

/// The policy's name in logs, metrics and `PUT /api/plugins/{name}`.
pub const POLICY_NAME: &str = "session-policy";

/// A member that holds sessions, as the engine sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViewNode {
    /// Unique id.
    pub uid: Uid,
    /// Identity (for sending).
    pub id: MemberId,
    /// `[node] zone`.
    pub zone: String,
    /// jvmRoute.
    pub route: String,
    /// Uptime, ms.
    pub alive_ms: i64,
}

/// Sessions to place, as columns (see the WIT `sessions` record).
#[derive(Debug, Clone, Default)]
pub struct PlaceIn {
    /// Key bits.
    pub keys: Vec<u64>,
    /// Current primary index, or -1.
    pub primaries: Vec<i32>,
    /// Backup list starts (n + 1 entries).
    pub backup_start: Vec<u32>,
    /// Backup indices.
    pub backups: Vec<u32>,
    /// Sizes in bytes.
    pub sizes: Vec<u32>,
}

impl PlaceIn {
    /// An empty batch.
    pub fn new() -> Self {
        Self {
            backup_start: vec![0],
            ..Self::default()
        }
    }

    /// Adds one session.
    pub fn push(&mut self, key: u64, primary: Option<usize>, backups: &[usize], size: usize) {
        self.keys.push(key);
        self.primaries.push(primary.map_or(-1, |p| p as i32));
        self.backups.extend(backups.iter().map(|&b| b as u32));
        self.backup_start.push(self.backups.len() as u32);
        self.sizes.push(size.min(u32::MAX as usize) as u32);
    }

    /// Sessions in the batch.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    fn backups_of(&self, i: usize) -> &[u32] {
        &self.backups[self.backup_start[i] as usize..self.backup_start[i + 1] as usize]
    }
}

/// Where sessions belong: per session, the primary's and the backups'
/// indices into the node list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlaceOut {
    /// Primary index per session.
    pub primaries: Vec<u32>,
    /// Backup list starts (n + 1 entries).
    pub backup_start: Vec<u32>,
    /// Backup indices.
    pub backups: Vec<u32>,
}

impl PlaceOut {
    /// Session `i`'s backups.
    pub fn backups_of(&self, i: usize) -> &[u32] {
        &self.backups[self.backup_start[i] as usize..self.backup_start[i + 1] as usize]
    }

    /// Checks the shape against `n` sessions on `nodes` nodes.
    fn check(&self, n: usize, nodes: usize) -> Result<(), String> {
        if self.primaries.len() != n || self.backup_start.len() != n + 1 {
            return Err(format!(
                "{} primaries and {} backup starts for {n} sessions",
                self.primaries.len(),
                self.backup_start.len()
            ));
        }
        if self.backup_start[0] != 0
            || self.backup_start.windows(2).any(|w| w[0] > w[1])
            || self.backup_start[n] as usize != self.backups.len()
        {
            return Err("backup-start is not a list of offsets into backups".into());
        }
        for i in 0..n {
            let p = self.primaries[i];
            let b = self.backups_of(i);
            if p as usize >= nodes || b.iter().any(|&x| x as usize >= nodes) {
                return Err(format!("session {i}: an index is not below {nodes}"));
            }
            if b.contains(&p) {
                return Err(format!("session {i}: the primary is also a backup"));
            }
            if (1..b.len()).any(|j| b[..j].contains(&b[j])) {
                return Err(format!("session {i}: a backup is listed twice"));
            }
        }
        Ok(())
    }

    /// The failure mode's placement: the current (or a promoted) primary
    /// and, fail-open, every other node as a backup; fail-closed, none.
    fn fallback(input: &PlaceIn, nodes: usize, local: usize, mode: FailureMode) -> Self {
        let mut out = PlaceOut {
            primaries: Vec::with_capacity(input.len()),
            backup_start: vec![0],
            backups: Vec::new(),
        };
        for i in 0..input.len() {
            let p = match input.primaries[i] {
                p if p >= 0 => p as u32,
                _ => input.backups_of(i).first().copied().unwrap_or(local as u32),
            };
            out.primaries.push(p);
            match mode {
                FailureMode::FailOpen => {
                    out.backups.extend((0..nodes as u32).filter(|&n| n != p));
                }
                // No movement: the current backups keep their copies.
                FailureMode::FailClosed => {
                    let start = out.backups.len();
                    for &b in input.backups_of(i) {
                        if b != p && (b as usize) < nodes && !out.backups[start..].contains(&b) {
                            out.backups.push(b);
                        }
                    }
                }
            }
            out.backup_start.push(out.backups.len() as u32);
        }
        out
    }
}

/// What loading a policy needs besides its code: kept by the engine so a
/// new version can be loaded while the node runs.
#[derive(Debug, Clone)]
pub struct PolicyLoader {
    /// `[session.settings]` as strings.
    pub settings: Vec<(String, String)>,
    /// `[session] failure_mode`.
    pub failure_mode: FailureMode,
    /// Plug-in limits and the compile cache.
    pub opts: PluginOptions,
    /// The node's context (counters, logs).
    pub node: Arc<NodeCtx>,
}

impl PolicyLoader {
    /// Loads `source` (a built-in name or a path relative to `base_dir`).
    pub fn load(
        &self,
        source: &str,
        base_dir: Option<&std::path::Path>,
    ) -> Result<Policy, PluginLoadError> {
        Policy::load_blocking(
            source,
            base_dir,
            self.settings.clone(),
            self.failure_mode,
            &self.opts,
            self.node.clone(),
        )
    }

    /// Loads a policy from uploaded bytes.
    pub fn load_bytes(&self, bytes: &[u8]) -> Result<Policy, PluginLoadError> {
        Policy::from_bytes(
            "uploaded",
            bytes,
            self.settings.clone(),
            self.failure_mode,
            &self.opts,
            self.node.clone(),
        )
    }
}

struct PolicyInstance {
    bindings: SessionPolicy,
    policy: ResourceAny,
}

impl std::fmt::Debug for PolicyInstance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PolicyInstance")
    }
}

struct PolicyFactory {
    pre: SessionPolicyPre<HostState>,
    settings: Vec<(String, String)>,
}

impl pool::Instantiate for PolicyFactory {
    type Instance = PolicyInstance;

    fn instantiate(&self, store: &mut Store<HostState>) -> Result<PolicyInstance, String> {
        let bindings = self
            .pre
            .instantiate(&mut *store)
            .map_err(|e| format!("instantiation failed: {e:#}"))?;
        let policy = bindings
            .shoal_cluster_placement()
            .policy()
            .call_create(&mut *store, &self.settings)
            .map_err(|e| format!("create() trapped: {e:#}"))??;
        Ok(PolicyInstance { bindings, policy })
    }
}

/// A loaded session policy.
pub struct Policy {
    /// What the config named (`delta`, `backup` or a path).
    pub source: String,
    /// SHA-256 of the component, hex.
    pub hash: String,
    /// The version it declares.
    pub version: String,
    /// Whether members without a copy keep a location entry.
    pub proxies: bool,
    /// What a failure does.
    pub failure_mode: FailureMode,
    pool: InstancePool<PolicyFactory>,
}

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policy")
            .field("source", &self.source)
            .field("proxies", &self.proxies)
            .finish_non_exhaustive()
    }
}

impl Policy {
    /// Loads `source` (a built-in name or a file path, relative to
    /// `base_dir`) on the calling thread: compile (or the cache), link,
    /// instantiate, `create`, `info`.
    pub fn load_blocking(
        source: &str,
        base_dir: Option<&std::path::Path>,
        settings: Vec<(String, String)>,
        failure_mode: FailureMode,
        opts: &PluginOptions,
        node: Arc<NodeCtx>,
    ) -> Result<Self, PluginLoadError> {
        let file_bytes;
        let bytes: &[u8] = match BUILTIN_POLICIES.iter().find(|(n, _)| *n == source) {
            Some((_, b)) => b,
            None => {
                let path = match base_dir {
                    Some(d) => d.join(source),
                    None => std::path::PathBuf::from(source),
                };
                file_bytes = std::fs::read(&path).map_err(|cause| PluginLoadError::Read {
                    name: POLICY_NAME.to_owned(),
                    file: path.clone(),
                    cause,
                })?;
                &file_bytes
            }
        };
        Self::from_bytes(source, bytes, settings, failure_mode, opts, node)
    }

    /// Loads a policy from the bytes of its component (`source` names it
    /// in logs: a built-in name, a path, or "uploaded").
    pub fn from_bytes(
        source: &str,
        bytes: &[u8],
        settings: Vec<(String, String)>,
        failure_mode: FailureMode,
        opts: &PluginOptions,
        node: Arc<NodeCtx>,
    ) -> Result<Self, PluginLoadError> {
        let name = POLICY_NAME.to_owned();
        let hash = content_hash(bytes);
        let component = engine::load_component(engine(), bytes, &hash, opts.cache_dir.as_deref())
            .map_err(|cause| PluginLoadError::Invalid {
            name: name.clone(),
            source_desc: source.to_owned(),
            cause,
        })?;
        let wrong_world = |cause: wasmtime::Error| PluginLoadError::WrongWorld {
            name: name.clone(),
            source_desc: source.to_owned(),
            cause,
        };
        let mut linker: Linker<HostState> = Linker::new(engine());
        wasi::add_to_linker(&mut linker).map_err(wrong_world)?;
        SessionPolicy::add_to_linker::<HostState, wasmtime::component::HasSelf<HostState>>(
            &mut linker,
            |s| s,
        )
        .map_err(wrong_world)?;
        let pre = linker.instantiate_pre(&component).map_err(wrong_world)?;
        let pre = SessionPolicyPre::new(pre).map_err(wrong_world)?;
        let shared = Arc::new(PluginShared::new(name.clone(), node.next_generation()));
        let mut pool = InstancePool::new(
            PolicyFactory { pre, settings },
            shared,
            node,
            PoolLimits {
                // Placing 4096 sessions is one call: it gets the control
                // deadline, not a message call's.
                call_deadline: opts.create_deadline,
                control_deadline: opts.create_deadline,
                memory: opts.memory_limit,
                workers: 1,
            },
        );
        pool.set_single(true);
        let mut slot = pool.make().map_err(|message| PluginLoadError::Create {
            name: name.clone(),
            source_desc: source.to_owned(),
            message,
        })?;
        let running = engine::GuestCall::enter();
        let info = slot
            .instance
            .bindings
            .shoal_cluster_placement()
            .policy()
            .call_info(&mut slot.store, slot.instance.policy)
            .map_err(|e| PluginLoadError::Create {
                name: name.clone(),
                source_desc: source.to_owned(),
                message: format!("info() failed: {e:#}"),
            })?;
        drop(running);
        pool.put_control(slot);
        tracing::info!(
            policy = %source, hash = %&hash[..12], version = %info.version,
            proxies = info.proxies, "session policy loaded"
        );
        Ok(Self {
            source: source.to_owned(),
            hash,
            version: info.version.chars().take(32).collect(),
            proxies: info.proxies,
            failure_mode,
            pool,
        })
    }

    /// Live swap, old side: the state for a successor (none if it keeps
    /// none or the call failed).
    pub fn export_state(&self) -> Option<Vec<u8>> {
        self.pool
            .control(|s| {
                s.instance
                    .bindings
                    .shoal_cluster_placement()
                    .policy()
                    .call_export_state(&mut s.store, s.instance.policy)
            })
            .ok()
            .and_then(|(state, _)| state)
    }

    /// Live swap, new side: hands over the predecessor's state; an error
    /// refuses the swap.
    pub fn take_over(&self, state: Option<&[u8]>) -> Result<(), String> {
        match self.pool.control(|s| {
            s.instance
                .bindings
                .shoal_cluster_placement()
                .policy()
                .call_take_over(&mut s.store, s.instance.policy, state)
        }) {
            Ok((r, _)) => r,
            Err(kind) => Err(format!("take-over failed ({})", kind.label())),
        }
    }

    /// The policy's shared state (failure counts, counters).
    pub fn shared(&self) -> &Arc<PluginShared> {
        self.pool.shared()
    }

    /// Places `input` on `nodes` (`local` is this node's index). Never
    /// fails: a failing policy is counted, logged, and answered by the
    /// failure mode.
    pub fn place(&self, nodes: &[ViewNode], local: usize, input: &PlaceIn) -> PlaceOut {
        if input.is_empty() {
            return PlaceOut {
                primaries: Vec::new(),
                backup_start: vec![0],
                backups: Vec::new(),
            };
        }
        let wnodes: Vec<wit::Node> = nodes
            .iter()
            .map(|n| wit::Node {
                id: crate::wasm::bindings::shoal::cluster::types::MemberId {
                    hi: u64::from_be_bytes(n.uid[..8].try_into().unwrap_or_default()),
                    lo: u64::from_be_bytes(n.uid[8..].try_into().unwrap_or_default()),
                },
                zone: n.zone.clone(),
                route: n.route.clone(),
                alive_ms: n.alive_ms,
            })
            .collect();
        let sessions = wit::Sessions {
            keys: input.keys.clone(),
            primaries: input.primaries.clone(),
            backup_start: input.backup_start.clone(),
            backups: input.backups.clone(),
            sizes: input.sizes.clone(),
        };
        let r = self.pool.worker(|s| {
            s.instance
                .bindings
                .shoal_cluster_placement()
                .policy()
                .call_place(
                    &mut s.store,
                    s.instance.policy,
                    &wnodes,
                    local as u32,
                    &sessions,
                )
        });
        if let Ok((p, _)) = r {
            let out = PlaceOut {
                primaries: p.primaries,
                backup_start: p.backup_start,
                backups: p.backups,
            };
            match out.check(input.len(), nodes.len()) {
                Ok(()) => return out,
                Err(e) => self.pool.fail(FailureKind::Trap, &format!("place(): {e}")),
            }
        }
        PlaceOut::fallback(input, nodes.len(), local, self.failure_mode)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn shape_checks_catch_every_broken_contract() {
        let ok = PlaceOut {
            primaries: vec![0, 1],
            backup_start: vec![0, 1, 2],
            backups: vec![1, 0],
        };
        assert_eq!(ok.check(2, 2), Ok(()));
        let mut bad = ok.clone();
        bad.primaries.pop();
        assert!(bad.check(2, 2).is_err());
        let mut bad = ok.clone();
        bad.backups = vec![1, 1];
        assert!(bad.check(2, 2).unwrap_err().contains("also a backup"));
        let mut bad = ok.clone();
        bad.backups = vec![2, 0];
        assert!(bad.check(2, 2).unwrap_err().contains("not below"));
        let mut bad = ok.clone();
        bad.backup_start = vec![0, 2, 1];
        assert!(bad.check(2, 2).is_err());
        let dup = PlaceOut {
            primaries: vec![0],
            backup_start: vec![0, 2],
            backups: vec![1, 1],
        };
        assert!(dup.check(1, 3).unwrap_err().contains("twice"));
    }

    #[test]
    fn the_fallback_promotes_the_first_backup_and_follows_the_mode() {
        let mut input = PlaceIn::new();
        input.push(1, Some(0), &[], 10);
        input.push(2, None, &[2, 1], 10);
        input.push(3, None, &[], 10);
        let open = PlaceOut::fallback(&input, 3, 0, FailureMode::FailOpen);
        assert_eq!(open.primaries, [0, 2, 0]);
        assert_eq!(open.backups_of(0), [1, 2]);
        assert_eq!(open.backups_of(1), [0, 1]);
        let closed = PlaceOut::fallback(&input, 3, 0, FailureMode::FailClosed);
        assert_eq!(closed.primaries, [0, 2, 0]);
        assert!(closed.backups_of(0).is_empty(), "no new copies");
        assert_eq!(
            closed.backups_of(1),
            [1],
            "current backups stay (not the promoted one)"
        );
        assert_eq!(closed.check(3, 3), Ok(()));
        assert_eq!(open.check(3, 3), Ok(()));
    }
}
