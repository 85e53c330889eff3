//! Per-release facts for executables that do not carry them (`-ldflags=-s -w` removes the
//! symbol table and DWARF): the offsets of `g.goid`, `g.m`, `m.curg` and `g.schedlink`
//! (right after `goid` in every release), and the wait-reason
//! strings, keyed by the Go version in `.go.buildinfo` (major.minor: a patch release does
//! not change the runtime's structs or its wait reasons).
//!
//! `g.schedlink` was read in the DWARF of go1.19.8, 1.21.13, 1.23.9, 1.25.5 and 1.27.3: goid's
//! offset plus 8 in each.
//!
//! Each row says what it was verified against. "DWARF of goX" means: the DWARF of an
//! executable built here with that toolchain (the field offsets), and its
//! `runtime.waitReasonStrings` read by this module, equal to the source's list (the wait
//! reasons). Rows checked against source only say so. Changes, from the sources:
//! - 1.23 adds `g.syscallbp` before `goid` (152 → 160);
//! - 1.25 removes `gobuf.ret`, and `g.sched` and `m.morebuf` are gobufs: goid 160 → 152,
//!   curg 192 → 184;
//! - wait reasons: 1.20 inserts the sync.Mutex/RWMutex reasons after "sync.Cond.Wait" and
//!   drops "timer goroutine (idle)"; 1.22, 1.23, 1.24 and 1.25 append (1.25 also inserts
//!   "GOMAXPROCS updater (idle)"); 1.26 reorders.

use super::GOffsets;

/// A Go release's facts.
#[derive(Debug)]
pub struct Release {
    /// `20` for Go 1.20.
    pub minor: u32,
    pub offsets: GOffsets,
    pub wait_reasons: &'static [&'static str],
}

/// The release a `.go.buildinfo` version names (`go1.23.9`, `go1.21rc2`,
/// `go1.22.0 X:nocoverageredesign`), if the table has it. Development builds
/// (`devel go1.24-abcdef`) are not releases: their structs may be anything.
pub fn release(version: &str) -> Option<&'static Release> {
    let minor = go_minor(version)?;
    RELEASES.iter().find(|r| r.minor == minor)
}

fn go_minor(version: &str) -> Option<u32> {
    let rest = version.strip_prefix("go1.")?;
    let digits = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..digits].parse().ok()
}

/// goid at 152, m at 48, curg at 192: Go 1.17 to 1.22.
const GOID_152_CURG_192: GOffsets = GOffsets {
    g_goid: 152,
    g_m: 48,
    m_curg: 192,
    g_schedlink: 160,
};
/// Go 1.23 and 1.24 (`g.syscallbp`).
const GOID_160_CURG_192: GOffsets = GOffsets {
    g_goid: 160,
    g_m: 48,
    m_curg: 192,
    g_schedlink: 168,
};
/// Go 1.25 onwards (no `gobuf.ret`).
const GOID_152_CURG_184: GOffsets = GOffsets {
    g_goid: 152,
    g_m: 48,
    m_curg: 184,
    g_schedlink: 160,
};

const RELEASES: [Release; 11] = [
    // Source of go1.17.13 (runtime2.go at its release-branch commit): the same fields before
    // goid and curg as go1.19.8; wait reasons as listed.
    row(17, GOID_152_CURG_192, GO_1_17),
    // Not verified here (no go1.18 toolchain or source at hand): go1.17.13 and go1.19.8
    // agree on every fact, and so does GO.md's reading of the sources.
    row(18, GOID_152_CURG_192, GO_1_17),
    // DWARF of go1.19.8 (Debian).
    row(19, GOID_152_CURG_192, GO_1_17),
    // Source of go1.20.6: the same fields before goid and curg as go1.21.13, and the same
    // wait reasons.
    row(20, GOID_152_CURG_192, GO_1_20),
    // DWARF of go1.21.13.
    row(21, GOID_152_CURG_192, GO_1_20),
    // DWARF of go1.22.10.
    row(22, GOID_152_CURG_192, GO_1_22),
    // DWARF of go1.23.9.
    row(23, GOID_160_CURG_192, GO_1_23),
    // DWARF of go1.24.11.
    row(24, GOID_160_CURG_192, GO_1_24),
    // DWARF of go1.25.5.
    row(25, GOID_152_CURG_184, GO_1_25),
    // DWARF of go1.26.6.
    row(26, GOID_152_CURG_184, GO_1_26),
    // DWARF of go1.27.3.
    row(27, GOID_152_CURG_184, GO_1_26),
];

