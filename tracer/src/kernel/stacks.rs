//! The kernel's stack maps (`STACKS`, and `SPILLED_STACKS` for the stacks whose bucket in
//! `STACKS` was taken): user stacks stored once by the kernel, by id, where a target thread
//! blocked or a goroutine parked. Read at the end of a trace, after the programs are
//! detached (the maps live as long as their file descriptors).

use aya::maps::{MapData, StackTraceMap};
use tracer_common::{MAX_SPILLED_STACKS, MAX_STACKS, SPILLED_STACK};

use crate::output::sites::StackSource;

pub struct UserStacks {
    pub(super) stacks: StackTraceMap<MapData>,
    pub(super) spilled: StackTraceMap<MapData>,
}

impl StackSource for UserStacks {
    /// The stack's addresses, innermost first (its instruction pointer, then return
    /// addresses). `None` when the id is not in its map.
    fn addresses(&self, id: u32) -> Option<Vec<u64>> {
        let (map, id) = match id & SPILLED_STACK {
            0 => (&self.stacks, id),
            _ => (&self.spilled, id & !SPILLED_STACK),
        };
        let trace = map.get(&id, 0).ok()?;
        Some(trace.frames().iter().map(|f| f.ip).collect())
    }
}

/// The stack maps' sizes (`max_entries`) for a trace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StackMapSizes {
    pub stacks: u32,
    pub spilled: u32,
}

impl StackMapSizes {
    /// The named limits when stacks are taken, one bucket each when they are not (a stack
    /// map's buckets are allocated up front, about 1 KiB each). `TRACER_STACK_BUCKETS=N`
    /// gives `STACKS` N buckets instead (a test of the spill map makes nearly every stack
    /// spill with 1).
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
}
