//! Passphrase-protected private keys: PKCS#8 `EncryptedPrivateKeyInfo` (RFC 5208 §6) with
//! PBES2 (RFC 8018 §6.2), the `BEGIN ENCRYPTED PRIVATE KEY` files `openssl pkey -aes256` and
//! `openssl genpkey -aes-256-cbc` write and `openssl pkey -passin` reads.
//!
//! Invariants:
//! - The DER structures are parsed and written by RustCrypto's `pkcs8`/`pkcs5` (encoding only);
//!   PBKDF2 and AES-CBC run in aws-lc, our one crypto library. scrypt, which aws-lc-rs does not
//!   offer, comes from RustCrypto's `scrypt`, and is only ever used to read.
//! - Every cost a file asks for is checked against a ceiling ([`MAX_PBKDF2_ITERATIONS`],
//!   [`MAX_SCRYPT_COST`]) before any work or allocation, so a hostile file cannot make us spin
//!   for minutes or allocate gigabytes.
//! - A wrong passphrase and a damaged file are one error ([`KeyError::WrongPassphrase`]): CBC
//!   padding and the PKCS#8 parse are the only checks there are, and they cannot tell the two
//!   apart.
//! - Derived keys and decrypted DER live in [`Zeroizing`] buffers.

use std::num::NonZeroU32;

use aws_lc_rs::cipher::{
    AES_128, AES_256, Algorithm, DecryptionContext, EncryptionContext, PaddedBlockDecryptingKey,
    PaddedBlockEncryptingKey, UnboundCipherKey,
};
use aws_lc_rs::iv::FixedLength;
use aws_lc_rs::{pbkdf2, rand};
use pkcs5::pbes2::{self, Kdf, Pbkdf2Params, Pbkdf2Prf, ScryptParams};
use pkcs8::der::Encode as _;
use pkcs8::der::asn1::OctetStringRef;
use pkcs8::{EncryptedPrivateKeyInfo, EncryptedPrivateKeyInfoRef};
use zeroize::Zeroizing;

use super::{KeyError, Passphrase};

/// PBKDF2-HMAC-SHA-256 iterations letterlock writes: OWASP's 2023 figure for that PRF
/// (600,000). OpenSSL's own default (2,048) is far too low against offline guessing.
pub const PBKDF2_ITERATIONS: u32 = 600_000;

/// The most PBKDF2 iterations we run for a file: 10,000,000, about 16 times our default,
/// a few seconds of work. A file asking for more is refused rather than obeyed.
pub const MAX_PBKDF2_ITERATIONS: u32 = 10_000_000;

/// The most scrypt work we do for a file, as bytes of `128 · N · r · p`: 256 MiB. This bounds
/// both the memory scrypt takes (`128 · N · r`) and its time (proportional to `N · r · p`).
/// It allows N = 2^18 with r = 8, p = 1; OpenSSL's scrypt default (N = 2^14, r = 8, p = 1,
/// 16 MiB) is well inside.
pub const MAX_SCRYPT_COST: u64 = 256 * 1024 * 1024;

/// Salt letterlock writes: 16 bytes, as NIST SP 800-132 recommends (at least 128 bits).
const SALT_LEN: usize = 16;

/// How to derive the file key when writing an encrypted key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum KdfChoice {
    /// PBKDF2-HMAC-SHA-256 with this many iterations (the default: [`PBKDF2_ITERATIONS`]).
    Pbkdf2Sha256 { iterations: u32 },
    /// scrypt with N = 2^`log_n`, r, p. OpenSSL refuses to read scrypt above 32 MiB
    /// (`128 · N · r`), so N = 2^14, r = 8, p = 1 is the most `openssl pkey` reads back.
    Scrypt { log_n: u8, r: u32, p: u32 },
}

impl Default for KdfChoice {
    fn default() -> Self {
        KdfChoice::Pbkdf2Sha256 {
            iterations: PBKDF2_ITERATIONS,
        }
    }
}