const fn row(minor: u32, offsets: GOffsets, wait_reasons: &'static [&'static str]) -> Release {
    Release {
        minor,
        offsets,
        wait_reasons,
    }
}

/// Go 1.17 to 1.19.
const GO_1_17: &[&str] = &[
    "",                        // 0
    "GC assist marking",       // 1
    "IO wait",                 // 2
    "chan receive (nil chan)", // 3
    "chan send (nil chan)",    // 4
    "dumping heap",            // 5
    "garbage collection",      // 6
    "garbage collection scan", // 7
    "panicwait",               // 8
    "select",                  // 9
    "select (no cases)",       // 10
    "GC assist wait",          // 11
    "GC sweep wait",           // 12
    "GC scavenge wait",        // 13
    "chan receive",            // 14
    "chan send",               // 15
    "finalizer wait",          // 16
    "force gc (idle)",         // 17
    "semacquire",              // 18
    "sleep",                   // 19
    "sync.Cond.Wait",          // 20
    "timer goroutine (idle)",  // 21
    "trace reader (blocked)",  // 22
    "wait for GC cycle",       // 23
    "GC worker (idle)",        // 24
    "preempted",               // 25
    "debug call",              // 26
];

/// Go 1.20 and 1.21.
const GO_1_20: &[&str] = &[
    "",                        // 0
    "GC assist marking",       // 1
    "IO wait",                 // 2
    "chan receive (nil chan)", // 3
    "chan send (nil chan)",    // 4
    "dumping heap",            // 5
    "garbage collection",      // 6
    "garbage collection scan", // 7
    "panicwait",               // 8
    "select",                  // 9
    "select (no cases)",       // 10
    "GC assist wait",          // 11
    "GC sweep wait",           // 12
    "GC scavenge wait",        // 13
    "chan receive",            // 14
    "chan send",               // 15
    "finalizer wait",          // 16
    "force gc (idle)",         // 17
    "semacquire",              // 18
    "sleep",                   // 19
    "sync.Cond.Wait",          // 20
    "sync.Mutex.Lock",         // 21
    "sync.RWMutex.RLock",      // 22
    "sync.RWMutex.Lock",       // 23
    "trace reader (blocked)",  // 24
    "wait for GC cycle",       // 25
    "GC worker (idle)",        // 26
    "GC worker (active)",      // 27
    "preempted",               // 28
    "debug call",              // 29
    "GC mark termination",     // 30
    "stopping the world",      // 31
];

/// Go 1.22.
const GO_1_22: &[&str] = &[
    "",                        // 0
    "GC assist marking",       // 1
    "IO wait",                 // 2
    "chan receive (nil chan)", // 3
    "chan send (nil chan)",    // 4
    "dumping heap",            // 5
    "garbage collection",      // 6
    "garbage collection scan", // 7
    "panicwait",               // 8
    "select",                  // 9
    "select (no cases)",       // 10
    "GC assist wait",          // 11
    "GC sweep wait",           // 12
    "GC scavenge wait",        // 13
    "chan receive",            // 14
    "chan send",               // 15
    "finalizer wait",          // 16
    "force gc (idle)",         // 17
    "semacquire",              // 18
    "sleep",                   // 19
    "sync.Cond.Wait",          // 20
    "sync.Mutex.Lock",         // 21
    "sync.RWMutex.RLock",      // 22
    "sync.RWMutex.Lock",       // 23
    "trace reader (blocked)",  // 24
    "wait for GC cycle",       // 25
    "GC worker (idle)",        // 26
    "GC worker (active)",      // 27
    "preempted",               // 28
    "debug call",              // 29
    "GC mark termination",     // 30
    "stopping the world",      // 31
    "flushing proc caches",    // 32
    "trace goroutine status",  // 33
    "trace proc status",       // 34
    "page trace flush",        // 35
    "coroutine",               // 36
];

