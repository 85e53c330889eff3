//! Wait sites, resolved: the engine's tally of request time by cause and user stack
//! ([`crate::engine::sites`]) with each stack read from the kernel's stack maps and
//! symbolized (each distinct address once), for `summary.json`'s `wait_sites`, the console's
//! "where the time went" and the flame graph (`waits.folded`, `waits.svg`).

use std::{collections::BTreeMap, sync::Arc};

use rustc_hash::FxHashMap as HashMap;

use crate::{
    engine::{
        sites::{StackRef, WaitSites},
        Cause,
    },
    output::flame::WaitStack,
    symbols::{Frame, Symbolizer, UserStack},
};

/// Sites resolved per cause: the heaviest kept for the report, every kept one for the graph.
const SITES_PER_CAUSE: usize = 200;
/// Waker sites resolved per waiting site.
const WAKERS_PER_SITE: usize = 3;
/// The frame under which time with no stack is drawn.
pub const NO_STACK_FRAME: &str = "[no stack]";
/// The frame under which time at sites beyond the [`SITES_PER_CAUSE`] heaviest of a cause
/// is drawn: their stacks were taken, not named.
pub const LIGHTER_SITES_FRAME: &str = "[lighter sites: not named]";
/// The frame under which time that is not a blocking wait is drawn (on a CPU, a handshake:
/// no stack is taken for it).
pub const NOT_A_WAIT_FRAME: &str = "[not a blocking wait: no stack taken]";
/// The frame under which run-queue time with no site is drawn: the wait for a CPU after a
/// wakeup (its block has the site), or after a preemption whose stack was not taken.
pub const RUNQUEUE_NO_SITE_FRAME: &str = "[after a wakeup: no stack taken]";

/// One resolved site: its frames (leaf first), and the request time waited there.
#[derive(Clone, Debug, PartialEq)]
pub struct ResolvedSite {
    pub frames: Vec<Frame>,
    /// The stack may be cut short (code without frame pointers on the way).
    pub truncated: bool,
    pub total_ns: u64,
    pub count: u64,
    /// For a lock wait: where the threads or goroutines that woke it released the lock (the
    /// unlockers), most frequent first.
    pub woken_by: Vec<ResolvedWaker>,
}

/// Where a waker released what a site waited for.
#[derive(Clone, Debug, PartialEq)]
pub struct ResolvedWaker {
    pub frames: Vec<Frame>,
    pub truncated: bool,
    pub count: u64,
}

/// The sites of every cause, heaviest first, and what was not resolved.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ResolvedSites {
    /// Distinct addresses symbolized, and how long naming the sites took.
    pub addresses: usize,
    pub resolve_ms: f64,
    pub by_cause: BTreeMap<Cause, Vec<ResolvedSite>>,
    /// Per cause: waits at sites beyond those resolved (count, ns).
    pub not_listed: BTreeMap<Cause, (u64, u64)>,
    /// Per cause: waits whose stack was not taken or could not be read (count, ns).
    pub without_stack: BTreeMap<Cause, (u64, u64)>,
}

/// Reads a stack's addresses (innermost first) by id from the kernel's stack maps.
pub trait StackSource {
    fn addresses(&self, id: u32) -> Option<Vec<u64>>;
}

impl ResolvedSites {
    /// Resolve `sites`: each kept stack read from `stacks` and symbolized.
    pub fn resolve(
        sites: &WaitSites,
        stacks: &dyn StackSource,
        symbolizer: Option<&mut Symbolizer>,
    ) -> Self {
        let started = std::time::Instant::now();
        let mut symbolizer = symbolizer;
        let mut out = ResolvedSites::default();
        for cause in Cause::ALL {
            let (top, rest) = sites.top(cause, SITES_PER_CAUSE);
            let mut without = sites.without_stack(cause);
            let mut resolved = Vec::new();
            for (site, tally) in top {
                match stack_addresses(site, stacks) {
                    Some(addrs) => {
                        let (frames, truncated) = symbolize(&addrs, symbolizer.as_deref_mut());
                        let woken_by = sites
                            .wakers_of(site, WAKERS_PER_SITE)
                            .into_iter()
                            .filter_map(|(waker, t)| {
                                let addrs = stack_addresses(waker, stacks)?;
                                let (frames, truncated) =
                                    symbolize(&addrs, symbolizer.as_deref_mut());
                                Some(ResolvedWaker {
                                    frames,
                                    truncated,
                                    count: t.count,
                                })
                            })
                            .collect();
                        resolved.push(ResolvedSite {
                            frames,
                            truncated,
                            total_ns: tally.ns,
                            count: tally.count,
                            woken_by,
                        });
                    }
                    None => {
                        without.count += tally.count;
                        without.ns += tally.ns;
                    }
                }
            }
            if !resolved.is_empty() {
                out.by_cause.insert(cause, resolved);
            }
            if rest.count > 0 {
                out.not_listed.insert(cause, (rest.count, rest.ns));
            }
            if without.count > 0 {
                out.without_stack.insert(cause, (without.count, without.ns));
            }
        }
        out.addresses = symbolizer.map_or(0, |s| s.stats().addresses);
        out.resolve_ms = started.elapsed().as_secs_f64() * 1e3;
        out
    }

