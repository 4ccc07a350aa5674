//! Deploy keys and the signed manifest of a deploy.
//!
//! An operator holds an Ed25519 signing key (a file written by
//! `shoal plugin keygen`); every node lists the matching public keys in
//! `[deploy] keys`. A deploy carries a manifest — the plug-in's name, the
//! component's SHA-256 and size, when it was issued, a nonce — as JSON
//! text, and a signature over exactly that text. A node checks the
//! signature before it looks at, stores or compiles anything else.

use std::fmt;

use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

/// Prefix of the signed bytes (domain separation: a deploy signature is
/// never valid for anything else).
const CONTEXT: &[u8] = b"shoal-deploy-v1\n";
/// Prefix of a public key in `[deploy] keys` and of a key file's line.
pub const PUBLIC_PREFIX: &str = "ed25519:";
/// First line of a signing-key file.
const SECRET_HEADER: &str = "shoal deploy signing key (ed25519); keep it secret";

/// What a deploy installs, signed by the operator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The plug-in's name: an interceptor of the chain, or
    /// `session-policy`.
    pub name: String,
    /// SHA-256 of the component, 64 hex digits.
    pub sha256: String,
    /// Size of the component in bytes.
    pub size: u64,
    /// When it was signed, ms since the Unix epoch.
    pub issued_ms: i64,
    /// Random: two deploys of one component differ.
    pub nonce: u64,
}

/// Why a deploy's signature or manifest is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// This node trusts no key: deploys are off.
    #[error("this node accepts no deploys: `[deploy] keys` is empty")]
    NoKeys,
    /// The signature is not 64 bytes of hex, or none of the keys made it.
    #[error("the deploy's signature is not valid for any key in `[deploy] keys`")]
    BadSignature,
    /// The manifest is not the JSON of a [`Manifest`].
    #[error("the deploy's manifest is malformed: {0}")]
    BadManifest(String),
}

/// Public keys a node trusts for deploys.
#[derive(Clone, Default)]
pub struct TrustedKeys(Vec<VerifyingKey>);

impl fmt::Debug for TrustedKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(public_text))
            .finish()
    }
}

/// `ed25519:` and the key's 64 hex digits.
pub fn public_text(k: &VerifyingKey) -> String {
    format!("{PUBLIC_PREFIX}{}", hex::encode(k.as_bytes()))
}

/// Parses one `ed25519:HEX` public key.
pub fn parse_public(text: &str) -> Result<VerifyingKey, String> {
    let hex_part = text
        .trim()
        .strip_prefix(PUBLIC_PREFIX)
        .ok_or_else(|| format!("a deploy key starts with `{PUBLIC_PREFIX}`"))?;
    let bytes: [u8; 32] = hex::decode(hex_part)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or("a deploy key is `ed25519:` and 64 hex digits")?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| "not a valid Ed25519 public key".to_owned())
}

impl TrustedKeys {
    /// Parses `[deploy] keys`.
    pub fn parse(list: &[String]) -> Result<Self, String> {
        list.iter()
            .map(|k| parse_public(k))
            .collect::<Result<Vec<_>, _>>()
            .map(Self)
    }

    /// Whether deploys are accepted at all.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Checks `signature_hex` over `manifest_json` and parses the manifest.
    pub fn verify(&self, manifest_json: &str, signature_hex: &str) -> Result<Manifest, AuthError> {
        if self.0.is_empty() {
            return Err(AuthError::NoKeys);
        }
        let sig: [u8; 64] = hex::decode(signature_hex.trim())
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or(AuthError::BadSignature)?;
        let sig = Signature::from_bytes(&sig);
        let msg = signed_bytes(manifest_json);
        if !self.0.iter().any(|k| k.verify_strict(&msg, &sig).is_ok()) {
            return Err(AuthError::BadSignature);
        }
        serde_json::from_str(manifest_json).map_err(|e| AuthError::BadManifest(e.to_string()))
    }
}