/// Go 1.23.
const GO_1_23: &[&str] = &[
    "",                        // 0
    "GC assist marking",       // 1
    "IO wait",                 // 2
    "chan receive (nil chan)", // 3
    "chan send (nil chan)",    // 4
    "dumping heap",            // 5
    "garbage collection",      // 6
    "garbage collection scan", // 7
    "panicwait",               // 8
    "select",                  // 9
    "select (no cases)",       // 10
    "GC assist wait",          // 11
    "GC sweep wait",           // 12
    "GC scavenge wait",        // 13
    "chan receive",            // 14
    "chan send",               // 15
    "finalizer wait",          // 16
    "force gc (idle)",         // 17
    "semacquire",              // 18
    "sleep",                   // 19
    "sync.Cond.Wait",          // 20
    "sync.Mutex.Lock",         // 21
    "sync.RWMutex.RLock",      // 22
    "sync.RWMutex.Lock",       // 23
    "trace reader (blocked)",  // 24
    "wait for GC cycle",       // 25
    "GC worker (idle)",        // 26
    "GC worker (active)",      // 27
    "preempted",               // 28
    "debug call",              // 29
    "GC mark termination",     // 30
    "stopping the world",      // 31
    "flushing proc caches",    // 32
    "trace goroutine status",  // 33
    "trace proc status",       // 34
    "page trace flush",        // 35
    "coroutine",               // 36
    "GC weak to strong wait",  // 37
];

/// Go 1.24.
const GO_1_24: &[&str] = &[
    "",                        // 0
    "GC assist marking",       // 1
    "IO wait",                 // 2
    "chan receive (nil chan)", // 3
    "chan send (nil chan)",    // 4
    "dumping heap",            // 5
    "garbage collection",      // 6
    "garbage collection scan", // 7
    "panicwait",               // 8
    "select",                  // 9
    "select (no cases)",       // 10
    "GC assist wait",          // 11
    "GC sweep wait",           // 12
    "GC scavenge wait",        // 13
    "chan receive",            // 14
    "chan send",               // 15
    "finalizer wait",          // 16
    "force gc (idle)",         // 17
    "semacquire",              // 18
    "sleep",                   // 19
    "sync.Cond.Wait",          // 20
    "sync.Mutex.Lock",         // 21
    "sync.RWMutex.RLock",      // 22
    "sync.RWMutex.Lock",       // 23
    "sync.WaitGroup.Wait",     // 24
    "trace reader (blocked)",  // 25
    "wait for GC cycle",       // 26
    "GC worker (idle)",        // 27
    "GC worker (active)",      // 28
    "preempted",               // 29
    "debug call",              // 30
    "GC mark termination",     // 31
    "stopping the world",      // 32
    "flushing proc caches",    // 33
    "trace goroutine status",  // 34
    "trace proc status",       // 35
    "page trace flush",        // 36
    "coroutine",               // 37
    "GC weak to strong wait",  // 38
    "synctest.Run",            // 39
    "synctest.Wait",           // 40
    "chan receive (synctest)", // 41
    "chan send (synctest)",    // 42
    "select (synctest)",       // 43
];

