//! The waits' call sites as a flame graph: `waits.folded`, folded stacks (one line per
//! distinct stack, `cause;root;...;leaf MICROSECONDS`, the format flamegraph.pl, inferno and
//! speedscope read), and `waits.svg`, drawn from the same lines by `inferno`.
//!
//! The cause is the root frame, so the graph splits first by cause, then by call path.
//! Frame names are sanitized (`;` separates frames and a newline ends a line, so neither
//! may be in a name). Weights are whole microseconds, rounded per cause so that each
//! cause's lines add up to its total rounded once (largest remainders get the spare
//! microseconds); a stack under half a microsecond may get none, and is then left out.

use std::{collections::BTreeMap, sync::Arc};

use anyhow::{Context as _, Result};

use super::files::{write_file, Outcome, OutputDir, WAITS_FOLDED, WAITS_SVG};

/// The name given to an empty frame.
const UNKNOWN: &str = "[unknown]";

/// Time spent waiting in one cause at one call path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WaitStack {
    /// The cause (`lock`, `net_io`, ...): the root frame.
    pub cause: String,
    /// Function names from the root to the leaf (the waiting call).
    pub frames: Vec<String>,
    pub weight_ns: u64,
}

impl From<(String, Vec<String>, u64)> for WaitStack {
    /// `(cause, frames root → leaf, weight_ns)`.
    fn from((cause, frames, weight_ns): (String, Vec<String>, u64)) -> Self {
        WaitStack {
            cause,
            frames,
            weight_ns,
        }
    }
}

/// A frame name that cannot break the folded format: `;` becomes `:`, line breaks and
/// other control characters a space; an empty name is `[unknown]`.
pub fn sanitize(name: &str) -> String {
    let clean: String = name
        .chars()
        .map(|c| match c {
            ';' => ':',
            c if c.is_control() => ' ',
            c => c,
        })
        .collect();
    let clean = clean.trim();
    if clean.is_empty() {
        UNKNOWN.to_string()
    } else {
        clean.to_string()
    }
}

/// The folded lines, `cause;root;...;leaf MICROSECONDS`, sorted (so the same waits give the
/// same file). Identical stacks (after sanitizing) are merged.
pub fn folded_lines(stacks: &[WaitStack]) -> Vec<String> {
    // Cause → stack → ns; BTreeMaps keep the order deterministic.
    let mut by_cause: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    for stack in stacks {
        let cause = sanitize(&stack.cause);
        let mut key = cause.clone();
        for frame in &stack.frames {
            key.push(';');
            key.push_str(&sanitize(frame));
        }
        let ns = by_cause.entry(cause).or_default().entry(key).or_default();
        *ns = ns.saturating_add(stack.weight_ns);
    }
    let mut lines = Vec::new();
    for stacks in by_cause.values() {
        for (stack, us) in stacks.keys().zip(round_us(stacks.values().copied())) {
            if us > 0 {
                lines.push(format!("{stack} {us}"));
            }
        }
    }
    lines.sort();
    lines
}

/// Nanoseconds to whole microseconds whose sum is the total's rounding (largest
/// remainder; ties go to the earlier one).
fn round_us(ns: impl Iterator<Item = u64>) -> Vec<u64> {
    let ns: Vec<u64> = ns.collect();
    let total: u128 = ns.iter().map(|&n| u128::from(n)).sum();
    let target = ((total + 500) / 1000) as u64;
    let mut us: Vec<u64> = ns.iter().map(|n| n / 1000).collect();
    let floor: u64 = us.iter().sum();
    let mut order: Vec<usize> = (0..ns.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(ns[i] % 1000));
    for &i in order.iter().take(target.saturating_sub(floor) as usize) {
        us[i] += 1;
    }
    us
}

