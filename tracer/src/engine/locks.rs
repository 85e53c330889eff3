//! Contention per address: who waited, how long, and who woke them; for futexes (threads
//! waiting, threads or interrupts waking) and for a Go target's semaphores (`sync.Mutex`,
//! ...: goroutines waiting, goroutines waking). Bounded, so that a target creating threads
//! (and with them futexes) by the hundred thousand keeps the collector's memory flat.

use std::hash::Hash;

use rustc_hash::FxHashMap as HashMap;

use super::{
    tally::{Tally, TopTally},
    GoroutineId, Tid, Waker,
};

/// Futexes: waiter threads, and who woke them.
pub type FutexLocks = Locks<Tid, Waker>;
/// A Go target's semaphores: waiter goroutines, and the goroutines that woke them.
pub type GoLocks = Locks<GoroutineId, GoWaker>;

/// Who readied a goroutine parked on a semaphore: a goroutine (`None`: none, or it could not
/// be read), and the thread it ran on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GoWaker {
    pub goid: Option<u64>,
    pub tid: Tid,
}

/// Futex addresses kept at most; when full, the lighter half is folded into
/// [`Locks::folded`].
pub(super) const MAX_LOCKS: usize = 2048;
/// Waiter threads and wakers kept per address (the heaviest; the rest are counted).
const MAX_PER_LOCK: usize = 64;
/// How many addresses the lock detail lists.
pub const LISTED_LOCKS: usize = 10;
/// How many waiters and wakers it lists per address (the others are counted).
pub const LISTED_PER_LOCK: usize = 10;

/// Contention on one address.
#[derive(Clone, Debug)]
pub struct LockStats<W, K> {
    pub wait_ns: u64,
    pub waits: u64,
    /// Waiters (threads, goroutines) by time waited.
    pub waiters: TopTally<W>,
    /// Wakers by wakeups done (`ns` unused).
    pub wakers: TopTally<K>,
}

impl<W: Key, K: Key> Default for LockStats<W, K> {
    fn default() -> Self {
        LockStats {
            wait_ns: 0,
            waits: 0,
            waiters: TopTally::new(MAX_PER_LOCK),
            wakers: TopTally::new(MAX_PER_LOCK),
        }
    }
}

/// What a waiter or waker is keyed by.
pub trait Key: Copy + Eq + Hash + Ord {}
impl<T: Copy + Eq + Hash + Ord> Key for T {}

#[derive(Debug)]
pub struct Locks<W, K> {
    by_address: HashMap<u64, LockStats<W, K>>,
    /// The waits on addresses dropped to stay bounded (the least waited on).
    pub folded: Tally,
}

impl<W, K> Default for Locks<W, K> {
    fn default() -> Self {
        Locks {
            by_address: HashMap::default(),
            folded: Tally::default(),
        }
    }
}

impl<W: Key, K: Key> Locks<W, K> {
    /// A wait of `waiter` on `address` ended after `waited` ns.
    pub fn wait(&mut self, address: u64, waiter: W, waited: u64) {
        let lock = self.entry(address);
        lock.wait_ns += waited;
        lock.waits += 1;
        lock.waiters.add(waiter, 1, waited);
    }

    /// A waiter on `address` was woken by `waker`.
    pub fn woken(&mut self, address: u64, waker: K) {
        self.entry(address).wakers.add(waker, 1, 0);
    }

    /// Whether `address` is kept (not folded).
    pub fn contains(&self, address: u64) -> bool {
        self.by_address.contains_key(&address)
    }

    fn entry(&mut self, address: u64) -> &mut LockStats<W, K> {
        if self.by_address.len() >= MAX_LOCKS && !self.by_address.contains_key(&address) {
            self.fold_lighter_half();
        }
        self.by_address.entry(address).or_default()
    }

    fn fold_lighter_half(&mut self) {
        let mut by_weight: Vec<(u64, u64)> = self
            .by_address
            .iter()
            .map(|(a, l)| (l.wait_ns, *a))
            .collect();
        by_weight.sort_unstable();
        for (_, address) in &by_weight[..by_weight.len() / 2] {
            if let Some(l) = self.by_address.remove(address) {
                self.folded.count += l.waits;
                self.folded.ns += l.wait_ns;
            }
        }
    }

    #[cfg(test)]
    pub fn get(&self, address: u64) -> Option<&LockStats<W, K>> {
        self.by_address.get(&address)
    }

    #[cfg(test)]
    pub fn addresses(&self) -> usize {
        self.by_address.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&u64, &LockStats<W, K>)> {
        self.by_address.iter()
    }

    /// The waiters the lock detail lists (threads: whose names are worth keeping).
    pub fn listed_waiters(&self) -> impl Iterator<Item = W> + '_ {
        self.top(LISTED_LOCKS).into_iter().flat_map(|(_, lock)| {
            let (waiters, _) = lock.waiters.top(LISTED_PER_LOCK);
            waiters.into_iter().map(|(waiter, _)| waiter)
        })
    }

    /// The wakers the lock detail lists.
    pub fn listed_wakers(&self) -> impl Iterator<Item = K> + '_ {
        self.top(LISTED_LOCKS).into_iter().flat_map(|(_, lock)| {
            let (wakers, _) = lock.wakers.top(LISTED_PER_LOCK);
            wakers.into_iter().map(|(waker, _)| waker)
        })
    }

    /// The `n` most waited-on addresses, most first.
    pub fn top(&self, n: usize) -> Vec<(u64, &LockStats<W, K>)> {
        let mut v: Vec<(u64, &LockStats<W, K>)> =
            self.by_address.iter().map(|(a, l)| (*a, l)).collect();
        v.sort_by(|a, b| b.1.wait_ns.cmp(&a.1.wait_ns).then(a.0.cmp(&b.0)));
        v.truncate(n);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn many_short_lived_futexes_stay_bounded_and_the_contended_one_stays() {
        let mut locks = FutexLocks::default();
        for tid in 0..200_000u32 {
            locks.wait(0xbeef, Tid(tid), 1_000);
            locks.wait(0x1000_0000 + u64::from(tid) * 64, Tid(tid), 10); // its own futex
        }
        assert!(locks.addresses() <= MAX_LOCKS);
        let top = locks.top(1);
        assert_eq!(top[0].0, 0xbeef);
        assert_eq!(top[0].1.waits, 200_000);
        assert!(top[0].1.waiters.len() <= MAX_PER_LOCK);
        let kept: u64 = locks.iter().map(|(_, l)| l.waits).sum();
        assert_eq!(kept + locks.folded.count, 400_000, "every wait is counted");
    }
}
