//! The ciphers behind shoal's `crypto` host import (the `encrypt` plug-in,
//! Tomcat's EncryptInterceptor): AES-GCM and AES-CBC/PKCS#5 with the
//! message layout `IV || ciphertext` (GCM: the 128-bit tag at the end).
//!
//! RustCrypto's `aes-gcm`, `aes` and `cbc` do the work, with the CPU's
//! AES-NI and carry-less multiply instructions when it has them (detected at
//! run time). A [`CipherKey`] holds the expanded key (round keys zeroed on
//! drop); IVs come from the thread's CSPRNG (`rand`'s `ThreadRng`: ChaCha12
//! seeded and reseeded from the OS); inputs are bounded by [`MAX_INPUT`].
//! No function blocks: each is a bounded amount of CPU work.
//!
//! A crate of its own so that debug builds can optimize it (the generic
//! cipher code is compiled where it is used, here): unoptimized, AES-GCM
//! takes about 50 ms per 100 KB, far past a plug-in call's deadline.

use aes_gcm::aead::consts::{U12, U16};
use aes_gcm::aead::{AeadCore, AeadInPlace, KeyInit};
use aes_gcm::{AesGcm, Nonce, Tag};
use cbc::cipher::block_padding::Pkcs7;
use cbc::cipher::{BlockDecryptMut, BlockEncryptMut, InnerIvInit};
use rand::RngCore;

/// Largest input of `seal` / `open`: the receiver's default frame bound
/// (16 MiB) plus room for an IV, a tag and padding. A guest's memory cap
/// (64 MiB by default) holds a body this large and its result.
pub const MAX_INPUT: usize = 16 * 1024 * 1024 + 64;
/// Most keys one plug-in instance may hold at once (the `encrypt` plug-in
/// holds one); the host enforces it.
pub const MAX_KEYS: usize = 16;

/// GCM's IV (Tomcat: 12 bytes, the size GCM is defined for).
const GCM_IV: usize = 12;
/// GCM's tag: 128 bits, as Tomcat's `GCMParameterSpec(128, …)`.
const GCM_TAG: usize = 16;
/// AES block, and CBC's IV.
const BLOCK: usize = 16;

/// The cipher and mode of a key (WIT `cipher-mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `AES/GCM/NoPadding`.
    Gcm,
    /// `AES/CBC/PKCS5Padding`.
    CbcPkcs5,
}

/// Why a crypto operation failed (WIT `crypto-error`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    /// The key is not 16, 24 or 32 bytes.
    #[error("a key of {0} bytes (AES takes 16, 24 or 32)")]
    BadKeyLength(usize),
    /// The input is over [`MAX_INPUT`].
    #[error("an input of {0} bytes is over the bound of {MAX_INPUT}")]
    TooLarge(usize),
    /// The sealed input cannot hold an IV and the smallest ciphertext.
    #[error("{0} bytes is too short for an IV and a ciphertext")]
    TooShort(usize),
    /// Authentication (GCM), block alignment or padding (CBC) failed.
    #[error("does not decrypt")]
    Rejected,
    /// The instance already holds [`MAX_KEYS`] keys.
    #[error("an instance holds at most {MAX_KEYS} keys")]
    TooManyKeys,
}

type Aes128Gcm = AesGcm<aes::Aes128, U12>;
type Aes192Gcm = AesGcm<aes::Aes192, U12>;
type Aes256Gcm = AesGcm<aes::Aes256, U12>;

enum Cipher {
    Gcm128(Box<Aes128Gcm>),
    Gcm192(Box<Aes192Gcm>),
    Gcm256(Box<Aes256Gcm>),
    Cbc128(Box<aes::Aes128>),
    Cbc192(Box<aes::Aes192>),
    Cbc256(Box<aes::Aes256>),
}

/// A key ready for use: its expanded form (the key schedule, and GCM's hash
/// key, computed once). The round keys are zeroed when it is dropped.
pub struct CipherKey {
    cipher: Cipher,
    bits: usize,
}

impl std::fmt::Debug for CipherKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CipherKey(AES-{} {:?})", self.bits, self.mode())
    }
}

