//! Which clients the server trusts, as of the handshake at hand.
//!
//! A server built with a fixed [`TrustList`] ([`super::Server::new`]) keeps it. A server told to
//! follow its store ([`super::Server::trust_from_store`]) takes the list from the store's
//! trusted clients, and before each handshake (after the ClientHello, under the handshake
//! permit; for version 1 when the `Auth` frame has arrived) compares the store's trust
//! generation with the one its snapshot was read at: one indexed read. Only when it moved does
//! it read the list again and build a new snapshot (the list, and for version 2 the rustls
//! configuration whose verifier holds exactly that list).
//!
//! No race: a handshake uses one snapshot from start to end, the verifier inside TLS and the
//! check after it alike, and a snapshot is the list of exactly one committed generation (read
//! in one transaction). A change committed before a handshake's lookup is honoured by that
//! handshake; one committed during it, by the next. Connections already authenticated are not
//! cut at once: before each message or fetch they check that their key is still trusted, with
//! a snapshot at most [`ServerConfig::trust_recheck`] old ([`ClientTrust::recent`]), so an
//! untrust or a rotation also ends them at their next request.
//!
//! [`ServerConfig::trust_recheck`]: super::ServerConfig::trust_recheck

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::keys::{KeyError, KeyId, PublicKey, TrustList};
use crate::store::{Store, StoreError};
use crate::tls::{ServerTls, TlsError};

/// One trust list and what was built from it.
pub(super) struct Snapshot {
    /// The store's trust generation this list was read at; `None` for a fixed list, or before
    /// the first read.
    generation: Option<u64>,
    /// The trusted clients.
    pub(super) clients: Arc<TrustList>,
    /// Version 2: the TLS configuration whose client verifier accepts exactly `clients`.
    pub(super) tls: Option<Arc<rustls::ServerConfig>>,
    /// When each client key was trusted under its name (unix seconds), by key id, for the
    /// directory's `since`; empty for a fixed list, which does not know (0 is published).
    pub(super) since: Arc<HashMap<[u8; 32], u64>>,
}

impl Snapshot {
    /// The store's trust generation this list was read at: the directory's serial. `None`
    /// for a fixed list.
    pub(super) fn generation(&self) -> Option<u64> {
        self.generation
    }
}

/// The server's trusted clients: fixed, or followed in the store.
pub(super) struct ClientTrust {
    /// Re-read from the store when its generation moves.
    live: bool,
    /// Version 2: builds a TLS configuration for each new snapshot (the certificate is made
    /// once).
    tls: Option<ServerTls>,
    /// The newest snapshot. The lock is held only to clone or swap the `Arc`.
    current: Mutex<Arc<Snapshot>>,
    /// When the store last confirmed (or replaced) `current`: [`ClientTrust::recent`] answers
    /// from the cache until it is older than asked.
    checked: Mutex<Option<Instant>>,
}

impl ClientTrust {
    /// A list that never changes.
    pub(super) fn fixed(clients: TrustList) -> Self {
        ClientTrust {
            live: false,
            tls: None,
            current: Mutex::new(Arc::new(Snapshot {
                generation: None,
                clients: Arc::new(clients),
                tls: None,
                since: Arc::default(),
            })),
            checked: Mutex::new(None),
        }
    }

    /// Follow the store from now on (read at the next handshake).
    pub(super) fn follow_store(&mut self) {
        self.live = true;
        self.swap(Arc::new(Snapshot {
            generation: None,
            clients: Arc::new(TrustList::new()),
            tls: None,
            since: Arc::default(),
        }));
    }

    /// Serve version 2: a TLS configuration for the current snapshot and every later one.
    pub(super) fn set_tls(&mut self, tls: ServerTls) -> Result<(), TlsError> {
        let current = self.cached();
        let config = tls.config(current.clients.clone())?;
        self.tls = Some(tls);
        self.swap(Arc::new(Snapshot {
            generation: current.generation,
            clients: current.clients.clone(),
            tls: Some(config),
            since: current.since.clone(),
        }));
        Ok(())
    }