/// Decrypts an `EncryptedPrivateKeyInfo` DER to the PKCS#8 `PrivateKeyInfo` DER inside.
pub(super) fn decrypt(der: &[u8], passphrase: &Passphrase) -> Result<Zeroizing<Vec<u8>>, KeyError> {
    let info =
        EncryptedPrivateKeyInfoRef::try_from(der).map_err(|e| KeyError::BadEncryptedKey {
            reason: e.to_string(),
        })?;
    let params = match &info.encryption_algorithm {
        pkcs5::EncryptionScheme::Pbes2(params) => params,
        other => {
            return Err(KeyError::UnsupportedEncryption {
                what: format!("PBES1 ({})", other.oid()),
            });
        }
    };
    let (cipher, key_len, iv) = cipher_of(&params.encryption)?;
    let key = derive(&params.kdf, passphrase, key_len)?;
    let key = UnboundCipherKey::new(cipher, &key).map_err(|_| KeyError::Crypto)?;
    let key = PaddedBlockDecryptingKey::cbc_pkcs7(key).map_err(|_| KeyError::Crypto)?;
    let mut buf = Zeroizing::new(info.encrypted_data.as_bytes().to_vec());
    let len = key
        .decrypt(&mut buf, DecryptionContext::Iv128(FixedLength::from(iv)))
        .map_err(|_| KeyError::WrongPassphrase)?
        .len();
    buf.truncate(len);
    Ok(buf)
}

/// Encrypts a PKCS#8 `PrivateKeyInfo` DER under `passphrase`: PBES2 with `kdf`, a fresh
/// 16-byte salt, AES-256-CBC under a fresh IV. Returns the `EncryptedPrivateKeyInfo` DER.
pub(super) fn encrypt(
    pkcs8: &[u8],
    passphrase: &Passphrase,
    kdf: KdfChoice,
) -> Result<Vec<u8>, KeyError> {
    let mut salt = [0u8; SALT_LEN];
    let mut iv = [0u8; 16];
    rand::fill(&mut salt).map_err(|_| KeyError::Crypto)?;
    rand::fill(&mut iv).map_err(|_| KeyError::Crypto)?;
    let bad = |e: pkcs5::Error| KeyError::BadEncryptedKey {
        reason: e.to_string(),
    };
    let kdf: Kdf = match kdf {
        KdfChoice::Pbkdf2Sha256 { iterations } => Pbkdf2Params::hmac_sha256(iterations, &salt)
            .map_err(bad)?
            .into(),
        KdfChoice::Scrypt { log_n, r, p } => {
            let invalid = || KeyError::UnsupportedEncryption {
                what: format!("scrypt with N = 2^{log_n}, r = {r}, p = {p}"),
            };
            Kdf::Scrypt(ScryptParams {
                salt: pbes2::Salt::new(salt).map_err(|e| KeyError::BadEncryptedKey {
                    reason: e.to_string(),
                })?,
                cost_parameter: 1u64.checked_shl(log_n.into()).ok_or_else(invalid)?,
                block_size: u16::try_from(r).map_err(|_| invalid())?,
                parallelization: u16::try_from(p).map_err(|_| invalid())?,
                key_length: None,
            })
        }
    };
    // Refuse to write what we would refuse to read.
    check_cost(&kdf)?;
    let key = derive(&kdf, passphrase, AES_256_KEY_LEN)?;
    let key = UnboundCipherKey::new(&AES_256, &key).map_err(|_| KeyError::Crypto)?;
    let key = PaddedBlockEncryptingKey::cbc_pkcs7(key).map_err(|_| KeyError::Crypto)?;
    // Room for the padding up front, so the in-place encryption never reallocates and leaves
    // a copy of the key in freed memory.
    let mut buf = Zeroizing::new(Vec::with_capacity(pkcs8.len() + 16));
    buf.extend_from_slice(pkcs8);
    key.less_safe_encrypt(&mut *buf, EncryptionContext::Iv128(FixedLength::from(iv)))
        .map_err(|_| KeyError::Crypto)?;
    let info = EncryptedPrivateKeyInfo {
        encryption_algorithm: pkcs5::EncryptionScheme::Pbes2(pbes2::Parameters {
            kdf,
            encryption: pbes2::EncryptionScheme::Aes256Cbc { iv },
        }),
        encrypted_data: OctetStringRef::new(&buf).map_err(|e| KeyError::BadEncryptedKey {
            reason: e.to_string(),
        })?,
    };
    info.to_der().map_err(|e| KeyError::BadEncryptedKey {
        reason: e.to_string(),
    })
}

/// Key bytes of AES-256 and AES-128.
const AES_256_KEY_LEN: usize = 32;
const AES_128_KEY_LEN: usize = 16;

/// The aws-lc cipher, its key length and the IV of a PBES2 encryption scheme: AES-128-CBC or
/// AES-256-CBC.
fn cipher_of(
    scheme: &pbes2::EncryptionScheme,
) -> Result<(&'static Algorithm, usize, [u8; 16]), KeyError> {
    match scheme {
        pbes2::EncryptionScheme::Aes256Cbc { iv } => Ok((&AES_256, AES_256_KEY_LEN, *iv)),
        pbes2::EncryptionScheme::Aes128Cbc { iv } => Ok((&AES_128, AES_128_KEY_LEN, *iv)),
        other => Err(KeyError::UnsupportedEncryption {
            what: format!("cipher {}", other.oid()),
        }),
    }
}

