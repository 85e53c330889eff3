//! Where requests wait: the user-space call site of each blocking wait inside a request (a
//! thread blocked in a syscall, a goroutine parked), by cause, with the time it cost the
//! requests. A site is a user stack the kernel stored once (its id in the stack maps) and,
//! for a goroutine's park, the return address the stack walk misses (see
//! [`StackRef::caller`]); userspace symbolizes each distinct one at the end.

use rustc_hash::FxHashMap as HashMap;

use super::{
    cause::{Cause, CAUSES},
    tally::{Tally, TopTally},
};

/// Sites kept per cause (the heaviest; the rest are counted).
const MAX_SITES_PER_CAUSE: usize = 1024;
/// Waker sites kept per waiting site.
const MAX_WAKERS_PER_SITE: usize = 16;
/// Waiting sites whose wakers are kept.
const MAX_WOKEN_SITES: usize = 4096;

/// A user stack the kernel took where a context blocked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StackRef {
    /// Its id in the kernel's stack maps (`tracer_common::stack_id`).
    pub id: u32,
    /// For a goroutine's park: the return address into `gopark`'s caller, which the
    /// frame-pointer walk from `gopark`'s entry skips; 0 otherwise.
    pub caller: u64,
}

/// Request time in blocking waits, by cause and by where they blocked.
pub struct WaitSites {
    by_cause: Vec<TopTally<StackRef>>,
    /// Waits inside requests whose stack was not taken (stacks off, the kernel could not
    /// take it, or its bucket was taken in every stack map), by cause.
    without_stack: [Tally; CAUSES],
    /// For a lock wait's site: where the threads or goroutines that woke it released the lock.
    wakers: HashMap<StackRef, TopTally<StackRef>>,
}

impl Default for WaitSites {
    fn default() -> Self {
        WaitSites {
            by_cause: (0..CAUSES)
                .map(|_| TopTally::new(MAX_SITES_PER_CAUSE))
                .collect(),
            without_stack: [Tally::default(); CAUSES],
            wakers: HashMap::default(),
        }
    }
}

impl WaitSites {
    /// A wait of `ns` inside a request, for `cause`, at `site`.
    pub fn add(&mut self, cause: Cause, site: Option<StackRef>, ns: u64) {
        if ns == 0 {
            return;
        }
        match site {
            Some(site) => self.by_cause[cause.index()].add(site, 1, ns),
            None => {
                let t = &mut self.without_stack[cause.index()];
                t.count += 1;
                t.ns += ns;
            }
        }
    }

    /// A wait that began at `waiter` was ended by a release at `waker` (the unlocker).
    pub fn woken(&mut self, waiter: StackRef, waker: StackRef) {
        if self.wakers.len() >= MAX_WOKEN_SITES && !self.wakers.contains_key(&waiter) {
            return;
        }
        self.wakers
            .entry(waiter)
            .or_insert_with(|| TopTally::new(MAX_WAKERS_PER_SITE))
            .add(waker, 1, 0);
    }

    /// The `n` most frequent waker sites of waits that began at `waiter`.
    pub fn wakers_of(&self, waiter: StackRef, n: usize) -> Vec<(StackRef, Tally)> {
        self.wakers
            .get(&waiter)
            .map(|t| t.top(n).0)
            .unwrap_or_default()
    }

    /// The `n` heaviest sites of `cause`, heaviest first, and the tally of the others.
    pub fn top(&self, cause: Cause, n: usize) -> (Vec<(StackRef, Tally)>, Tally) {
        self.by_cause[cause.index()].top(n)
    }

    /// Waits of `cause` inside requests with no stack.
    pub fn without_stack(&self, cause: Cause) -> Tally {
        self.without_stack[cause.index()]
    }

    /// Every stack id a kept site refers to.
    pub fn stack_ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.by_cause.iter().flat_map(|t| {
            let (all, _) = t.top(usize::MAX);
            all.into_iter().map(|(site, _)| site.id)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_are_tallied_per_cause_and_site() {
        let mut sites = WaitSites::default();
        let a = StackRef { id: 1, caller: 0 };
        let b = StackRef {
            id: 2,
            caller: 0x40,
        };
        sites.add(Cause::Lock, Some(a), 100);
        sites.add(Cause::Lock, Some(a), 50);
        sites.add(Cause::Lock, Some(b), 10);
        sites.add(Cause::Sleep, Some(b), 7);
        sites.add(Cause::Lock, None, 3);
        sites.add(Cause::Lock, Some(b), 0);
        let (top, rest) = sites.top(Cause::Lock, 1);
        assert_eq!(top, vec![(a, Tally { count: 2, ns: 150 })]);
        assert_eq!(rest, Tally { count: 1, ns: 10 });
        assert_eq!(sites.without_stack(Cause::Lock), Tally { count: 1, ns: 3 });
        let mut ids: Vec<u32> = sites.stack_ids().collect();
        ids.sort_unstable();
        assert_eq!(ids, vec![1, 2, 2]);
    }
}
