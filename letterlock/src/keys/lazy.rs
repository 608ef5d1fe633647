//! A private key whose file is read now and parsed at its first private operation.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use zeroize::Zeroizing;

use super::file::{in_file, load_public, read_key_file};
use super::{Identity, KeyError, PrivateKey, PublicKey, is_encrypted_pem};

/// An unencrypted private key file, read and checked when this is made (a regular file,
/// readable by its owner only, of a sane size), and parsed at its first private operation, on
/// whichever thread asks first; until then its public half is the public key file beside it.
///
/// Why: aws-lc parses and checks an RSA-3072 private key in about a millisecond, and a command
/// run once (`client send_msg`) needs it only for the message's signature, which it makes on
/// another thread beside the connection. The connection itself needs only the public half when
/// the client's TLS handshake key comes from its cache (the handshake key's certificate is
/// checked with the public key). So the connection starts that millisecond sooner; a whole
/// `send_msg` gains about a third of one (docs/PERFORMANCE-HISTORY.md, "Eighth session"), since
/// the signature, which waits for the parse either way, is the longer of its two paths.
///
/// The parsed key must be the pair of that public key: if it is not, every private operation
/// fails with [`KeyError::NotThePair`], and nothing is signed with it.
pub struct LazyPrivateKey {
    path: PathBuf,
    public_path: PathBuf,
    text: Zeroizing<String>,
    public: PublicKey,
    /// `None` once parsing failed; [`LazyPrivateKey::key`] then says why.
    parsed: OnceLock<Option<PrivateKey>>,
}

impl LazyPrivateKey {
    /// Reads the private key file `private` with the checks of
    /// [`load_private`](super::load_private), and its public half from `public`. `None` when
    /// the key cannot be read lazily: it is passphrase-protected (the passphrase is asked for
    /// first), or `public` cannot be read as a public key (the private key then says who we
    /// are); load it with [`load_private_with`](super::load_private_with) instead.
    pub fn read(private: &Path, public: &Path) -> Result<Option<Self>, KeyError> {
        let text = read_key_file(private, true)?;
        if is_encrypted_pem(&text) {
            return Ok(None);
        }
        let Ok(public_key) = load_public(public) else {
            return Ok(None);
        };
        Ok(Some(LazyPrivateKey {
            path: private.to_owned(),
            public_path: public.to_owned(),
            text,
            public: public_key,
            parsed: OnceLock::new(),
        }))
    }

    /// The parsed key, parsed now if no thread did yet (a thread that asks meanwhile waits for
    /// that parse). The error, when there is one, is the one
    /// [`load_private`](super::load_private) gives for the same file, or
    /// [`KeyError::NotThePair`].
    pub fn key(&self) -> Result<&PrivateKey, KeyError> {
        match self.parsed.get_or_init(|| self.parse().ok()) {
            Some(key) => Ok(key),
            // Parsing again gives the error whole (with its type, for the caller's hints)
            // without keeping errors that cannot be cloned: each failed call parses again, a
            // few times at most before a command gives up. `parse` reads only fields that
            // never change, so it fails again the same way (`Crypto` cannot be reached).
            None => Err(self.parse().err().unwrap_or(KeyError::Crypto)),
        }
    }

    fn parse(&self) -> Result<PrivateKey, KeyError> {
        let key = PrivateKey::from_pem(&self.text).map_err(|e| in_file(&self.path, e))?;
        if key.public().id() != self.public.id() {
            return Err(KeyError::NotThePair {
                private: self.path.clone(),
                public: self.public_path.clone(),
            });
        }
        Ok(key)
    }
}

impl Identity for LazyPrivateKey {
    fn public(&self) -> &PublicKey {
        &self.public
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        self.key()?.sign(message)
    }

