//! What the operator reads: the live table each interval, the final console summary, and the
//! summary.json document.

use std::fmt::Write as _;

use serde_json::{json, Value};

use crate::{
    attribution::{syscall_name, Cause, Waker, LISTED_LOCKS, LISTED_PER_LOCK},
    collector::Collector,
    decode::comm,
    export::{latency_json, wait_json},
    preflight::Target,
    probes::ProgramStat,
    stats::TlsStats,
    tls::TlsStatus,
};

pub fn live_header() -> String {
    let mut s = format!(
        "{:>8} {:>8} {:>9} {:>9} {:>9} |",
        "time", "reqs", "req/s", "p50", "p99"
    );
    for c in Cause::ALL {
        let _ = write!(s, " {:>w$}", c.name(), w = column_width(c));
    }
    s + " | events   lost"
}

/// One row: this interval's requests, and each cause's share of their total time.
/// `interval_s` is the interval's length (shorter for the last one, cut by the stop).
pub fn live_row(c: &Collector, interval_s: f64) -> String {
    let h = &c.interval.latency;
    let reqs = h.len();
    let mut s = format!(
        "{:>7.0}s {:>8} {:>9.1} {:>9} {:>9} |",
        c.elapsed().as_secs_f64(),
        reqs,
        reqs as f64 / interval_s.max(1e-3),
        human_ns(h.value_at_quantile(0.5)),
        human_ns(h.value_at_quantile(0.99)),
    );
    let total: u64 = c.interval_breakdown.iter().sum();
    for cause in Cause::ALL {
        let share = percent(c.interval_breakdown[cause.index()], total);
        let _ = write!(s, " {:>w$.1}%", share, w = column_width(cause) - 1);
    }
    let _ = write!(s, " | {:>6} {:>6}", c.interval_events, c.lost());
    s
}

