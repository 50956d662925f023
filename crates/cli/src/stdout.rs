//! Everything the command prints on stdout goes through here (`outln!`, `write_bytes`), so that
//! a reader who stops reading (`pagemesh segment read big | head`) ends the output quietly:
//! lines printed after the pipe closed are dropped, a bulk copy stops with `StdoutClosed`,
//! and `main` turns that into exit 0 with nothing on stderr. Rust ignores SIGPIPE, so without
//! this `println!` would panic and `write_all` would fail with "Broken pipe".

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

/// Set once a write to stdout failed with a broken pipe: nothing more is written.
static CLOSED: AtomicBool = AtomicBool::new(false);

/// The reader of stdout went away; the command stops its output and exits 0.
#[derive(Debug)]
pub struct StdoutClosed;

impl std::fmt::Display for StdoutClosed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("stdout was closed by its reader")
    }
}

impl std::error::Error for StdoutClosed {}

/// Whether the reader of stdout went away.
pub fn closed() -> bool {
    CLOSED.load(Ordering::Relaxed)
}

/// Why a write to stdout failed: a closed pipe is remembered and becomes `StdoutClosed`; any
/// other error (a full disk behind a redirect) is returned as it is.
fn failed(e: std::io::Error) -> anyhow::Error {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        CLOSED.store(true, Ordering::Relaxed);
        anyhow::Error::new(StdoutClosed)
    } else {
        anyhow::Error::new(e).context("writing to stdout")
    }
}

/// One formatted line (what `outln!` expands to). After the reader went away the line is
/// dropped; another write error ends the command the way `println!` would.
pub fn line(args: std::fmt::Arguments<'_>) {
    if closed() {
        return;
    }
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.write_all(b"\n")) {
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            panic!("failed printing to stdout: {e}");
        }
        CLOSED.store(true, Ordering::Relaxed);
    }
}

/// Bulk bytes (segment contents): `StdoutClosed` once the reader went away, so the caller
/// stops producing them.
pub fn write_bytes(buf: &[u8]) -> anyhow::Result<()> {
    if closed() {
        return Err(StdoutClosed.into());
    }
    std::io::stdout().lock().write_all(buf).map_err(failed)
}

/// Flush what is buffered before the process ends; a closed pipe is not an error here.
pub fn flush() -> anyhow::Result<()> {
    if closed() {
        return Ok(());
    }
    match std::io::stdout().lock().flush().map_err(failed) {
        Err(e) if e.is::<StdoutClosed>() => Ok(()),
        r => r,
    }
}

/// `println!` through `stdout::line` (in scope in every module declared after this one).
macro_rules! outln {
    () => {
        crate::stdout::line(format_args!(""))
    };
    ($($arg:tt)*) => {
        crate::stdout::line(format_args!($($arg)*))
    };
}
