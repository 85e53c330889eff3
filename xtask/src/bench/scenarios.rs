//! What the bench measures: each scenario's target, its load and its throughput target.

/// Targets the verdict is judged against.
pub const MAX_THROUGHPUT_LOSS_PCT: f64 = 5.0;
/// The TLS target: new-connection-per-request HTTPS.
pub const MAX_TLS_THROUGHPUT_LOSS_PCT: f64 = 7.0;
/// The target at a fixed request rate below capacity: no measurable loss (the traced server
/// must keep up with the offered rate as the untraced one does).
pub const MAX_FIXED_RATE_LOSS_PCT: f64 = 1.0;
/// Attaching (the tracer's start to its `attached` line) and stopping (SIGTERM to its exit,
/// every file written) each take at most this long, in seconds.
pub const MAX_ATTACH_OR_STOP_S: f64 = 1.0;

pub struct Scenario {
    pub name: &'static str,
    pub about: &'static str,
    pub target: Target,
    pub max_loss_pct: f64,
    /// Also trace each round with `--stacks off`, to measure what taking the stacks costs.
    pub compare_stacks: bool,
    /// Also run each round with libbpf-tools' `runqlat` and `syscount -L` attached instead
    /// of the tracer (see `tools`).
    pub compare_tools: bool,
    /// Also trace each round another way, paired with a baseline of its own.
    pub compare_variant: Option<Variant>,
}

/// Another way of running the tracer that a scenario measures beside the default.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    /// `--sample N` (the requests of one connection in N attributed): what sampling saves on
    /// a very hot server.
    Sampled(u32),
    /// `--goroutines off` (a Go target attributed per thread): what following its goroutines
    /// costs.
    ThreadsOnly,
}

impl Variant {
    /// The tracer's flags for it.
    pub fn args(self) -> Vec<String> {
        match self {
            Variant::Sampled(one_in) => vec!["--sample".into(), one_in.to_string()],
            Variant::ThreadsOnly => vec!["--goroutines".into(), "off".into()],
        }
    }

    /// Its name in the report's rows.
    pub fn label(self) -> String {
        match self {
            Variant::Sampled(one_in) => format!("tracer 1/{one_in}"),
            Variant::ThreadsOnly => "threads only".to_string(),
        }
    }

    /// Its output directories' stem.
    pub fn out_stem(self) -> &'static str {
        match self {
            Variant::Sampled(_) => "sampled",
            Variant::ThreadsOnly => "threads",
        }
    }
}

/// What a scenario loads.
pub enum Target {
    /// The workload server, with `workload load` on keep-alive connections (HTTPS when
    /// `https`).
    Workload {
        connections: u32,
        paths: &'static [&'static str],
        https: bool,
    },
    /// The workload server serving HTTPS (OpenSSL linked in), loaded by `openssl s_time`
    /// with these flags.
    WorkloadTls { client: &'static [&'static str] },
    /// The Go HTTPS test server (`tests/go/https_server.go`, crypto/tls), built with the
    /// system's Go, loaded by `openssl s_time` with these flags.
    GoTls { client: &'static [&'static str] },
    /// `openssl s_server` (libssl.so.3) with these flags, loaded by `openssl s_time`: a new
    /// TLS connection per request.
    OpenSsl {
        server: &'static [&'static str],
        client: &'static [&'static str],
    },
    /// The Go test service (`tests/go/go_service.go`, `net/http`, HTTP/1.1 keep-alive),
    /// built with the system's Go; the tracer follows its goroutines with uprobes on Go's
    /// scheduler.
    GoService(GoLoad),
    /// nginx, one process serving plain HTTP keep-alive, saturated by `wrk -t1` with this
    /// many connections.
    Nginx { connections: u32 },
}

/// The load on the Go test service.
pub enum GoLoad {
    /// `workload load`: requests back to back on keep-alive connections (saturating).
    Saturating {
        connections: u32,
        path: &'static str,
    },
    /// The bench's own client at a fixed request rate (see `load::paced`).
    FixedRate {
        connections: u32,
        path: &'static str,
        rate: u32,
    },
}

/// What the TLS uprobes' BPF time is counted per.
#[derive(Clone, Copy)]
pub enum UprobeCostUnit {
    /// Each request: keep-alive HTTPS, where only the handshake functions are probed.
    Request,
    /// Each handshake: a new TLS connection per request.
    Handshake,
}

impl UprobeCostUnit {
    pub fn name(self) -> &'static str {
        match self {
            UprobeCostUnit::Request => "request",
            UprobeCostUnit::Handshake => "handshake",
        }
    }
}

impl Target {
    /// What the TLS uprobes' cost is counted per; `None` for plain HTTP.
    pub fn uprobe_cost_unit(&self) -> Option<UprobeCostUnit> {
        match self {
            Target::Workload { https: false, .. } | Target::GoService(_) | Target::Nginx { .. } => {
                None
            }
            Target::Workload { https: true, .. } => Some(UprobeCostUnit::Request),
            Target::WorkloadTls { .. } | Target::GoTls { .. } | Target::OpenSsl { .. } => {
                Some(UprobeCostUnit::Handshake)
            }
        }
    }

