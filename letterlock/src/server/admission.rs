//! Admission for protocol version 2: who gets a TLS handshake, and who keeps a slot.
//!
//! A TLS 1.3 server signs in every handshake, so any peer that can reach the port can make it do
//! an RSA private operation. Admission bounds that work and keeps good clients served under a
//! flood (docs/SECURITY.md, "Admission"):
//! - **Authenticated slots** ([`ServerConfig::max_connections`]) are taken only after the TLS
//!   handshake proved a trusted key, so unauthenticated sockets never hold them. When they are
//!   all taken, a new TCP connection is closed before any TLS byte ("busy").
//! - **Pre-authentication slots** ([`ServerConfig::max_pre_auth`]) hold connections still in the
//!   handshake, each for at most [`ServerConfig::handshake_timeout`]. When they are full, the
//!   OLDEST unauthenticated connection is closed to make room: a slowloris wave cannot keep a
//!   client that just arrived out, it can only push it out after `max_pre_auth` newer arrivals.
//! - **Per-source token bucket** ([`ServerConfig::source_rate`], [`ServerConfig::source_burst`]):
//!   a connection from a source address whose bucket is empty is closed at once, before it
//!   costs a signature. The table is bounded ([`ServerConfig::max_sources`]).
//! - **Concurrent handshakes** ([`ServerConfig::max_handshakes`]): a connection takes a
//!   handshake permit once its ClientHello has arrived (no crypto before that) and keeps it until
//!   the handshake ends; the rest wait, inside their pre-authentication slot and timeout.
//!
//! Invariants: every table here is bounded by a config field; the lock is held only for a few
//! map operations, never across an await.
//!
//! [`ServerConfig::max_connections`]: super::ServerConfig::max_connections
//! [`ServerConfig::max_pre_auth`]: super::ServerConfig::max_pre_auth
//! [`ServerConfig::handshake_timeout`]: super::ServerConfig::handshake_timeout
//! [`ServerConfig::source_rate`]: super::ServerConfig::source_rate
//! [`ServerConfig::source_burst`]: super::ServerConfig::source_burst
//! [`ServerConfig::max_sources`]: super::ServerConfig::max_sources
//! [`ServerConfig::max_handshakes`]: super::ServerConfig::max_handshakes

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError, oneshot};

use super::ServerConfig;

/// Why a connection is turned away.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Refusal {
    /// Every authenticated slot is taken.
    Busy,
    /// Its source address has opened too many connections lately.
    SourceLimit,
}

/// Admission state shared by every connection of one server.
pub(super) struct Admission {
    /// Authenticated connections ([`ServerConfig::max_connections`]).
    authenticated: Arc<Semaphore>,
    /// TLS handshakes past their ClientHello ([`ServerConfig::max_handshakes`]).
    handshakes: Arc<Semaphore>,
    /// The pre-authentication slots and the per-source buckets.
    state: Mutex<State>,
    /// [`ServerConfig::max_pre_auth`], at least 1.
    max_pre_auth: usize,
}

struct State {
    /// Numbers the pre-authentication slots in arrival order; never reused.
    next: u64,
    /// Connections still in the handshake, oldest first. Dropping a sender tells its
    /// connection it was evicted.
    pre_auth: BTreeMap<u64, oneshot::Sender<()>>,
    sources: Sources,
}

impl Admission {
    pub(super) fn new(config: &ServerConfig) -> Arc<Self> {
        Arc::new(Admission {
            authenticated: Arc::new(Semaphore::new(config.max_connections)),
            handshakes: Arc::new(Semaphore::new(config.max_handshakes.max(1))),
            state: Mutex::new(State {
                next: 0,
                pre_auth: BTreeMap::new(),
                sources: Sources::new(config.source_rate, config.source_burst, config.max_sources),
            }),
            max_pre_auth: config.max_pre_auth.max(1),
        })
    }

