//! The boundary every entry point goes through: the thread's last error message, and no
//! panic crossing into C.

use std::cell::RefCell;
use std::ffi::{c_char, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::status::{pagemesh_status, Failure};

thread_local! {
    /// The message of the last failed call on this thread; empty after a call that succeeded.
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_last_error(message: &str) {
    // A C string ends at its first NUL: keep the rest of a message that holds one.
    let text = CString::new(message.replace('\0', "\\0")).expect("NULs were replaced");
    // Only fails while the thread is being torn down, when nobody can read it any more.
    let _ = LAST_ERROR.try_with(|e| *e.borrow_mut() = text);
}

/// Run an entry point's body: clear the thread's last error, run `body` with panics caught,
/// and on failure record its message and return `fail(status)`.
pub(crate) fn call<T>(
    fail: impl FnOnce(pagemesh_status) -> T,
    body: impl FnOnce() -> Result<T, Failure>,
) -> T {
    set_last_error("");
    // AssertUnwindSafe: after a panic nothing of `body`'s state is used again; the handles it
    // touched stay usable (the client library recovers its poisoned locks).
    let result = catch_unwind(AssertUnwindSafe(body)).unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".to_string());
        Err(Failure::new(
            pagemesh_status::PAGEMESH_ERR_INTERNAL,
            format!("internal error in libpagemesh (a bug, please report it): {what}"),
        ))
    });
    match result {
        Ok(v) => v,
        Err(f) => {
            set_last_error(&f.message);
            fail(f.status)
        }
    }
}

/// [`call`] for an entry point that returns only a status.
pub(crate) fn status(body: impl FnOnce() -> Result<(), Failure>) -> pagemesh_status {
    call(|s| s, || body().map(|()| pagemesh_status::PAGEMESH_OK))
}

/// The message of the last failed pagemesh call on this thread: what failed, and what to do.
/// An empty string if the last call succeeded. Never NULL.
///
/// Ownership: the string belongs to the library; do not free it. It stays valid until the
/// next pagemesh call on the same thread (copy it to keep it).
#[no_mangle]
pub extern "C" fn pagemesh_last_error() -> *const c_char {
    catch_unwind(|| {
        LAST_ERROR
            .try_with(|e| e.borrow().as_ptr())
            .unwrap_or(c"".as_ptr())
    })
    .unwrap_or(c"".as_ptr())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CStr;

    fn last() -> String {
        // SAFETY: pagemesh_last_error returns a NUL-terminated string valid until the next
        // call on this thread; it is copied at once.
        unsafe { CStr::from_ptr(pagemesh_last_error()) }
            .to_string_lossy()
            .into_owned()
    }

    #[test]
    fn a_panic_becomes_an_internal_error_with_its_message() {
        let s = status(|| panic!("boom at page 7"));
        assert_eq!(s, pagemesh_status::PAGEMESH_ERR_INTERNAL);
        assert!(last().contains("boom at page 7"), "{}", last());
        // A value-returning entry point gives its error value.
        let v: u64 = call(|_| 0, || panic!("{}", String::from("formatted")));
        assert_eq!(v, 0);
        assert!(last().contains("formatted"), "{}", last());
    }

    #[test]
    fn success_clears_the_message_and_failure_sets_it() {
        let s = status(|| {
            Err(Failure::new(
                pagemesh_status::PAGEMESH_ERR_NOT_FOUND,
                "no segment \"x\"\0tail",
            ))
        });
        assert_eq!(s, pagemesh_status::PAGEMESH_ERR_NOT_FOUND);
        assert_eq!(last(), "no segment \"x\"\\0tail");
        assert_eq!(status(|| Ok(())), pagemesh_status::PAGEMESH_OK);
        assert_eq!(last(), "");
    }

    #[test]
    fn the_message_is_per_thread() {
        let _ = status(|| Err(Failure::new(pagemesh_status::PAGEMESH_ERR_IO, "here")));
        let there = std::thread::spawn(last).join().expect("thread");
        assert_eq!(there, "");
        assert_eq!(last(), "here");
    }
}