    /// Whether the target is a Go program the tracer follows with its Go scheduler uprobes
    /// (their hits and BPF time per request are reported).
    pub fn go_scheduler(&self) -> bool {
        matches!(self, Target::GoService(_))
    }
}

pub const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "N",
        about: "one nginx process serving plain HTTP keep-alive, saturated by wrk -t1 -c32 (server and client on a CPU each)",
        target: Target::Nginx { connections: 32 },
        compare_stacks: false,
        compare_tools: true,
        compare_variant: Some(Variant::Sampled(10)),
        max_loss_pct: MAX_THROUGHPUT_LOSS_PCT,
    },
    Scenario {
        name: "A",
        about: "saturating keep-alive load on /, 8 connections",
        target: Target::Workload {
            connections: 8,
            paths: &["/"],
            https: false,
        },
        compare_stacks: true,
        compare_tools: true,
        // Its 8 connections: 1 in 10 would often pick none.
        compare_variant: Some(Variant::Sampled(4)),
        max_loss_pct: MAX_THROUGHPUT_LOSS_PCT,
    },
    Scenario {
        name: "B",
        about: "mixed load, /cpu?ms=1, 4 connections",
        target: Target::Workload {
            connections: 4,
            paths: &["/cpu?ms=1"],
            https: false,
        },
        compare_tools: false,
        compare_variant: None,
        compare_stacks: false,
        max_loss_pct: MAX_THROUGHPUT_LOSS_PCT,
    },
    Scenario {
        name: "E",
        about: "HTTPS against the workload server (libssl.so.3, uprobes), a new connection per request: s_time -new -www /",
        target: Target::WorkloadTls {
            client: &["-new", "-www", "/"],
        },
        compare_tools: false,
        compare_variant: None,
        compare_stacks: false,
        max_loss_pct: MAX_TLS_THROUGHPUT_LOSS_PCT,
    },
    Scenario {
        name: "G",
        about: "HTTPS keep-alive against the workload server (libssl.so.3; only handshakes are probed), 8 connections, /",
        target: Target::Workload {
            connections: 8,
            paths: &["/"],
            https: true,
        },
        compare_tools: false,
        compare_variant: None,
        compare_stacks: false,
        max_loss_pct: MAX_TLS_THROUGHPUT_LOSS_PCT,
    },
    Scenario {
        name: "F",
        about: "HTTPS against a Go net/http server (crypto/tls, uprobes at entry and RETs), a new connection per request: s_time -new -www /",
        target: Target::GoTls {
            client: &["-new", "-www", "/"],
        },
        compare_tools: false,
        compare_variant: None,
        compare_stacks: false,
        max_loss_pct: MAX_TLS_THROUGHPUT_LOSS_PCT,
    },
    Scenario {
        name: "H",
        about: "a Go net/http hello world (go_service.go's /, Go scheduler uprobes), saturating keep-alive load, 8 connections",
        target: Target::GoService(GoLoad::Saturating {
            connections: 8,
            path: "/",
        }),
        compare_tools: false,
        compare_variant: Some(Variant::ThreadsOnly),
        compare_stacks: true,
        max_loss_pct: MAX_THROUGHPUT_LOSS_PCT,
    },
    Scenario {
        name: "I",
        about: "Go mutex middleware at a fixed rate below capacity: go_service.go's /auth?ms=2 (a sync.Mutex held 2 ms per request, a backend dial), 200 req/s (about half its capacity here) on 8 keep-alive connections",
        target: Target::GoService(GoLoad::FixedRate {
            connections: 8,
            path: "/auth?ms=2",
            rate: 200,
        }),
        compare_tools: false,
        compare_variant: None,
        compare_stacks: true,
        max_loss_pct: MAX_FIXED_RATE_LOSS_PCT,
    },
    Scenario {
        name: "C",
        about: "HTTPS, a new connection per request: s_server -www (record framing), s_time -new -www /",
        target: Target::OpenSsl {
            server: &["-www"],
            client: &["-new", "-www", "/"],
        },
        compare_tools: false,
        compare_variant: None,
        compare_stacks: false,
        max_loss_pct: MAX_TLS_THROUGHPUT_LOSS_PCT,
    },
    Scenario {
        name: "D",
        about: "TLS handshakes only: s_server (SSL_accept, uprobes), s_time -new",
        target: Target::OpenSsl {
            server: &[],
            client: &["-new"],
        },
        compare_tools: false,
        compare_variant: None,
        compare_stacks: false,
        max_loss_pct: MAX_TLS_THROUGHPUT_LOSS_PCT,
    },
];

/// The scenarios named in `names` (any case), in the bench's order; all when `names` is
/// empty.
pub fn chosen(names: &[String]) -> impl Iterator<Item = &'static Scenario> + '_ {
    SCENARIOS
        .iter()
        .filter(move |s| names.is_empty() || names.iter().any(|n| n.eq_ignore_ascii_case(s.name)))
}
