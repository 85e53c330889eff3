//! Whether this process may load and attach the kernel programs, checked before anything
//! else is done.

use anyhow::{bail, Context as _, Result};

const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// What each step needs, measured on Linux 6.18 with `setpriv` (see the README, Privileges):
/// loading and attaching the raw tracepoint programs needs CAP_BPF and CAP_PERFMON, or
/// CAP_SYS_ADMIN, which the kernel accepts for both (no tracefs: raw tracepoints are attached
/// by name); `--bpf-stats` (BPF_ENABLE_STATS) needs CAP_SYS_ADMIN. The target's /proc files
/// and the TLS uprobes need more in some cases, checked where they are used:
/// [`crate::target::check_target`], [`super::uprobes::UPROBES_REFUSED`].
pub fn check_privileges(bpf_stats: bool) -> Result<()> {
    let caps = procfs::process::Process::myself()
        .and_then(|me| me.status())
        .context("reading /proc/self/status")?
        .capeff;
    match missing_privileges(caps, bpf_stats) {
        Some(message) => bail!("{message}"),
        None => Ok(()),
    }
}

/// Why effective capabilities `caps` are not enough, if they are not.
fn missing_privileges(caps: u64, bpf_stats: bool) -> Option<String> {
    let has = |cap: u32| caps & (1u64 << cap) != 0;
    let can_load = has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON));
    if !can_load {
        let missing: Vec<&str> = [(CAP_BPF, "CAP_BPF"), (CAP_PERFMON, "CAP_PERFMON")]
            .into_iter()
            .filter(|(c, _)| !has(*c))
            .map(|(_, n)| n)
            .collect();
        return Some(format!(
            "missing {} (and not CAP_SYS_ADMIN), needed to load the kernel programs: run tracer \
             as root, e.g. `sudo tracer --pid PID`",
            missing.join(" and ")
        ));
    }
    if bpf_stats && !has(CAP_SYS_ADMIN) {
        return Some(
            "--bpf-stats needs CAP_SYS_ADMIN (the kernel's BPF_ENABLE_STATS command): run tracer \
             as root, or leave out --bpf-stats"
                .to_string(),
        );
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_capabilities_are_named() {
        let bit = |cap: u32| 1u64 << cap;
        assert_eq!(
            missing_privileges(bit(CAP_BPF) | bit(CAP_PERFMON), false),
            None
        );
        assert_eq!(missing_privileges(bit(CAP_SYS_ADMIN), true), None);
        let m = missing_privileges(bit(CAP_BPF), false).unwrap();
        assert!(
            m.starts_with("missing CAP_PERFMON") && m.contains("root"),
            "{m}"
        );
        let m = missing_privileges(0, false).unwrap();
        assert!(m.starts_with("missing CAP_BPF and CAP_PERFMON"), "{m}");
        let m = missing_privileges(bit(CAP_BPF) | bit(CAP_PERFMON), true).unwrap();
        assert!(m.starts_with("--bpf-stats needs CAP_SYS_ADMIN"), "{m}");
    }
}
