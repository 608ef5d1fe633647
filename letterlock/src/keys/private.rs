//! RSA private keys and the [`Identity`] trait behind which private operations sit.

use std::fmt;
use std::sync::OnceLock;

use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der};
use aws_lc_rs::rand;
use aws_lc_rs::rsa::{
    KeyPair, KeySize, OAEP_SHA256_MGF1SHA256, OaepPrivateDecryptingKey, PrivateDecryptingKey,
};
use aws_lc_rs::signature::{KeyPair as _, RSA_PSS_SHA256};
use zeroize::Zeroizing;

use super::encrypted::{self, KdfChoice};
use super::{
    KeyError, KeyKind, Passphrase, PassphraseSource, PublicKey, encode_pem, parse_pem, rejected,
};

/// The PEM label of a passphrase-protected PKCS#8 key.
pub(super) const ENCRYPTED_LABEL: &str = "ENCRYPTED PRIVATE KEY";

/// The private-key operations letterlock needs. A key file implements it ([`PrivateKey`]); an
/// agent or a hardware token could too.
pub trait Identity: Send + Sync {
    /// The matching public key (its id is who we are).
    fn public(&self) -> &PublicKey;
    /// RSA-PSS (SHA-256, MGF1-SHA-256, salt 32) signature over `message`.
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, KeyError>;
    /// RSA-OAEP (SHA-256, MGF1-SHA-256) decryption with a label.
    fn decrypt_oaep(&self, ciphertext: &[u8], label: &[u8])
    -> Result<Zeroizing<Vec<u8>>, KeyError>;
}

/// An RSA private key held in memory.
pub struct PrivateKey {
    /// For PSS signatures.
    signer: KeyPair,
    /// For OAEP decryption (aws-lc keeps the two APIs on separate types), made from `signer`'s
    /// PKCS#8 at the first decryption: parsing and checking an RSA private key costs about half
    /// a millisecond, which a command that only seals or signs (`seal`, `send_msg`) need not pay
    /// twice.
    decrypter: OnceLock<OaepPrivateDecryptingKey>,
    public: PublicKey,
}

impl PrivateKey {
    /// A fresh key pair from aws-lc's generator.
    pub fn generate(bits: usize) -> Result<Self, KeyError> {
        let size = match bits {
            2048 => KeySize::Rsa2048,
            3072 => KeySize::Rsa3072,
            4096 => KeySize::Rsa4096,
            _ => return Err(KeyError::GenerateSize { bits }),
        };
        let pair = KeyPair::generate(size).map_err(|_| KeyError::Crypto)?;
        let pkcs8 = pkcs8_of(&pair)?;
        Self::from_pkcs8(&pkcs8)
    }

    /// Parses an unencrypted PKCS#8 `PrivateKeyInfo` DER.
    pub fn from_pkcs8(der: &[u8]) -> Result<Self, KeyError> {
        let signer = KeyPair::from_pkcs8(der).map_err(|e| rejected(KeyKind::Private, e))?;
        // The public half's parse checks the modulus size (`check_bits`) on the exact bit count.
        let public = PublicKey::from_der(signer.public_key().as_ref())?;
        Ok(PrivateKey {
            signer,
            decrypter: OnceLock::new(),
            public,
        })
    }

    /// The OAEP decrypting key, made on first use (see the field's comment). Two
    /// threads racing here each build one and one is kept: harmless, and it happens once.
    fn decrypter(&self) -> Result<&OaepPrivateDecryptingKey, KeyError> {
        if let Some(d) = self.decrypter.get() {
            return Ok(d);
        }
        let der = pkcs8_of(&self.signer)?;
        let dec =
            PrivateDecryptingKey::from_pkcs8(&der).map_err(|e| rejected(KeyKind::Private, e))?;
        let oaep = OaepPrivateDecryptingKey::new(dec).map_err(|_| KeyError::Crypto)?;
        Ok(self.decrypter.get_or_init(|| oaep))
    }

    /// Parses an unencrypted PEM private key: PKCS#8 (`BEGIN PRIVATE KEY`, what we and
    /// `openssl genpkey` write) or PKCS#1 (`BEGIN RSA PRIVATE KEY`, what the Python `rsa`
    /// package writes). A passphrase-protected key is [`KeyError::Encrypted`]: use
    /// [`PrivateKey::from_pem_with_passphrase`].
    pub fn from_pem(text: &str) -> Result<Self, KeyError> {
        Self::from_pem_with(text, PassphraseSource::none())
    }

    /// Parses a PEM private key, encrypted (`BEGIN ENCRYPTED PRIVATE KEY`, PKCS#8 with PBES2)
    /// or not; `passphrase` is used only if the key is encrypted.
    pub fn from_pem_with_passphrase(text: &str, passphrase: &Passphrase) -> Result<Self, KeyError> {
        let block = parse_pem(text)?;
        Self::from_block(block, PassphraseSource::once(&|_| Ok(passphrase.clone())))
    }