    /// The newest snapshot, without asking the store.
    pub(super) fn cached(&self) -> Arc<Snapshot> {
        self.current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn swap(&self, snapshot: Arc<Snapshot>) {
        *self.current.lock().unwrap_or_else(PoisonError::into_inner) = snapshot;
    }

    /// A snapshot the store confirmed at most `max_age` ago: for the checks an authenticated
    /// connection makes before each request, which need not each cost a store read.
    pub(super) async fn recent<S: Store>(
        &self,
        store: &S,
        max_age: Duration,
    ) -> Result<Arc<Snapshot>, TrustError> {
        let fresh_enough = self
            .checked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some_and(|at| at.elapsed() < max_age);
        if !self.live || fresh_enough {
            return Ok(self.cached());
        }
        self.now(store).await
    }

    /// The snapshot to run a handshake with: the cached one while the store's trust generation
    /// is the one it was read at, else a fresh one.
    pub(super) async fn now<S: Store>(&self, store: &S) -> Result<Arc<Snapshot>, TrustError> {
        let cached = self.cached();
        if !self.live {
            return Ok(cached);
        }
        let asked = Instant::now();
        let generation = store.trust_generation().await?;
        if cached.generation == Some(generation) {
            self.confirmed(asked);
            return Ok(cached);
        }
        let read = store.trusted_clients().await?;
        let mut clients = TrustList::new();
        let mut since = HashMap::with_capacity(read.clients.len());
        for c in read.clients {
            // The store checked both when the key was trusted; a row that fails now was
            // edited or damaged, and is not trusted.
            let key = match PublicKey::from_der(&c.public_key) {
                Ok(key) if key.id().0 == c.key_id => key,
                Ok(_) | Err(_) => {
                    warn!(client = %crate::text::quoted(&c.name), "a stored client key is malformed; not trusting it");
                    continue;
                }
            };
            match clients.add(&c.name, key) {
                Ok(()) => {
                    since.insert(c.key_id, c.since);
                }
                // Trusted before the name was reserved: connections by its key are refused,
                // so nobody's messages reach clients as from "server".
                Err(KeyError::ReservedName { .. }) => {
                    warn!(client = %crate::text::quoted(&c.name), key = %KeyId(c.key_id), "a stored client is named as the server itself; not trusting it (untrust it and trust its key again under another name)")
                }
                Err(e) => {
                    warn!(client = %crate::text::quoted(&c.name), error = %e, "a stored client key is trusted twice; not trusting it again")
                }
            }
        }
        let clients = Arc::new(clients);
        let tls = match &self.tls {
            Some(tls) => Some(tls.config(clients.clone())?),
            None => None,
        };
        let fresh = Arc::new(Snapshot {
            generation: Some(read.generation),
            clients,
            tls,
            since: Arc::new(since),
        });
        // Several handshakes may read a change at once; the newest generation wins.
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        if current.generation.is_none_or(|g| g < read.generation) {
            if current.generation.is_some() {
                info!(
                    generation = read.generation,
                    clients = fresh.clients.len(),
                    "trusted clients changed; the next handshakes use the new list"
                );
            }
            *current = fresh.clone();
        }
        drop(current);
        self.confirmed(asked);
        Ok(fresh)
    }

    /// The store confirmed the current snapshot with a read that started at `at`.
    fn confirmed(&self, at: Instant) {
        let mut checked = self.checked.lock().unwrap_or_else(PoisonError::into_inner);
        if checked.is_none_or(|c| c < at) {
            *checked = Some(at);
        }
    }
}

/// Why the trust list could not be had for a handshake.
#[derive(Debug, thiserror::Error)]
pub(super) enum TrustError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Tls(#[from] TlsError),
}

#[cfg(all(test, feature = "sqlite"))]
mod tests {
    use super::*;
    use crate::store::{SqliteStore, TrustRequest};

    fn public(pem: &str) -> PublicKey {
        PublicKey::from_pem(pem).unwrap()
    }

    fn request(name: &str, key: &PublicKey, replace: bool) -> TrustRequest {
        TrustRequest {
            name: name.into(),
            key_id: key.id().0,
            public_key: key.spki_der().to_vec(),
            replace,
            now: 1,
        }
    }

    #[tokio::test]
    async fn the_list_is_read_again_only_when_the_generation_moves() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("t.db")).unwrap();
        let alice = public(include_str!("../../../tests/keys/alice2048_public.pem"));
        let bob = public(include_str!("../../../tests/keys/bob2048_public.pem"));
        let mut trust = ClientTrust::fixed(TrustList::new());
        trust.follow_store();

        let first = trust.now(&store).await.unwrap();
        assert!(first.clients.is_empty());
        let again = trust.now(&store).await.unwrap();
        assert!(Arc::ptr_eq(&first, &again), "re-read without a change");

        store
            .trust_client(request("alice", &alice, false))
            .await
            .unwrap();
        let second = trust.now(&store).await.unwrap();
        assert!(!Arc::ptr_eq(&first, &second));
        assert_eq!(second.clients.get(&alice.id()).unwrap().name, "alice");
        assert!(Arc::ptr_eq(&second, &trust.now(&store).await.unwrap()));

        // Rotation: the old key is out of the very next snapshot.
        store
            .trust_client(request("alice", &bob, true))
            .await
            .unwrap();
        let third = trust.now(&store).await.unwrap();
        assert!(third.clients.get(&alice.id()).is_none());
        assert_eq!(third.clients.by_name("alice").unwrap().key.id(), bob.id());
        // The snapshot a handshake already holds is not changed under it.
        assert!(second.clients.get(&alice.id()).is_some());
    }

    #[tokio::test]
    async fn a_malformed_stored_key_is_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("t.db")).unwrap();
        let alice = public(include_str!("../../../tests/keys/alice2048_public.pem"));
        // A row whose key id does not match its key, and one that is not a key.
        let mut lying = request("mallory", &alice, false);
        lying.key_id = [7; 32];
        store.trust_client(lying).await.unwrap();
        store
            .trust_client(TrustRequest {
                name: "junk".into(),
                key_id: [8; 32],
                public_key: vec![0x30, 0x00],
                replace: false,
                now: 1,
            })
            .await
            .unwrap();
        let mut trust = ClientTrust::fixed(TrustList::new());
        trust.follow_store();
        let snapshot = trust.now(&store).await.unwrap();
        assert!(snapshot.clients.is_empty());
    }

    #[tokio::test]
    async fn a_client_stored_under_the_server_s_name_is_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("t.db")).unwrap();
        let alice = public(include_str!("../../../tests/keys/alice2048_public.pem"));
        let bob = public(include_str!("../../../tests/keys/bob2048_public.pem"));
        // As a store written before the name was reserved holds it.
        store
            .trust_client(request("Server", &bob, false))
            .await
            .unwrap();
        store
            .trust_client(request("alice", &alice, false))
            .await
            .unwrap();
        let mut trust = ClientTrust::fixed(TrustList::new());
        trust.follow_store();
        let snapshot = trust.now(&store).await.unwrap();
        assert!(snapshot.clients.get(&bob.id()).is_none());
        assert_eq!(snapshot.clients.get(&alice.id()).unwrap().name, "alice");
        assert_eq!(snapshot.clients.len(), 1);
    }
}
