//! The kernel's stack map (`STACKS`): user stacks stored once by the kernel, by id, where a
//! target thread blocked or a goroutine parked. Read at the end of a trace, after the
//! programs are detached (the map lives as long as its file descriptor).

use aya::maps::{MapData, StackTraceMap};

use crate::output::sites::StackSource;

pub struct UserStacks(pub(super) StackTraceMap<MapData>);

impl StackSource for UserStacks {
    /// The stack's addresses, innermost first (its instruction pointer, then return
    /// addresses). `None` when the id is not in the map.
    fn addresses(&self, id: u32) -> Option<Vec<u64>> {
        let trace = self.0.get(&id, 0).ok()?;
        Some(trace.frames().iter().map(|f| f.ip).collect())
    }
}
