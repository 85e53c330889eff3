//! The kernel's stack maps (`tracer_common::STACK_MAPS`: `STACKS`, then the spill maps for
//! the stacks whose bucket was taken): user stacks stored once by the kernel, by id, where a
//! target thread blocked or a goroutine parked. Read at the end of a trace, after the
//! programs are detached (the maps live as long as their file descriptors).

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

/// The stack maps' sizes (`max_entries`) for a trace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StackMapSizes {
    pub stacks: u32,
    /// Each spill map's.
    pub spilled: u32,
}

impl StackMapSizes {
    /// The named limits when stacks are taken, one bucket each when they are not (a stack
    /// map's buckets are allocated up front, about 1 KiB each). `TRACER_STACK_BUCKETS=N`
    /// gives `STACKS` N buckets instead (with 1, a test makes nearly every stack spill).
    pub fn for_trace(stacks: bool) -> Self {
        if !stacks {
            return StackMapSizes {
                stacks: 1,
                spilled: 1,
            };
        }
        let buckets = std::env::var("TRACER_STACK_BUCKETS")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|&n: &u32| n > 0);
        StackMapSizes {
            stacks: buckets.unwrap_or(MAX_STACKS),
            spilled: MAX_SPILLED_STACKS,
        }
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
