//! Kernel struct offsets the programs need, from the running kernel's BTF
//! (`/sys/kernel/btf/vmlinux`): aya-ebpf emits no CO-RE relocations, so the collector finds
//! each offset here and passes it in as a load-time global.

use btf_rs::{Backend, Btf, Type};

/// The kernel's own type information.
const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Every offset the programs take from BTF, found with one read of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelOffsets {
    pub task: TaskOffsets,
    /// `None` when the kernel lacks one of the fields: steal is then not reported.
    pub steal: Option<StealOffsets>,
    /// `None` when the kernel lacks one of the fields (or the steal path to the run queue):
    /// a switch-in the kernel did not report is then placed where it is first noticed.
    pub arrival: Option<ArrivalOffsets>,
    /// `struct sock`'s `__sk_common.skc_portpair` (the remote and local ports, 32 bits):
    /// with the socket's address, what `--sample N` picks a connection by. `None`: the
    /// address alone.
    pub sock_portpair: Option<u32>,
}

/// Where the raw scheduler tracepoints' programs find a task's thread id and exit state, and
/// its kernel stack (`task_struct.stack`, `stack_size` bytes: THREAD_SIZE, which on x86-64 is
/// also the size of the per-CPU `struct irq_stack`, arch/x86/include/asm/page_64_types.h,
/// Linux 6.18; BTF has no constants, but it has that struct).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaskOffsets {
    pub pid: u32,
    pub exit_state: u32,
    pub stack: u32,
    pub stack_size: u32,
}

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

/// When a task last got its CPU, and the run queue's clock to measure it against:
/// `task_struct.sched_info.last_arrival` (set in `sched_info_arrive()` from `rq_clock()`,
/// kernel/sched/stats.h, Linux 6.18) and `rq.clock`. Both are in the scheduler's clock,
/// not the events' CLOCK_MONOTONIC: only their difference is used.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ArrivalOffsets {
    pub task_last_arrival: u32,
    pub rq_clock: u32,
    /// `task_struct.sched_info.run_delay`: the task's total wait for a CPU, grown at each
    /// `sched_info_arrive()`.
    pub task_run_delay: u32,
    /// `task_struct.nvcsw`: the task's voluntary context switches so far (its blocks).
    pub task_nvcsw: u32,
    /// `task_struct.nivcsw`: its involuntary ones (its preemptions).
    pub task_nivcsw: u32,
    /// `task_struct.sched_info.last_queued`: the run queue's clock when the task was last
    /// queued to run (set in `sched_info_enqueue()`, cleared when it gets its CPU).
    pub task_last_queued: u32,
}

impl KernelOffsets {
    /// Fails, saying what to do, on a kernel without BTF: the scheduler programs cannot
    /// read their tasks without it.
    pub fn find() -> anyhow::Result<KernelOffsets> {
        let missing = || {
            anyhow::anyhow!(
                "this kernel has no usable BTF ({VMLINUX_BTF}, CONFIG_DEBUG_INFO_BTF): the \
                 tracer needs it to read the scheduler's tasks; use a kernel built with BTF"
            )
        };
        let btf = Btf::from_file_with_backend(VMLINUX_BTF, Backend::Mmap).map_err(|_| missing())?;
        let task_struct = StructLayout::of(&btf, "task_struct").ok_or_else(missing)?;
        let task = TaskOffsets {
            pid: task_struct.offset("pid").ok_or_else(missing)?,
            exit_state: task_struct.offset("exit_state").ok_or_else(missing)?,
            stack: task_struct.offset("stack").ok_or_else(missing)?,
            stack_size: struct_size(&btf, "irq_stack").ok_or_else(missing)?,
        };
        let steal = (|| {
            Some(StealOffsets {
                task_cfs_rq: task_struct.offset("se")?
                    + StructLayout::of(&btf, "sched_entity")?.offset("cfs_rq")?,
                cfs_rq_rq: StructLayout::of(&btf, "cfs_rq")?.offset("rq")?,
                rq_steal: StructLayout::of(&btf, "rq")?.offset("prev_steal_time_rq")?,
            })
        })();
        let arrival = steal.and_then(|_| {
            Some(ArrivalOffsets {
                task_last_arrival: task_struct.offset("sched_info")?
                    + StructLayout::of(&btf, "sched_info")?.offset("last_arrival")?,
                rq_clock: StructLayout::of(&btf, "rq")?.offset("clock")?,
                task_run_delay: task_struct.offset("sched_info")?
                    + StructLayout::of(&btf, "sched_info")?.offset("run_delay")?,
                task_nvcsw: task_struct.offset("nvcsw")?,
                task_nivcsw: task_struct.offset("nivcsw")?,
                task_last_queued: task_struct.offset("sched_info")?
                    + StructLayout::of(&btf, "sched_info")?.offset("last_queued")?,
            })
        });
        let sock_portpair = (|| {
            let common = StructLayout::of(&btf, "sock")?.offset("__sk_common")?;
            Some(common + StructLayout::of(&btf, "sock_common")?.offset("skc_portpair")?)
        })();
        Ok(KernelOffsets {
            task,
            steal,
            arrival,
            sock_portpair,
        })
    }
}

