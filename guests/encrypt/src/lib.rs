//! Encrypt (Tribes' EncryptInterceptor, tribes.md §4.12): every message
//! body is encrypted on its way out and decrypted on its way in, with a
//! pre-shared AES key, byte for byte as Tomcat 10.1.52 (Debian's
//! `libtomcat10-java`) does it: the body on the wire is `IV || ciphertext`,
//! with no timestamp prefix and no replay window (those came with Tomcat
//! 10.1.56 / 11.0.23 and changed the format).
//!
//! The cipher runs in the host (the WIT `crypto` interface: native AES with
//! AES-NI); this plug-in parses the settings, hands the key over once per
//! instance, and turns failures into counted drops.
//!
//! Settings (Tomcat's attribute names):
//! * `encryptionKey` (required): the key in hex, 32, 48 or 64 digits for
//!   AES-128, AES-192 or AES-256. An odd number of digits, a non-hex
//!   character or another length refuses the start.
//! * `encryptionAlgorithm`: `AES/GCM/NoPadding` (default: 12-byte random
//!   IV, 128-bit tag appended) or `AES/CBC/PKCS5Padding` (16-byte random IV;
//!   not authenticated; Tomcat 10.1.52's own default). Other modes are
//!   refused.
//! * `logInterval`: one warning per this many messages dropped for one
//!   cause, node-wide (default 100, as domain-filter's).
//!
//! A message that does not decrypt (wrong key, changed on the way), is too
//! short to hold an IV and a ciphertext, or is too large for the host is
//! dropped, counted and logged (rate-limited); a message that cannot be
//! encrypted is never sent in clear: its send fails. Only the body is
//! encrypted: the ChannelData header (options, timestamp, message id,
//! sender) stays in clear text and is not authenticated, as in Tomcat.

use shoal_guest_sdk::crypto::{CipherMode, CryptoError, Key};
use shoal_guest_sdk::host::{self, Counter};
use shoal_guest_sdk::*;

/// The modes this plug-in takes, by Tomcat's algorithm names.
const ALGORITHMS: [(&str, CipherMode); 2] = [
    ("AES/GCM/NoPadding", CipherMode::AesGcm),
    ("AES/CBC/PKCS5Padding", CipherMode::AesCbcPkcs5),
];

struct Encrypt {
    key: Key,
    log_interval: u64,
    undecryptable: Counter,
    short: Counter,
    oversized: Counter,
    unencryptable: Counter,
}

/// Tomcat's `fromHexString` (after `trim`), with the length checked too;
/// errors never show the key.
fn parse_key(hex: &str) -> Result<Vec<u8>, String> {
    let hex = hex.trim();
    if hex.is_empty() {
        return Err("setting `encryptionKey` is required (the key in hex)".into());
    }
    if hex.len() % 2 == 1 {
        return Err(format!(
            "setting `encryptionKey`: an odd number of hex digits ({})",
            hex.len()
        ));
    }
    let digit = |c: u8| (c as char).to_digit(16);
    let mut key = Vec::with_capacity(hex.len() / 2);
    for (i, pair) in hex.as_bytes().chunks(2).enumerate() {
        match (digit(pair[0]), digit(pair[1])) {
            (Some(h), Some(l)) => key.push((h << 4 | l) as u8),
            _ => {
                return Err(format!(
                    "setting `encryptionKey`: not a hex digit at position {}",
                    2 * i + usize::from(digit(pair[0]).is_some())
                ));
            }
        }
    }
    if ![16, 24, 32].contains(&key.len()) {
        return Err(format!(
            "setting `encryptionKey`: {} bytes; AES takes 16, 24 or 32 (32, 48 or 64 hex digits)",
            key.len()
        ));
    }
    Ok(key)
}

fn parse_algorithm(s: &str) -> Result<CipherMode, String> {
    let s = s.trim();
    ALGORITHMS
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(s))
        .map(|(_, m)| *m)
        .ok_or_else(|| {
            format!(
                "setting `encryptionAlgorithm`: {s:?} is not supported (supported: {})",
                ALGORITHMS.map(|a| a.0).join(", ")
            )
        })
}

impl Encrypt {
    /// Counts a dropped message against `counter` and warns once per
    /// `log_interval` of them.
    fn drop(&self, counter: Counter, what: &str, e: &CryptoError, peer: &str) -> Verdict {
        let n = counter.add(1);
        if n % self.log_interval == 1 || self.log_interval == 1 {
            host::warn(&format!("dropping {what} ({n} so far), e.g. {peer}: {e}"));
        }
        Verdict::Drop(format!("{what}: {e}"))
    }
}