    /// Parses a PEM private key, calling `passphrase` only if the key is encrypted (so an
    /// unencrypted key never makes the caller prompt), and again after a wrong passphrase while
    /// the source allows more tries.
    pub fn from_pem_with(text: &str, passphrase: PassphraseSource) -> Result<Self, KeyError> {
        Self::from_block(parse_pem(text)?, passphrase)
    }

    fn from_block(block: pem::Pem, passphrase: PassphraseSource) -> Result<Self, KeyError> {
        let tag = block.tag().to_owned();
        // OpenSSL's legacy encryption: `Proc-Type: 4,ENCRYPTED` headers on a PKCS#1 block.
        if block
            .headers()
            .get("Proc-Type")
            .is_some_and(|v| v.contains("ENCRYPTED"))
        {
            return Err(KeyError::LegacyEncrypted);
        }
        let der = Zeroizing::new(block.into_contents());
        match tag.as_str() {
            "PRIVATE KEY" => Self::from_pkcs8(&der),
            "RSA PRIVATE KEY" => {
                let pair = KeyPair::from_der(&der).map_err(|e| rejected(KeyKind::Private, e))?;
                Self::from_pkcs8(&pkcs8_of(&pair)?)
            }
            ENCRYPTED_LABEL => passphrase.unlock(|pass| {
                let pkcs8 = encrypted::decrypt(&der, pass)?;
                // A wrong passphrase passes the CBC padding check about once in 256 tries and
                // yields junk: that is a wrong passphrase too, not "not an RSA key".
                Self::from_pkcs8(&pkcs8).map_err(|e| match e {
                    KeyError::NotRsa { .. } | KeyError::Damaged { .. } => KeyError::WrongPassphrase,
                    other => other,
                })
            }),
            other => Err(KeyError::WrongPemBlock {
                expected: KeyKind::Private,
                found: other.to_owned(),
            }),
        }
    }

    /// The key as PKCS#8 `BEGIN PRIVATE KEY` PEM, in a buffer that is wiped when dropped.
    pub fn to_pem(&self) -> Result<Zeroizing<String>, KeyError> {
        let der = pkcs8_of(&self.signer)?;
        Ok(Zeroizing::new(encode_pem("PRIVATE KEY", &der)))
    }

    /// The key as `BEGIN ENCRYPTED PRIVATE KEY` PEM under `passphrase`: PKCS#8 with PBES2,
    /// PBKDF2-HMAC-SHA-256 ([`super::PBKDF2_ITERATIONS`] iterations) and AES-256-CBC, which
    /// `openssl pkey -passin` reads.
    pub fn to_encrypted_pem(&self, passphrase: &Passphrase) -> Result<String, KeyError> {
        self.to_encrypted_pem_with(passphrase, KdfChoice::default())
    }

    /// As [`PrivateKey::to_encrypted_pem`], with the key derivation chosen.
    pub fn to_encrypted_pem_with(
        &self,
        passphrase: &Passphrase,
        kdf: KdfChoice,
    ) -> Result<String, KeyError> {
        let der = pkcs8_of(&self.signer)?;
        let encrypted = encrypted::encrypt(&der, passphrase, kdf)?;
        Ok(encode_pem(ENCRYPTED_LABEL, &encrypted))
    }
}

impl Identity for PrivateKey {
    fn public(&self) -> &PublicKey {
        &self.public
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        let mut sig = vec![0u8; self.signer.public_modulus_len()];
        self.signer
            .sign(
                &RSA_PSS_SHA256,
                &rand::SystemRandom::new(),
                message,
                &mut sig,
            )
            .map_err(|_| KeyError::Crypto)?;
        Ok(sig)
    }

    fn decrypt_oaep(
        &self,
        ciphertext: &[u8],
        label: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        let decrypter = self.decrypter()?;
        let mut out = Zeroizing::new(vec![0u8; decrypter.min_output_size()]);
        let n = decrypter
            .decrypt(&OAEP_SHA256_MGF1SHA256, ciphertext, &mut out, Some(label))
            .map_err(|_| KeyError::Crypto)?
            .len();
        out.truncate(n);
        Ok(out)
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print key material: only which public key this is.
        write!(f, "PrivateKey({:?})", self.public)
    }
}

