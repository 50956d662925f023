//! Reporting SIGBUS (a poisoned page) with the segment offset instead of dying silently.

use std::sync::atomic::{AtomicU64, Ordering};

static BASE: AtomicU64 = AtomicU64::new(0);
static LEN: AtomicU64 = AtomicU64::new(0);
/// Exit status used after a reported SIGBUS (128 + SIGBUS, as a shell would show it).
pub const SIGBUS_EXIT_CODE: i32 = 128 + libc::SIGBUS;

fn hex(mut v: u64, out: &mut [u8; 18]) -> &[u8] {
    let digits = b"0123456789abcdef";
    let mut i = out.len();
    loop {
        i -= 1;
        out[i] = digits[(v & 0xf) as usize];
        v >>= 4;
        if v == 0 {
            break;
        }
    }
    i -= 1;
    out[i] = b'x';
    i -= 1;
    out[i] = b'0';
    &out[i..]
}

extern "C" fn on_sigbus(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for an SA_SIGINFO handler; si_addr is defined
    // for SIGBUS. Only async-signal-safe calls (write, _exit) follow.
    let addr = unsafe { (*info).si_addr() } as u64;
    let base = BASE.load(Ordering::Relaxed);
    let len = LEN.load(Ordering::Relaxed);
    let mut buf = [0u8; 18];
    let write = |b: &[u8]| {
        // SAFETY: writing a valid buffer to stderr; write(2) is async-signal-safe.
        unsafe { libc::write(2, b.as_ptr().cast(), b.len()) };
    };
    if addr >= base && addr < base.saturating_add(len) {
        write(b"pagemesh: SIGBUS at segment offset ");
        write(hex((addr - base) & !4095, &mut buf));
        write(b": the page is poisoned (its data was lost or could not be read, or the daemon went away); see `pagemesh segment stat` and the daemon log\n");
    } else {
        write(b"pagemesh: SIGBUS at address ");
        write(hex(addr, &mut buf));
        write(b" (outside the segment mapping)\n");
    }
    // SAFETY: _exit is async-signal-safe and ends the process without running destructors.
    unsafe { libc::_exit(SIGBUS_EXIT_CODE) };
}

/// Install a process-wide SIGBUS handler that prints the segment offset of the faulting
/// address (relative to `[base, base+len)`) and exits with [`SIGBUS_EXIT_CODE`].
pub fn report_sigbus_for(base: u64, len: u64) -> std::io::Result<()> {
    BASE.store(base, Ordering::Relaxed);
    LEN.store(len, Ordering::Relaxed);
    // SAFETY: sigaction is a plain C struct for which all-zero is valid; the handler has the
    // SA_SIGINFO signature and only performs async-signal-safe operations.
    let rc = unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_sigbus as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGBUS, &sa, std::ptr::null_mut())
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
