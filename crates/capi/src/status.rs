//! What a call returns: `pagemesh_status`, and how each client-library error maps onto it.

use std::ffi::{c_char, c_int, CStr};

use pagemesh::{ClientError, ErrorCode};
use pagemesh_proto::FrameError;

/// What a pagemesh call returns: `PAGEMESH_OK` (0), or a negative error. After an error,
/// `pagemesh_last_error()` says what failed and what to do.
#[repr(i32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum pagemesh_status {
    /// Success.
    PAGEMESH_OK = 0,
    /// A pointer argument that may not be NULL was NULL. Nothing was done.
    PAGEMESH_ERR_NULL = -1,
    /// An argument is invalid: a string that is not UTF-8, a name or size the daemon refuses,
    /// a buffer that overlaps the segment's own mapping, a timeout over the limit, a barrier or
    /// lock on a daemon outside any cluster.
    PAGEMESH_ERR_INVALID = -2,
    /// The daemon cannot be reached, or the connection to it broke during the call (the next
    /// call on the client connects again).
    PAGEMESH_ERR_CONNECT = -3,
    /// No segment (or volume, or partition) of that name.
    PAGEMESH_ERR_NOT_FOUND = -4,
    /// A segment of that name exists already.
    PAGEMESH_ERR_EXISTS = -5,
    /// The byte range is outside the mapped segment (`pagemesh_read_at`, `pagemesh_write_at`:
    /// checked in this process). The calls whose range the daemon checks (segment I/O, pin,
    /// unpin) give `PAGEMESH_ERR_INVALID` for a range outside the segment.
    PAGEMESH_ERR_RANGE = -6,
    /// The daemon's I/O failed (the backing file, the catalog).
    PAGEMESH_ERR_IO = -7,
    /// The range holds poisoned pages (their data is lost; `pagemesh segment clear-poison`).
    PAGEMESH_ERR_POISONED = -8,
    /// A bounded wait ended: the daemon did not answer in time, or a barrier or lock was not
    /// reached within its timeout.
    PAGEMESH_ERR_TIMED_OUT = -9,
    /// The daemon answered something this library does not understand (version mismatch,
    /// malformed or unexpected reply).
    PAGEMESH_ERR_PROTOCOL = -10,
    /// Mapping the segment into this process failed (mmap, userfaultfd: run as root or give
    /// access to /dev/userfaultfd).
    PAGEMESH_ERR_ATTACH = -11,
    /// A bug: the daemon's internal error, or a panic caught inside this library.
    PAGEMESH_ERR_INTERNAL = -12,
    /// The daemon has too many connections (from this user, or in all): nothing was done; try
    /// again later.
    PAGEMESH_ERR_BUSY = -13,
    /// The segment is in use (attached by a process): nothing was done.
    PAGEMESH_ERR_IN_USE = -14,
    /// The caller may not do this (e.g. a file-backed segment by a user other than root).
    PAGEMESH_ERR_PERMISSION = -15,
}

use pagemesh_status::*;

/// What a segment is backed by (`pagemesh_segment_stat.backing`).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum pagemesh_backing {
    /// Anonymous memory: dormant pages read as zero.
    PAGEMESH_BACKING_ZERO = 0,
    /// A file: read on first access, dirty pages written back on sync.
    PAGEMESH_BACKING_FILE = 1,
    /// A read-only volume image; writes stay private to the writing process.
    PAGEMESH_BACKING_VOLUME = 2,
}

/// A failed call: its status and the message `pagemesh_last_error()` gives.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) status: pagemesh_status,
    pub(crate) message: String,
}

impl Failure {
    pub(crate) fn new(status: pagemesh_status, message: impl Into<String>) -> Failure {
        debug_assert_ne!(status, PAGEMESH_OK, "a failure has an error status");
        Failure {
            status,
            message: message.into(),
        }
    }
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Failure {
        let status = match &e {
            ClientError::Connect { .. } => PAGEMESH_ERR_CONNECT,
            ClientError::Frame { source, .. } => match source {
                FrameError::Closed | FrameError::Io(_) => PAGEMESH_ERR_CONNECT,
                FrameError::TooLarge(_) | FrameError::Malformed(_) => PAGEMESH_ERR_PROTOCOL,
            },
            ClientError::Timeout { .. } => PAGEMESH_ERR_TIMED_OUT,
            ClientError::Daemon { code, .. } => of_daemon(*code),
            ClientError::Unexpected { .. } => PAGEMESH_ERR_PROTOCOL,
            ClientError::Attach { .. } => PAGEMESH_ERR_ATTACH,
            ClientError::OutOfRange { .. } => PAGEMESH_ERR_RANGE,
            ClientError::ReadOnly { .. } => PAGEMESH_ERR_PERMISSION,
            ClientError::Backing { source, .. }
                if source.kind() == std::io::ErrorKind::PermissionDenied =>
            {
                PAGEMESH_ERR_PERMISSION
            }
            // A backing file that is not there is a wrong argument, as when the daemon opened it.
            ClientError::Backing { source, .. }
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                PAGEMESH_ERR_INVALID
            }
            ClientError::Backing { .. } => PAGEMESH_ERR_IO,
        };
        Failure::new(status, e.to_string())
    }
}

