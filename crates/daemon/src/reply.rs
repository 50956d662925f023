//! Replies the socket API gives when a request fails.

use pagemesh_proto::{ErrorCode, Response};

use pagemesh_node::segment::IoError;

pub(crate) fn err(code: ErrorCode, message: impl Into<String>) -> Response {
    Response::Error {
        code,
        message: message.into(),
    }
}

pub(crate) fn io_err(e: IoError) -> Response {
    let code = match e {
        IoError::OutOfRange { .. } => ErrorCode::InvalidArgument,
        IoError::Poisoned { .. } => ErrorCode::Poisoned,
        IoError::Mapper { .. }
        | IoError::Memfd { .. }
        | IoError::Volume { .. }
        | IoError::WriteProtect { .. } => ErrorCode::Io,
        IoError::ReadOnly { .. } | IoError::PinLimit { .. } | IoError::PinUnsupported { .. } => {
            ErrorCode::InvalidArgument
        }
        IoError::Load { .. } => ErrorCode::Poisoned,
    };
    err(code, e.to_string())
}
