//! Entry points for the fuzz targets in `fuzz/` (`cargo fuzz`) to code the
//! public API does not reach. Not a stable API: hidden from the docs.
//!
//! Everything else the targets fuzz (the wire codecs, the session
//! messages, the config parser) is public already and is called directly.

use serde_json::value::RawValue;

/// A POST body read: the idle time asked for and the attributes.
pub type CreateBody = (Option<u32>, Vec<(String, Box<RawValue>)>);
/// A PATCH body read: attributes to set (`Some`) or remove (`None`).
pub type PatchBody = Vec<(String, Option<Box<RawValue>>)>;

/// Reads a `POST /api/sessions` body as the session API does: the idle
/// time asked for and the attributes, or the 400 message.
pub fn session_create_body(body: &[u8]) -> Result<CreateBody, String> {
    crate::session::api::create_request(body).map_err(|e| e.to_string())
}

/// Reads a `PATCH /api/sessions/{id}` body as the session API does: the
/// attributes to set (`Some`) or remove (`None`), or the 400 message.
pub fn session_patch_body(body: &[u8]) -> Result<PatchBody, String> {
    crate::session::api::patch_request(body).map_err(|e| e.to_string())
}

/// A session id as the engine writes it (`RANDOM.route`); the inverse of
/// [`crate::session::parse_id`].
pub fn session_id(key: u128, route: &str) -> String {
    crate::session::format_id(key, route)
}