/// A struct's size in bytes.
fn struct_size(btf: &Btf, name: &str) -> Option<u32> {
    btf.resolve_types_by_name(name)
        .ok()?
        .into_iter()
        .find_map(|t| match t {
            Type::Struct(s) => u32::try_from(s.size()).ok(),
            _ => None,
        })
}

/// A struct's whole-byte members (no bitfields) and their byte offsets, those of its
/// anonymous unions and structs among them (`sock_common`'s ports are in one).
struct StructLayout(Vec<(String, u32)>);

impl StructLayout {
    fn of(btf: &Btf, name: &str) -> Option<StructLayout> {
        let found = btf
            .resolve_types_by_name(name)
            .ok()?
            .into_iter()
            .find(|t| matches!(t, Type::Struct(_)))?;
        let mut members = Vec::new();
        add_members(btf, &found, 0, &mut members);
        Some(StructLayout(members))
    }

    fn offset(&self, member: &str) -> Option<u32> {
        self.0
            .iter()
            .find(|(name, _)| name == member)
            .map(|&(_, offset)| offset)
    }
}

/// The whole-byte members of struct or union `ty`, at `base` bytes, into `members`; an
/// anonymous member's own members in its place.
fn add_members(btf: &Btf, ty: &Type, base: u32, members: &mut Vec<(String, u32)>) {
    let (Type::Struct(s) | Type::Union(s)) = ty else {
        return;
    };
    // A struct with any bitfield gives each member a size: 0 for a whole one.
    let whole = s
        .members
        .iter()
        .filter(|m| m.bitfield_size().unwrap_or(0) == 0 && m.bit_offset() % 8 == 0);
    for m in whole {
        let offset = base + m.bit_offset() / 8;
        match btf.resolve_name(m) {
            Ok(name) if name.is_empty() => {
                if let Ok(inner) = btf.resolve_chained_type(m) {
                    add_members(btf, &inner, offset, members);
                }
            }
            Ok(name) => members.push((name, offset)),
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_kernel_says_where_tasks_steal_time_and_arrivals_are() {
        let found = KernelOffsets::find().expect("the tracer needs the kernel's BTF");
        let (task, steal) = (found.task, found.steal.expect("steal offsets"));
        assert!(task.pid > 0 && task.pid.is_multiple_of(4), "{task:?}");
        assert!(
            task.exit_state > 0 && task.exit_state.is_multiple_of(4),
            "{task:?}"
        );
        assert!(task.stack > 0 && task.stack.is_multiple_of(8), "{task:?}");
        assert!(
            task.stack_size >= 8192 && task.stack_size.is_power_of_two(),
            "{task:?}"
        );
        for offset in [steal.task_cfs_rq, steal.cfs_rq_rq, steal.rq_steal] {
            assert!(offset > 0 && offset.is_multiple_of(8), "{steal:?}");
        }
        let arrival = found.arrival.expect("arrival offsets");
        assert!(arrival.task_last_arrival > 0 && arrival.task_last_arrival.is_multiple_of(8));
        // `clock` follows the run queue's lock and counters, never first.
        assert!(arrival.rq_clock > 0 && arrival.rq_clock.is_multiple_of(8));
        assert!(arrival.task_run_delay > 0 && arrival.task_run_delay.is_multiple_of(8));
        assert_ne!(arrival.task_run_delay, arrival.task_last_arrival);
        assert!(arrival.task_nvcsw > 0 && arrival.task_nvcsw.is_multiple_of(8));
        assert!(arrival.task_nivcsw > 0 && arrival.task_nivcsw.is_multiple_of(8));
        assert_ne!(arrival.task_nivcsw, arrival.task_nvcsw);
        assert!(arrival.task_last_queued > 0 && arrival.task_last_queued.is_multiple_of(8));
        assert_ne!(arrival.task_last_queued, arrival.task_last_arrival);
        // After the two addresses (8 bytes) and the hash (4), in sock_common at the start of
        // struct sock (include/net/sock.h, Linux 6.18).
        assert_eq!(found.sock_portpair, Some(12));
    }
}