/// Go 1.25.
const GO_1_25: &[&str] = &[
    "",                              // 0
    "GC assist marking",             // 1
    "IO wait",                       // 2
    "chan receive (nil chan)",       // 3
    "chan send (nil chan)",          // 4
    "dumping heap",                  // 5
    "garbage collection",            // 6
    "garbage collection scan",       // 7
    "panicwait",                     // 8
    "select",                        // 9
    "select (no cases)",             // 10
    "GC assist wait",                // 11
    "GC sweep wait",                 // 12
    "GC scavenge wait",              // 13
    "chan receive",                  // 14
    "chan send",                     // 15
    "finalizer wait",                // 16
    "force gc (idle)",               // 17
    "GOMAXPROCS updater (idle)",     // 18
    "semacquire",                    // 19
    "sleep",                         // 20
    "sync.Cond.Wait",                // 21
    "sync.Mutex.Lock",               // 22
    "sync.RWMutex.RLock",            // 23
    "sync.RWMutex.Lock",             // 24
    "sync.WaitGroup.Wait",           // 25
    "trace reader (blocked)",        // 26
    "wait for GC cycle",             // 27
    "GC worker (idle)",              // 28
    "GC worker (active)",            // 29
    "preempted",                     // 30
    "debug call",                    // 31
    "GC mark termination",           // 32
    "stopping the world",            // 33
    "flushing proc caches",          // 34
    "trace goroutine status",        // 35
    "trace proc status",             // 36
    "page trace flush",              // 37
    "coroutine",                     // 38
    "GC weak to strong wait",        // 39
    "synctest.Run",                  // 40
    "synctest.Wait",                 // 41
    "chan receive (durable)",        // 42
    "chan send (durable)",           // 43
    "select (durable)",              // 44
    "sync.WaitGroup.Wait (durable)", // 45
    "cleanup wait",                  // 46
];

/// Go 1.26 and 1.27.
const GO_1_26: &[&str] = &[
    "",                              // 0
    "GC assist marking",             // 1
    "IO wait",                       // 2
    "dumping heap",                  // 3
    "garbage collection",            // 4
    "garbage collection scan",       // 5
    "panicwait",                     // 6
    "GC assist wait",                // 7
    "GC sweep wait",                 // 8
    "GC scavenge wait",              // 9
    "finalizer wait",                // 10
    "force gc (idle)",               // 11
    "GOMAXPROCS updater (idle)",     // 12
    "semacquire",                    // 13
    "sleep",                         // 14
    "chan receive (nil chan)",       // 15
    "chan send (nil chan)",          // 16
    "select (no cases)",             // 17
    "select",                        // 18
    "chan receive",                  // 19
    "chan send",                     // 20
    "sync.Cond.Wait",                // 21
    "sync.Mutex.Lock",               // 22
    "sync.RWMutex.RLock",            // 23
    "sync.RWMutex.Lock",             // 24
    "sync.WaitGroup.Wait",           // 25
    "trace reader (blocked)",        // 26
    "wait for GC cycle",             // 27
    "GC worker (idle)",              // 28
    "GC worker (active)",            // 29
    "preempted",                     // 30
    "debug call",                    // 31
    "GC mark termination",           // 32
    "stopping the world",            // 33
    "flushing proc caches",          // 34
    "trace goroutine status",        // 35
    "trace proc status",             // 36
    "page trace flush",              // 37
    "coroutine",                     // 38
    "GC weak to strong wait",        // 39
    "synctest.Run",                  // 40
    "synctest.Wait",                 // 41
    "chan receive (durable)",        // 42
    "chan send (durable)",           // 43
    "select (durable)",              // 44
    "sync.WaitGroup.Wait (durable)", // 45
    "cleanup wait",                  // 46
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_name_their_release() {
        assert_eq!(release("go1.19.8").unwrap().minor, 19);
        assert_eq!(release("go1.21rc2").unwrap().minor, 21);
        assert_eq!(release("go1.22.0 X:nocoverageredesign").unwrap().minor, 22);
        assert_eq!(release("go1.27.3").unwrap().offsets.m_curg, 184);
        assert!(release("go1.16.15").is_none());
        assert!(release("go1.28.0").is_none());
        assert!(release("devel go1.24-abcdef").is_none());
        assert!(release("go2").is_none());
    }

    #[test]
    fn every_list_starts_with_the_empty_reason_and_names_chan_receive() {
        for r in &RELEASES {
            assert_eq!(r.wait_reasons[0], "", "go1.{}", r.minor);
            assert!(r.wait_reasons.contains(&"chan receive"), "go1.{}", r.minor);
        }
    }
}