impl Interceptor for Encrypt {
    fn create(settings: &Settings) -> Result<Self, String> {
        settings.only(&["encryptionKey", "encryptionAlgorithm", "logInterval"])?;
        let mode = parse_algorithm(
            settings
                .raw("encryptionAlgorithm")
                .unwrap_or("AES/GCM/NoPadding"),
        )?;
        let mut raw = parse_key(settings.raw("encryptionKey").unwrap_or(""))?;
        let log_interval: u64 = settings.get_or("logInterval", 100)?;
        let key = Key::new(mode, &raw).map_err(|e| format!("setting `encryptionKey`: {e}"));
        raw.fill(0);
        let key = key?;
        let loaded = Counter::register("keys_loaded", "Instances that loaded the key");
        if loaded.add(1) == 1 {
            let bits = raw.len() * 8;
            match mode {
                CipherMode::AesGcm => host::info(&format!("encrypting bodies with AES-{bits}/GCM")),
                CipherMode::AesCbcPkcs5 => host::warn(&format!(
                    "encrypting bodies with AES-{bits}/CBC/PKCS5Padding: not authenticated, prefer AES/GCM/NoPadding"
                )),
            }
        }
        Ok(Self {
            key,
            log_interval: log_interval.max(1),
            undecryptable: Counter::register(
                "undecryptable_messages_dropped",
                "Received messages that did not decrypt (wrong key or changed on the way), dropped",
            ),
            short: Counter::register(
                "short_messages_dropped",
                "Received messages too short for an IV and a ciphertext, dropped",
            ),
            oversized: Counter::register(
                "oversized_messages_dropped",
                "Received messages over the host's cipher input bound, dropped",
            ),
            unencryptable: Counter::register(
                "unencryptable_messages_dropped",
                "Messages that could not be encrypted, not sent",
            ),
        })
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::new(Hooks::ON_SEND | Hooks::ON_RECEIVE)
            .with_bodies(BodyAccess::All)
            .changes_wire()
            .version(env!("CARGO_PKG_VERSION"))
    }

    fn on_send(&mut self, msg: &Outgoing<'_>) -> Verdict {
        // With `BodyAccess::All` the host always passes the body; never send
        // a message in clear.
        let Some(body) = msg.body else {
            return Verdict::Drop("no body to encrypt".into());
        };
        match self.key.seal(body) {
            Ok(sealed) => Verdict::Modify {
                options: None,
                body: Some(sealed),
            },
            Err(e) => self.drop(
                self.unencryptable,
                "messages that cannot be encrypted",
                &e,
                &format!("one of {} bytes", body.len()),
            ),
        }
    }

    fn on_receive(&mut self, msg: &Incoming<'_>) -> Verdict {
        let Some(body) = msg.body else {
            return Verdict::Drop("no body to decrypt".into());
        };
        match self.key.open(body) {
            Ok(plain) => Verdict::Modify {
                options: None,
                body: Some(plain),
            },
            Err(e) => {
                let (counter, what) = match e {
                    CryptoError::TooShort(_) => (self.short, "messages too short to decrypt"),
                    CryptoError::TooLarge(_) => (self.oversized, "messages too large to decrypt"),
                    _ => (self.undecryptable, "messages that do not decrypt"),
                };
                let peer = format!("from {}:{}", msg.sender.host, msg.sender.port);
                self.drop(counter, what, &e, &peer)
            }
        }
    }
}

export_interceptor!(Encrypt);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_like_tomcat_and_bad_ones_are_refused_without_showing_them() {
        assert_eq!(
            parse_key(" 000102030405060708090a0b0c0d0e0F ")
                .expect("key")
                .len(),
            16
        );
        assert_eq!(parse_key(&"ab".repeat(24)).expect("key").len(), 24);
        assert_eq!(parse_key(&"AB".repeat(32)).expect("key").len(), 32);
        let odd = parse_key(&"a".repeat(33)).expect_err("odd");
        assert!(odd.contains("odd number"), "{odd}");
        let bad = parse_key(&format!("{}zz", "a".repeat(30))).expect_err("non-hex");
        assert!(
            bad.contains("position 30") && !bad.contains("aaaa"),
            "{bad}"
        );
        let short = parse_key("00112233").expect_err("short");
        assert!(short.contains("4 bytes"), "{short}");
        assert!(parse_key("").expect_err("empty").contains("required"));
    }

    #[test]
    fn algorithms_are_tomcat_names() {
        assert!(parse_algorithm("aes/gcm/nopadding").is_ok());
        assert!(parse_algorithm("AES/CBC/PKCS5Padding").is_ok());
        for bad in [
            "AES/ECB/PKCS5Padding",
            "AES/CBC/NoPadding",
            "AES/CTR/NoPadding",
            "AES",
        ] {
            let e = parse_algorithm(bad).expect_err(bad);
            assert!(e.contains("not supported"), "{e}");
        }
    }
}
