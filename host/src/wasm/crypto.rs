//! The `crypto` host import: the WIT `cipher-key` resource over
//! [`shoal_crypto::CipherKey`] (AES-GCM and AES-CBC/PKCS#5, `IV ||
//! ciphertext`), for plug-ins that encrypt bodies (the built-in `encrypt`,
//! Tomcat's EncryptInterceptor). A key is handed over once and kept in the
//! instance's resource table, at most [`MAX_KEYS`] per instance; a call on a
//! handle the instance does not hold traps. No call blocks.

use wasmtime::component::Resource;
use zeroize::Zeroize;

pub use shoal_crypto::{CipherKey, CryptoError, MAX_INPUT, MAX_KEYS, Mode};

use super::bindings::shoal::cluster::crypto as wit;
use super::host::HostState;

// The host's bound is the receiver's default frame bound plus room for an IV,
// a tag and padding.
const _: () = assert!(MAX_INPUT == crate::wire::DEFAULT_MAX_FRAME_BYTES + 64);

fn to_wit(e: CryptoError) -> wit::CryptoError {
    let n = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
    match e {
        CryptoError::BadKeyLength(l) => wit::CryptoError::BadKeyLength(n(l)),
        CryptoError::TooLarge(l) => wit::CryptoError::TooLarge(n(l)),
        CryptoError::TooShort(l) => wit::CryptoError::TooShort(n(l)),
        CryptoError::Rejected => wit::CryptoError::Rejected,
        CryptoError::TooManyKeys => wit::CryptoError::TooManyKeys,
    }
}

impl wit::Host for HostState {}

impl wit::HostCipherKey for HostState {
    fn create(
        &mut self,
        mode: wit::CipherMode,
        mut key: Vec<u8>,
    ) -> wasmtime::Result<Result<Resource<CipherKey>, wit::CryptoError>> {
        let mode = match mode {
            wit::CipherMode::AesGcm => Mode::Gcm,
            wit::CipherMode::AesCbcPkcs5 => Mode::CbcPkcs5,
        };
        let made = CipherKey::new(mode, &key);
        key.zeroize();
        let made = match made {
            Ok(k) if self.crypto_keys < MAX_KEYS => k,
            Ok(_) => return Ok(Err(to_wit(CryptoError::TooManyKeys))),
            Err(e) => return Ok(Err(to_wit(e))),
        };
        let handle = self.table_mut().push(made)?;
        self.crypto_keys += 1;
        Ok(Ok(handle))
    }

    fn seal(
        &mut self,
        key: Resource<CipherKey>,
        plaintext: Vec<u8>,
    ) -> wasmtime::Result<Result<Vec<u8>, wit::CryptoError>> {
        let key = self.table_mut().get(&key)?;
        Ok(key.seal(&plaintext).map_err(to_wit))
    }

    fn open(
        &mut self,
        key: Resource<CipherKey>,
        sealed: Vec<u8>,
    ) -> wasmtime::Result<Result<Vec<u8>, wit::CryptoError>> {
        let key = self.table_mut().get(&key)?;
        Ok(key.open(&sealed).map_err(to_wit))
    }

    fn drop(&mut self, key: Resource<CipherKey>) -> wasmtime::Result<()> {
        self.table_mut().delete(key)?;
        self.crypto_keys = self.crypto_keys.saturating_sub(1);
        Ok(())
    }
}
