//! The exit codes a script can act on (README, "In scripts"): one per class of failure, from
//! the error a command ended with. Codes 64-78 follow BSD `sysexits.h`.

use std::process::ExitCode;

use pagemesh::{ClientError, ErrorCode};

/// Why a command failed, as its exit code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    /// A check failed (`memtest --verify`, `doctor`, `demo`).
    CheckFailed = 1,
    /// Any other error (a bug, a protocol mismatch).
    Error = 2,
    /// The command line or a value in it is wrong (`EX_USAGE`).
    Usage = 64,
    /// Data could not be read or written: poisoned pages, the backing's I/O (`EX_DATAERR`).
    Data = 65,
    /// No segment, volume or partition of that name (`EX_NOINPUT`).
    NotFound = 66,
    /// The daemon is not there: no socket, nobody listening (`EX_UNAVAILABLE`).
    Unavailable = 69,
    /// It exists already, or is in use (`EX_CANTCREAT`).
    Conflict = 73,
    /// Try again: the daemon is busy or did not answer in time (`EX_TEMPFAIL`).
    Retry = 75,
    /// Not allowed: the socket or the object is not this user's to use (`EX_NOPERM`).
    Permission = 77,
}

/// Return a [`Usage`] error from the calling function: `usage!("--offset {o} is past the end")`.
macro_rules! usage {
    ($($t:tt)*) => {
        return Err(crate::exit::Usage(format!($($t)*)).into())
    };
}

/// A command line that asks for nothing a command can do (checked by the command, not by the
/// parser): exits with [`Exit::Usage`].
#[derive(Debug)]
pub struct Usage(pub String);

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

impl Exit {
    pub fn code(self) -> ExitCode {
        ExitCode::from(self as u8)
    }

    /// The class of the error a command ended with.
    pub fn of(e: &anyhow::Error) -> Exit {
        for cause in e.chain() {
            if cause.is::<Usage>() {
                return Exit::Usage;
            }
            if cause.is::<crate::working_set::FormatError>() {
                return Exit::Data;
            }
            if let Some(c) = cause.downcast_ref::<ClientError>() {
                return Exit::of_client(c);
            }
            if let Some(io) = cause.downcast_ref::<std::io::Error>() {
                if io.kind() == std::io::ErrorKind::PermissionDenied {
                    return Exit::Permission;
                }
            }
        }
        Exit::Error
    }

    fn of_client(e: &ClientError) -> Exit {
        use std::io::ErrorKind as K;
        match e {
            ClientError::Connect { source, .. } => match source.kind() {
                K::PermissionDenied => Exit::Permission,
                K::NotFound | K::ConnectionRefused => Exit::Unavailable,
                _ => Exit::Retry,
            },
            ClientError::Timeout { .. } => Exit::Retry,
            ClientError::Daemon { code, .. } => match code {
                ErrorCode::NotFound => Exit::NotFound,
                ErrorCode::AlreadyExists | ErrorCode::InUse => Exit::Conflict,
                ErrorCode::PermissionDenied => Exit::Permission,
                ErrorCode::InvalidArgument => Exit::Usage,
                ErrorCode::Io | ErrorCode::Poisoned => Exit::Data,
                ErrorCode::TimedOut | ErrorCode::Busy | ErrorCode::Idle => Exit::Retry,
                ErrorCode::Protocol | ErrorCode::VersionMismatch | ErrorCode::Internal => {
                    Exit::Error
                }
            },
            ClientError::OutOfRange { .. } => Exit::Usage,
            ClientError::ReadOnly { .. } => Exit::Permission,
            ClientError::Backing { source, .. } if source.kind() == K::PermissionDenied => {
                Exit::Permission
            }
            // A backing file that is not there is a wrong argument (as when the daemon opened it).
            ClientError::Backing { source, .. } if source.kind() == K::NotFound => Exit::Usage,
            ClientError::Backing { .. } => Exit::Data,
            ClientError::Frame { .. } | ClientError::Unexpected { .. } => Exit::Error,
            ClientError::Attach { source, .. } if source.kind() == K::PermissionDenied => {
                Exit::Permission
            }
            ClientError::Attach { .. } => Exit::Error,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_class_of_error_has_its_code() {
        let daemon = |code| {
            anyhow::Error::from(ClientError::Daemon {
                code,
                message: "x".into(),
            })
            .context("segment stat")
        };
        assert_eq!(Exit::of(&daemon(ErrorCode::NotFound)), Exit::NotFound);
        assert_eq!(Exit::of(&daemon(ErrorCode::AlreadyExists)), Exit::Conflict);
        assert_eq!(Exit::of(&daemon(ErrorCode::Busy)), Exit::Retry);
        assert_eq!(Exit::of(&daemon(ErrorCode::Poisoned)), Exit::Data);
        let refused = ClientError::Connect {
            path: "/x".into(),
            source: std::io::ErrorKind::ConnectionRefused.into(),
        };
        assert_eq!(Exit::of(&refused.into()), Exit::Unavailable);
        assert_eq!(Exit::of(&anyhow::anyhow!("a bug")), Exit::Error);
    }
}
