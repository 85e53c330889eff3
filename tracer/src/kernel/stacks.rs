//! The kernel's stack maps (`tracer_common::STACK_MAPS`: `STACKS`, then the spill maps for
//! the stacks whose bucket was taken): user stacks stored once by the kernel, by id, where a
//! target thread blocked or a goroutine parked. Read while tracing (each slow request's
//! largest wait) and at the end, after the programs are detached (the maps live as long as
//! their file descriptors).

use anyhow::{bail, Context as _, Result};
use aya::{
    maps::{MapData, StackTraceMap},
    Ebpf,
};
use tracer_common::{stack_map_and_index, MAX_SPILLED_STACKS, MAX_STACKS, STACK_MAPS};

use crate::output::sites::StackSource;

/// The stack maps, in the order of `STACK_MAPS`.
pub struct UserStacks(Vec<StackTraceMap<MapData>>);

impl UserStacks {
    /// Takes the stack maps out of the loaded object.
    pub(super) fn take(ebpf: &mut Ebpf) -> Result<Self> {
        let maps = STACK_MAPS
            .iter()
            .map(|&name| {
                let map = ebpf.take_map(name).with_context(|| format!("map {name}"))?;
                Ok(StackTraceMap::try_from(map)?)
            })
            .collect::<Result<_>>()?;
        Ok(UserStacks(maps))
    }
}

impl StackSource for UserStacks {
    /// The stack's addresses, innermost first (its instruction pointer, then return
    /// addresses). `None` when the id is not in its map.
    fn addresses(&self, id: u32) -> Option<Vec<u64>> {
        let (map, index) = stack_map_and_index(id);
        let trace = self.0.get(map)?.get(&index, 0).ok()?;
        Some(trace.frames().iter().map(|f| f.ip).collect())
    }
}

/// The test setting that sizes the stack maps.
const BUCKETS_VARIABLE: &str = "TRACER_STACK_BUCKETS";

/// `TRACER_STACK_BUCKETS`'s value, `N` (`STACKS`' buckets) or `N,M` (and each spill map's):
/// powers of two up to the named limits (the kernel rounds a stack map's buckets up to a
/// power of two, but allocates only `max_entries` stacks).
fn test_sizes(value: &str) -> Result<StackMapSizes> {
    let bucket_count = |text: &str, limit: u32| {
        text.parse::<u32>()
            .ok()
            .filter(|n| n.is_power_of_two() && *n <= limit)
    };
    let (stacks, spilled) = match value.split_once(',') {
        None => (bucket_count(value, MAX_STACKS), Some(MAX_SPILLED_STACKS)),
        Some((stacks, spilled)) => (
            bucket_count(stacks, MAX_STACKS),
            bucket_count(spilled, MAX_SPILLED_STACKS),
        ),
    };
    match (stacks, spilled) {
        (Some(stacks), Some(spilled)) => Ok(StackMapSizes { stacks, spilled }),
        _ => bail!(
            "{BUCKETS_VARIABLE}={value}: give N or N,M, powers of two up to {MAX_STACKS} and {MAX_SPILLED_STACKS}, or unset it"
        ),
    }
}

/// The stack maps' sizes (`max_entries`) for a trace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StackMapSizes {
    pub stacks: u32,
    /// Each spill map's.
    pub spilled: u32,
}

impl StackMapSizes {
    /// The named limits when stacks are taken, one bucket each when they are not (a stack
    /// map's buckets are allocated up front, about 1 KiB each). `TRACER_STACK_BUCKETS` (a
    /// test setting, said on stderr) sizes them instead: `1` gives `STACKS` one bucket, so
    /// that nearly every stack spills; `1,1` gives each map one, so that most are not
    /// stored.
    pub fn for_trace(stacks: bool) -> Result<Self> {
        if !stacks {
            return Ok(StackMapSizes {
                stacks: 1,
                spilled: 1,
            });
        }
        let Some(value) = std::env::var_os(BUCKETS_VARIABLE) else {
            return Ok(StackMapSizes {
                stacks: MAX_STACKS,
                spilled: MAX_SPILLED_STACKS,
            });
        };
        let sizes = test_sizes(&value.to_string_lossy())?;
        eprintln!(
            "tracer: stack map buckets: {} in STACKS, {} in each spill map ({BUCKETS_VARIABLE}, a test setting)",
            sizes.stacks, sizes.spilled
        );
        Ok(sizes)
    }

    /// Each map of `STACK_MAPS`, with its size.
    pub fn by_map(self) -> [(&'static str, u32); 3] {
        let [stacks, spilled, spilled_again] = STACK_MAPS;
        [
            (stacks, self.stacks),
            (spilled, self.spilled),
            (spilled_again, self.spilled),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_test_bucket_counts_are_powers_of_two_the_maps_can_hold() {
        let sizes = |stacks, spilled| StackMapSizes { stacks, spilled };
        assert_eq!(test_sizes("1").unwrap(), sizes(1, MAX_SPILLED_STACKS));
        assert_eq!(
            test_sizes("16384").unwrap(),
            sizes(MAX_STACKS, MAX_SPILLED_STACKS)
        );
        assert_eq!(test_sizes("1,1").unwrap(), sizes(1, 1));
        assert_eq!(test_sizes("4,2048").unwrap(), sizes(4, 2048));
        for bad in [
            "0", "3", "32768", "-1", "", "many", "1,", ",1", "1,3", "1,4096", "1,1,1",
        ] {
            let e = test_sizes(bad).unwrap_err().to_string();
            assert!(e.contains("give N or N,M, powers of two"), "{bad}: {e}");
        }
    }
}
