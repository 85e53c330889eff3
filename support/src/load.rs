//! The JSON line `workload load` prints at the end: read by the integration tests and by
//! the bench in xtask.

use serde::{Deserialize, Serialize};

/// Summary printed (as one JSON line) by `workload load`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoadResult {
    /// Requests answered with a 2xx status.
    pub requests: u64,
    /// Connect failures, I/O errors and non-2xx responses.
    pub errors: u64,
    pub duration_s: f64,
    pub rps: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_result_json() {
        let json = r#"{"requests":10,"errors":0,"duration_s":1.0,"rps":10.0,"p50_us":5.5,"p99_us":9.0,"max_us":9.5}"#;
        let r: LoadResult = serde_json::from_str(json).unwrap();
        assert_eq!((r.requests, r.errors), (10, 0));
        assert_eq!(serde_json::to_string(&r).unwrap(), json);
    }
}