/// GCM as Tomcat runs it: 96-bit IV, 128-bit tag.
trait Gcm: AeadInPlace + AeadCore<NonceSize = U12, TagSize = U16> {}
impl<C: AeadInPlace + AeadCore<NonceSize = U12, TagSize = U16>> Gcm for C {}

fn gcm_seal<C: Gcm>(c: &C, plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let mut out = Vec::with_capacity(GCM_IV + plaintext.len() + GCM_TAG);
    out.resize(GCM_IV, 0);
    rand::rng().fill_bytes(&mut out);
    out.extend_from_slice(plaintext);
    let (iv, body) = out.split_at_mut(GCM_IV);
    let tag = c
        .encrypt_in_place_detached(Nonce::<U12>::from_slice(iv), b"", body)
        .map_err(|_| CryptoError::TooLarge(plaintext.len()))?;
    out.extend_from_slice(&tag);
    Ok(out)
}

fn gcm_open<C: Gcm>(c: &C, sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let (iv, rest) = sealed.split_at(GCM_IV);
    let (body, tag) = rest.split_at(rest.len() - GCM_TAG);
    let mut out = body.to_vec();
    c.decrypt_in_place_detached(
        Nonce::<U12>::from_slice(iv),
        b"",
        &mut out,
        Tag::<U16>::from_slice(tag),
    )
    .map_err(|_| CryptoError::Rejected)?;
    Ok(out)
}

fn cbc_seal<C>(c: &C, plaintext: &[u8]) -> Result<Vec<u8>, CryptoError>
where
    C: aes::cipher::BlockCipher + aes::cipher::BlockEncrypt + Clone,
{
    let padded = (plaintext.len() / BLOCK + 1) * BLOCK;
    let mut out = vec![0u8; BLOCK + padded];
    rand::rng().fill_bytes(&mut out[..BLOCK]);
    let (iv, body) = out.split_at_mut(BLOCK);
    body[..plaintext.len()].copy_from_slice(plaintext);
    cbc::Encryptor::<C>::inner_iv_slice_init(c.clone(), iv)
        .map_err(|_| CryptoError::Rejected)?
        .encrypt_padded_mut::<Pkcs7>(body, plaintext.len())
        .map_err(|_| CryptoError::TooLarge(plaintext.len()))?;
    Ok(out)
}

fn cbc_open<C>(c: &C, sealed: &[u8]) -> Result<Vec<u8>, CryptoError>
where
    C: aes::cipher::BlockCipher + aes::cipher::BlockDecrypt + Clone,
{
    let (iv, body) = sealed.split_at(BLOCK);
    if body.len() % BLOCK != 0 {
        return Err(CryptoError::Rejected);
    }
    let mut out = body.to_vec();
    let n = cbc::Decryptor::<C>::inner_iv_slice_init(c.clone(), iv)
        .map_err(|_| CryptoError::Rejected)?
        .decrypt_padded_mut::<Pkcs7>(&mut out)
        .map_err(|_| CryptoError::Rejected)?
        .len();
    out.truncate(n);
    Ok(out)
}

impl CipherKey {
    /// Expands `key` (16, 24 or 32 bytes) for `mode`.
    pub fn new(mode: Mode, key: &[u8]) -> Result<Self, CryptoError> {
        let bad = || CryptoError::BadKeyLength(key.len());
        let cipher = match (mode, key.len()) {
            (Mode::Gcm, 16) => {
                Cipher::Gcm128(Box::new(Aes128Gcm::new_from_slice(key).map_err(|_| bad())?))
            }
            (Mode::Gcm, 24) => {
                Cipher::Gcm192(Box::new(Aes192Gcm::new_from_slice(key).map_err(|_| bad())?))
            }
            (Mode::Gcm, 32) => {
                Cipher::Gcm256(Box::new(Aes256Gcm::new_from_slice(key).map_err(|_| bad())?))
            }
            (Mode::CbcPkcs5, 16) => Cipher::Cbc128(Box::new(
                aes::Aes128::new_from_slice(key).map_err(|_| bad())?,
            )),
            (Mode::CbcPkcs5, 24) => Cipher::Cbc192(Box::new(
                aes::Aes192::new_from_slice(key).map_err(|_| bad())?,
            )),
            (Mode::CbcPkcs5, 32) => Cipher::Cbc256(Box::new(
                aes::Aes256::new_from_slice(key).map_err(|_| bad())?,
            )),
            _ => return Err(bad()),
        };
        Ok(Self {
            cipher,
            bits: key.len() * 8,
        })
    }

