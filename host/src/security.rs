//! The cluster key (`[security] key_file`): authenticated heartbeats and
//! authenticated, encrypted frames between shoal nodes.
//!
//! Without a key nothing here runs and the wire is Tribes' own. With one:
//!
//! - a heartbeat datagram is the member packet followed by a trailer,
//!   `"SHH1" | key id (4) | time ms (8) | HMAC-SHA256 (first 16 bytes)`, the
//!   MAC over the packet and the trailer's first 16 bytes. A receiver
//!   refuses a missing or wrong MAC, a time more than `max_clock_skew_ms`
//!   from its own clock, and a time not later than the last one it accepted
//!   from that member (a replay, a replayed shutdown among them);
//! - a frame's data (the whole ChannelData: options, id, sender member,
//!   body) is sealed with AES-256-GCM:
//!   `"SHF1" | key id (4) | sealer (16) | seq (8) | time ms (8) | ciphertext | tag (16)`.
//!   Everything before the ciphertext is authenticated too. `sealer` is
//!   chosen at random when a node starts, `seq` counts that node's sealed
//!   frames; the AES key is derived from the cluster key and `sealer`, and
//!   the nonce is `seq`, so no nonce is ever used twice with one AES key. A
//!   receiver refuses a time beyond the skew and a `seq` it has accepted
//!   before from that sealer (a window of [`REPLAY_WINDOW`] behind the
//!   highest, so frames that overtake each other on a pool's connections
//!   still pass);
//! - ACK frames are sealed the same way, by the acknowledging node.
//!
//! Keys rotate without a restart: the key file holds one key per line, the
//! first is the one this node sends with, and every key in it is accepted;
//! the file is read again when it changes ([`KeyRing::reload_if_changed`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aes_gcm::aead::AeadInPlace as _;
use aes_gcm::{Aes256Gcm, KeyInit as _, Nonce, Tag};
use arc_swap::ArcSwap;
use bytes::{BufMut as _, Bytes, BytesMut};
use hmac::{Hmac, Mac as _};
use sha2::Sha256;
use std::sync::Arc;

use crate::metrics::Metrics;
use crate::wire::frame::{END_DATA, FRAME_OVERHEAD, START_DATA};

type HmacSha256 = Hmac<Sha256>;

/// Marks a heartbeat trailer.
pub const HEARTBEAT_MAGIC: [u8; 4] = *b"SHH1";
/// Marks a sealed frame's data.
pub const FRAME_MAGIC: [u8; 4] = *b"SHF1";
/// Bytes a heartbeat trailer adds.
pub const HEARTBEAT_TRAILER: usize = 4 + 4 + 8 + 16;
/// Bytes of a sealed frame's header (authenticated, in clear).
pub const SEAL_HEADER: usize = 4 + 4 + 16 + 8 + 8;
/// Bytes sealing adds to a frame's data: the header and the tag.
pub const SEAL_OVERHEAD: usize = SEAL_HEADER + 16;
/// Sequence numbers a frame may lag behind the highest accepted from its
/// sealer and still be accepted (once).
pub const REPLAY_WINDOW: u64 = 1 << 15;
/// Senders whose replay state is kept; beyond it the longest-quiet go.
const MAX_SEALERS: usize = 4096;
/// Members whose last heartbeat time is kept.
const MAX_HEARTBEAT_SENDERS: usize = 8192;
/// Bytes of a key.
pub const KEY_BYTES: usize = 32;

/// Why a heartbeat or frame was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No trailer or seal where one must be, or too short.
    #[error("not authenticated (no cluster-key seal: a node without the key, or not shoal)")]
    Missing,
    /// Sealed with a key this node does not hold.
    #[error("sealed with an unknown key (id {0:08x}): a node with another key file")]
    UnknownKey(u32),
    /// The MAC or the AEAD tag does not verify.
    #[error("the MAC does not verify (forged or corrupted)")]
    BadMac,
    /// The time is too far from this node's clock.
    #[error(
        "its time is {0} ms off this node's clock (beyond security.max_clock_skew_ms: a replay, or clocks not synchronised)"
    )]
    Skew(i64),
    /// Seen before (or older than the window).
    #[error("a replay (already accepted, or older than the replay window)")]
    Replay,
}

