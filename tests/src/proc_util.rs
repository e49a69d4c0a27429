//! Small helpers for the external processes the harness runs (private).

use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// The last `max` bytes of `text` (on a char boundary), for error messages.
pub(crate) fn tail(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut start = text.len().saturating_sub(max);
    while !text.is_char_boundary(start) {
        start = start.saturating_add(1);
    }
    text.get(start..).unwrap_or(text)
}

/// The file's contents (lossy UTF-8), or a note saying why it could not be read.
pub(crate) fn read_log(path: &Path) -> String {
    match std::fs::read(path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}

/// Stops `child` and its process group: SIGINT, up to 10 s for it to exit, then SIGKILL,
/// and reaps it. Nothing is done when it has already exited.
pub(crate) fn stop_group(child: &mut Child) {
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    let group = format!("-{}", child.id());
    let _ = Command::new("kill").args(["-INT", "--", &group]).status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
    let _ = child.wait();
}
