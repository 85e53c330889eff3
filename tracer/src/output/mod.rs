//! What the operator gets: aggregates of finished requests, the live table and final console
//! summary, and the files (`summary.json`, `latency.hlog`, `requests.jsonl`), written safely
//! into the output directory.

pub mod aggregate;
pub mod console;
pub mod files;
pub mod flame;
pub mod hlog;
pub mod jsonl;
pub mod live;
pub mod sites;
pub mod summary;

pub use files::{OutputDir, HLOG, REQUESTS, SUMMARY, WAITS_FOLDED, WAITS_SVG};