impl AuthError {
    /// Whether this is a replay or a stale time (as opposed to a missing
    /// or wrong key or MAC).
    pub fn is_replay(self) -> bool {
        matches!(self, Self::Skew(_) | Self::Replay)
    }
}

/// A key file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("security.key_file {path}: {why}")]
pub struct KeyFileError {
    /// The file.
    pub path: PathBuf,
    /// What is wrong.
    pub why: String,
}

/// One cluster key and what is derived from it.
#[derive(Clone)]
struct ClusterKey {
    id: u32,
    heartbeat: [u8; 32],
    frame: [u8; 32],
}

impl std::fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClusterKey({:08x})", self.id)
    }
}

fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut m = <HmacSha256 as hmac::Mac>::new_from_slice(key).expect("HMAC takes any key length");
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().into()
}

impl ClusterKey {
    fn new(secret: &[u8; KEY_BYTES]) -> Self {
        let id = hmac(secret, &[b"shoal key id v1"]);
        Self {
            id: u32::from_be_bytes([id[0], id[1], id[2], id[3]]),
            heartbeat: hmac(secret, &[b"shoal heartbeat mac v1"]),
            frame: hmac(secret, &[b"shoal frame aead v1"]),
        }
    }

    /// The AES key of one sealer.
    fn cipher(&self, sealer: &[u8; 16]) -> Aes256Gcm {
        let k = hmac(&self.frame, &[sealer]);
        Aes256Gcm::new(&k.into())
    }
}

/// The keys in use: the first sends, all are accepted.
#[derive(Debug, Clone)]
struct Keys {
    all: Vec<ClusterKey>,
}

impl Keys {
    fn send(&self) -> &ClusterKey {
        &self.all[0]
    }

    fn find(&self, id: u32) -> Option<&ClusterKey> {
        self.all.iter().find(|k| k.id == id)
    }
}

/// A new random key, as a key file line (64 hex digits).
pub fn generate_key_line() -> String {
    let k: [u8; KEY_BYTES] = rand::random();
    hex::encode(k)
}

/// Parses a key file's text: one key per line (64 hex digits), `#`
/// comments and blank lines ignored; at least one key.
fn parse_keys(text: &str) -> Result<Keys, String> {
    let mut all = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let bytes = hex::decode(line)
            .ok()
            .and_then(|b| <[u8; KEY_BYTES]>::try_from(b).ok())
            .ok_or_else(|| {
                format!(
                    "line {}: a key is {} hex digits (make one with `shoal keygen`)",
                    n + 1,
                    2 * KEY_BYTES
                )
            })?;
        let key = ClusterKey::new(&bytes);
        if all.iter().any(|k: &ClusterKey| k.id == key.id) {
            return Err(format!("line {}: the same key twice", n + 1));
        }
        all.push(key);
        if all.len() > 8 {
            return Err("more than 8 keys (one sends, the rest are accepted during a roll)".into());
        }
    }
    if all.is_empty() {
        return Err("no key in the file (make one with `shoal keygen`)".into());
    }
    Ok(Keys { all })
}

/// Reads a key file, refusing one that others than its owner can read or
/// write (like ssh does for its keys).
fn read_key_file(path: &Path) -> Result<(Keys, SystemTime), KeyFileError> {
    let err = |why: String| KeyFileError {
        path: path.to_path_buf(),
        why,
    };
    let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(err(format!(
                "mode {mode:03o} lets other users read or change the cluster key: chmod 600 it"
            )));
        }
    }
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let keys = parse_keys(&text).map_err(err)?;
    Ok((keys, meta.modified().unwrap_or(UNIX_EPOCH)))
}

/// The node's keys, swapped whole when the file changes.
#[derive(Debug)]
pub struct KeyRing {
    path: PathBuf,
    keys: ArcSwap<Keys>,
    modified: Mutex<SystemTime>,
}

impl KeyRing {
    /// Loads `path` (an error names what is wrong with it).
    pub fn load(path: &Path) -> Result<Self, KeyFileError> {
        let (keys, modified) = read_key_file(path)?;
        Ok(Self {
            path: path.to_path_buf(),
            keys: ArcSwap::from_pointee(keys),
            modified: Mutex::new(modified),
        })
    }

