//! Delivery leases held in memory, for a store only one server uses (SQLite: the command line
//! refuses a second server on one mailbox). Two fetches with the same client key (two copies
//! of a keys folder, two machines) must not both be handed one message: both would show it as
//! new, and the later acknowledgement would be refused. PostgreSQL keeps the same leases in
//! its `outbox` table, since there several servers share them.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::{KeyId, MessageId, OutboxEntry};

/// Which outbox entries a fetch holds, and until when. An entry is in the map from the lease
/// that took it until it is released, completed, or found expired.
#[derive(Debug, Default)]
pub(super) struct Leases {
    held: Mutex<HashMap<(KeyId, MessageId), Instant>>,
}

impl Leases {
    /// Of `pending` (one recipient's waiting entries, oldest first), the ones no running lease
    /// holds, each now leased until `lease` has passed. Expired leases are dropped on the way,
    /// so the map never holds more than the leases taken within the last `lease`.
    pub(super) fn take(
        &self,
        recipient: &KeyId,
        pending: Vec<OutboxEntry>,
        lease: Duration,
    ) -> Vec<OutboxEntry> {
        let now = Instant::now();
        // A lease too long for the clock is one that never ends in practice.
        let until = now
            .checked_add(lease)
            .unwrap_or(now + Duration::from_secs(86_400 * 365));
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        held.retain(|_, ends| *ends > now);
        pending
            .into_iter()
            .filter(|entry| {
                let key = (*recipient, entry.message_id);
                if held.contains_key(&key) {
                    return false;
                }
                held.insert(key, until);
                true
            })
            .collect()
    }

    /// Ends the leases on `message_ids` of `recipient`, whoever took them (the caller releases
    /// only leases it knows to be its own, [`super::Store::release_outbox`]).
    pub(super) fn release(&self, recipient: &KeyId, message_ids: &[MessageId]) {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        for id in message_ids {
            held.remove(&(*recipient, *id));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(n: u8) -> OutboxEntry {
        OutboxEntry {
            recipient_key_id: [1; 32],
            recipient_name: "client".into(),
            message_id: [n; 16],
            created: 0,
            mode: 2,
            plaintext_len: 1,
            body_size: 1,
            sender: None,
        }
    }

    fn ids(entries: &[OutboxEntry]) -> Vec<u8> {
        entries.iter().map(|e| e.message_id[0]).collect()
    }

    #[test]
    fn a_leased_entry_goes_to_one_fetch_until_released_or_expired() {
        let leases = Leases::default();
        let all = || (0..4).map(entry).collect::<Vec<_>>();
        let minute = Duration::from_secs(60);
        assert_eq!(ids(&leases.take(&[1; 32], all(), minute)), [0, 1, 2, 3]);
        assert!(leases.take(&[1; 32], all(), minute).is_empty());
        // Another recipient's entries with the same ids are not held.
        assert_eq!(ids(&leases.take(&[2; 32], all(), minute)), [0, 1, 2, 3]);
        leases.release(&[1; 32], &[[1; 16], [3; 16]]);
        assert_eq!(ids(&leases.take(&[1; 32], all(), minute)), [1, 3]);
        // An expired lease frees its entries.
        let short = Leases::default();
        assert_eq!(
            ids(&short.take(&[1; 32], all(), Duration::ZERO)),
            [0, 1, 2, 3]
        );
        assert_eq!(ids(&short.take(&[1; 32], all(), minute)), [0, 1, 2, 3]);
        assert_eq!(short.held.lock().unwrap().len(), 4);
    }

    #[test]
    fn a_lease_too_long_for_the_clock_does_not_panic() {
        let leases = Leases::default();
        assert_eq!(
            ids(&leases.take(&[1; 32], vec![entry(7)], Duration::MAX)),
            [7]
        );
        assert!(
            leases
                .take(&[1; 32], vec![entry(7)], Duration::ZERO)
                .is_empty()
        );
    }
}
