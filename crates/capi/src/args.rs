//! Checked conversions of C arguments: NULL and invalid values become a [`Failure`], never a
//! crash.

use std::ffi::{c_char, c_void, CStr};
use std::time::Duration;

use crate::status::{pagemesh_status, Failure};

/// The longest barrier or lock timeout a caller may ask for: one day.
pub(crate) const MAX_TIMEOUT_MS: u64 = 24 * 60 * 60 * 1000;

fn null(what: &str) -> Failure {
    Failure::new(
        pagemesh_status::PAGEMESH_ERR_NULL,
        format!("{what} is NULL"),
    )
}

/// A borrowed `&T` from a handle pointer.
///
/// # Safety
///
/// `p` is NULL or points to a live `T` that stays valid, and is not mutated through another
/// pointer, for `'a`.
pub(crate) unsafe fn handle<'a, T>(p: *const T, what: &str) -> Result<&'a T, Failure> {
    // SAFETY: non-NULL `p` points to a live `T` for `'a` (the caller's contract).
    unsafe { p.as_ref() }.ok_or_else(|| null(what))
}

/// A UTF-8 string from a C string.
///
/// # Safety
///
/// `p` is NULL or points to a NUL-terminated string that stays valid and unchanged for `'a`.
pub(crate) unsafe fn text<'a>(p: *const c_char, what: &str) -> Result<&'a str, Failure> {
    if p.is_null() {
        return Err(null(what));
    }
    // SAFETY: `p` is a NUL-terminated string valid for `'a` (the caller's contract).
    let s = unsafe { CStr::from_ptr(p) };
    s.to_str().map_err(|_| {
        Failure::new(
            pagemesh_status::PAGEMESH_ERR_INVALID,
            format!("{what} is not UTF-8: {}", s.to_string_lossy()),
        )
    })
}

/// Like [`text`], but NULL is allowed and gives `None`.
///
/// # Safety
///
/// As for [`text`].
pub(crate) unsafe fn optional_text<'a>(
    p: *const c_char,
    what: &str,
) -> Result<Option<&'a str>, Failure> {
    if p.is_null() {
        return Ok(None);
    }
    // SAFETY: the caller's contract, as for `text`.
    unsafe { text(p, what) }.map(Some)
}

fn check_len(len: usize, what: &str) -> Result<(), Failure> {
    if len > isize::MAX as usize {
        return Err(Failure::new(
            pagemesh_status::PAGEMESH_ERR_INVALID,
            format!("{what}: a length of {len} bytes is larger than any buffer"),
        ));
    }
    Ok(())
}

/// `len` bytes to read from `p`.
///
/// # Safety
///
/// `p` is NULL or points to `len` readable bytes that nothing writes for `'a`.
pub(crate) unsafe fn bytes<'a>(
    p: *const c_void,
    len: usize,
    what: &str,
) -> Result<&'a [u8], Failure> {
    if p.is_null() {
        return Err(null(what));
    }
    check_len(len, what)?;
    // SAFETY: `p` is non-NULL and points to `len` readable bytes not written for `'a` (the
    // caller's contract); `len` fits an isize (checked).
    Ok(unsafe { std::slice::from_raw_parts(p.cast::<u8>(), len) })
}

/// `len` bytes to write at `p`.
///
/// # Safety
///
/// `p` is NULL or points to `len` writable bytes that nothing else reads or writes for `'a`.
pub(crate) unsafe fn bytes_mut<'a>(
    p: *mut c_void,
    len: usize,
    what: &str,
) -> Result<&'a mut [u8], Failure> {
    if p.is_null() {
        return Err(null(what));
    }
    check_len(len, what)?;
    // SAFETY: `p` is non-NULL and points to `len` writable bytes used by nothing else for
    // `'a` (the caller's contract); `len` fits an isize (checked).
    Ok(unsafe { std::slice::from_raw_parts_mut(p.cast::<u8>(), len) })
}

/// Check that a pointer is not NULL (an output pointer before anything the call cannot undo).
pub(crate) fn not_null<T>(p: *mut T, what: &str) -> Result<(), Failure> {
    if p.is_null() {
        return Err(null(what));
    }
    Ok(())
}

/// Store `v` through an output pointer that may be NULL (then the value is not wanted).
///
/// # Safety
///
/// `p` is NULL or valid for writing a `T`.
pub(crate) unsafe fn store_optional<T>(p: *mut T, v: T) {
    if !p.is_null() {
        // SAFETY: `p` is non-NULL and valid for writing a `T` (the caller's contract).
        unsafe { p.write(v) };
    }
}

/// A timeout in milliseconds, at most [`MAX_TIMEOUT_MS`].
pub(crate) fn timeout(ms: u64) -> Result<Duration, Failure> {
    if ms > MAX_TIMEOUT_MS {
        return Err(Failure::new(
            pagemesh_status::PAGEMESH_ERR_INVALID,
            format!("a timeout of {ms} ms is over the limit of {MAX_TIMEOUT_MS} ms (one day)"),
        ));
    }
    Ok(Duration::from_millis(ms))
}