/// Refuses KDF parameters above our ceilings, before any work is done.
fn check_cost(kdf: &Kdf) -> Result<(), KeyError> {
    match kdf {
        Kdf::Pbkdf2(p) => {
            if p.iteration_count == 0 {
                return Err(KeyError::BadEncryptedKey {
                    reason: "PBKDF2 iteration count 0".into(),
                });
            }
            if p.iteration_count > MAX_PBKDF2_ITERATIONS {
                return Err(KeyError::KdfTooCostly {
                    what: format!(
                        "{} PBKDF2 iterations (the ceiling is {MAX_PBKDF2_ITERATIONS})",
                        p.iteration_count
                    ),
                });
            }
        }
        Kdf::Scrypt(s) => {
            let (n, r, p) = (s.cost_parameter, s.block_size, s.parallelization);
            if n < 2 || !n.is_power_of_two() || r == 0 || p == 0 {
                return Err(KeyError::BadEncryptedKey {
                    reason: format!("scrypt parameters N = {n}, r = {r}, p = {p} are not valid"),
                });
            }
            // 128 · N · r · p in u128: u64 N times two u16 cannot overflow it.
            let cost = 128 * u128::from(n) * u128::from(r) * u128::from(p);
            if cost > u128::from(MAX_SCRYPT_COST) {
                return Err(KeyError::KdfTooCostly {
                    what: format!(
                        "scrypt with N = {n}, r = {r}, p = {p} (128·N·r·p = {cost} bytes; the \
                         ceiling is {MAX_SCRYPT_COST})"
                    ),
                });
            }
        }
        _ => {
            return Err(KeyError::UnsupportedEncryption {
                what: format!("key derivation {}", kdf.oid()),
            });
        }
    }
    Ok(())
}

