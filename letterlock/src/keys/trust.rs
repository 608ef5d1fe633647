//! Trust: which sender keys a recipient accepts.

use std::fs;
use std::path::{Path, PathBuf};

use super::{KeyError, KeyId, PublicKey, load_public};

/// Which sender keys a recipient accepts: given the sender key id a header names, the key to
/// verify its signature with, or `None` to refuse the message.
///
/// - A [`PublicKey`] trusts exactly itself: `&alice_public` accepts Alice and no one else.
/// - A [`TrustList`] trusts each of its keys.
/// - A closure `Fn(&KeyId) -> Option<PublicKey>` can look keys up anywhere else.
///
/// The opener checks that the key returned has the id asked for, so a lookup cannot make a
/// message verify under a key other than the one its header names.
pub trait Trust {
    /// The trusted key with id `sender`, if any.
    fn trusted_key(&self, sender: &KeyId) -> Option<PublicKey>;
}

impl Trust for PublicKey {
    fn trusted_key(&self, sender: &KeyId) -> Option<PublicKey> {
        (*sender == self.id()).then(|| self.clone())
    }
}

impl Trust for TrustList {
    fn trusted_key(&self, sender: &KeyId) -> Option<PublicKey> {
        self.get(sender).map(|t| t.key.clone())
    }
}

impl<F: Fn(&KeyId) -> Option<PublicKey>> Trust for F {
    fn trusted_key(&self, sender: &KeyId) -> Option<PublicKey> {
        self(sender)
    }
}

/// A public key we trust, with the name it is known by.
#[derive(Clone, Debug)]
pub struct Trusted {
    pub name: String,
    pub key: PublicKey,
}

/// The set of keys a party trusts, looked up by key id.
#[derive(Clone, Debug, Default)]
pub struct TrustList {
    by_id: std::collections::HashMap<KeyId, Trusted>,
}

impl TrustList {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a key; a second key under a name already used, or the same key twice, is refused so
    /// that a name always means one key. A name that reads as the server ([`reserved_name`]) is
    /// refused too, wherever it comes from (a store written before that rule, a file).
    pub fn add(&mut self, name: &str, key: PublicKey) -> Result<(), KeyError> {
        if reserved_name(name) {
            return Err(KeyError::ReservedName {
                name: name.to_owned(),
            });
        }
        if let Some(existing) = self.by_id.get(&key.id()) {
            return Err(KeyError::TrustedTwice {
                id: key.id(),
                name: existing.name.clone(),
            });
        }
        if self.by_name(name).is_some() {
            return Err(KeyError::NameTaken {
                name: name.to_owned(),
            });
        }
        self.by_id.insert(
            key.id(),
            Trusted {
                name: name.to_owned(),
                key,
            },
        );
        Ok(())
    }

    pub fn get(&self, id: &KeyId) -> Option<&Trusted> {
        self.by_id.get(id)
    }

    pub fn by_name(&self, name: &str) -> Option<&Trusted> {
        self.by_id.values().find(|t| t.name == name)
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Trusted> {
        self.by_id.values()
    }

    /// The clients a server in `dir` trusts: the files [`client_key_files`] lists.
    pub fn load_clients(dir: &Path) -> Result<TrustList, KeyError> {
        let mut list = TrustList::new();
        for (name, path) in client_key_files(dir)? {
            list.add(&name, load_public(&path)?)?;
        }
        Ok(list)
    }
}

/// The client key files of the classroom layout in a server's key folder, with the name each
/// is known by: `dir/client_public.pem` as `client`, then every `dir/clients/NAME.pem` as NAME
/// in name order. A file whose name is not a usable client name ([`valid_name`]) is an error,
/// not skipped: a key the operator put there must not be silently ignored.
pub fn client_key_files(dir: &Path) -> Result<Vec<(String, PathBuf)>, KeyError> {
    let mut files = Vec::new();
    let original = dir.join("client_public.pem");
    if original.exists() {
        files.push(("client".to_owned(), original));
    }
    let folder = dir.join(CLIENTS_DIR);
    if folder.is_dir() {
        let entries = fs::read_dir(&folder).map_err(|source| KeyError::Read {
            path: folder.clone(),
            source,
        })?;
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "pem"))
            .collect();
        paths.sort();
        for path in paths {
            match path.file_stem().and_then(|s| s.to_str()) {
                Some(name) if valid_name(name) => files.push((name.to_owned(), path)),
                _ => return Err(KeyError::BadName { path }),
            }
        }
    }
    Ok(files)
}

/// Folder beside the server's keys holding one trusted client key per file, `NAME.pem`.
pub const CLIENTS_DIR: &str = "clients";

/// Whether `name` reads as the server itself (`server`, in any case): a client so named could
/// pass its messages off as the server's, so no server trusts one under it, no client pins one
/// and a directory entry with it is refused (found by a trial run).
pub fn reserved_name(name: &str) -> bool {
    name.eq_ignore_ascii_case("server")
}

/// Checks that a client name is usable as a file name and a log field.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        && !name.starts_with('.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_key_is_trusted_under_a_name_that_reads_as_the_server() {
        let key = PublicKey::from_pem(include_str!("../../../tests/keys/alice2048_public.pem"))
            .expect("the fixed test key");
        let mut list = TrustList::new();
        for name in ["server", "Server", "SERVER"] {
            assert!(
                matches!(list.add(name, key.clone()), Err(KeyError::ReservedName { name: n }) if n == name),
                "{name}"
            );
        }
        assert!(list.is_empty());
        list.add("servers", key)
            .expect("only the exact name is reserved");
    }
}