    /// Reads the file again if its modification time changed. Answers
    /// `Ok(true)` when new keys are in use; on an error the old keys stay.
    pub fn reload_if_changed(&self) -> Result<bool, KeyFileError> {
        let modified = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .map_err(|e| KeyFileError {
                path: self.path.clone(),
                why: e.to_string(),
            })?;
        let mut last = self.modified.lock().unwrap_or_else(|p| p.into_inner());
        if *last == modified {
            return Ok(false);
        }
        let (keys, modified) = read_key_file(&self.path)?;
        *last = modified;
        self.keys.store(Arc::new(keys));
        Ok(true)
    }

    /// The id of the key this node sends with, then of every key it
    /// accepts (for logs and `/metrics`).
    pub fn ids(&self) -> (u32, Vec<u32>) {
        let k = self.keys.load();
        (k.send().id, k.all.iter().map(|k| k.id).collect())
    }

    /// The key file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// A sealer's accepted sequence numbers: the highest, and a bitmap of the
/// [`REPLAY_WINDOW`] below it.
struct Window {
    key: u32,
    cipher: Aes256Gcm,
    highest: Option<u64>,
    seen: Box<[u64]>,
    last: Instant,
}

impl Window {
    fn new(key: u32, cipher: Aes256Gcm) -> Self {
        Self {
            key,
            cipher,
            highest: None,
            seen: vec![0u64; (REPLAY_WINDOW / 64) as usize].into_boxed_slice(),
            last: Instant::now(),
        }
    }

    fn bit(seq: u64) -> (usize, u64) {
        let i = seq % REPLAY_WINDOW;
        ((i / 64) as usize, 1u64 << (i % 64))
    }

    /// Whether `seq` may be accepted (not seen, not too old).
    fn fresh(&self, seq: u64) -> bool {
        match self.highest {
            None => true,
            Some(h) if seq > h => true,
            Some(h) if h - seq >= REPLAY_WINDOW => false,
            Some(_) => {
                let (w, b) = Self::bit(seq);
                self.seen[w] & b == 0
            }
        }
    }

    /// Records `seq` as accepted (after its tag verified).
    fn accept(&mut self, seq: u64) {
        match self.highest {
            Some(h) if seq <= h => {}
            Some(h) => {
                // Clear the bits of the numbers the window moves past.
                let step = seq - h;
                if step >= REPLAY_WINDOW {
                    self.seen.fill(0);
                } else {
                    for s in h + 1..=seq {
                        let (w, b) = Self::bit(s);
                        self.seen[w] &= !b;
                    }
                }
                self.highest = Some(seq);
            }
            None => self.highest = Some(seq),
        }
        let (w, b) = Self::bit(seq);
        self.seen[w] |= b;
        self.last = Instant::now();
    }
}

/// Milliseconds since the Unix epoch, by this node's clock.
fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Everything the node needs to seal and open with the cluster key.
pub struct Security {
    ring: KeyRing,
    skew_ms: i64,
    sealer: [u8; 16],
    seq: AtomicU64,
    /// The AES key this node seals with, for the key id it was made from.
    own: ArcSwap<(u32, Aes256Gcm)>,
    /// The last heartbeat time sent (times never go back within a run).
    last_sent_ms: AtomicI64,
    /// Last accepted heartbeat time per member unique id.
    heartbeats: Mutex<HashMap<[u8; 16], (i64, Instant)>>,
    /// Replay state per sealer.
    windows: Mutex<HashMap<[u8; 16], Window>>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Security {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Security")
            .field("ring", &self.ring)
            .field("skew_ms", &self.skew_ms)
            .finish_non_exhaustive()
    }
}

impl Security {
    /// Sealing and opening with `ring`'s keys; times may differ from this
    /// node's clock by at most `max_skew`.
    pub fn new(ring: KeyRing, max_skew: Duration, metrics: Arc<Metrics>) -> Self {
        let sealer: [u8; 16] = rand::random();
        let own = {
            let k = ring.keys.load();
            (k.send().id, k.send().cipher(&sealer))
        };
        Self {
            ring,
            skew_ms: i64::try_from(max_skew.as_millis()).unwrap_or(i64::MAX),
            sealer,
            seq: AtomicU64::new(0),
            own: ArcSwap::from_pointee(own),
            last_sent_ms: AtomicI64::new(0),
            heartbeats: Mutex::new(HashMap::new()),
            windows: Mutex::new(HashMap::new()),
            metrics,
        }
    }