    /// The flame graph's stacks: every resolved site under its cause, and for each cause the
    /// rest of its request time (`totals`) under one frame that says why it has no site, so
    /// each cause weighs what it weighs in the requests.
    pub fn flame_stacks(&self, totals: &BTreeMap<Cause, u64>) -> Vec<WaitStack> {
        let mut stacks = Vec::new();
        for (&cause, &total) in totals {
            let sites = self.by_cause.get(&cause).map_or(&[][..], Vec::as_slice);
            let mut placed = 0u64;
            for site in sites {
                let weight = site.total_ns.min(total.saturating_sub(placed));
                placed += weight;
                stacks.push(WaitStack {
                    cause: cause.name().to_string(),
                    frames: root_to_leaf(site),
                    weight_ns: weight,
                });
            }
            let lighter = self
                .not_listed
                .get(&cause)
                .map_or(0, |&(_, ns)| ns)
                .min(total.saturating_sub(placed));
            // The cause's time at no named site, under one frame that says why.
            let unnamed = |frame: &str, weight_ns| WaitStack {
                cause: cause.name().to_string(),
                frames: vec![frame.to_string()],
                weight_ns,
            };
            if lighter > 0 {
                placed += lighter;
                stacks.push(unnamed(LIGHTER_SITES_FRAME, lighter));
            }
            let rest = total.saturating_sub(placed);
            if rest > 0 {
                let frame = if cause.is_blocking_wait() {
                    NO_STACK_FRAME
                } else if cause == Cause::Runqueue {
                    RUNQUEUE_NO_SITE_FRAME
                } else {
                    NOT_A_WAIT_FRAME
                };
                stacks.push(unnamed(frame, rest));
            }
        }
        stacks
    }
}

/// Stacks distinct per run that are named while tracing.
const MAX_NAMED_WHILE_TRACING: usize = 16_384;

/// One stack, named: its short name, its frames (innermost first, `function (file:line)`),
/// and whether frames may be missing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamedStack {
    pub site: String,
    pub frames: Vec<String>,
    pub truncated: bool,
}

/// The kernel's stack maps and the target's symbols, for the whole run: stacks named while
/// tracing (each slow request's largest wait in `requests.jsonl`), each distinct one once,
/// and every wait site at the end ([`SiteNamer::resolve`]).
pub struct SiteNamer {
    stacks: Option<Box<dyn StackSource>>,
    symbolizer: Option<Symbolizer>,
    named: HashMap<StackRef, Arc<NamedStack>>,
}

impl SiteNamer {
    /// `stacks` is `None` with `--stacks off`; `symbolizer` is `None` when the target's
    /// symbols could not be read (addresses are then printed as they are).
    pub fn new(stacks: Option<Box<dyn StackSource>>, symbolizer: Option<Symbolizer>) -> Self {
        SiteNamer {
            stacks,
            symbolizer,
            named: HashMap::default(),
        }
    }

    /// No stacks: nothing is named.
    pub fn none() -> Self {
        SiteNamer::new(None, None)
    }

    /// `site` named, or `None` when its stack is not in the map (or stacks are off).
    pub fn name(&mut self, site: StackRef) -> Option<Arc<NamedStack>> {
        if let Some(named) = self.named.get(&site) {
            return Some(named.clone());
        }
        let addrs = stack_addresses(site, self.stacks.as_deref()?)?;
        let (frames, truncated) = symbolize(&addrs, self.symbolizer.as_mut());
        let named = Arc::new(NamedStack {
            site: short_name(&frames),
            frames: frames.iter().map(frame_name).collect(),
            truncated,
        });
        if self.named.len() < MAX_NAMED_WHILE_TRACING {
            self.named.insert(site, named.clone());
        }
        Some(named)
    }

    /// Every site of `sites` read and named.
    pub fn resolve(&mut self, sites: &WaitSites) -> ResolvedSites {
        match &self.stacks {
            Some(stacks) => {
                ResolvedSites::resolve(sites, stacks.as_ref(), self.symbolizer.as_mut())
            }
            None => ResolvedSites::default(),
        }
    }
}

