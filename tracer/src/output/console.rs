//! The end-of-trace console summary, rendered from the [`Summary`] (so the two never
//! disagree) and the log2 histograms only the console shows, bcc style.

use std::fmt::Write as _;

use super::{
    aggregate::Totals,
    summary::{GoLock, GoLockWaker, Lock, LockWaker, Summary, WaitCount, Waiter, WakeupCount},
};

pub fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

pub fn human_ns(ns: u64) -> String {
    match ns {
        0..=9_999 => format!("{ns}ns"),
        10_000..=9_999_999 => format!("{:.1}us", ns as f64 / 1e3),
        10_000_000..=9_999_999_999 => format!("{:.1}ms", ns as f64 / 1e6),
        _ => format!("{:.1}s", ns as f64 / 1e9),
    }
}

/// The end-of-trace console summary, with bcc-style log2 histograms.
pub fn final_summary(sum: &Summary, t: &Totals) -> String {
    let lat = &sum.requests.latency_ns;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\n=== tracer: PID {} ({}), {:.1}s, stopped by {} ===",
        sum.target.pid,
        target_name(sum),
        sum.duration_s,
        sum.stopped_by
    );
    let sampled = match sum.requests.sampled_one_in {
        0 | 1 => String::new(),
        n => format!("  (sampled: the requests of 1 connection in {n})"),
    };
    let _ = writeln!(
        s,
        "requests: {}  p50 {}  p90 {}  p99 {}  max {}{sampled}",
        sum.requests.count,
        human_ns(lat.p50),
        human_ns(lat.p90),
        human_ns(lat.p99),
        human_ns(lat.max)
    );
    let _ = writeln!(
        s,
        "\n{:<13} {:>12} {:>7} {:>10} {:>10} {:>10}",
        "cause", "total", "share", "p50/req", "p99/req", "max/req"
    );
    for (cause, c) in &sum.breakdown {
        let _ = writeln!(
            s,
            "{:<13} {:>12} {:>6.1}% {:>10} {:>10} {:>10}",
            cause.name(),
            human_ns(c.total_ns),
            c.share * 100.0,
            human_ns(c.per_request_ns.p50),
            human_ns(c.per_request_ns.p99),
            human_ns(c.per_request_ns.max),
        );
    }
    s.push_str(&where_the_time_went(sum));
    let _ = writeln!(
        s,
        "\nrequest latency\n{}",
        t.request_log2_us.render("usecs")
    );
    let _ = writeln!(s, "futex wait\n{}", t.futex.log2_us.render("usecs"));
    let _ = writeln!(s, "run-queue delay\n{}", t.runqueue.log2_us.render("usecs"));
    let _ = writeln!(
        s,
        "socket read blocked\n{}",
        t.socket_read.log2_us.render("usecs")
    );
    if !sum.locks.is_empty() {
        let _ = writeln!(s, "most contended futexes");
        for l in &sum.locks {
            let _ = writeln!(s, "  {}", lock_line(l));
        }
    }
    if !sum.go_locks.is_empty() {
        let _ = writeln!(s, "most contended Go locks");
        for l in &sum.go_locks {
            let _ = writeln!(s, "  {}", go_lock_line(l));
        }
    }
    let hs = &sum.tls.handshakes;
    if hs.duration_ns.count > 0 {
        let p = &sum.tls.phases;
        let _ = writeln!(
            s,
            "TLS handshakes: {}  p50 {}  p99 {}  max {}; phases: cpu {}, peer_wait {}, runqueue {}, other {}; \
             TLSv1.3 {}, TLSv1.2 {}, version unknown {}; resumed {}, full {}",
            hs.duration_ns.count,
            human_ns(hs.duration_ns.p50),
            human_ns(hs.duration_ns.p99),
            human_ns(hs.duration_ns.max),
            human_ns(p.cpu.total_ns),
            human_ns(p.peer_wait.total_ns),
            human_ns(p.runqueue.total_ns),
            human_ns(p.other.total_ns),
            hs.by_version.tls13,
            hs.by_version.tls12,
            hs.by_version.unknown,
            hs.resumed,
            hs.full,
        );
    }
    let other = other_detail(sum);
    if !other.is_empty() {
        let _ = writeln!(s, "other (blocked, by syscall): {other}");
    }
    let go_waits = by_time(&sum.go_wait_reasons_ns);
    if !go_waits.is_empty() {
        let _ = writeln!(s, "goroutines parked, by Go's wait reason: {go_waits}");
    }
    let ev = &sum.events;
    let _ = writeln!(
        s,
        "events: {} received, {} lost{}",
        ev.received,
        ev.lost,
        if ev.lost > 0 {
            " (requests open during a loss are marked incomplete)"
        } else {
            ""
        }
    );
    if !ev.skipped_runs.by_program.is_empty() {
        let list: Vec<String> = ev
            .skipped_runs
            .by_program
            .iter()
            .map(|(name, n)| format!("{name} {n}"))
            .collect();
        let _ = writeln!(
            s,
            "kernel skipped program runs (another BPF program was running on that CPU; counted \
             for every task on the machine, most are not the target's): {}; a skipped \
             sched_waking or interrupt run only loses a waker's name",
            list.join(", ")
        );
    }
    if sum.stacks.not_stored > 0 {
        let _ = writeln!(
            s,
            "note: {} stacks not stored (the kernel's stack maps had no room): their waits have no site",
            sum.stacks.not_stored
        );
    }
    if sum.requests.shared_context > 0 {
        let _ = writeln!(s, "note: {} requests shared their thread with another open request (event loop): their breakdown counts the thread's whole time", sum.requests.shared_context);
    }
    if sum.requests.incomplete > 0 {
        let _ = writeln!(
            s,
            "note: {} requests were open while events were lost",
            sum.requests.incomplete
        );
    }
    s
}