    /// The key ring (to reload it).
    pub fn ring(&self) -> &KeyRing {
        &self.ring
    }

    fn check_skew(&self, t: i64) -> Result<(), AuthError> {
        let off = t.saturating_sub(now_ms());
        if off.saturating_abs() > self.skew_ms {
            return Err(AuthError::Skew(off));
        }
        Ok(())
    }

    /// Appends the trailer to an encoded member packet.
    pub fn seal_heartbeat(&self, buf: &mut BytesMut) {
        let keys = self.ring.keys.load();
        let key = keys.send();
        // Later than the last one sent, even if the clock stepped back.
        let now = now_ms();
        let prev = self
            .last_sent_ms
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |last| {
                Some(now.max(last + 1))
            })
            .unwrap_or(now);
        let t = now.max(prev + 1);
        let mut head = [0u8; 16];
        head[..4].copy_from_slice(&HEARTBEAT_MAGIC);
        head[4..8].copy_from_slice(&key.id.to_be_bytes());
        head[8..].copy_from_slice(&t.to_be_bytes());
        let mac = hmac(&key.heartbeat, &[buf, &head]);
        buf.put_slice(&head);
        buf.put_slice(&mac[..16]);
    }

    /// Checks a datagram's trailer; answers the member packet and the
    /// heartbeat's time. The caller then calls [`Self::heartbeat_fresh`]
    /// with the member's unique id.
    pub fn open_heartbeat<'a>(&self, data: &'a [u8]) -> Result<(&'a [u8], i64), AuthError> {
        let r = self.open_heartbeat_inner(data);
        if let Err(e) = r {
            self.count(e, true);
        }
        r
    }

    fn open_heartbeat_inner<'a>(&self, data: &'a [u8]) -> Result<(&'a [u8], i64), AuthError> {
        let split = data
            .len()
            .checked_sub(HEARTBEAT_TRAILER)
            .ok_or(AuthError::Missing)?;
        let (packet, trailer) = data.split_at(split);
        if trailer[..4] != HEARTBEAT_MAGIC {
            return Err(AuthError::Missing);
        }
        let id = u32::from_be_bytes([trailer[4], trailer[5], trailer[6], trailer[7]]);
        let keys = self.ring.keys.load();
        let key = keys.find(id).ok_or(AuthError::UnknownKey(id))?;
        let mut m =
            <HmacSha256 as hmac::Mac>::new_from_slice(&key.heartbeat).expect("any key length");
        m.update(packet);
        m.update(&trailer[..16]);
        m.verify_truncated_left(&trailer[16..])
            .map_err(|_| AuthError::BadMac)?;
        let t = i64::from_be_bytes(trailer[8..16].try_into().expect("8 bytes"));
        self.check_skew(t)?;
        Ok((packet, t))
    }

    /// Accepts a verified heartbeat's time for member `unique_id` only if
    /// it is later than the last accepted one (a replay is not).
    pub fn heartbeat_fresh(&self, unique_id: &[u8; 16], t: i64) -> Result<(), AuthError> {
        let mut map = self.heartbeats.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((last, _)) = map.get(unique_id)
            && t <= *last
        {
            drop(map);
            self.count(AuthError::Replay, true);
            return Err(AuthError::Replay);
        }
        if map.len() >= MAX_HEARTBEAT_SENDERS && !map.contains_key(unique_id) {
            // Forget those quiet for longer than the skew: a replay of
            // theirs is refused by its time anyway.
            let keep = Duration::from_millis(u64::try_from(self.skew_ms).unwrap_or(0) * 2);
            map.retain(|_, (_, at)| at.elapsed() < keep);
        }
        if map.len() < MAX_HEARTBEAT_SENDERS || map.contains_key(unique_id) {
            map.insert(*unique_id, (t, Instant::now()));
        }
        Ok(())
    }

    /// The whole frame (markers included) around the sealed `plain` (a
    /// ChannelData's bytes, or an ACK's payload).
    pub fn seal_frame(&self, plain: &[u8]) -> Bytes {
        let keys = self.ring.keys.load();
        let key = keys.send();
        let own = {
            let o = self.own.load();
            if o.0 == key.id {
                o
            } else {
                self.own.store(Arc::new((key.id, key.cipher(&self.sealer))));
                self.own.load()
            }
        };
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let data_len = plain.len() + SEAL_OVERHEAD;
        let mut buf = BytesMut::with_capacity(data_len + FRAME_OVERHEAD);
        buf.put_slice(&START_DATA);
        buf.put_i32(i32::try_from(data_len).unwrap_or(i32::MAX));
        let head_at = buf.len();
        buf.put_slice(&FRAME_MAGIC);
        buf.put_u32(key.id);
        buf.put_slice(&self.sealer);
        buf.put_u64(seq);
        buf.put_i64(now_ms());
        buf.put_slice(plain);
        let (head, body) = buf[head_at..].split_at_mut(SEAL_HEADER);
        let tag = own
            .1
            .encrypt_in_place_detached(&nonce(seq), head, body)
            .expect("AES-GCM seals any frame below 64 GiB");
        buf.put_slice(&tag);
        buf.put_slice(&END_DATA);
        buf.freeze()
    }

    /// Opens a sealed frame's data (markers already removed): answers the
    /// plain bytes.
    pub fn open_frame(&self, data: Bytes) -> Result<Bytes, AuthError> {
        let r = self.open_frame_inner(data);
        if let Err(e) = &r {
            self.count(*e, false);
        }
        r
    }

    fn open_frame_inner(&self, data: Bytes) -> Result<Bytes, AuthError> {
        if data.len() < SEAL_OVERHEAD || data[..4] != FRAME_MAGIC {
            return Err(AuthError::Missing);
        }
        let id = u32::from_be_bytes([data[4], data[5], data[6], data[7]]);
        let sealer: [u8; 16] = data[8..24].try_into().expect("16 bytes");
        let seq = u64::from_be_bytes(data[24..32].try_into().expect("8 bytes"));
        let t = i64::from_be_bytes(data[32..40].try_into().expect("8 bytes"));
        let keys = self.ring.keys.load();
        let key = keys.find(id).ok_or(AuthError::UnknownKey(id))?;
        self.check_skew(t)?;
        // The sealer's AES key, made once per sealer and key; the tag is
        // checked outside the lock (a large frame takes a while).
        let cipher = {
            let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
            match windows.get_mut(&sealer) {
                Some(w) if !w.fresh(seq) => return Err(AuthError::Replay),
                Some(w) => {
                    if w.key != id {
                        // The sender now seals with another key of the
                        // ring (a roll): same sealer and sequence, a new
                        // AES key.
                        w.key = id;
                        w.cipher = key.cipher(&sealer);
                    }
                    w.cipher.clone()
                }
                None => key.cipher(&sealer),
            }
        };
        let mut body = BytesMut::from(&data[SEAL_HEADER..data.len() - 16]);
        let tag = Tag::from_slice(&data[data.len() - 16..]);
        cipher
            .decrypt_in_place_detached(&nonce(seq), &data[..SEAL_HEADER], &mut body, tag)
            .map_err(|_| AuthError::BadMac)?;
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        if !windows.contains_key(&sealer) && windows.len() >= MAX_SEALERS {
            let oldest = windows.iter().min_by_key(|(_, w)| w.last).map(|(k, _)| *k);
            if let Some(k) = oldest {
                windows.remove(&k);
            }
        }
        let w = windows
            .entry(sealer)
            .or_insert_with(|| Window::new(id, cipher));
        // A copy opened on another connection meanwhile.
        if !w.fresh(seq) {
            return Err(AuthError::Replay);
        }
        w.accept(seq);
        Ok(body.freeze())
    }

    fn count(&self, e: AuthError, heartbeat: bool) {
        let c = match (heartbeat, e.is_replay()) {
            (true, false) => &self.metrics.auth_heartbeats_refused_total,
            (true, true) => &self.metrics.auth_heartbeats_replayed_total,
            (false, false) => &self.metrics.auth_frames_refused_total,
            (false, true) => &self.metrics.auth_frames_replayed_total,
        };
        let n = c.fetch_add(1, Ordering::Relaxed);
        if n.is_multiple_of(100) {
            tracing::warn!(
                refused = n + 1,
                "{} refused: {e}",
                if heartbeat { "heartbeat" } else { "frame" }
            );
        }
    }
}

