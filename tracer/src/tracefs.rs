//! tracefs: mounting it when missing, and reading tracepoint field offsets from `format` files.

use std::{fs, path::Path};

use anyhow::{bail, Context as _, Result};

pub const TRACEFS: &str = "/sys/kernel/tracing";

/// Make sure tracefs is mounted at /sys/kernel/tracing; returns true when this call mounted it.
pub fn ensure_mounted() -> Result<bool> {
    if is_mounted() {
        return Ok(false);
    }
    let source = c"nodev";
    let target = c"/sys/kernel/tracing";
    let fstype = c"tracefs";
    // SAFETY: all pointers are valid NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        bail!("tracefs is not mounted and mounting it at {TRACEFS} failed ({err}); mount it with `mount -t tracefs nodev {TRACEFS}`");
    }
    Ok(true)
}

fn is_mounted() -> bool {
    Path::new(TRACEFS).join("events").is_dir()
}

/// Offset of `field` in the tracepoint `category:name`, from its tracefs format file.
pub fn field_offset(category: &str, name: &str, field: &str) -> Result<u32> {
    let path = Path::new(TRACEFS)
        .join("events")
        .join(category)
        .join(name)
        .join("format");
    let text = fs::read_to_string(&path).with_context(|| {
        format!(
            "reading {}: is the tracepoint {category}:{name} missing from this kernel?",
            path.display()
        )
    })?;
    parse_offset(&text, field).with_context(|| {
        format!(
            "tracepoint {category}:{name} has no field `{field}` in {}",
            path.display()
        )
    })
}

/// Parse `offset:N;` of the field named `field` out of a format file's text. Field lines look
/// like `\tfield:pid_t prev_pid;\toffset:24;\tsize:4;\tsigned:1;`.
pub fn parse_offset(format: &str, field: &str) -> Option<u32> {
    format.lines().find_map(|line| {
        let mut parts = line.trim().split(';').map(str::trim);
        let decl = parts.next()?.strip_prefix("field:")?;
        let name = decl.rsplit([' ', '*']).next()?;
        let name = name.split('[').next()?;
        if name != field {
            return None;
        }
        parts.find_map(|p| p.strip_prefix("offset:")?.parse().ok())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCHED_SWITCH: &str = "name: sched_switch
ID: 316
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:char prev_comm[16];\toffset:8;\tsize:16;\tsigned:0;
\tfield:pid_t prev_pid;\toffset:24;\tsize:4;\tsigned:1;
\tfield:long prev_state;\toffset:32;\tsize:8;\tsigned:1;
\tfield:pid_t next_pid;\toffset:56;\tsize:4;\tsigned:1;
\tfield:const char * filename;\toffset:64;\tsize:8;\tsigned:0;
";

    #[test]
    fn finds_offsets_of_plain_array_and_pointer_fields() {
        assert_eq!(parse_offset(SCHED_SWITCH, "prev_pid"), Some(24));
        assert_eq!(parse_offset(SCHED_SWITCH, "prev_state"), Some(32));
        assert_eq!(parse_offset(SCHED_SWITCH, "next_pid"), Some(56));
        assert_eq!(parse_offset(SCHED_SWITCH, "prev_comm"), Some(8));
        assert_eq!(parse_offset(SCHED_SWITCH, "filename"), Some(64));
    }

    #[test]
    fn missing_field_is_none() {
        assert_eq!(parse_offset(SCHED_SWITCH, "next_prio"), None);
        assert_eq!(parse_offset(SCHED_SWITCH, "pid"), None, "no suffix matches");
    }
}