/// `function (file:line)`, or the function alone.
pub fn frame_name(f: &Frame) -> String {
    match f.location() {
        Some(at) => format!("{} ({at})", f.function),
        None => f.function.clone(),
    }
}

/// Function names from the root to the leaf, `[truncated]` first when cut short.
fn root_to_leaf(site: &ResolvedSite) -> Vec<String> {
    let mut names: Vec<String> = Vec::with_capacity(site.frames.len() + 1);
    if site.truncated {
        names.push("[truncated]".to_string());
    }
    names.extend(site.frames.iter().rev().map(|f| f.function.clone()));
    names
}

/// The addresses of `site`, innermost first: for a goroutine's park, the return address
/// the walk missed goes right after the probed instruction.
fn stack_addresses(site: StackRef, stacks: &dyn StackSource) -> Option<Vec<u64>> {
    let mut addrs = stacks.addresses(site.id)?;
    if site.caller != 0 && !addrs.is_empty() {
        addrs.insert(1, site.caller);
    }
    Some(addrs)
}

fn symbolize(addrs: &[u64], symbolizer: Option<&mut Symbolizer>) -> (Vec<Frame>, bool) {
    match symbolizer {
        Some(s) => {
            // The kernel walks frame pointers. Go keeps them everywhere; native code built
            // without them (libc, Rust's std, most distribution binaries) is skipped over
            // by the walk, so its stacks may miss frames: said, never guessed.
            let may_be_cut = !s.is_go();
            let stack = s.symbolize_stack(UserStack {
                addrs,
                first_is_pc: true,
                truncated: may_be_cut,
            });
            (stack.frames, stack.truncated)
        }
        None => (
            addrs
                .iter()
                .map(|a| Frame {
                    function: format!("{a:#x}"),
                    file: None,
                    line: None,
                    inlined: false,
                })
                .collect(),
            false,
        ),
    }
}

/// Frames of runtimes and libraries, skipped to find the code that waited: Go's runtime and
/// standard library, Rust's, libc's.
const LIBRARY_PREFIXES: &[&str] = &[
    "runtime.",
    "runtime/",
    "internal/",
    "sync.",
    "syscall.",
    "time.",
    "net.",
    "net/",
    "bufio.",
    "io.",
    "os.",
    "crypto/",
    "context.",
    "std::",
    "core::",
    "alloc::",
    "parking_lot",
    "__",
    "pthread_",
    "syscall",
    "futex",
    "[",
];

fn is_library(function: &str) -> bool {
    match function.strip_prefix('<') {
        // A Rust trait method, `<Type as Trait>::method`: the type's code. A library's or
        // a primitive's type (`<core::ops::range::Range<T> as ...>`, `<i32 as ...>`,
        // `<&T as ...>`) is a library's.
        Some(qualified) => {
            let self_type = qualified.split(" as ").next().unwrap_or(qualified);
            let self_type = self_type.trim_start_matches(['&', '*', '[', '(']);
            let self_type = self_type.strip_prefix("mut ").unwrap_or(self_type);
            !self_type.contains("::") || is_library(self_type)
        }
        None => LIBRARY_PREFIXES.iter().any(|p| function.starts_with(p)),
    }
}

