//! RSA public keys: encrypt to (OAEP), verify (PSS), and the names shown for them.

use std::fmt;

use aws_lc_rs::encoding::{AsDer, PublicKeyX509Der};
use aws_lc_rs::rsa::{OAEP_SHA256_MGF1SHA256, OaepPublicEncryptingKey, PublicEncryptingKey};
use aws_lc_rs::signature::{ParsedPublicKey, RSA_PSS_2048_8192_SHA256};

use super::{
    KeyError, KeyId, KeyKind, OAEP_OVERHEAD, SshFingerprint, check_bits, encode_pem, parse_pem,
    rejected,
};

/// An RSA public key, ready to encrypt to (OAEP) and to verify signatures of (PSS).
#[derive(Clone)]
pub struct PublicKey {
    /// The SubjectPublicKeyInfo DER: what we hash for the key id.
    spki: Vec<u8>,
    /// The parsed key for OAEP encryption.
    oaep: std::sync::Arc<OaepPublicEncryptingKey>,
    /// The parsed key for PSS verification, kept: parsing it again for every signature would
    /// also rebuild its Montgomery context (45 µs a verification instead of 50 for RSA-3072 here;
    /// a server checks one signature per message).
    pss: ParsedPublicKey,
    /// Cached key id, compared on every message.
    id: KeyId,
    /// What `ssh-keygen -l` prints for this key, for people comparing with OpenSSH.
    ssh: SshFingerprint,
}

impl PublicKey {
    /// Parses a SubjectPublicKeyInfo or PKCS#1 `RSAPublicKey` DER encoding.
    pub fn from_der(der: &[u8]) -> Result<Self, KeyError> {
        // aws-lc's rsa::PublicKey accepts both encodings; re-encode as SPKI so the id is canonical.
        let parsed =
            aws_lc_rs::rsa::PublicKey::from_der(der).map_err(|e| rejected(KeyKind::Public, e))?;
        let spki: PublicKeyX509Der = parsed.as_der().map_err(|_| KeyError::Crypto)?;
        Self::from_spki(spki.as_ref())
    }

    fn from_spki(spki: &[u8]) -> Result<Self, KeyError> {
        let enc = PublicEncryptingKey::from_der(spki).map_err(|e| rejected(KeyKind::Public, e))?;
        check_bits(enc.key_size_bits())?;
        let oaep = OaepPublicEncryptingKey::new(enc).map_err(|_| KeyError::Crypto)?;
        let pss = ParsedPublicKey::new(&RSA_PSS_2048_8192_SHA256, spki)
            .map_err(|e| rejected(KeyKind::Public, e))?;
        let parsed =
            aws_lc_rs::rsa::PublicKey::from_der(spki).map_err(|e| rejected(KeyKind::Public, e))?;
        let blob = ssh_rsa_blob(
            parsed.exponent().big_endian_without_leading_zero(),
            parsed.modulus().big_endian_without_leading_zero(),
        );
        Ok(PublicKey {
            oaep: std::sync::Arc::new(oaep),
            pss,
            id: KeyId::of_spki(spki),
            ssh: SshFingerprint::of_blob(&blob),
            spki: spki.to_vec(),
        })
    }

    /// Parses a PEM public key (`BEGIN PUBLIC KEY` or `BEGIN RSA PUBLIC KEY`).
    pub fn from_pem(text: &str) -> Result<Self, KeyError> {
        // A private key anywhere in the text, after a public one too (`cat pub.pem priv.pem`),
        // is refused as if it came first: a file that holds one is not a public key to trust
        // or hand around, and whoever has it must be told (found by a trial run).
        if let Some(tag) = private_key_tag(text) {
            return Err(KeyError::WrongPemBlock {
                expected: KeyKind::Public,
                found: tag.to_owned(),
            });
        }
        let block = parse_pem(text)?;
        match block.tag() {
            "PUBLIC KEY" | "RSA PUBLIC KEY" => Self::from_der(block.contents()),
            other => Err(KeyError::WrongPemBlock {
                expected: KeyKind::Public,
                found: other.to_owned(),
            }),
        }
    }

    /// The key as `BEGIN PUBLIC KEY` PEM, which OpenSSL reads with `openssl pkey -pubin`.
    pub fn to_pem(&self) -> String {
        encode_pem("PUBLIC KEY", &self.spki)
    }

    /// The key id: SHA-256 of the SubjectPublicKeyInfo DER, what messages and the protocol
    /// name keys by. Shown as `SPKI-SHA256:…`.
    pub fn id(&self) -> KeyId {
        self.id
    }

    /// What `ssh-keygen -l -E sha256` prints for this key (`SHA256:…`): SHA-256 of its OpenSSH
    /// `ssh-rsa` blob, so a key can be recognised by people who know it from OpenSSH.
    pub fn ssh_fingerprint(&self) -> SshFingerprint {
        self.ssh
    }

    /// The OpenSSH public key blob (RFC 4253 §6.6): string "ssh-rsa", mpint e, mpint n; the
    /// base64 of it is the middle field of an `ssh-rsa AAAA…` line.
    pub fn ssh_blob(&self) -> Result<Vec<u8>, KeyError> {
        let parsed = aws_lc_rs::rsa::PublicKey::from_der(&self.spki)
            .map_err(|e| rejected(KeyKind::Public, e))?;
        Ok(ssh_rsa_blob(
            parsed.exponent().big_endian_without_leading_zero(),
            parsed.modulus().big_endian_without_leading_zero(),
        ))
    }

