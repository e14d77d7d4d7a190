//! stderr, shared by a status line and messages.
//!
//! On a terminal the status line is redrawn in place and has no newline, so whatever is
//! printed next must end it first, or it lands on the same line. Anywhere else (a CI log, a
//! pipe, a guest's serial port read into a file) a carriage return erases nothing: there the
//! status goes out as whole lines, and seldom.

use std::{
    io::{IsTerminal as _, Write as _},
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

/// stderr is one per process, so whether a status line is open is too.
static OPEN: AtomicBool = AtomicBool::new(false);

/// A terminal a person watches. A serial console without `TERM` (a guest's, a CI runner's)
/// is a tty too, but what it shows is read later as a log.
fn watched() -> bool {
    std::io::stderr().is_terminal()
        && std::env::var("TERM").is_ok_and(|t| !t.is_empty() && t != "dumb")
}

/// How often a caller should refresh the status line.
pub fn status_every() -> Duration {
    if watched() { Duration::from_millis(500) } else { Duration::from_secs(5) }
}

/// Shows `line` as the status: in place on a terminal, else as a line of its own.
pub fn status(line: &str) {
    if watched() {
        // Erase to the end of the line: the new status may be shorter than the old one.
        write_once(&format!("\rploop-verify: {line}\x1b[K"));
        OPEN.store(true, Ordering::Relaxed);
    } else {
        write_once(&format!("ploop-verify: {line}\n"));
    }
}

/// Ends an open status line, so that the next output starts on a line of its own.
pub fn end_status() {
    if OPEN.swap(false, Ordering::Relaxed) {
        write_once("\n");
    }
}

/// One write, so that a line is not split among other processes writing to the same place
/// (a workload's own messages).
pub fn write_once(text: &str) {
    let mut err = std::io::stderr().lock();
    let _ = err.write_all(text.as_bytes());
    let _ = err.flush();
}

/// `eprintln!` that first ends an open status line and writes the line in one piece.
macro_rules! say {
    ($($arg:tt)*) => {{
        $crate::console::end_status();
        $crate::console::write_once(&format!("{}\n", format_args!($($arg)*)));
    }};
}
pub(crate) use say;