    /// The mode it was made for.
    pub fn mode(&self) -> Mode {
        match self.cipher {
            Cipher::Gcm128(_) | Cipher::Gcm192(_) | Cipher::Gcm256(_) => Mode::Gcm,
            _ => Mode::CbcPkcs5,
        }
    }

    /// `IV || ciphertext` of `plaintext` under a fresh random IV (GCM: the
    /// tag appended), Tomcat's EncryptInterceptor body.
    pub fn seal(&self, plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        if plaintext.len() > MAX_INPUT {
            return Err(CryptoError::TooLarge(plaintext.len()));
        }
        match &self.cipher {
            Cipher::Gcm128(c) => gcm_seal(&**c, plaintext),
            Cipher::Gcm192(c) => gcm_seal(&**c, plaintext),
            Cipher::Gcm256(c) => gcm_seal(&**c, plaintext),
            Cipher::Cbc128(c) => cbc_seal(&**c, plaintext),
            Cipher::Cbc192(c) => cbc_seal(&**c, plaintext),
            Cipher::Cbc256(c) => cbc_seal(&**c, plaintext),
        }
    }

    /// The plaintext of `IV || ciphertext`.
    pub fn open(&self, sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        if sealed.len() > MAX_INPUT {
            return Err(CryptoError::TooLarge(sealed.len()));
        }
        let least = match self.mode() {
            Mode::Gcm => GCM_IV + GCM_TAG,
            Mode::CbcPkcs5 => BLOCK + BLOCK,
        };
        if sealed.len() < least {
            return Err(CryptoError::TooShort(sealed.len()));
        }
        match &self.cipher {
            Cipher::Gcm128(c) => gcm_open(&**c, sealed),
            Cipher::Gcm192(c) => gcm_open(&**c, sealed),
            Cipher::Gcm256(c) => gcm_open(&**c, sealed),
            Cipher::Cbc128(c) => cbc_open(&**c, sealed),
            Cipher::Cbc192(c) => cbc_open(&**c, sealed),
            Cipher::Cbc256(c) => cbc_open(&**c, sealed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gcm_layout_is_iv_ciphertext_tag_and_round_trips() {
        let key = CipherKey::new(Mode::Gcm, &[7u8; 32]).expect("key");
        let pt = b"a known plaintext that must not be seen on the wire";
        let sealed = key.seal(pt).expect("seal");
        assert_eq!(sealed.len(), GCM_IV + pt.len() + GCM_TAG);
        assert!(!sealed.windows(8).any(|w| w == &pt[..8]));
        assert_eq!(key.open(&sealed).expect("open"), pt);
        let again = key.seal(pt).expect("seal");
        assert_ne!(sealed[..GCM_IV], again[..GCM_IV], "a fresh IV each time");
    }

    #[test]
    fn gcm_matches_a_known_vector() {
        // NIST GCM spec, test case 3: AES-128, key feffe992…, IV cafebabe…,
        // 64-byte plaintext, no AAD.
        let k = hex::decode("feffe9928665731c6d6a8f9467308308").expect("hex");
        let iv = hex::decode("cafebabefacedbaddecaf888").expect("hex");
        let pt = hex::decode(
            "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72\
             1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b391aafd255",
        )
        .expect("hex");
        let want = hex::decode(
            "42831ec2217774244b7221b784d0d49ce3aa212f2c02a4e035c17e2329aca12e\
             21d514b25466931c7d8f6a5aac84aa051ba30b396a0aac973d58e091473f5985\
             4d5c2af327cd64a62cf35abd2ba6fab4",
        )
        .expect("hex");
        let key = CipherKey::new(Mode::Gcm, &k).expect("key");
        let sealed = [iv.as_slice(), &want].concat();
        assert_eq!(key.open(&sealed).expect("open"), pt);
    }

    #[test]
    fn cbc_matches_a_known_vector_and_pads() {
        // NIST SP 800-38A F.2.1 (CBC-AES128), first block; PKCS#5 then adds
        // one whole block of padding to a 16-byte plaintext.
        let k = hex::decode("2b7e151628aed2a6abf7158809cf4f3c").expect("hex");
        let iv = hex::decode("000102030405060708090a0b0c0d0e0f").expect("hex");
        let pt = hex::decode("6bc1bee22e409f96e93d7e117393172a").expect("hex");
        let c1 = hex::decode("7649abac8119b246cee98e9b12e9197d").expect("hex");
        let key = CipherKey::new(Mode::CbcPkcs5, &k).expect("key");
        let sealed = key.seal(&pt).expect("seal");
        assert_eq!(sealed.len(), BLOCK + 2 * BLOCK);
        assert_eq!(key.open(&sealed).expect("open"), pt);
        // With the spec's IV the first block is the spec's.
        let mut blocks = [pt.as_slice(), &[16u8; 16]].concat();
        let ct = cbc::Encryptor::<aes::Aes128>::inner_iv_slice_init(
            aes::Aes128::new_from_slice(&k).expect("key"),
            &iv,
        )
        .expect("iv")
        .encrypt_padded_mut::<cbc::cipher::block_padding::NoPadding>(&mut blocks, 32)
        .expect("encrypt")
        .to_vec();
        assert_eq!(&ct[..16], c1.as_slice());
        let ours = [iv.as_slice(), &ct].concat();
        assert_eq!(key.open(&ours).expect("open"), pt);
    }

    #[test]
    fn bad_keys_short_tampered_and_oversized_inputs_are_errors() {
        for n in [0, 8, 15, 17, 31, 33, 64] {
            assert_eq!(
                CipherKey::new(Mode::Gcm, &vec![1; n]).map(|_| ()),
                Err(CryptoError::BadKeyLength(n))
            );
        }
        for bits in [16, 24, 32] {
            for mode in [Mode::Gcm, Mode::CbcPkcs5] {
                let key = CipherKey::new(mode, &vec![3; bits]).expect("key");
                let empty = key.seal(b"").expect("an empty body seals");
                assert_eq!(key.open(&empty).expect("open"), b"");
                let least = empty.len();
                assert_eq!(
                    key.open(&empty[..least - 1]),
                    Err(CryptoError::TooShort(least - 1))
                );
                let mut sealed = key
                    .seal(b"some body of a few blocks, 40 bytes...")
                    .expect("seal");
                let last = sealed.len() - 1;
                sealed[last] ^= 1;
                assert_eq!(key.open(&sealed), Err(CryptoError::Rejected), "{mode:?}");
                let other = CipherKey::new(mode, &vec![4; bits]).expect("key");
                sealed[last] ^= 1;
                // CBC is not authenticated: a wrong key yields garbage with
                // valid padding about once in 256; GCM always refuses.
                match mode {
                    Mode::Gcm => assert_eq!(other.open(&sealed), Err(CryptoError::Rejected)),
                    Mode::CbcPkcs5 => assert_ne!(
                        other.open(&sealed).ok().as_deref(),
                        Some(&b"some body of a few blocks, 40 bytes..."[..])
                    ),
                }
                let big = vec![0u8; MAX_INPUT + 1];
                assert_eq!(key.seal(&big), Err(CryptoError::TooLarge(MAX_INPUT + 1)));
                assert_eq!(key.open(&big), Err(CryptoError::TooLarge(MAX_INPUT + 1)));
            }
        }
        let cbc = CipherKey::new(Mode::CbcPkcs5, &[5; 16]).expect("key");
        assert_eq!(
            cbc.open(&[0u8; 40]),
            Err(CryptoError::Rejected),
            "not whole blocks"
        );
    }
}