    pub fn spki_der(&self) -> &[u8] {
        &self.spki
    }

    /// The modulus length in bytes: the size of every ciphertext and signature.
    pub fn modulus_len(&self) -> usize {
        self.oaep.key_size_bytes()
    }

    pub fn bits(&self) -> usize {
        self.oaep.key_size_bits()
    }

    /// The largest plaintext one RSA-OAEP-SHA-256 block can carry under this key.
    pub fn max_oaep_plaintext(&self) -> usize {
        self.modulus_len() - OAEP_OVERHEAD
    }

    /// RSA-OAEP (SHA-256, MGF1-SHA-256) encryption with a label.
    pub fn encrypt_oaep(&self, plaintext: &[u8], label: &[u8]) -> Result<Vec<u8>, KeyError> {
        let mut out = vec![0u8; self.oaep.ciphertext_size()];
        let n = self
            .oaep
            .encrypt(&OAEP_SHA256_MGF1SHA256, plaintext, &mut out, Some(label))
            .map_err(|_| KeyError::Crypto)?
            .len();
        out.truncate(n);
        Ok(out)
    }

    /// Verifies an RSA-PSS (SHA-256, MGF1-SHA-256, salt 32) signature over `message`.
    pub fn verify_pss(&self, message: &[u8], signature: &[u8]) -> bool {
        self.pss.verify_sig(message, signature).is_ok()
    }
}

/// Two keys are the same key when their canonical SPKI encodings are (and so their key ids).
impl PartialEq for PublicKey {
    fn eq(&self, other: &Self) -> bool {
        self.spki == other.spki
    }
}

impl Eq for PublicKey {}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({} bits, {})", self.bits(), self.id)
    }
}

/// RFC 4253 §6.6 `ssh-rsa` blob from the big-endian e and n without leading zeros. Each field
/// is a uint32 length then the bytes; an mpint (RFC 4251 §5) is two's complement, so a value
/// whose top bit is set gets one leading zero byte.
fn ssh_rsa_blob(e: &[u8], n: &[u8]) -> Vec<u8> {
    fn string(out: &mut Vec<u8>, bytes: &[u8], mpint: bool) {
        let pad = mpint && bytes.first().is_some_and(|b| b & 0x80 != 0);
        // Key fields are at most 1 KiB (MAX_BITS): the length always fits in a u32.
        let len = u32::try_from(bytes.len() + usize::from(pad)).unwrap_or(u32::MAX);
        out.extend_from_slice(&len.to_be_bytes());
        if pad {
            out.push(0);
        }
        out.extend_from_slice(bytes);
    }
    let mut out = Vec::with_capacity(4 + 7 + 4 + e.len() + 1 + 4 + n.len() + 1);
    string(&mut out, b"ssh-rsa", false);
    string(&mut out, e, true);
    string(&mut out, n, true);
    out
}

/// The label of the first PEM `BEGIN` for a private key in `text` (`PRIVATE KEY`, `RSA PRIVATE
/// KEY`, `ENCRYPTED PRIVATE KEY`...), wherever it starts: the PEM parser finds a BEGIN after an
/// END on the same line too (found by a review).
fn private_key_tag(text: &str) -> Option<&str> {
    text.match_indices("-----BEGIN ").find_map(|(at, begin)| {
        let rest = text.get(at + begin.len()..)?;
        let tag = rest.get(..rest.find("-----")?)?;
        tag.ends_with("PRIVATE KEY").then_some(tag)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file that is not PEM says what it is instead, in words (not the `pem` crate's
    /// "malformedframing").
    #[test]
    fn a_file_that_is_not_pem_is_described() {
        let reason = |text: &str| match PublicKey::from_pem(text) {
            Err(KeyError::NotPem { reason }) => reason,
            other => panic!("{text:?}: {other:?}"),
        };
        assert_eq!(reason(""), "the file is empty");
        assert_eq!(reason(" \n"), "the file is empty");
        assert!(reason("ssh-rsa AAAAB3NzaC1yc2E bob@host\n").contains("ssh-keygen -e -m PKCS8"));
        assert_eq!(reason("hello\n"), "no -----BEGIN ...----- line");
        assert!(
            reason("-----BEGIN PUBLIC KEY-----\nAAAA\n").contains("-----END lines do not frame")
        );
    }

    /// The test vector of PROTOCOL.md §1; `ssh-keygen -l` agrees (tests/suite/openssl.rs).
    #[test]
    fn alice2048_key_id_and_openssh_fingerprint() {
        let key =
            PublicKey::from_pem(include_str!("../../../tests/keys/alice2048_public.pem")).unwrap();
        assert_eq!(
            key.id().to_string(),
            "SPKI-SHA256:b9FseU2LruoGLHaXY9rpgR/8o+3+nfBdyS3bZPGciKw"
        );
        assert_eq!(
            key.ssh_fingerprint().to_string(),
            "SHA256:NAfCkh6yUU0HA9Axm57MJ161ATv9H1x0O2k14IycP1M"
        );
    }

    #[test]
    fn mpints_get_a_leading_zero_only_when_the_top_bit_is_set() {
        let blob = ssh_rsa_blob(&[0x01, 0x00, 0x01], &[0x80, 0x01]);
        let expected: &[u8] = &[
            0, 0, 0, 7, b's', b's', b'h', b'-', b'r', b's', b'a', //
            0, 0, 0, 3, 0x01, 0x00, 0x01, //
            0, 0, 0, 3, 0x00, 0x80, 0x01,
        ];
        assert_eq!(blob, expected);
    }
}