/// A live-table column: wide enough for the cause's name and a percentage.
fn column_width(cause: Cause) -> usize {
    cause.name().len().max(8)
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

fn share(part: u64, whole: u64) -> f64 {
    percent(part, whole) / 100.0
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
pub fn final_summary(c: &Collector, target: &Target, stopped_by: &str) -> String {
    let t = &c.totals;
    let lat = &t.requests.latency;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\n=== tracer: PID {} ({}), {:.1}s, stopped by {stopped_by} ===",
        target.pid,
        target_name(target),
        c.elapsed().as_secs_f64()
    );
    let _ = writeln!(
        s,
        "requests: {}  p50 {}  p90 {}  p99 {}  max {}",
        lat.len(),
        human_ns(lat.value_at_quantile(0.5)),
        human_ns(lat.value_at_quantile(0.9)),
        human_ns(lat.value_at_quantile(0.99)),
        human_ns(lat.max())
    );
    let total: u64 = t.breakdown.iter().sum();
    let _ = writeln!(
        s,
        "\n{:<13} {:>12} {:>7} {:>10} {:>10} {:>10}",
        "cause", "total", "share", "p50/req", "p99/req", "max/req"
    );
    for cause in Cause::ALL {
        let h = &t.requests.causes[cause.index()];
        let _ = writeln!(
            s,
            "{:<13} {:>12} {:>6.1}% {:>10} {:>10} {:>10}",
            cause.name(),
            human_ns(t.breakdown[cause.index()]),
            percent(t.breakdown[cause.index()], total),
            human_ns(h.value_at_quantile(0.5)),
            human_ns(h.value_at_quantile(0.99)),
            human_ns(h.max()),
        );
    }
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
    let locks = top_locks(c);
    if !locks.is_empty() {
        let _ = writeln!(s, "most contended futexes");
        for l in &locks {
            let _ = writeln!(
                s,
                "  {}  waited {} in {} waits; waiters {}; woken by {}",
                l["address"].as_str().unwrap_or("?"),
                human_ns(l["wait_ns"].as_u64().unwrap_or(0)),
                l["waits"],
                names(
                    &l["waiters"],
                    &others(&l["waiters_not_listed"]["waits"], "waits")
                ),
                names(
                    &l["wakers"],
                    &others(&l["wakers_not_listed"]["count"], "wakeups")
                ),
            );
        }
    }
    let hs = &t.tls.durations;
    if !hs.is_empty() {
        let p = &t.tls.phases;
        let _ = writeln!(
            s,
            "TLS handshakes: {}  p50 {}  p99 {}  max {}; phases: cpu {}, peer_wait {}, runqueue {}, other {}; \
             TLSv1.3 {}, TLSv1.2 {}, version unknown {}; resumed {}, full {}",
            hs.len(),
            human_ns(hs.value_at_quantile(0.5)),
            human_ns(hs.value_at_quantile(0.99)),
            human_ns(hs.max()),
            human_ns(p.cpu),
            human_ns(p.peer_wait),
            human_ns(p.runqueue),
            human_ns(p.other),
            t.tls.by_version[2],
            t.tls.by_version[1],
            t.tls.by_version[0],
            t.tls.resumed,
            t.tls.full,
        );
    }
    let other = other_detail(c);
    if !other.is_empty() {
        let _ = writeln!(s, "other (blocked, by syscall): {other}");
    }
    let _ = writeln!(
        s,
        "events: {} received, {} lost{}",
        c.received,
        c.lost(),
        if c.lost() > 0 {
            " (requests open during a loss are marked incomplete)"
        } else {
            ""
        }
    );
    if !c.skipped_by_program.is_empty() {
        let list: Vec<String> = c
            .skipped_by_program
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
    if c.engine.shared > 0 {
        let _ = writeln!(s, "note: {} requests shared their thread with another open request (event loop): their breakdown counts the thread's whole time", c.engine.shared);
    }
    if t.incomplete > 0 {
        let _ = writeln!(
            s,
            "note: {} requests were open while events were lost",
            t.incomplete
        );
    }
    s
}

/// The target's name, and the one it started with if it ran `exec` since.
fn target_name(target: &Target) -> String {
    match &target.comm_at_start {
        Some(start) => format!("{}, was {start} at the start", target.comm),
        None => target.comm.clone(),
    }
}

/// `tid/comm` for threads, `(timer)` for interrupts, with a count when the entries have one,
/// and what the others not listed did (`not_listed`: e.g. `1234 more waits`).
fn names(list: &Value, not_listed: &str) -> String {
    let mut items: Vec<String> = list
        .as_array()
        .map(|a| {
            a.iter()
                .map(|v| {
                    let comm = v["comm"].as_str().unwrap_or("?");
                    let name = match v["tid"].as_u64() {
                        Some(tid) => format!("{tid}/{comm}"),
                        None => comm.to_string(),
                    };
                    match v["count"].as_u64() {
                        Some(n) => format!("{name} x{n}"),
                        None => name,
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    if !not_listed.is_empty() {
        items.push(not_listed.to_string());
    }
    if items.is_empty() {
        return "none seen".to_string();
    }
    items.join(", ")
}

/// `N more waits by others` for a non-zero count, else nothing.
fn others(count: &Value, what: &str) -> String {
    match count.as_u64() {
        Some(n) if n > 0 => format!("{n} more {what} by others"),
        _ => String::new(),
    }
}

fn other_detail(c: &Collector) -> String {
    let mut v: Vec<_> = c
        .engine
        .other_by_syscall
        .iter()
        .filter(|(_, ns)| **ns > 0)
        .collect();
    v.sort_by(|a, b| b.1.cmp(a.1));
    v.iter()
        .map(|(nr, ns)| format!("{} {}", syscall_name(**nr), human_ns(**ns)))
        .collect::<Vec<_>>()
        .join(", ")
}

fn top_locks(c: &Collector) -> Vec<Value> {
    c.engine
        .locks
        .top(LISTED_LOCKS)
        .into_iter()
        .map(|(addr, l)| {
            let (waiters, other_waits) = l.waiters.top(LISTED_PER_LOCK);
            let (wakers, other_wakeups) = l.wakers.top(LISTED_PER_LOCK);
            json!({
                "address": format!("{addr:#x}"),
                "wait_ns": l.wait_ns,
                "waits": l.waits,
                "waiters": waiters.iter().map(|(tid, t)| json!({
                    "tid": tid,
                    "comm": c.comms.get(tid).map(String::as_str).unwrap_or("?"),
                    "wait_ns": t.ns,
                    "waits": t.count,
                })).collect::<Vec<_>>(),
                "waiters_not_listed": { "wait_ns": other_waits.ns, "waits": other_waits.count },
                "wakers": wakers.iter().map(|(w, t)| waker_json(w, t.count)).collect::<Vec<_>>(),
                "wakers_not_listed": { "count": other_wakeups.count },
            })
        })
        .collect()
}

/// A thread waker has its `tid`, `pid` and `comm`; an interrupt has `interrupt` (`timer`,
/// `softirq net_rx`, `hardirq N`) and a `comm` in parentheses, never a thread's name.
fn waker_json(w: &Waker, count: u64) -> Value {
    match w {
        Waker::Thread {
            tid,
            pid,
            comm: name,
        } => json!({
            "context": "thread", "tid": tid, "pid": pid, "comm": comm(name), "count": count,
        }),
        Waker::Interrupt(i) => json!({
            "context": "interrupt", "tid": null, "pid": null, "interrupt": i.name(),
            "comm": format!("({})", i.name()), "count": count,
        }),
        Waker::Unknown => json!({
            "context": "unknown", "tid": null, "pid": null, "comm": "(unknown)", "count": count,
        }),
    }
}

/// Addresses the lock detail does not list: beyond the top ones, and those folded to keep the
/// collector bounded.
fn locks_not_listed(c: &Collector) -> Value {
    let locks = &c.engine.locks;
    let listed: Vec<_> = locks.top(LISTED_LOCKS);
    let (kept_waits, kept_ns) = locks
        .iter()
        .fold((0, 0), |(w, ns), (_, l)| (w + l.waits, ns + l.wait_ns));
    let (listed_waits, listed_ns) = listed
        .iter()
        .fold((0, 0), |(w, ns), (_, l)| (w + l.waits, ns + l.wait_ns));
    json!({
        "waits": kept_waits - listed_waits + locks.folded.count,
        "wait_ns": kept_ns - listed_ns + locks.folded.ns,
    })
}

/// The summary.json document (a contract; see the README).
pub fn summary_json(
    c: &Collector,
    target: &Target,
    stopped_by: &str,
    programs: &[ProgramStat],
    tls: &TlsStatus,
) -> Value {
    let t = &c.totals;
    let total: u64 = t.breakdown.iter().sum();
    let breakdown: serde_json::Map<String, Value> = Cause::ALL
        .iter()
        .map(|cause| {
            let h = &t.requests.causes[cause.index()];
            let ns = t.breakdown[cause.index()];
            let v = json!({
                "total_ns": ns,
                "share": share(ns, total),
                "per_request_ns": {
                    "p50": h.value_at_quantile(0.5),
                    "p99": h.value_at_quantile(0.99),
                    "max": h.max(),
                },
            });
            (cause.name().to_string(), v)
        })
        .collect();
    let other: serde_json::Map<String, Value> = c
        .engine
        .other_by_syscall
        .iter()
        .filter(|(_, ns)| **ns > 0)
        .map(|(nr, ns)| (syscall_name(*nr), json!(ns)))
        .collect();
    json!({
        "target": {
            "pid": target.pid,
            "comm": target.comm,
            "comm_at_start": target.comm_at_start.as_ref().unwrap_or(&target.comm),
        },
        "duration_s": c.elapsed().as_secs_f64(),
        "stopped_by": stopped_by,
        "requests": {
            "count": t.requests.latency.len(),
            "latency_ns": latency_json(&t.requests.latency),
            "incomplete": t.incomplete,
            "aborted": c.engine.aborted,
            "shared_context": c.engine.shared,
            "slow_logged": c.slow.written,
        },
        "breakdown": breakdown,
        "other_by_syscall_ns": other,
        "waits": {
            "futex_ns": wait_json(&t.futex.hdr),
            "runqueue_ns": wait_json(&t.runqueue.hdr),
            "socket_read_ns": wait_json(&t.socket_read.hdr),
        },
        "locks": top_locks(c),
        "locks_not_listed": locks_not_listed(c),
        "tls": {
            "library": tls.library,
            "hooked": tls.hooked,
            "not_hooked_because": tls.reason,
            "handshakes": handshakes_json(&t.tls),
            "phases": {
                "cpu": { "total_ns": t.tls.phases.cpu },
                "peer_wait": { "total_ns": t.tls.phases.peer_wait },
                "runqueue": { "total_ns": t.tls.phases.runqueue },
                "other": { "total_ns": t.tls.phases.other },
            },
        },
        "events": {
            "received": c.received,
            "lost": c.lost(),
            "lost_by_reason": {
                "ring_full": c.lost_by_reason[0],
                "map_full": c.lost_by_reason[1],
                "read_failed": c.lost_by_reason[2],
            },
            "lost_per_cpu": c.lost_by_cpu,
            "skipped_runs": skipped_runs_json(c),
            "malformed": c.malformed,
        },
        "attribution": {
            "context": "thread",
            "note": "a request is timed on the thread that read it; requests sharing a thread (event loops) each count the thread's whole time (see shared_context)",
        },
        "programs": programs.iter().map(|p| json!({
            "name": p.name, "run_count": p.run_count, "run_time_ns": p.run_time_ns,
            "ns_per_run": p.run_time_ns.checked_div(p.run_count).unwrap_or(0),
        })).collect::<Vec<_>>(),
    })
}

/// Program runs the kernel skipped: `{timeline, wakers_only, by_program}`.
fn skipped_runs_json(c: &Collector) -> Value {
    let (timeline, wakers_only) = c.skipped_runs();
    let by_program: serde_json::Map<String, Value> = c
        .skipped_by_program
        .iter()
        .map(|(name, n)| (name.clone(), json!(n)))
        .collect();
    json!({ "timeline": timeline, "wakers_only": wakers_only, "by_program": by_program })
}

/// The collector's own CPU seconds and peak RSS so far: `summary.json` `collector`, added by
/// the caller last, so the peak covers the whole run.
pub fn collector_usage() -> Value {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF with a valid out-pointer.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let secs = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    let (user_s, sys_s) = (secs(ru.ru_utime), secs(ru.ru_stime));
    json!({ "cpu_s": user_s + sys_s, "user_s": user_s, "sys_s": sys_s, "max_rss_kb": ru.ru_maxrss })
}

/// The `tls.handshakes` object: the duration summary, then versions and resumption.
fn handshakes_json(tls: &TlsStats) -> Value {
    let mut v = wait_json(&tls.durations);
    let total = tls.durations.len();
    v["by_version"] = json!({
        "TLSv1.3": tls.by_version[2],
        "TLSv1.2": tls.by_version[1],
        "unknown": tls.by_version[0],
    });
    v["resumed"] = json!(tls.resumed);
    v["full"] = json!(tls.full);
    v["resumption_unknown"] = json!(total.saturating_sub(tls.resumed + tls.full));
    v
}