    /// The lock holds plain maps that stay consistent even if a holder panicked.
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Version 1: an authenticated slot for the whole connection, taken at accept as before (a
    /// version 1 handshake costs the server no private-key operation).
    pub(super) fn slot_now(&self) -> Result<OwnedSemaphorePermit, Refusal> {
        self.authenticated
            .clone()
            .try_acquire_owned()
            .map_err(|_| Refusal::Busy)
    }

    /// Version 2, at accept: refuses if every authenticated slot is taken or `source` is over
    /// its rate; otherwise gives the connection a pre-authentication slot, closing the oldest
    /// one if they are all taken.
    pub(super) fn admit(
        self: &Arc<Self>,
        source: IpAddr,
        now: Instant,
    ) -> Result<PreAuth, Refusal> {
        if self.authenticated.available_permits() == 0 {
            return Err(Refusal::Busy);
        }
        let mut state = self.state();
        if !state.sources.take(source, now) {
            return Err(Refusal::SourceLimit);
        }
        while state.pre_auth.len() >= self.max_pre_auth {
            // Dropping the sender wakes the evicted connection's `evicted()`.
            state.pre_auth.pop_first();
        }
        let id = state.next;
        state.next += 1;
        let (tx, rx) = oneshot::channel();
        state.pre_auth.insert(id, tx);
        Ok(PreAuth {
            id,
            evicted: rx,
            admission: self.clone(),
        })
    }

    /// Waits for a handshake permit: called once the ClientHello is in, before the server signs.
    pub(super) async fn handshake_permit(&self) -> Option<OwnedSemaphorePermit> {
        self.handshakes.clone().acquire_owned().await.ok()
    }

    /// Pre-authentication connections now held (for tests and logs).
    #[cfg(test)]
    fn pre_auth_len(&self) -> usize {
        self.state().pre_auth.len()
    }
}

/// A connection's pre-authentication slot: released when dropped or exchanged for an
/// authenticated slot.
pub(super) struct PreAuth {
    id: u64,
    /// Resolves (as an error) when admission drops the sender: the slot was taken back.
    evicted: oneshot::Receiver<()>,
    admission: Arc<Admission>,
}

impl PreAuth {
    /// Resolves when this connection is evicted to make room for a newer one.
    pub(super) async fn evicted(&mut self) {
        let _ = (&mut self.evicted).await;
    }

    /// The handshake succeeded: leave the pre-authentication slots for an authenticated one.
    /// `Busy` if they filled up meanwhile.
    pub(super) fn authenticated(self) -> Result<OwnedSemaphorePermit, Refusal> {
        match self.admission.authenticated.clone().try_acquire_owned() {
            Ok(p) => Ok(p),
            Err(TryAcquireError::NoPermits | TryAcquireError::Closed) => Err(Refusal::Busy),
        }
        // `self` drops here and frees its pre-authentication slot.
    }
}

impl Drop for PreAuth {
    fn drop(&mut self) {
        self.admission.state().pre_auth.remove(&self.id);
    }
}

/// Per-source token buckets in a bounded table.
struct Sources {
    /// Tokens added per second.
    rate: f64,
    /// Most tokens a bucket holds: how many connections a quiet source may open at once.
    burst: f64,
    /// Most sources tracked.
    max: usize,
    buckets: HashMap<IpAddr, Bucket>,
}

#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    /// When `tokens` was last brought up to date (and the source last seen).
    at: Instant,
}

impl Bucket {
    fn refilled(self, rate: f64, burst: f64, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        (self.tokens + elapsed * rate).min(burst)
    }
}

impl Sources {
    fn new(rate: u32, burst: u32, max: usize) -> Self {
        Sources {
            rate: f64::from(rate),
            burst: f64::from(burst.max(1)),
            max: max.max(1),
            buckets: HashMap::new(),
        }
    }

    /// Takes one token from `source`'s bucket; false if it has none.
    fn take(&mut self, source: IpAddr, now: Instant) -> bool {
        let key = source_key(source);
        let (rate, burst) = (self.rate, self.burst);
        if let Some(b) = self.buckets.get_mut(&key) {
            let tokens = b.refilled(rate, burst, now);
            b.at = now;
            if tokens >= 1.0 {
                b.tokens = tokens - 1.0;
                return true;
            }
            b.tokens = tokens;
            return false;
        }
        if self.buckets.len() >= self.max {
            // A full bucket is the same as no entry: forgetting it loses nothing.
            self.buckets
                .retain(|_, b| b.refilled(rate, burst, now) < burst);
        }
        if self.buckets.len() >= self.max {
            // Every tracked source is active: forget the one seen longest ago.
            if let Some(oldest) = self
                .buckets
                .iter()
                .min_by_key(|(_, b)| b.at)
                .map(|(k, _)| *k)
            {
                self.buckets.remove(&oldest);
            }
        }
        self.buckets.insert(
            key,
            Bucket {
                tokens: burst - 1.0,
                at: now,
            },
        );
        true
    }
}

