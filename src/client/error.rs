//! The SDK's one error type: what went wrong, told apart the way callers
//! need to act on it (retry, re-list, give up).

use std::time::Duration;

use tonic::Code;
use tonic_types::StatusExt;

use super::config::ConfigError;
use super::transport::ConnectError;

/// Result of SDK calls.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why an SDK call failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The object does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The object exists already.
    #[error("{0}")]
    AlreadyExists(String),
    /// The object changed since it was read (stale resource version or
    /// failed precondition): read again and retry.
    #[error("{0}")]
    Conflict(String),
    /// The resource version is older than the server keeps: list again.
    #[error("{0}")]
    Expired(String),
    /// The server or its storage cannot answer now: retry later, after
    /// `retry_after` if the server said when.
    #[error("{message}")]
    Unavailable {
        /// The server's message.
        message: String,
        /// The server's `google.rpc.RetryInfo`, if it sent one.
        retry_after: Option<Duration>,
    },
    /// The request is invalid; `fields` names each bad field.
    #[error("{message}")]
    Invalid {
        /// The server's message.
        message: String,
        /// (field, description) of each violation.
        fields: Vec<(String, String)>,
    },
    /// Not allowed for this identity.
    #[error("{0}")]
    Forbidden(String),
    /// No or bad credentials.
    #[error("{0}")]
    Unauthenticated(String),
    /// The operation does not apply in the object's current state.
    #[error("{0}")]
    FailedPrecondition(String),
    /// A limit was exceeded; retrying after `retry_after`, if the server
    /// said when, may help.
    #[error("{message}")]
    ResourceExhausted {
        /// The server's message.
        message: String,
        /// The server's `google.rpc.RetryInfo`, if it sent one.
        retry_after: Option<Duration>,
    },
    /// Any other gRPC failure.
    #[error("{}: {}", .0.code(), .0.message())]
    Other(tonic::Status),
    /// The connection could not be opened.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
}

impl From<tonic::Status> for Error {
    fn from(s: tonic::Status) -> Self {
        let message = s.message().to_owned();
        let retry_after = || s.get_details_retry_info().and_then(|r| r.retry_delay);
        match s.code() {
            Code::NotFound => Error::NotFound(message),
            Code::AlreadyExists => Error::AlreadyExists(message),
            Code::Aborted => Error::Conflict(message),
            Code::OutOfRange => Error::Expired(message),
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => Error::Unavailable {
                message,
                retry_after: retry_after(),
            },
            Code::InvalidArgument => {
                let fields = s
                    .get_details_bad_request()
                    .map(|b| {
                        b.field_violations
                            .into_iter()
                            .map(|v| (v.field, v.description))
                            .collect()
                    })
                    .unwrap_or_default();
                Error::Invalid { message, fields }
            }
            Code::PermissionDenied => Error::Forbidden(message),
            Code::Unauthenticated => Error::Unauthenticated(message),
            Code::FailedPrecondition => Error::FailedPrecondition(message),
            Code::ResourceExhausted => Error::ResourceExhausted {
                message,
                retry_after: retry_after(),
            },
            _ => Error::Other(s),
        }
    }
}

impl Error {
    /// Whether the object was not found.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::NotFound(_))
    }

    /// Whether the write lost a compare-and-swap race.
    pub fn is_conflict(&self) -> bool {
        matches!(self, Error::Conflict(_))
    }

    /// Whether the caller must list again.
    pub fn is_expired(&self) -> bool {
        matches!(self, Error::Expired(_))
    }

    /// How long the server asked the caller to wait before retrying
    /// (`google.rpc.RetryInfo`), if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::Unavailable { retry_after, .. }
            | Error::ResourceExhausted { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// Whether retrying later may help.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Error::Unavailable { .. }
                | Error::ResourceExhausted { .. }
                | Error::Connect(_)
                | Error::Conflict(_)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes_map_to_what_callers_act_on() {
        assert!(Error::from(tonic::Status::not_found("x")).is_not_found());
        assert!(Error::from(tonic::Status::aborted("x")).is_conflict());
        assert!(Error::from(tonic::Status::out_of_range("x")).is_expired());
        assert!(Error::from(tonic::Status::unavailable("x")).is_transient());
        assert!(!Error::from(tonic::Status::invalid_argument("x")).is_transient());
    }

    #[test]
    fn the_servers_retry_info_is_kept() {
        let details = tonic_types::ErrorDetails::with_retry_info(Some(Duration::from_secs(3)));
        let status =
            tonic::Status::with_error_details(Code::ResourceExhausted, "too many", details);
        let e = Error::from(status);
        assert_eq!(e.retry_after(), Some(Duration::from_secs(3)));
        assert_eq!(e.to_string(), "too many");
        assert_eq!(
            Error::from(tonic::Status::unavailable("x")).retry_after(),
            None
        );
    }
}
