//! tracefs: mounting it when missing, and reading tracepoint field offsets from `format` files.

use std::{fs, os::unix::fs::MetadataExt as _, path::Path};

use anyhow::{bail, Context as _, Result};

pub const TRACEFS: &str = "/sys/kernel/tracing";

/// Make sure tracefs is mounted at /sys/kernel/tracing and readable; returns true when this
/// call mounted it.
///
/// Mounting needs CAP_SYS_ADMIN. Once mounted, its directory is mode 0700 and its `id` and
/// `format` files 0440, owned by root: a tracer running as another user with CAP_BPF and
/// CAP_PERFMON also needs CAP_DAC_READ_SEARCH (or CAP_DAC_OVERRIDE) to read them (measured on
/// Linux 6.18; aya reads each tracepoint's `id` there to attach it).
pub fn ensure_mounted() -> Result<bool> {
    if is_mounted() {
        check_readable()?;
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
        if err.raw_os_error() == Some(libc::EPERM) {
            bail!("tracefs is not mounted, and mounting it at {TRACEFS} needs CAP_SYS_ADMIN: run tracer as root, or mount it first with `mount -t tracefs nodev {TRACEFS}`");
        }
        bail!("tracefs is not mounted and mounting it at {TRACEFS} failed ({err}); mount it with `mount -t tracefs nodev {TRACEFS}`");
    }
    Ok(true)
}

/// Mounted, as /proc/self/mountinfo says: a user without access to the directory cannot tell
/// an empty mount point from an unreadable tracefs.
fn is_mounted() -> bool {
    fs::read_to_string("/proc/self/mountinfo").is_ok_and(|m| tracefs_mounted_at(&m, TRACEFS))
        || Path::new(TRACEFS).join("events").is_dir()
}

/// Whether a `mountinfo` text has a tracefs mounted at `dir`. Lines look like
/// `36 25 0:12 / /sys/kernel/tracing rw,nosuid,relatime shared:15 - tracefs tracefs rw`:
/// the mount point is the fifth field, the filesystem type follows the ` - ` separator.
pub fn tracefs_mounted_at(mountinfo: &str, dir: &str) -> bool {
    mountinfo.lines().any(|line| {
        let Some((mount, fs)) = line.split_once(" - ") else {
            return false;
        };
        mount.split_whitespace().nth(4) == Some(dir)
            && fs.split_whitespace().next() == Some("tracefs")
    })
}

fn check_readable() -> Result<()> {
    let probe = Path::new(TRACEFS).join("events/sched/sched_switch/id");
    match fs::File::open(&probe) {
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            let how = fs::metadata(TRACEFS)
                .map(|m| format!("mode {:o}, owner uid {}", m.mode() & 0o7777, m.uid()))
                .unwrap_or_else(|_| "not searchable".to_string());
            bail!(
                "tracefs is mounted at {TRACEFS} but this process may not read it ({how}): \
                 reading tracepoint IDs and formats as a user other than its owner needs \
                 CAP_DAC_READ_SEARCH (or CAP_DAC_OVERRIDE); run tracer as root, or add \
                 CAP_DAC_READ_SEARCH"
            )
        }
        // A missing tracepoint is reported where it is used, by name.
        _ => Ok(()),
    }
}

/// Offset of `field` in the tracepoint `category:name`, from its tracefs format file.
pub fn field_offset(category: &str, name: &str, field: &str) -> Result<u32> {
    let path = Path::new(TRACEFS)
        .join("events")
        .join(category)
        .join(name)
        .join("format");
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "reading {}: is the tracepoint {category}:{name} missing from this kernel?",
            path.display()
        ),
        Err(e) => bail!("reading {}: {e}", path.display()),
    };
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
    fn tracefs_mount_is_found_in_mountinfo() {
        let mountinfo = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
36 25 0:12 / /sys/kernel/tracing rw,nosuid,relatime shared:15 - tracefs nodev rw
37 25 0:7 / /sys/kernel/debug rw,relatime shared:16 - debugfs debugfs rw
";
        assert!(tracefs_mounted_at(mountinfo, TRACEFS));
        assert!(!tracefs_mounted_at(mountinfo, "/sys/kernel/debug"));
        let other = "36 25 0:12 / /sys/kernel/tracing rw - tmpfs tmpfs rw\n";
        assert!(
            !tracefs_mounted_at(other, TRACEFS),
            "another filesystem there"
        );
        assert!(!tracefs_mounted_at("", TRACEFS));
    }

    #[test]
    fn missing_field_is_none() {
        assert_eq!(parse_offset(SCHED_SWITCH, "next_prio"), None);
        assert_eq!(parse_offset(SCHED_SWITCH, "pid"), None, "no suffix matches");
    }
}