/// The unit of a source: an IPv4 address, or an IPv6 /64 (one site or host can hold a whole
/// /64, so counting its addresses one by one would not limit it).
fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::time::Duration;

    use super::*;

    fn config(max_pre_auth: usize, rate: u32, burst: u32, max_sources: usize) -> ServerConfig {
        ServerConfig {
            max_pre_auth,
            source_rate: rate,
            source_burst: burst,
            max_sources,
            ..ServerConfig::default()
        }
    }

    fn ip(n: u32) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + n))
    }

    fn is_evicted(p: &mut PreAuth) -> bool {
        matches!(
            p.evicted.try_recv(),
            Err(oneshot::error::TryRecvError::Closed)
        )
    }

    #[test]
    fn when_pre_auth_slots_are_full_the_oldest_is_closed_and_the_newest_admitted() {
        let a = Admission::new(&config(3, 10, 10, 100));
        let now = Instant::now();
        let mut held: Vec<PreAuth> = (0..3).map(|n| a.admit(ip(n), now).unwrap()).collect();
        assert!(held.iter_mut().all(|p| !is_evicted(p)));
        let mut newest = a.admit(ip(9), now).expect("a new arrival is admitted");
        assert!(is_evicted(&mut held[0]), "the oldest was not closed");
        assert!(!is_evicted(&mut held[1]) && !is_evicted(&mut held[2]));
        assert!(!is_evicted(&mut newest));
        assert_eq!(a.pre_auth_len(), 3);
        // Another arrival closes the next oldest, not the one that just came in.
        let _next = a.admit(ip(10), now).unwrap();
        assert!(is_evicted(&mut held[1]));
        assert!(!is_evicted(&mut newest));
    }

    #[test]
    fn a_finished_or_dropped_handshake_frees_its_pre_auth_slot() {
        let a = Admission::new(&config(2, 10, 10, 100));
        let now = Instant::now();
        let p = a.admit(ip(1), now).unwrap();
        let mut q = a.admit(ip(2), now).unwrap();
        let _slot = p.authenticated().expect("an authenticated slot");
        assert_eq!(a.pre_auth_len(), 1);
        let _r = a.admit(ip(3), now).unwrap();
        assert!(!is_evicted(&mut q), "a slot was free; nobody had to go");
        drop(q);
        assert_eq!(a.pre_auth_len(), 1);
    }

    #[test]
    fn authenticated_slots_full_refuses_at_accept_and_after_the_handshake() {
        let a = Admission::new(&ServerConfig {
            max_connections: 1,
            ..config(8, 10, 10, 100)
        });
        let now = Instant::now();
        let p = a.admit(ip(1), now).unwrap();
        let late = a.admit(ip(2), now).unwrap();
        let slot = p.authenticated().unwrap();
        assert_eq!(a.admit(ip(3), now).err(), Some(Refusal::Busy));
        assert_eq!(late.authenticated().err(), Some(Refusal::Busy));
        drop(slot);
        assert!(a.admit(ip(3), now).is_ok());
    }

    #[test]
    fn a_source_gets_its_burst_then_its_rate() {
        let mut s = Sources::new(2, 5, 100);
        let t0 = Instant::now();
        let one = ip(1);
        assert_eq!((0..20).filter(|_| s.take(one, t0)).count(), 5);
        // Others are not affected.
        assert!(s.take(ip(2), t0));
        // Two tokens a second come back, and no more than the burst.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!((0..20).filter(|_| s.take(one, t1)).count(), 2);
        let t2 = t1 + Duration::from_secs(3600);
        assert_eq!((0..20).filter(|_| s.take(one, t2)).count(), 5);
    }

    #[test]
    fn the_source_table_stays_bounded_and_keeps_active_sources() {
        let mut s = Sources::new(1, 3, 4);
        let t0 = Instant::now();
        // One busy source, then more quiet ones than the table holds.
        let busy = ip(0);
        assert_eq!((0..10).filter(|_| s.take(busy, t0)).count(), 3);
        for n in 1..1000 {
            assert!(
                s.take(ip(n), t0 + Duration::from_millis(1)),
                "new source {n}"
            );
            assert!(s.buckets.len() <= 4, "table grew to {}", s.buckets.len());
        }
        // Full buckets are forgotten before anything else: with the quiet sources idle for
        // their refill time, the busy source (still empty, seen later) is kept.
        let mut s = Sources::new(1, 3, 2);
        assert!(s.take(ip(1), t0));
        assert_eq!((0..10).filter(|_| s.take(busy, t0)).count(), 3);
        // 1.5 s later ip(1) is full again (forgotten), the busy source holds 1.5 tokens.
        let later = t0 + Duration::from_millis(1500);
        assert!(s.take(ip(2), later));
        assert_eq!(s.buckets.len(), 2);
        let taken = (0..10).filter(|_| s.take(busy, later)).count();
        assert_eq!(taken, 1, "the busy source's bucket was reset");
    }

    #[test]
    fn ipv6_sources_count_per_64_and_mapped_v4_as_v4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse::<Ipv6Addr>().unwrap().into();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse::<Ipv6Addr>().unwrap().into();
        let c: IpAddr = "2001:db8:1:3::1".parse::<Ipv6Addr>().unwrap().into();
        assert_eq!(source_key(a), source_key(b));
        assert_ne!(source_key(a), source_key(c));
        let mapped: IpAddr = "::ffff:127.0.0.2".parse::<Ipv6Addr>().unwrap().into();
        assert_eq!(source_key(mapped), IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)));
    }

    #[tokio::test]
    async fn handshakes_beyond_the_cap_wait_for_a_permit() {
        let a = Admission::new(&ServerConfig {
            max_handshakes: 2,
            ..ServerConfig::default()
        });
        let p1 = a.handshake_permit().await.unwrap();
        let _p2 = a.handshake_permit().await.unwrap();
        // A free permit is taken at the first poll; a timeout polls its future first.
        let waiting = tokio::time::timeout(Duration::ZERO, a.handshake_permit()).await;
        assert!(waiting.is_err(), "a third handshake ran beside two");
        drop(p1);
        assert!(a.handshake_permit().await.is_some());
    }
}
