//! Kernel struct offsets the programs need, from the running kernel's BTF
//! (`/sys/kernel/btf/vmlinux`): aya-ebpf emits no CO-RE relocations, so the collector finds
//! each offset here and passes it in as a load-time global.

use btf_rs::{Backend, Btf, Type};

/// The kernel's own type information.
const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Where a CPU's accounted steal time is, from its current task: `task_struct.se.cfs_rq`
/// (the task's CFS run queue on the CPU it runs on), `cfs_rq.rq` (that CPU's run queue),
/// `rq.prev_steal_time_rq` (the steal it has taken out of its task clock). Needs
/// CONFIG_FAIR_GROUP_SCHED and CONFIG_PARAVIRT_TIME_ACCOUNTING.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StealOffsets {
    pub task_cfs_rq: u32,
    pub cfs_rq_rq: u32,
    pub rq_steal: u32,
}

impl StealOffsets {
    /// `None` when the kernel has no BTF or lacks one of the fields.
    pub fn find() -> Option<StealOffsets> {
        let btf = Btf::from_file_with_backend(VMLINUX_BTF, Backend::Mmap).ok()?;
        let se = member_offset(&btf, "task_struct", "se")?;
        Some(StealOffsets {
            task_cfs_rq: se + member_offset(&btf, "sched_entity", "cfs_rq")?,
            cfs_rq_rq: member_offset(&btf, "cfs_rq", "rq")?,
            rq_steal: member_offset(&btf, "rq", "prev_steal_time_rq")?,
        })
    }
}

/// Where the raw scheduler tracepoints' programs find a task's thread id and exit state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaskOffsets {
    pub pid: u32,
    pub exit_state: u32,
}

impl TaskOffsets {
    pub fn find() -> anyhow::Result<TaskOffsets> {
        let missing = || {
            anyhow::anyhow!(
                "this kernel has no usable BTF ({VMLINUX_BTF}, CONFIG_DEBUG_INFO_BTF): the \
                 tracer needs it to read the scheduler's tasks; use a kernel built with BTF"
            )
        };
        let btf = Btf::from_file_with_backend(VMLINUX_BTF, Backend::Mmap).map_err(|_| missing())?;
        Ok(TaskOffsets {
            pid: member_offset(&btf, "task_struct", "pid").ok_or_else(missing)?,
            exit_state: member_offset(&btf, "task_struct", "exit_state").ok_or_else(missing)?,
        })
    }
}

/// Byte offset of `member` in `struct name` (a whole-byte, non-bitfield member).
fn member_offset(btf: &Btf, name: &str, member: &str) -> Option<u32> {
    btf.resolve_types_by_name(name)
        .ok()?
        .into_iter()
        .find_map(|t| match t {
            Type::Struct(s) => s.members.into_iter().find(|m| {
                // A struct with any bitfield gives each member a size: 0 for a whole one.
                m.bitfield_size().unwrap_or(0) == 0
                    && btf.resolve_name(m).is_ok_and(|n| n == member)
            }),
            _ => None,
        })
        .map(|m| m.bit_offset())
        .filter(|bits| bits % 8 == 0)
        .map(|bits| bits / 8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_kernel_says_where_the_steal_time_is() {
        if !std::path::Path::new(VMLINUX_BTF).exists() {
            return; // a kernel without BTF: steal is simply not reported
        }
        let found = StealOffsets::find().expect("steal offsets");
        for offset in [found.task_cfs_rq, found.cfs_rq_rq, found.rq_steal] {
            assert!(offset > 0 && offset.is_multiple_of(8), "{found:?}");
        }
        let task = TaskOffsets::find().expect("task offsets");
        assert!(task.pid > 0 && task.pid.is_multiple_of(4), "{task:?}");
        assert!(
            task.exit_state > 0 && task.exit_state.is_multiple_of(4),
            "{task:?}"
        );
    }
}