fn signed_bytes(manifest_json: &str) -> Vec<u8> {
    let mut m = Vec::with_capacity(CONTEXT.len() + manifest_json.len());
    m.extend_from_slice(CONTEXT);
    m.extend_from_slice(manifest_json.as_bytes());
    m
}

/// An operator's signing key.
pub struct DeployKey(SigningKey);

impl fmt::Debug for DeployKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("DeployKey")
            .field(&public_text(&self.0.verifying_key()))
            .finish()
    }
}

impl DeployKey {
    /// A new random key (from the operating system's CSPRNG).
    pub fn generate() -> Self {
        let seed: [u8; 32] = rand::random();
        Self(SigningKey::from_bytes(&seed))
    }

    /// The public key, as `[deploy] keys` lists it.
    pub fn public(&self) -> String {
        public_text(&self.0.verifying_key())
    }

    /// The key file's text: a header line, the secret seed in hex, and the
    /// public key.
    pub fn to_file_text(&self) -> String {
        format!(
            "{SECRET_HEADER}\nsecret {}\npublic {}\n",
            hex::encode(self.0.to_bytes()),
            self.public()
        )
    }

    /// Reads a key file written by [`to_file_text`](Self::to_file_text).
    pub fn from_file_text(text: &str) -> Result<Self, String> {
        let secret = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("secret "))
            .ok_or("not a shoal deploy key file (no `secret` line)")?;
        let seed: [u8; 32] = hex::decode(secret.trim())
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or("the key file's `secret` is not 64 hex digits")?;
        Ok(Self(SigningKey::from_bytes(&seed)))
    }

    /// Signs `manifest`: its JSON text and the signature in hex.
    pub fn sign(&self, manifest: &Manifest) -> (String, String) {
        let json = serde_json::to_string(manifest).unwrap_or_default();
        let sig = self.0.sign(&signed_bytes(&json));
        (json, hex::encode(sig.to_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> Manifest {
        Manifest {
            name: "throughput".into(),
            sha256: "ab".repeat(32),
            size: 1000,
            issued_ms: 1_700_000_000_000,
            nonce: 7,
        }
    }

    #[test]
    fn a_signed_manifest_verifies_and_any_change_does_not() {
        let key = DeployKey::generate();
        let trusted = TrustedKeys::parse(&[key.public()]).expect("key");
        let (json, sig) = key.sign(&manifest());
        assert_eq!(trusted.verify(&json, &sig), Ok(manifest()));
        // Another manifest text, another signature, another key: refused.
        let tampered = json.replace("\"size\":1000", "\"size\":1001");
        assert_eq!(
            trusted.verify(&tampered, &sig),
            Err(AuthError::BadSignature)
        );
        let mut bad = sig.clone().into_bytes();
        bad[0] = if bad[0] == b'0' { b'1' } else { b'0' };
        let bad = String::from_utf8(bad).expect("hex");
        assert_eq!(trusted.verify(&json, &bad), Err(AuthError::BadSignature));
        assert_eq!(trusted.verify(&json, "zz"), Err(AuthError::BadSignature));
        let other = DeployKey::generate();
        let (json2, sig2) = other.sign(&manifest());
        assert_eq!(trusted.verify(&json2, &sig2), Err(AuthError::BadSignature));
        assert_eq!(
            TrustedKeys::default().verify(&json, &sig),
            Err(AuthError::NoKeys)
        );
    }

    #[test]
    fn key_files_and_public_keys_round_trip_and_bad_ones_are_refused() {
        let key = DeployKey::generate();
        let again = DeployKey::from_file_text(&key.to_file_text()).expect("reads back");
        assert_eq!(again.public(), key.public());
        assert!(parse_public(&key.public()).is_ok());
        for bad in [
            "",
            "ed25519:",
            "ed25519:zz",
            "rsa:00",
            &"ed25519:00".repeat(2),
        ] {
            assert!(parse_public(bad).is_err(), "{bad:?}");
        }
        assert!(DeployKey::from_file_text("secret 12").is_err());
        assert!(DeployKey::from_file_text("nothing").is_err());
    }
}