/// Derives the `len`-byte file key, after [`check_cost`].
fn derive(kdf: &Kdf, passphrase: &Passphrase, len: usize) -> Result<Zeroizing<Vec<u8>>, KeyError> {
    check_cost(kdf)?;
    if kdf.key_length().is_some_and(|l| usize::from(l) != len) {
        return Err(KeyError::BadEncryptedKey {
            reason: "the key length in the KDF parameters does not match the cipher".into(),
        });
    }
    let mut key = Zeroizing::new(vec![0u8; len]);
    match kdf {
        Kdf::Pbkdf2(p) => {
            let prf = match p.prf {
                Pbkdf2Prf::HmacWithSha1 => pbkdf2::PBKDF2_HMAC_SHA1,
                Pbkdf2Prf::HmacWithSha256 => pbkdf2::PBKDF2_HMAC_SHA256,
                Pbkdf2Prf::HmacWithSha384 => pbkdf2::PBKDF2_HMAC_SHA384,
                Pbkdf2Prf::HmacWithSha512 => pbkdf2::PBKDF2_HMAC_SHA512,
                other => {
                    return Err(KeyError::UnsupportedEncryption {
                        what: format!("PBKDF2 with {}", other.oid()),
                    });
                }
            };
            let iterations = NonZeroU32::new(p.iteration_count).ok_or(KeyError::Crypto)?;
            pbkdf2::derive(
                prf,
                iterations,
                p.salt.as_bytes(),
                passphrase.as_bytes(),
                &mut key,
            );
        }
        Kdf::Scrypt(s) => {
            // check_cost made N a power of two of at least 2.
            let log_n =
                u8::try_from(s.cost_parameter.trailing_zeros()).map_err(|_| KeyError::Crypto)?;
            let params = scrypt::Params::new(log_n, s.block_size.into(), s.parallelization.into())
                .map_err(|_| KeyError::BadEncryptedKey {
                    reason: "scrypt parameters out of range".into(),
                })?;
            scrypt::scrypt(passphrase.as_bytes(), s.salt.as_bytes(), &params, &mut key)
                .map_err(|_| KeyError::Crypto)?;
        }
        _ => {
            return Err(KeyError::UnsupportedEncryption {
                what: format!("key derivation {}", kdf.oid()),
            });
        }
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A structurally valid encrypted key whose KDF is `kdf` (the ciphertext is junk: the
    /// ceilings must refuse it before any decryption is tried).
    fn with_kdf(kdf: Kdf) -> Vec<u8> {
        EncryptedPrivateKeyInfo {
            encryption_algorithm: pkcs5::EncryptionScheme::Pbes2(pbes2::Parameters {
                kdf,
                encryption: pbes2::EncryptionScheme::Aes256Cbc { iv: [0; 16] },
            }),
            encrypted_data: OctetStringRef::new(&[0u8; 32]).unwrap(),
        }
        .to_der()
        .unwrap()
    }

    fn scrypt_kdf(n: u64, r: u16, p: u16) -> Kdf {
        Kdf::Scrypt(ScryptParams {
            salt: pbes2::Salt::new([1u8; 16]).unwrap(),
            cost_parameter: n,
            block_size: r,
            parallelization: p,
            key_length: None,
        })
    }

    fn pass() -> Passphrase {
        Passphrase::from("correct horse")
    }

    #[test]
    fn hostile_pbkdf2_counts_are_refused_before_any_work() {
        for count in [MAX_PBKDF2_ITERATIONS + 1, u32::MAX] {
            let der = with_kdf(Kdf::Pbkdf2(Pbkdf2Params {
                salt: pbes2::Salt::new([1u8; 16]).unwrap(),
                iteration_count: count,
                key_length: None,
                prf: Pbkdf2Prf::HmacWithSha256,
            }));
            let err = decrypt(&der, &pass()).unwrap_err();
            assert!(
                matches!(err, KeyError::KdfTooCostly { .. }),
                "{count}: {err:?}"
            );
        }
    }

    #[test]
    fn hostile_scrypt_parameters_are_refused_before_any_allocation() {
        for (n, r, p) in [
            (1u64 << 62, 8u16, 1u16), // exabytes of memory
            (1 << 20, 8, 1),          // 1 GiB
            (1 << 14, 8, 64),         // 16 MiB of memory, but 64 passes
            (1 << 18, 8, 2),          // just over the ceiling
            (u64::MAX, u16::MAX, u16::MAX),
        ] {
            let err = decrypt(&with_kdf(scrypt_kdf(n, r, p)), &pass()).unwrap_err();
            assert!(
                matches!(
                    err,
                    KeyError::KdfTooCostly { .. } | KeyError::BadEncryptedKey { .. }
                ),
                "N={n} r={r} p={p}: {err:?}"
            );
        }
        for (n, r, p) in [
            (0u64, 8u16, 1u16),
            (3, 8, 1),
            (1 << 10, 0, 1),
            (1 << 10, 8, 0),
        ] {
            let err = decrypt(&with_kdf(scrypt_kdf(n, r, p)), &pass()).unwrap_err();
            assert!(
                matches!(err, KeyError::BadEncryptedKey { .. }),
                "N={n} r={r} p={p}: {err:?}"
            );
        }
    }

    #[test]
    fn at_the_ceiling_the_work_is_done_and_a_wrong_key_is_reported_as_such() {
        // Small parameters get past the ceilings; the junk ciphertext then fails as a wrong
        // passphrase would, with the typed error and no panic.
        let der = with_kdf(scrypt_kdf(1 << 4, 8, 1));
        assert!(matches!(
            decrypt(&der, &pass()),
            Err(KeyError::WrongPassphrase)
        ));
        let der = with_kdf(Pbkdf2Params::hmac_sha256(1_000, &[1; 16]).unwrap().into());
        assert!(matches!(
            decrypt(&der, &pass()),
            Err(KeyError::WrongPassphrase)
        ));
    }

    #[test]
    fn round_trip_with_both_kdfs_and_the_wrong_passphrase_refused() {
        let secret = b"0123456789abcdef0123456789abcdef-any DER would do".to_vec();
        for kdf in [
            KdfChoice::Pbkdf2Sha256 { iterations: 1_000 },
            KdfChoice::Scrypt {
                log_n: 4,
                r: 8,
                p: 1,
            },
        ] {
            let der = encrypt(&secret, &pass(), kdf).unwrap();
            assert_eq!(
                decrypt(&der, &pass()).unwrap().as_slice(),
                secret,
                "{kdf:?}"
            );
            // A wrong passphrase fails the padding check (or, 1 time in 256, yields junk
            // that the PKCS#8 parse of the caller refuses): never the secret.
            match decrypt(&der, &Passphrase::from("wrong")) {
                Err(KeyError::WrongPassphrase) => {}
                Ok(plain) => assert_ne!(plain.as_slice(), secret),
                Err(e) => panic!("{kdf:?}: {e:?}"),
            }
        }
    }

    #[test]
    fn garbage_is_a_typed_error() {
        for der in [
            &[][..],
            &[0x30, 0x00],
            &[0x30, 0x84, 0xff, 0xff, 0xff, 0xff],
            b"hello",
        ] {
            assert!(matches!(
                decrypt(der, &pass()),
                Err(KeyError::BadEncryptedKey { .. })
            ));
        }
    }
}
