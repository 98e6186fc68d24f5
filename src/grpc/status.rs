//! `registry::Error` → gRPC `Status`: the code from the error's kind, the pipe's text as the
//! message (API.md, "Codes by message").

use tonic::{Code, Status};

use crate::registry::{Error, ErrorKind};

/// The gRPC code of an error kind.
pub fn code(kind: ErrorKind) -> Code {
    match kind {
        ErrorKind::InvalidArgument => Code::InvalidArgument,
        ErrorKind::NotFound => Code::NotFound,
        ErrorKind::AlreadyExists => Code::AlreadyExists,
        ErrorKind::PermissionDenied => Code::PermissionDenied,
        ErrorKind::FailedPrecondition => Code::FailedPrecondition,
        ErrorKind::ResourceExhausted => Code::ResourceExhausted,
        ErrorKind::Unavailable => Code::Unavailable,
        ErrorKind::Internal => Code::Internal,
    }
}

/// The status of a registry error.
pub fn status(error: Error) -> Status {
    Status::new(code(error.kind()), error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_the_pipe_texts() {
        let s = status(Error::SessionNotFound);
        assert_eq!(
            (s.code(), s.message()),
            (Code::NotFound, "session not found")
        );
        let s = status(Error::NoDrain);
        assert_eq!(s.code(), Code::FailedPrecondition);
        let s = status(Error::invalid("invalid priority"));
        assert_eq!(s.code(), Code::InvalidArgument);
    }
}
