//! The WebAssembly machinery every plug-in world shares: the one wasmtime
//! engine and its compile cache ([`engine`]), the one `bindgen!` site
//! (`bindings`), what a plug-in's store holds and the host imports
//! ([`host`]), the ciphers of the `crypto` import ([`crypto`]), the
//! non-blocking WASI subset (`wasi`) and the generic
//! instance pool with limits, deadlines and recreate-on-failure ([`pool`]).
//! Nothing here knows about chains or sessions.

pub mod crypto;
pub mod engine;
pub mod host;
pub mod pool;
pub(crate) mod wasi;

/// The one place WIT worlds are bound.
pub(crate) mod bindings {
    wasmtime::component::bindgen!({
        world: "interceptor",
        path: "../wit",
        // A call on a key handle the instance does not hold traps.
        imports: {
            "shoal:cluster/crypto": trappable,
        },
        with: {
            "shoal:cluster/crypto.cipher-key": crate::wasm::crypto::CipherKey,
        },
    });

    /// The session-policy world, sharing the interceptor world's `types`.
    pub(crate) mod policy {
        wasmtime::component::bindgen!({
            world: "session-policy",
            path: "../wit",
            with: {
                "shoal:cluster/types": super::shoal::cluster::types,
            },
        });
    }
}