/// `main.waitLock ← main.main.func3 (sync.(*Mutex).Lock)`: the innermost frame of the
/// target's own code, its caller, and the library call it waited in.
pub fn short_name(frames: &[Frame]) -> String {
    let Some(own) = frames.iter().position(|f| !is_library(&f.function)) else {
        return frames
            .first()
            .map_or_else(|| "[unknown]".to_string(), |f| f.function.clone());
    };
    let mut name = frames[own].function.clone();
    if let Some(caller) = frames.get(own + 1) {
        name.push_str(" ← ");
        name.push_str(&caller.function);
    }
    if own > 0 {
        name.push_str(&format!(" ({})", frames[own - 1].function));
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(function: &str) -> Frame {
        Frame {
            function: function.to_string(),
            file: None,
            line: None,
            inlined: false,
        }
    }

    struct Map;
    impl StackSource for Map {
        fn addresses(&self, id: u32) -> Option<Vec<u64>> {
            (id == 1).then(|| vec![0x10, 0x20])
        }
    }

    /// [`Map`], counting its reads.
    struct CountedMap(std::rc::Rc<std::cell::Cell<u32>>);
    impl StackSource for CountedMap {
        fn addresses(&self, id: u32) -> Option<Vec<u64>> {
            self.0.set(self.0.get() + 1);
            Map.addresses(id)
        }
    }

    #[test]
    fn a_stack_named_while_tracing_is_read_once() {
        let reads = std::rc::Rc::new(std::cell::Cell::new(0));
        let mut names = SiteNamer::new(Some(Box::new(CountedMap(reads.clone()))), None);
        let site = StackRef { id: 1, caller: 0 };
        let first = names.name(site).expect("in the map");
        assert_eq!(first.frames, ["0x10", "0x20"]);
        assert!(!first.truncated);
        assert_eq!(names.name(site), Some(first));
        assert_eq!(reads.get(), 1, "named once");
        assert_eq!(
            names.name(StackRef { id: 9, caller: 0 }),
            None,
            "not in the map"
        );
        assert_eq!(SiteNamer::none().name(site), None, "stacks off");
    }

    #[test]
    fn a_site_is_named_by_the_targets_own_code() {
        let frames: Vec<Frame> = [
            "runtime.gopark",
            "runtime.semacquire1",
            "sync.(*Mutex).Lock",
            "main.waitLock",
            "main.main.func3",
            "net/http.HandlerFunc.ServeHTTP",
        ]
        .map(frame)
        .to_vec();
        assert_eq!(
            short_name(&frames),
            "main.waitLock ← main.main.func3 (sync.(*Mutex).Lock)"
        );
        assert_eq!(short_name(&[frame("runtime.gopark")]), "runtime.gopark");
        // Rust: generic library code instantiated in the program is still the library's.
        let frames: Vec<Frame> = [
            "<i32 as core::iter::range::Step>::forward_unchecked",
            "<core::ops::range::Range<T> as core::iter::range::RangeIteratorImpl>::spec_next",
            "workload::server::spin",
            "workload::server::Connection::route::{{closure}}",
        ]
        .map(frame)
        .to_vec();
        assert_eq!(
            short_name(&frames),
            "workload::server::spin ← workload::server::Connection::route::{{closure}} \
             (<core::ops::range::Range<T> as core::iter::range::RangeIteratorImpl>::spec_next)"
        );
        assert!(!is_library("<workload::Conn as core::fmt::Debug>::fmt"));
        assert!(is_library("<&mut T as core::fmt::Debug>::fmt"));
        assert!(is_library("runtime/internal/syscall.Syscall6"));
    }

    #[test]
    fn each_cause_weighs_its_total_in_the_graph() {
        let mut sites = WaitSites::default();
        sites.add(
            Cause::Lock,
            Some(StackRef {
                id: 1,
                caller: 0x15,
            }),
            700,
        );
        sites.add(Cause::Lock, Some(StackRef { id: 9, caller: 0 }), 50); // not in the map
        sites.add(Cause::Lock, None, 20);
        let resolved = ResolvedSites::resolve(&sites, &Map, None);
        let lock = &resolved.by_cause[&Cause::Lock];
        assert_eq!(lock.len(), 1);
        let addrs: Vec<&str> = lock[0].frames.iter().map(|f| f.function.as_str()).collect();
        assert_eq!(addrs, ["0x10", "0x15", "0x20"], "the missed caller second");
        assert_eq!(resolved.without_stack[&Cause::Lock], (2, 70));

        let totals = BTreeMap::from([(Cause::Lock, 1000), (Cause::OnCpu, 300)]);
        let stacks = resolved.flame_stacks(&totals);
        let weight = |cause: Cause| -> u64 {
            stacks
                .iter()
                .filter(|s| s.cause == cause.name())
                .map(|s| s.weight_ns)
                .sum()
        };
        assert_eq!(weight(Cause::Lock), 1000);
        assert_eq!(weight(Cause::OnCpu), 300);
        assert!(stacks
            .iter()
            .any(|s| s.frames == [NOT_A_WAIT_FRAME] && s.cause == "on_cpu"));
        assert!(stacks
            .iter()
            .any(|s| s.frames == [NO_STACK_FRAME] && s.cause == "lock" && s.weight_ns == 300));

        // Time at sites beyond the resolved ones is drawn as such, not as time without a stack.
        let beyond = ResolvedSites {
            not_listed: BTreeMap::from([(Cause::Lock, (4, 200))]),
            ..resolved
        };
        let stacks = beyond.flame_stacks(&totals);
        let drawn = |frame: &str| -> u64 {
            stacks
                .iter()
                .filter(|s| s.cause == "lock" && s.frames == [frame])
                .map(|s| s.weight_ns)
                .sum()
        };
        assert_eq!(
            (drawn(LIGHTER_SITES_FRAME), drawn(NO_STACK_FRAME)),
            (200, 100)
        );
    }
}
