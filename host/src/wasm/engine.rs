//! The one wasmtime [`Engine`] of the node, its epoch ticker, and compiled
//! components cached on disk (keyed by content hash and engine version) so a
//! restart does not recompile.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::{Config, Engine};

/// Epoch granularity: deadlines are counted in ticks of this length.
pub const EPOCH_TICK: Duration = Duration::from_millis(1);

/// The process-wide engine, with epoch interruption on and the
/// component-model async runtime off (2–3× cheaper calls, wasmtime-notes.md).
/// A background thread advances the epoch every [`EPOCH_TICK`].
pub fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let mut cfg = Config::new();
        cfg.wasm_component_model(true);
        cfg.epoch_interruption(true);
        cfg.concurrency_support(false);
        let engine = Engine::new(&cfg)
            .unwrap_or_else(|e| panic!("wasmtime engine configuration is invalid: {e}"));
        let weak = engine.weak();
        std::thread::Builder::new()
            .name("shoal-epoch".into())
            .spawn(move || {
                while let Some(e) = weak.upgrade() {
                    e.increment_epoch();
                    drop(e);
                    std::thread::sleep(EPOCH_TICK);
                }
            })
            .unwrap_or_else(|e| panic!("cannot start the epoch thread: {e}"));
        engine
    })
}

/// Where compiled components are cached: `$SHOAL_CACHE_DIR`, else
/// `$XDG_CACHE_HOME/shoal/components`, else `~/.cache/shoal/components`.
pub fn default_cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("SHOAL_CACHE_DIR") {
        return PathBuf::from(d);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("shoal").join("components")
}

/// SHA-256 of `bytes`, hex.
pub fn content_hash(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn engine_key(engine: &Engine) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut h);
    format!("{:016x}", h.finish())
}

/// Compiles `bytes`, or loads the compiled form from `cache_dir` when this
/// engine compiled the same bytes before. Cache problems are logged and never
/// fatal: the component is then compiled in memory.
pub fn load_component(
    engine: &Engine,
    bytes: &[u8],
    hash: &str,
    cache_dir: Option<&Path>,
) -> wasmtime::Result<Component> {
    let Some(dir) = cache_dir else {
        return Component::new(engine, bytes);
    };
    let file = dir.join(format!("{hash}-{}.cwasm", engine_key(engine)));
    if file.exists() {
        match deserialize(engine, &file) {
            Ok(c) => {
                tracing::debug!(file = %file.display(), "component loaded from cache");
                return Ok(c);
            }
            Err(e) => {
                tracing::warn!(file = %file.display(), error = %e, "ignoring unusable cached component")
            }
        }
    }
    let component = Component::new(engine, bytes)?;
    if let Err(e) = store_cache(&component, dir, &file) {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot cache the compiled component");
    }
    Ok(component)
}

#[allow(unsafe_code)]
fn deserialize(engine: &Engine, file: &Path) -> wasmtime::Result<Component> {
    // SAFETY: the file was written by `store_cache` from `Component::serialize`
    // into a cache directory created by this process with mode 0700, under a
    // name that binds it to the source's SHA-256 and this engine's
    // compatibility hash; wasmtime checks the header and version on load.
    unsafe { Component::deserialize_file(engine, file) }
}

fn store_cache(component: &Component, dir: &Path, file: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let bytes = component.serialize().map_err(std::io::Error::other)?;
    let tmp = file.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, file)
}