fn pkcs8_of(pair: &KeyPair) -> Result<Zeroizing<Vec<u8>>, KeyError> {
    let der: Pkcs8V1Der = pair.as_der().map_err(|_| KeyError::Crypto)?;
    Ok(Zeroizing::new(der.as_ref().to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::Attempt;

    const ALICE: &str = include_str!("../../../tests/keys/alice2048_private.pem");

    #[test]
    fn encrypted_pem_round_trips_and_refuses_a_wrong_passphrase() {
        let key = PrivateKey::from_pem(ALICE).unwrap();
        let pass = Passphrase::from("correct horse battery staple");
        let pem = key.to_encrypted_pem(&pass).unwrap();
        assert!(
            pem.starts_with("-----BEGIN ENCRYPTED PRIVATE KEY-----\n"),
            "{pem}"
        );
        // The key text is nowhere in it.
        assert!(!pem.contains(ALICE.lines().nth(1).unwrap()));
        let back = PrivateKey::from_pem_with_passphrase(&pem, &pass).unwrap();
        assert_eq!(back.public().id(), key.public().id());
        assert!(matches!(
            PrivateKey::from_pem(&pem),
            Err(KeyError::Encrypted)
        ));
        assert!(matches!(
            PrivateKey::from_pem_with_passphrase(&pem, &Passphrase::from("wrong")),
            Err(KeyError::WrongPassphrase)
        ));
        // An unencrypted key reads with a passphrase given, and never asks for one.
        let asked = std::cell::Cell::new(false);
        let plain = PrivateKey::from_pem_with(
            ALICE,
            PassphraseSource::retrying(
                &|_| {
                    asked.set(true);
                    Err(KeyError::Encrypted)
                },
                3,
            ),
        )
        .unwrap();
        assert_eq!(plain.public().id(), key.public().id());
        assert!(!asked.get());
    }

    /// A source that allows several tries is asked again after each wrong passphrase, each
    /// try numbered, until a right one or the last try; a source tried once is asked once;
    /// only a wrong passphrase earns another try.
    #[test]
    fn a_wrong_passphrase_is_asked_again_only_while_the_source_allows() {
        let key = PrivateKey::from_pem(ALICE).unwrap();
        let cheap = KdfChoice::Pbkdf2Sha256 { iterations: 1000 };
        let pem = key
            .to_encrypted_pem_with(&Passphrase::from("right"), cheap)
            .unwrap();
        let asked = std::cell::RefCell::new(Vec::new());
        let typed = |answers: &'static [&'static str]| {
            let asked = &asked;
            move |a: Attempt| -> Result<Passphrase, KeyError> {
                asked.borrow_mut().push(a);
                Ok(Passphrase::from(answers[a.number as usize - 1]))
            }
        };
        let tries = |of| {
            (1..=of)
                .map(|number| Attempt { number, of })
                .collect::<Vec<_>>()
        };

        let wrong_then_right = typed(&["wrong", "right"]);
        let back =
            PrivateKey::from_pem_with(&pem, PassphraseSource::retrying(&wrong_then_right, 3));
        assert_eq!(back.unwrap().public().id(), key.public().id());
        assert_eq!(asked.take(), tries(3)[..2].to_vec());
        assert_eq!(tries(3)[1].left(), 2);

        let all_wrong = typed(&["a", "b", "c", "right"]);
        let back = PrivateKey::from_pem_with(&pem, PassphraseSource::retrying(&all_wrong, 3));
        assert!(matches!(back, Err(KeyError::WrongPassphrase)));
        assert_eq!(asked.take(), tries(3));

        let back = PrivateKey::from_pem_with(&pem, PassphraseSource::once(&wrong_then_right));
        assert!(matches!(back, Err(KeyError::WrongPassphrase)));
        assert_eq!(asked.take(), tries(1));

        // A source with nothing to give ends it at once, whatever tries are left.
        let count = std::cell::Cell::new(0);
        let unavailable = |_: Attempt| -> Result<Passphrase, KeyError> {
            count.set(count.get() + 1);
            Err(KeyError::PassphraseUnavailable {
                reason: "test".into(),
            })
        };
        let back = PrivateKey::from_pem_with(&pem, PassphraseSource::retrying(&unavailable, 3));
        assert!(matches!(back, Err(KeyError::PassphraseUnavailable { .. })));
        assert_eq!(count.get(), 1);
    }

    /// A key whose bytes are broken (garbage inside valid armour, a key cut short, in either
    /// PEM form) is said to be damaged, aws-lc's word kept aside; an intact key of another
    /// algorithm is not an RSA key.
    #[test]
    fn a_damaged_key_is_told_from_one_of_another_kind() {
        let der = pem::parse(ALICE).unwrap().into_contents();
        let damaged = |tag: &str, der: &[u8]| match PrivateKey::from_pem(&encode_pem(tag, der)) {
            Err(KeyError::Damaged {
                kind: KeyKind::Private,
                reason,
            }) => reason,
            other => panic!("{tag}: {:?}", other.map(|k| k.public().id())),
        };
        let garbage: Vec<u8> = (0..600u32).map(|i| (i * 7 + 3) as u8).collect();
        assert_eq!(damaged("PRIVATE KEY", &garbage), "InvalidEncoding");
        assert!(!damaged("RSA PRIVATE KEY", &garbage).is_empty());
        damaged("PRIVATE KEY", &der[..der.len() / 2]);
        let e = PrivateKey::from_pem(&encode_pem("PRIVATE KEY", &garbage))
            .err()
            .unwrap();
        assert!(!e.to_string().contains("InvalidEncoding"), "{e}");
        assert!(e.to_string().contains("damaged or cut short"), "{e}");

        let rng = aws_lc_rs::rand::SystemRandom::new();
        let ec = aws_lc_rs::signature::EcdsaKeyPair::generate_pkcs8(
            &aws_lc_rs::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
            &rng,
        )
        .unwrap();
        assert!(matches!(
            PrivateKey::from_pem(&encode_pem("PRIVATE KEY", ec.as_ref())),
            Err(KeyError::NotRsa { .. })
        ));
    }
}