/// The AES-GCM nonce of sequence number `seq`.
fn nonce(seq: u64) -> Nonce<aes_gcm::aead::consts::U12> {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&seq.to_be_bytes());
    n.into()
}

/// Writes a new key file (mode 600) at `path`; refuses to overwrite one.
pub fn write_new_key_file(path: &Path) -> std::io::Result<String> {
    use std::io::Write as _;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    let line = generate_key_line();
    writeln!(
        f,
        "# shoal cluster key (security.key_file). The first key seals; every key here is accepted.\n{line}"
    )?;
    Ok(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn security(lines: &[&str]) -> (Security, tempdir::Dir) {
        let dir = tempdir::Dir::new();
        let path = dir.0.join("cluster.key");
        std::fs::write(&path, lines.join("\n")).expect("write key file");
        set_mode(&path, 0o600);
        let ring = KeyRing::load(&path).expect("a good key file");
        (
            Security::new(ring, Duration::from_secs(10), Arc::default()),
            dir,
        )
    }

    fn set_mode(path: &Path, mode: u32) {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("ok");
    }

    mod tempdir {
        pub struct Dir(pub std::path::PathBuf);
        impl Dir {
            pub fn new() -> Self {
                let p = std::env::temp_dir().join(format!(
                    "shoal-security-{}-{}",
                    std::process::id(),
                    rand::random::<u64>()
                ));
                std::fs::create_dir_all(&p).expect("ok");
                Self(p)
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    const K1: &str = "0101010101010101010101010101010101010101010101010101010101010101";
    const K2: &str = "0202020202020202020202020202020202020202020202020202020202020202";

    fn frame_data(frame: &Bytes) -> Bytes {
        frame.slice(11..frame.len() - 7)
    }

    #[test]
    fn a_frame_opens_once_and_its_plaintext_is_not_on_the_wire() {
        let (a, _d1) = security(&[K1]);
        let (b, _d2) = security(&[K1]);
        let plain = b"known plaintext: the cart of user 42".repeat(4);
        let frame = a.seal_frame(&plain);
        assert!(
            !frame
                .windows(b"known plaintext".len())
                .any(|w| w == b"known plaintext")
        );
        assert_eq!(
            b.open_frame(frame_data(&frame)).expect("opens"),
            plain.as_slice()
        );
        assert_eq!(b.open_frame(frame_data(&frame)), Err(AuthError::Replay));
        // Out of order within the window: accepted once each.
        let f1 = a.seal_frame(b"one");
        let f2 = a.seal_frame(b"two");
        assert_eq!(b.open_frame(frame_data(&f2)).expect("ok"), &b"two"[..]);
        assert_eq!(b.open_frame(frame_data(&f1)).expect("ok"), &b"one"[..]);
        assert_eq!(b.open_frame(frame_data(&f1)), Err(AuthError::Replay));
    }

    #[test]
    fn a_changed_byte_a_missing_seal_or_another_key_is_refused() {
        let (a, _d1) = security(&[K1]);
        let (b, _d2) = security(&[K1]);
        let (c, _d3) = security(&[K2]);
        let frame = a.seal_frame(b"hello");
        for i in 0..frame_data(&frame).len() {
            let mut d = BytesMut::from(&frame_data(&frame)[..]);
            d[i] ^= 0x40;
            assert!(b.open_frame(d.freeze()).is_err(), "byte {i} changed");
        }
        assert_eq!(
            b.open_frame(Bytes::from_static(
                b"plain tribes data, no seal at all........................"
            )),
            Err(AuthError::Missing)
        );
        assert!(matches!(
            c.open_frame(frame_data(&frame)),
            Err(AuthError::UnknownKey(_))
        ));
        assert_eq!(
            b.open_frame(frame_data(&frame)).expect("opens"),
            &b"hello"[..]
        );
        // Every refusal counted once (a changed time counts as stale).
        let m = &b.metrics;
        assert_eq!(
            Metrics::get(&m.auth_frames_refused_total)
                + Metrics::get(&m.auth_frames_replayed_total),
            1 + frame_data(&frame).len() as u64
        );
    }

    #[test]
    fn heartbeats_verify_once_and_in_order() {
        let (a, _d1) = security(&[K1]);
        let (b, _d2) = security(&[K1]);
        let (c, _d3) = security(&[K2]);
        let mut hb = BytesMut::from(&b"member packet bytes"[..]);
        a.seal_heartbeat(&mut hb);
        let (packet, t) = b.open_heartbeat(&hb).expect("ok");
        assert_eq!(packet, b"member packet bytes");
        let id = [7u8; 16];
        b.heartbeat_fresh(&id, t).expect("ok");
        assert_eq!(b.heartbeat_fresh(&id, t), Err(AuthError::Replay));
        let mut next = BytesMut::from(&b"member packet bytes"[..]);
        a.seal_heartbeat(&mut next);
        let (_, t2) = b.open_heartbeat(&next).expect("ok");
        assert!(t2 > t);
        b.heartbeat_fresh(&id, t2).expect("ok");
        assert!(c.open_heartbeat(&hb).is_err());
        assert_eq!(
            b.open_heartbeat(b"member packet bytes"),
            Err(AuthError::Missing)
        );
        let mut forged = hb.clone();
        forged[3] ^= 1;
        assert_eq!(b.open_heartbeat(&forged), Err(AuthError::BadMac));
    }

    #[test]
    fn a_roll_accepts_both_keys_and_the_sender_switches() {
        let (old, _d1) = security(&[K1]);
        let (both, d2) = security(&[K1, K2]);
        let (new, _d3) = security(&[K2, K1]);
        let f = old.seal_frame(b"old");
        assert_eq!(both.open_frame(frame_data(&f)).expect("ok"), &b"old"[..]);
        let f = new.seal_frame(b"new");
        assert_eq!(both.open_frame(frame_data(&f)).expect("ok"), &b"new"[..]);
        // `both` switches to sending with K2 when its file says so.
        let path = d2.0.join("cluster.key");
        std::thread::sleep(Duration::from_millis(20));
        std::fs::write(&path, format!("{K2}\n{K1}\n")).expect("ok");
        assert!(both.ring().reload_if_changed().expect("ok"));
        let f = both.seal_frame(b"switched");
        assert_eq!(
            new.open_frame(frame_data(&f)).expect("ok"),
            &b"switched"[..]
        );
        // A file made unusable keeps the old keys.
        std::thread::sleep(Duration::from_millis(20));
        std::fs::write(&path, "not a key\n").expect("ok");
        assert!(both.ring().reload_if_changed().is_err());
        assert_eq!(both.ring().ids().1.len(), 2);
    }

    #[test]
    fn key_files_readable_by_others_or_malformed_are_refused() {
        let dir = tempdir::Dir::new();
        let path = dir.0.join("k");
        std::fs::write(&path, K1).expect("ok");
        set_mode(&path, 0o644);
        let e = KeyRing::load(&path).expect_err("refused").to_string();
        assert!(e.contains("chmod 600"), "{e}");
        set_mode(&path, 0o600);
        KeyRing::load(&path).expect("a good key file");
        std::fs::write(&path, "abcd\n").expect("ok");
        assert!(
            KeyRing::load(&path)
                .expect_err("refused")
                .to_string()
                .contains("64 hex digits")
        );
        let out = dir.0.join("new.key");
        let line = write_new_key_file(&out).expect("ok");
        assert_eq!(line.len(), 64);
        KeyRing::load(&out).expect("ok");
        assert!(write_new_key_file(&out).is_err(), "never overwrites a key");
    }

    #[test]
    fn the_window_refuses_what_it_saw_and_what_fell_behind() {
        let cipher = ClusterKey::new(&[1; 32]).cipher(&[0; 16]);
        let mut w = Window::new(0, cipher);
        for s in [5, 3, 100, 4] {
            assert!(w.fresh(s));
            w.accept(s);
            assert!(!w.fresh(s));
        }
        assert!(w.fresh(6));
        w.accept(100 + REPLAY_WINDOW);
        assert!(!w.fresh(100), "behind the window");
        assert!(w.fresh(101 + 10));
        assert!(!w.fresh(100 + REPLAY_WINDOW));
    }
}