    fn decrypt_oaep(
        &self,
        ciphertext: &[u8],
        label: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        self.key()?.decrypt_oaep(ciphertext, label)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALICE: &str = include_str!("../../../tests/keys/alice2048_private.pem");
    const ALICE_PUBLIC: &str = include_str!("../../../tests/keys/alice2048_public.pem");
    const BOB_PUBLIC: &str = include_str!("../../../tests/keys/bob2048_public.pem");

    /// A keys folder holding `private` and `public` as `me_private.pem` / `me_public.pem`.
    fn folder(private: &str, public: Option<&str>) -> (tempfile::TempDir, PathBuf, PathBuf) {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("temporary folder");
        let (private_path, public_path) = super::super::pair_paths(dir.path(), "me");
        std::fs::write(&private_path, private).expect("write the private key");
        std::fs::set_permissions(&private_path, std::fs::Permissions::from_mode(0o600))
            .expect("chmod 600");
        if let Some(public) = public {
            std::fs::write(&public_path, public).expect("write the public key");
        }
        (dir, private_path, public_path)
    }

    #[test]
    fn signs_as_the_eager_key_does_and_parses_once() {
        let (_dir, private, public) = folder(ALICE, Some(ALICE_PUBLIC));
        let lazy = LazyPrivateKey::read(&private, &public)
            .expect("readable")
            .expect("read lazily");
        assert!(
            lazy.parsed.get().is_none(),
            "nothing parsed before its first use"
        );
        let eager = PrivateKey::from_pem(ALICE).expect("alice");
        assert_eq!(lazy.public().id(), eager.public().id());
        let sig = lazy.sign(b"hello").expect("signs");
        assert!(
            eager.public().verify_pss(b"hello", &sig),
            "a signature of alice's key"
        );
        let first: *const PrivateKey = lazy.key().expect("parsed");
        assert_eq!(
            first,
            lazy.key().expect("parsed") as *const _,
            "parsed once"
        );
    }

    #[test]
    fn a_key_that_is_not_the_pair_of_its_public_file_never_signs() {
        let (_dir, private, public) = folder(ALICE, Some(BOB_PUBLIC));
        let lazy = LazyPrivateKey::read(&private, &public)
            .expect("readable")
            .expect("read lazily");
        for _ in 0..2 {
            assert!(matches!(
                lazy.sign(b"hello"),
                Err(KeyError::NotThePair { .. })
            ));
        }
        assert!(matches!(
            lazy.decrypt_oaep(&[0u8; 256], b""),
            Err(KeyError::NotThePair { .. })
        ));
    }

    #[test]
    fn a_damaged_key_fails_at_its_first_use_with_the_eager_error() {
        let damaged = ALICE.replace("MII", "MIJ");
        let (_dir, private, public) = folder(&damaged, Some(ALICE_PUBLIC));
        let eager = super::super::load_private(&private).expect_err("damaged");
        let lazy = LazyPrivateKey::read(&private, &public)
            .expect("the file itself is fine")
            .expect("read lazily");
        let err = lazy.sign(b"hello").expect_err("damaged");
        assert_eq!(err.to_string(), eager.to_string());
        assert!(matches!(err, KeyError::InFile { .. }));
    }

    #[test]
    fn encrypted_keys_and_missing_public_files_are_not_read_lazily() {
        let (_dir, private, public) = folder(ALICE, None);
        assert!(
            LazyPrivateKey::read(&private, &public)
                .expect("readable")
                .is_none()
        );
        let key = PrivateKey::from_pem(ALICE).expect("alice");
        let pem = key
            .to_encrypted_pem(&super::super::Passphrase::from("a passphrase"))
            .expect("encrypts");
        let (_dir, private, public) = folder(&pem, Some(ALICE_PUBLIC));
        assert!(
            LazyPrivateKey::read(&private, &public)
                .expect("readable")
                .is_none()
        );
    }

    #[test]
    fn the_file_checks_come_first() {
        use std::os::unix::fs::PermissionsExt;
        let (_dir, private, public) = folder(ALICE, Some(ALICE_PUBLIC));
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o644))
            .expect("chmod 644");
        assert!(matches!(
            LazyPrivateKey::read(&private, &public),
            Err(KeyError::Permissions { .. })
        ));
    }
}