/// The target's name, and the one it started with if it ran `exec` since.
fn target_name(sum: &Summary) -> String {
    let t = &sum.target;
    if t.comm_at_start != t.comm {
        format!("{}, was {} at the start", t.comm, t.comm_at_start)
    } else {
        t.comm.clone()
    }
}

/// Sites shown per cause at the end.
const SHOWN_SITES: usize = 2;

/// "where the time went": per blocking cause (heaviest first), its share of request time and
/// its heaviest call sites: `lock 78%  main.waitLock ← main.main.func3 (sync.(*Mutex).Lock)`.
fn where_the_time_went(sum: &Summary) -> String {
    let mut causes: Vec<_> = sum
        .wait_sites
        .iter()
        .filter(|(_, sites)| !sites.sites.is_empty())
        .collect();
    if causes.is_empty() {
        return String::new();
    }
    causes.sort_by_key(|(cause, _)| {
        std::cmp::Reverse(sum.breakdown.get(cause).map_or(0, |c| c.total_ns))
    });
    let mut s = String::from("\nwhere the time went (call sites of the waits inside requests)\n");
    for (cause, sites) in causes {
        let share = sum.breakdown.get(cause).map_or(0.0, |c| c.share);
        for (i, site) in sites.sites.iter().take(SHOWN_SITES).enumerate() {
            let head = if i == 0 {
                format!("{} {:.0}%", cause.name(), share * 100.0)
            } else {
                String::new()
            };
            let woken_by = site
                .woken_by
                .first()
                .map(|w| format!("  woken by {} x{}", w.site, w.count))
                .unwrap_or_default();
            let _ = writeln!(
                s,
                "  {head:<16} {:>5.1}%  {}{}  ({} waits, {}){woken_by}",
                site.share * 100.0,
                site.site,
                if site.truncated {
                    " [frames may be missing: frame pointers]"
                } else {
                    ""
                },
                site.count,
                human_ns(site.total_ns),
            );
        }
    }
    s
}

/// `ADDRESS  waited T in N waits; waiters tid/comm, ...; woken by tid/comm xN, (timer) xN`.
fn lock_line(l: &Lock) -> String {
    contention_line(
        &l.address,
        (l.wait_ns, l.waits),
        (l.waiters.iter().map(Waiter::name), l.waiters_not_listed),
        (l.wakers.iter().map(LockWaker::name), l.wakers_not_listed),
    )
}

/// `sync.Mutex ADDRESS  waited T in N waits; waiters goroutine 12, ...; woken by goroutine 7
/// on tid/comm xN`.
fn go_lock_line(l: &GoLock) -> String {
    contention_line(
        &format!("{} {}", l.kind, l.address),
        (l.wait_ns, l.waits),
        (
            l.waiters.iter().map(|w| format!("goroutine {}", w.goid)),
            l.waiters_not_listed,
        ),
        (l.wakers.iter().map(GoLockWaker::name), l.wakers_not_listed),
    )
}

/// `WHAT  waited T in N waits; waiters ...; woken by ...`, for a thread or a Go lock.
fn contention_line(
    what: &str,
    (wait_ns, waits): (u64, u64),
    (waiters, waiters_not_listed): (impl Iterator<Item = String>, WaitCount),
    (wakers, wakers_not_listed): (impl Iterator<Item = String>, WakeupCount),
) -> String {
    format!(
        "{what}  waited {} in {waits} waits; waiters {}; woken by {}",
        human_ns(wait_ns),
        names(waiters, others(waiters_not_listed.waits, "waits")),
        names(wakers, others(wakers_not_listed.count, "wakeups")),
    )
}

impl GoLockWaker {
    /// `goroutine 7 on tid/comm xN`.
    fn name(&self) -> String {
        let who = match self.goid {
            Some(goid) => format!("goroutine {goid}"),
            None => "(no goroutine)".to_string(),
        };
        format!("{who} on {}/{} x{}", self.tid, self.comm, self.count)
    }
}

impl Waiter {
    fn name(&self) -> String {
        format!("{}/{}", self.tid, self.comm)
    }
}

impl LockWaker {
    /// `tid/comm xN` for a thread, `(timer) xN` for an interrupt.
    fn name(&self) -> String {
        match self.tid {
            Some(tid) => format!("{tid}/{} x{}", self.comm, self.count),
            None => format!("{} x{}", self.comm, self.count),
        }
    }
}

/// The items, and what the others not listed did (`not_listed`: e.g. `1234 more waits`).
fn names(items: impl Iterator<Item = String>, not_listed: Option<String>) -> String {
    let items: Vec<String> = items.chain(not_listed).collect();
    if items.is_empty() {
        return "none seen".to_string();
    }
    items.join(", ")
}

/// `N more waits by others` for a non-zero count.
fn others(count: u64, what: &str) -> Option<String> {
    (count > 0).then(|| format!("{count} more {what} by others"))
}

/// The `other` time by syscall, most first.
fn other_detail(sum: &Summary) -> String {
    by_time(&sum.other_by_syscall_ns)
}

/// `name time, ...`, most time first.
fn by_time(times: &std::collections::BTreeMap<String, u64>) -> String {
    let mut v: Vec<_> = times.iter().collect();
    v.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    v.iter()
        .map(|(name, ns)| format!("{name} {}", human_ns(**ns)))
        .collect::<Vec<_>>()
        .join(", ")
}