fn of_daemon(code: ErrorCode) -> pagemesh_status {
    match code {
        ErrorCode::NotFound => PAGEMESH_ERR_NOT_FOUND,
        ErrorCode::AlreadyExists => PAGEMESH_ERR_EXISTS,
        ErrorCode::InvalidArgument => PAGEMESH_ERR_INVALID,
        ErrorCode::Io => PAGEMESH_ERR_IO,
        ErrorCode::Poisoned => PAGEMESH_ERR_POISONED,
        ErrorCode::Protocol | ErrorCode::VersionMismatch => PAGEMESH_ERR_PROTOCOL,
        ErrorCode::Internal => PAGEMESH_ERR_INTERNAL,
        ErrorCode::TimedOut => PAGEMESH_ERR_TIMED_OUT,
        ErrorCode::Busy => PAGEMESH_ERR_BUSY,
        ErrorCode::InUse => PAGEMESH_ERR_IN_USE,
        ErrorCode::PermissionDenied => PAGEMESH_ERR_PERMISSION,
        // The client library sends the request again on a new connection; seen only if that
        // fails too.
        ErrorCode::Idle => PAGEMESH_ERR_CONNECT,
    }
}

/// The name of a status (`"PAGEMESH_ERR_NOT_FOUND"`, or `"unknown pagemesh status"` for a
/// number that is none). The string is static: never free it.
#[no_mangle]
pub extern "C" fn pagemesh_strerror(status: c_int) -> *const c_char {
    let name: &'static CStr = match status {
        0 => c"PAGEMESH_OK",
        -1 => c"PAGEMESH_ERR_NULL",
        -2 => c"PAGEMESH_ERR_INVALID",
        -3 => c"PAGEMESH_ERR_CONNECT",
        -4 => c"PAGEMESH_ERR_NOT_FOUND",
        -5 => c"PAGEMESH_ERR_EXISTS",
        -6 => c"PAGEMESH_ERR_RANGE",
        -7 => c"PAGEMESH_ERR_IO",
        -8 => c"PAGEMESH_ERR_POISONED",
        -9 => c"PAGEMESH_ERR_TIMED_OUT",
        -10 => c"PAGEMESH_ERR_PROTOCOL",
        -11 => c"PAGEMESH_ERR_ATTACH",
        -12 => c"PAGEMESH_ERR_INTERNAL",
        -13 => c"PAGEMESH_ERR_BUSY",
        -14 => c"PAGEMESH_ERR_IN_USE",
        -15 => c"PAGEMESH_ERR_PERMISSION",
        _ => c"unknown pagemesh status",
    };
    name.as_ptr()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_has_its_own_name() {
        let all = [
            PAGEMESH_OK,
            PAGEMESH_ERR_NULL,
            PAGEMESH_ERR_INVALID,
            PAGEMESH_ERR_CONNECT,
            PAGEMESH_ERR_NOT_FOUND,
            PAGEMESH_ERR_EXISTS,
            PAGEMESH_ERR_RANGE,
            PAGEMESH_ERR_IO,
            PAGEMESH_ERR_POISONED,
            PAGEMESH_ERR_TIMED_OUT,
            PAGEMESH_ERR_PROTOCOL,
            PAGEMESH_ERR_ATTACH,
            PAGEMESH_ERR_INTERNAL,
        ];
        for s in all {
            // SAFETY: pagemesh_strerror returns a static NUL-terminated string.
            let name = unsafe { CStr::from_ptr(pagemesh_strerror(s as c_int)) };
            assert_eq!(name.to_str().expect("ASCII"), format!("{s:?}"));
        }
        // SAFETY: as above.
        let unknown = unsafe { CStr::from_ptr(pagemesh_strerror(7)) };
        assert_eq!(unknown, c"unknown pagemesh status");
    }

    #[test]
    fn client_errors_map_to_their_class() {
        let daemon = |code| ClientError::Daemon {
            code,
            message: "m".into(),
        };
        let f = Failure::from(daemon(ErrorCode::NotFound));
        assert_eq!(
            (f.status, f.message.as_str()),
            (PAGEMESH_ERR_NOT_FOUND, "m")
        );
        assert_eq!(
            Failure::from(daemon(ErrorCode::VersionMismatch)).status,
            PAGEMESH_ERR_PROTOCOL
        );
        let range = ClientError::OutOfRange {
            offset: 1,
            len: 2,
            size: 2,
        };
        assert_eq!(Failure::from(range).status, PAGEMESH_ERR_RANGE);
        let closed = ClientError::Frame {
            path: "/s".into(),
            source: FrameError::Closed,
        };
        assert_eq!(Failure::from(closed).status, PAGEMESH_ERR_CONNECT);
    }
}