/// `waits.folded`'s content.
pub fn folded(stacks: &[WaitStack]) -> String {
    let mut out = String::new();
    for line in folded_lines(stacks) {
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// `waits.svg`'s content: the flame graph of [`folded_lines`], titled `title`. Colors come
/// from the function names, so the same waits draw the same picture.
pub fn svg(stacks: &[WaitStack], title: &str) -> Result<Vec<u8>> {
    let lines = folded_lines(stacks);
    let mut options = inferno::flamegraph::Options::default();
    options.title = title.to_string();
    options.count_name = "µs".to_string();
    options.name_type = "Function:".to_string();
    options.hash = true;
    options.deterministic = true;
    let mut svg = Vec::new();
    if lines.is_empty() {
        // inferno draws nothing without stacks; an empty graph still says what it is.
        options.subtitle = Some("no waits with a call stack were recorded".to_string());
        inferno::flamegraph::from_lines(&mut options, ["[no waits] 1"], &mut svg)
    } else {
        inferno::flamegraph::from_lines(&mut options, lines.iter().map(String::as_str), &mut svg)
    }
    .context("drawing the flame graph")?;
    Ok(svg)
}

/// Write `waits.folded` and `waits.svg` into `dir` (each under a fresh name, then renamed
/// into place: [`write_file`]). Returns what became of each.
pub fn write_waits(dir: &Arc<OutputDir>, stacks: &[WaitStack], title: &str) -> (Outcome, Outcome) {
    let folded = write_file(dir, WAITS_FOLDED, folded(stacks).as_bytes());
    let svg = match svg(stacks, title) {
        Ok(bytes) => write_file(dir, WAITS_SVG, &bytes),
        Err(e) => {
            eprintln!(
                "tracer: cannot write {}: {e:#}",
                dir.path().join(WAITS_SVG).display()
            );
            Outcome::NotWritten(format!("{e:#}"))
        }
    };
    (folded, svg)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use quick_xml::{events::Event, Reader};

    use super::*;

    fn stack(cause: &str, frames: &[&str], weight_ns: u64) -> WaitStack {
        WaitStack {
            cause: cause.to_string(),
            frames: frames.iter().map(|f| f.to_string()).collect(),
            weight_ns,
        }
    }

    fn sample() -> Vec<WaitStack> {
        vec![
            stack(
                "lock",
                &[
                    "main.main",
                    "main.auth.func1",
                    "sync.(*Mutex).lockSlow",
                    "sync.runtime_SemacquireMutex",
                    "runtime.semacquire1",
                    "runtime.gopark",
                ],
                12_345_678,
            ),
            stack(
                "lock",
                &["main.main", "main.waitLock", "sync.(*Mutex).Lock"],
                400,
            ),
            stack(
                "net_io",
                &["main.callBackend", "net.(*conn).Read"],
                2_000_999,
            ),
            stack(
                "net_io",
                &["main.callBackend", "net.(*conn).Read"],
                1_000_000,
            ),
            stack("disk_io", &["bad;name\nwith break", ""], 1_499),
            stack("sleep", &[], 7_777),
        ]
    }

    /// Each line is `frames weight`: frames split by `;` (none empty), a positive integer.
    fn parse(line: &str) -> (Vec<&str>, u64) {
        let (frames, weight) = line.rsplit_once(' ').expect("`frames weight`");
        let frames: Vec<&str> = frames.split(';').collect();
        assert!(frames.iter().all(|f| !f.is_empty()), "{line}");
        (frames, weight.parse().expect("an integer weight"))
    }

    #[test]
    fn folded_lines_have_the_cause_as_root_and_weights_that_add_up_per_cause() {
        let stacks = sample();
        let text = folded(&stacks);
        assert!(text.ends_with('\n'));
        let lines: Vec<&str> = text.lines().collect();
        let mut sorted = lines.clone();
        sorted.sort();
        assert_eq!(lines, sorted, "lines are sorted");
        let mut per_cause: BTreeMap<&str, u64> = BTreeMap::new();
        for line in &lines {
            let (frames, us) = parse(line);
            assert!(us > 0, "{line}");
            *per_cause.entry(frames[0]).or_default() += us;
        }
        let mut expected: BTreeMap<&str, u64> = BTreeMap::new();
        for s in &stacks {
            *expected.entry(s.cause.as_str()).or_default() += s.weight_ns;
        }
        for (cause, ns) in expected {
            let us = per_cause.get(cause).copied().unwrap_or(0) as f64;
            let want = ns as f64 / 1000.0;
            assert!(
                (us - want).abs() <= want * 0.01 + 0.5,
                "{cause}: {us} µs for {want} µs"
            );
        }
        // Identical stacks are merged; the 0.4 µs stack rounds to nothing and is left out.
        assert!(
            lines.contains(&"net_io;main.callBackend;net.(*conn).Read 3001"),
            "{text}"
        );
        assert!(!text.contains("main.waitLock"), "{text}");
        assert!(lines.contains(&"sleep 8"), "{text}");
        // Names that would break the format are cleaned.
        assert!(
            lines.contains(&"disk_io;bad:name with break;[unknown] 1"),
            "{text}"
        );
        assert_eq!(text, folded(&stacks), "the same waits give the same file");
    }

    #[test]
    fn rounding_keeps_each_cause_total() {
        // 300 stacks of 1.6 µs: rounding each alone would give 600 µs for 480.
        let stacks: Vec<WaitStack> = (0..300)
            .map(|i| stack("lock", &[&format!("f{i}")], 1_600))
            .collect();
        let total: u64 = folded_lines(&stacks).iter().map(|l| parse(l).1).sum();
        assert_eq!(total, 480);
    }

    #[test]
    fn the_svg_is_well_formed_and_names_the_functions() {
        let bytes = svg(&sample(), "Waits of go_service (pid 42)").unwrap();
        let text = String::from_utf8(bytes).unwrap();
        let mut reader = Reader::from_str(&text);
        let mut elements = 0;
        loop {
            match reader.read_event() {
                Ok(Event::Eof) => break,
                Ok(Event::Start(_) | Event::Empty(_)) => elements += 1,
                Ok(_) => {}
                Err(e) => panic!("not well-formed at {}: {e}", reader.buffer_position()),
            }
        }
        assert!(elements > 10, "{elements} elements");
        assert!(text.contains("<svg"));
        assert!(text.contains("Waits of go_service (pid 42)"));
        for name in [
            "lock",
            "net_io",
            "main.auth.func1",
            "runtime.gopark",
            "net.(*conn).Read",
        ] {
            assert!(text.contains(name), "{name} is not in the svg");
        }
        assert_eq!(
            text.into_bytes(),
            svg(&sample(), "Waits of go_service (pid 42)").unwrap()
        );
        let empty = String::from_utf8(svg(&[], "nothing").unwrap()).unwrap();
        assert!(empty.contains("no waits"), "{empty}");
    }

    #[test]
    fn both_files_are_written_through_the_safe_writer() {
        let dir = std::env::temp_dir().join(format!("tracer-flame-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        struct Remove(PathBuf);
        impl Drop for Remove {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
        let _remove = Remove(dir.clone());
        let out = Arc::new(OutputDir::open(&dir).unwrap());
        let (folded_outcome, svg_outcome) = write_waits(&out, &sample(), "waits");
        assert_eq!(folded_outcome, Outcome::Written);
        assert_eq!(svg_outcome, Outcome::Written);
        assert_eq!(
            std::fs::read_to_string(dir.join(WAITS_FOLDED)).unwrap(),
            folded(&sample())
        );
        assert!(std::fs::read_to_string(dir.join(WAITS_SVG))
            .unwrap()
            .contains("runtime.gopark"));
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, [WAITS_FOLDED, WAITS_SVG]);
    }
}
