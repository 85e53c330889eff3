//! The kernel's stack maps (`tracer_common::STACK_MAPS`: `STACKS`, then the spill maps for
//! the stacks whose bucket was taken): user stacks stored once by the kernel, by id, where a
//! target thread blocked or a goroutine parked. Read while tracing (each slow request's
//! largest wait) and at the end, after the programs are detached (the maps live as long as
//! their file descriptors).

use anyhow::{Context as _, Result};
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

/// The test setting that sizes `STACKS`.
const BUCKETS_VARIABLE: &str = "TRACER_STACK_BUCKETS";

/// `TRACER_STACK_BUCKETS`'s value: a power of two up to `MAX_STACKS` (the kernel rounds a
/// stack map's buckets up to a power of two, but allocates only `max_entries` stacks).
fn test_buckets(value: &str) -> Result<u32> {
    value
        .parse::<u32>()
        .ok()
        .filter(|n| n.is_power_of_two() && *n <= MAX_STACKS)
        .with_context(|| {
            format!("{BUCKETS_VARIABLE}={value}: give a power of two from 1 to {MAX_STACKS}, or unset it")
        })
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
    /// map's buckets are allocated up front, about 1 KiB each). `TRACER_STACK_BUCKETS=N` (a
    /// test setting, said on stderr) gives `STACKS` N buckets instead, a power of two up to
    /// `MAX_STACKS`: with 1, nearly every stack spills.
    pub fn for_trace(stacks: bool) -> Result<Self> {
        if !stacks {
            return Ok(StackMapSizes {
                stacks: 1,
                spilled: 1,
            });
        }
        let stacks = match std::env::var_os(BUCKETS_VARIABLE) {
            None => MAX_STACKS,
            Some(value) => {
                let buckets = test_buckets(&value.to_string_lossy())?;
                eprintln!(
                    "tracer: STACKS map buckets: {buckets} ({BUCKETS_VARIABLE}, a test setting)"
                );
                buckets
            }
        };
        Ok(StackMapSizes {
            stacks,
            spilled: MAX_SPILLED_STACKS,
        })
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
    fn the_test_bucket_count_is_a_power_of_two_the_map_can_hold() {
        assert_eq!(test_buckets("1").unwrap(), 1);
        assert_eq!(test_buckets("16384").unwrap(), MAX_STACKS);
        for bad in ["0", "3", "32768", "-1", "", "many"] {
            let e = test_buckets(bad).unwrap_err().to_string();
            assert!(e.contains("power of two from 1 to 16384"), "{bad}: {e}");
        }
    }
}
