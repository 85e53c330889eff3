//! Bounded tallies: a target that creates threads by the hundred thousand must not make the
//! collector's memory, the summary or a console line grow with it.

use std::hash::Hash;

use rustc_hash::FxHashMap as HashMap;

/// How many times, and for how long, something happened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub count: u64,
    pub ns: u64,
}

impl Tally {
    fn add(&mut self, other: Tally) {
        self.count += other.count;
        self.ns += other.ns;
    }

    /// Heavier first: more time, then more often.
    fn weight(&self) -> (u64, u64) {
        (self.ns, self.count)
    }
}

/// A [`Tally`] per key for at most `capacity` keys. When a new key arrives and the table is
/// full, the lightest key (least time, then fewest events) is folded into [`Self::rest`]: the
/// heaviest keys stay, and every event stays counted, in its key's entry or in `rest`. (A
/// key folded and seen again starts a new entry; its earlier events stay in `rest`.)
#[derive(Clone, Debug)]
pub struct TopTally<K> {
    capacity: usize,
    entries: HashMap<K, Tally>,
    /// The folded keys' tallies, summed.
    pub rest: Tally,
}

impl<K: Copy + Eq + Hash + Ord> TopTally<K> {
    pub fn new(capacity: usize) -> Self {
        TopTally {
            capacity: capacity.max(1),
            entries: HashMap::default(),
            rest: Tally::default(),
        }
    }

    pub fn add(&mut self, key: K, count: u64, ns: u64) {
        let tally = Tally { count, ns };
        if let Some(t) = self.entries.get_mut(&key) {
            t.add(tally);
            return;
        }
        if self.entries.len() >= self.capacity {
            self.fold_lightest();
        }
        self.entries.insert(key, tally);
    }

    fn fold_lightest(&mut self) {
        let lightest = self
            .entries
            .iter()
            .min_by_key(|(k, t)| (t.weight(), **k))
            .map(|(k, _)| *k);
        if let Some(t) = lightest.and_then(|k| self.entries.remove(&k)) {
            self.rest.add(t);
        }
    }

    #[cfg(test)]
    pub fn get(&self, key: &K) -> Option<&Tally> {
        self.entries.get(key)
    }

    #[cfg(test)]
    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.entries.keys()
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The `n` heaviest keys, heaviest first, and the tally of all the others (kept or
    /// folded).
    pub fn top(&self, n: usize) -> (Vec<(K, Tally)>, Tally) {
        let mut all: Vec<(K, Tally)> = self.entries.iter().map(|(k, t)| (*k, *t)).collect();
        all.sort_by(|a, b| b.1.weight().cmp(&a.1.weight()).then(a.0.cmp(&b.0)));
        let mut others = self.rest;
        for (_, t) in all.iter().skip(n) {
            others.add(*t);
        }
        all.truncate(n);
        (all, others)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heavy_keys_stay_and_light_ones_are_folded_but_counted() {
        let mut t = TopTally::new(4);
        t.add(1, 1, 1_000_000);
        for key in 100..10_100 {
            t.add(key, 1, 10);
            t.add(1, 1, 1_000_000);
        }
        assert_eq!(t.len(), 4);
        assert_eq!(
            t.get(&1),
            Some(&Tally {
                count: 10_001,
                ns: 10_001_000_000
            })
        );
        let (top, others) = t.top(2);
        assert_eq!(top[0].0, 1);
        assert_eq!(top.len(), 2);
        // Every event is in the top or in the others.
        let counted: u64 = top.iter().map(|(_, t)| t.count).sum::<u64>() + others.count;
        assert_eq!(counted, 20_001);
    }
}
