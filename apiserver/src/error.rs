//! The API server's error type and its one conversion to `tonic::Status`.
//!
//! Every failure a request can meet ends up as an [`ApiError`]; the gRPC
//! boundary turns it into the status code DESIGN.md fixes, with
//! `google.rpc.BadRequest` naming each bad field, `ResourceInfo` naming the
//! object, and `RetryInfo` when trying again later can help.
//!
//! Owns the mapping to status codes; nothing else builds a `tonic::Status`
//! from an error.

use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::storage::StorageError;

/// One invalid field of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    /// JSON path of the field, e.g. `spec.containers[0].image`.
    pub field: String,
    /// What is wrong with it.
    pub description: String,
}

impl FieldViolation {
    /// A violation of `field`.
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            description: description.into(),
        }
    }
}

/// Why an API request failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The object does not exist.
    #[error("{kind} {name:?} not found")]
    NotFound {
        /// Kind of the object.
        kind: String,
        /// "namespace/name" or "name".
        name: String,
    },
    /// An object of that name exists already.
    #[error("{kind} {name:?} already exists")]
    AlreadyExists {
        /// Kind of the object.
        kind: String,
        /// "namespace/name" or "name".
        name: String,
    },
    /// A value the object asks for (a cluster IP, a node port) belongs to another object.
    #[error("{kind} {name:?}: {field}: {message}")]
    Allocated {
        /// Kind of the object.
        kind: String,
        /// "namespace/name" or "name".
        name: String,
        /// The field holding the value.
        field: String,
        /// What is taken, and by whom.
        message: String,
    },
    /// The object changed since the caller read it (stale resource_version
    /// or failed precondition on uid or version).
    #[error("{kind} {name:?}: {reason}")]
    Conflict {
        /// Kind of the object.
        kind: String,
        /// "namespace/name" or "name".
        name: String,
        /// What did not match.
        reason: String,
    },
    /// The request is invalid; each violation names a field.
    #[error("{}", invalid_message(kind, name, violations))]
    Invalid {
        /// Kind of the object (or of the request).
        kind: String,
        /// "namespace/name", "name" or empty.
        name: String,
        /// The invalid fields.
        violations: Vec<FieldViolation>,
    },
    /// The resource version is older than what is kept: re-list.
    #[error("{0}")]
    Expired(String),
    /// The operation does not apply to the object in its current state.
    #[error("{0}")]
    FailedPrecondition(String),
    /// A limit was exceeded; `retry_after` says when trying again may help.
    #[error("{message}")]
    ResourceExhausted {
        /// What was exceeded.
        message: String,
        /// When to retry, if retrying can help.
        retry_after: Option<Duration>,
    },
    /// Storage or the cache cannot answer now; retrying later may help.
    #[error("{message}")]
    Unavailable {
        /// What is unavailable.
        message: String,
        /// When to retry.
        retry_after: Option<Duration>,
    },
    /// Another component's answer (a kubelet's), relayed as it came.
    #[error("{message}")]
    Relayed {
        /// Its status code.
        code: Code,
        /// Its message.
        message: String,
    },
    /// The caller's credentials were missing or refused.
    #[error("{0}")]
    Unauthenticated(String),
    /// The caller may not do this.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// The method is not served.
    #[error("{0}")]
    Unimplemented(String),
    /// A server-side fault.
    #[error("internal error: {0}")]
    Internal(String),
}

/// `Pod "default/web" is invalid: …` for an object; `invalid Pod request: …`
/// when the request names none (a list, a watch, a pod's logs).
fn invalid_message(kind: &str, name: &str, violations: &[FieldViolation]) -> String {
    if name.is_empty() {
        format!("invalid {kind} request: {}", summarize(violations))
    } else {
        format!("{kind} {name:?} is invalid: {}", summarize(violations))
    }
}

fn summarize(violations: &[FieldViolation]) -> String {
    let mut s = violations
        .iter()
        .take(MAX_VIOLATIONS)
        .map(|v| {
            format!(
                "{}: {}",
                clip(&v.field, MAX_DESCRIPTION),
                clip(&v.description, MAX_DESCRIPTION)
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    if violations.len() > MAX_VIOLATIONS {
        s.push_str(&format!("; and {} more", violations.len() - MAX_VIOLATIONS));
    }
    s
}

impl ApiError {
    /// An invalid-request error with one violation.
    pub fn invalid(kind: &str, name: &str, field: &str, description: impl Into<String>) -> Self {
        Self::Invalid {
            kind: kind.to_owned(),
            name: name.to_owned(),
            violations: vec![FieldViolation::new(field, description)],
        }
    }

    /// Maps a storage error about object `name` of `kind`.
    pub fn from_storage(kind: &str, name: &str, e: StorageError) -> Self {
        match e {
            StorageError::NotFound { .. } => Self::NotFound {
                kind: kind.to_owned(),
                name: name.to_owned(),
            },
            StorageError::AlreadyExists { .. } => Self::AlreadyExists {
                kind: kind.to_owned(),
                name: name.to_owned(),
            },
            StorageError::Conflict { .. } => Self::Conflict {
                kind: kind.to_owned(),
                name: name.to_owned(),
                reason: "the object has been modified; read it again and retry".into(),
            },
            StorageError::Compacted { requested, .. } => Self::Expired(format!(
                "resource version {requested} is too old for {kind}; list again"
            )),
            StorageError::FutureRevision { requested, .. } => Self::Unavailable {
                message: format!("resource version {requested} is not reached yet; retry"),
                retry_after: Some(Duration::from_secs(1)),
            },
            StorageError::Unavailable(source) => Self::Unavailable {
                message: format!("storage unavailable: {source}"),
                retry_after: Some(Duration::from_secs(1)),
            },
            StorageError::Corrupt { key, reason } => {
                Self::Internal(format!("stored data for {key} is corrupt: {reason}"))
            }
        }
    }
}

/// Most bytes of a status message: it travels in an HTTP/2 trailer, and a
/// client refuses (resets the call) trailers over its header list limit
/// (16 KiB in hyper), so a request that quotes huge values back fails
/// with a protocol error instead of its own.
const MAX_MESSAGE: usize = 2048;
/// Most violations carried in the details, and bytes of each.
const MAX_VIOLATIONS: usize = 20;
const MAX_DESCRIPTION: usize = 256;

/// `s` cut to at most `max` bytes on a character boundary, marked when cut.
fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!(
        "{}… ({} bytes in all)",
        s.get(..end).unwrap_or_default(),
        s.len()
    )
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Status {
        let message = clip(&e.to_string(), MAX_MESSAGE);
        match e {
            ApiError::NotFound { kind, name } => {
                with_resource(Code::NotFound, message, &kind, &name)
            }
            ApiError::AlreadyExists { kind, name } => {
                with_resource(Code::AlreadyExists, message, &kind, &name)
            }
            ApiError::Conflict { kind, name, .. } => {
                with_resource(Code::Aborted, message, &kind, &name)
            }
            ApiError::Allocated {
                field, message: m, ..
            } => {
                let mut details = ErrorDetails::new();
                details.add_bad_request_violation(field, m);
                Status::with_error_details(Code::AlreadyExists, message, details)
            }
            ApiError::Invalid { violations, .. } => {
                let mut details = ErrorDetails::new();
                for v in violations.iter().take(MAX_VIOLATIONS) {
                    details.add_bad_request_violation(
                        clip(&v.field, MAX_DESCRIPTION),
                        clip(&v.description, MAX_DESCRIPTION),
                    );
                }
                Status::with_error_details(Code::InvalidArgument, message, details)
            }
            ApiError::Expired(_) => Status::new(Code::OutOfRange, message),
            ApiError::FailedPrecondition(_) => Status::new(Code::FailedPrecondition, message),
            ApiError::ResourceExhausted { retry_after, .. } => {
                with_retry(Code::ResourceExhausted, message, retry_after)
            }
            ApiError::Unavailable { retry_after, .. } => {
                with_retry(Code::Unavailable, message, retry_after)
            }
            ApiError::Relayed { code, .. } => Status::new(code, message),
            ApiError::Unauthenticated(_) => Status::new(Code::Unauthenticated, message),
            ApiError::Forbidden(_) => Status::new(Code::PermissionDenied, message),
            ApiError::Unimplemented(_) => Status::new(Code::Unimplemented, message),
            ApiError::Internal(_) => Status::new(Code::Internal, message),
        }
    }
}

/// A status as `google.rpc.Status` (for errors carried inside a response,
/// one per item), its details (BadRequest, RetryInfo…) kept.
pub fn rpc_status(status: &Status) -> tonic_types::Status {
    let details = <tonic_types::Status as prost::Message>::decode(status.details())
        .map(|s| s.details)
        .unwrap_or_default();
    tonic_types::Status {
        code: status.code() as i32,
        message: status.message().to_owned(),
        details,
    }
}

fn with_resource(code: Code, message: String, kind: &str, name: &str) -> Status {
    let details = ErrorDetails::with_resource_info(kind, name, "", "");
    Status::with_error_details(code, message, details)
}

fn with_retry(code: Code, message: String, retry_after: Option<Duration>) -> Status {
    match retry_after {
        Some(d) => {
            Status::with_error_details(code, message, ErrorDetails::with_retry_info(Some(d)))
        }
        None => Status::new(code, message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_quoting_huge_values_stays_within_what_a_client_accepts_in_trailers() {
        let violations = (0..500)
            .map(|i| FieldViolation::new(format!("metadata.labels[{i}]"), "ü".repeat(5000)))
            .collect();
        let status = Status::from(ApiError::Invalid {
            kind: "Pod".into(),
            name: "default/web".into(),
            violations,
        });
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(
            status.message().len() < 3 * 1024,
            "{}",
            status.message().len()
        );
        let details = status.get_details_bad_request().unwrap();
        assert_eq!(details.field_violations.len(), MAX_VIOLATIONS);
        assert!(
            details
                .field_violations
                .iter()
                .all(|v| v.description.len() < 512)
        );
        assert!(
            status.details().len() < 16 * 1024,
            "{}",
            status.details().len()
        );
    }

    #[test]
    fn invalid_maps_to_invalid_argument_with_bad_request_fields() {
        let e = ApiError::Invalid {
            kind: "Pod".into(),
            name: "default/x".into(),
            violations: vec![
                FieldViolation::new("metadata.name", "bad"),
                FieldViolation::new("spec.containers", "required"),
            ],
        };
        let s: Status = e.into();
        assert_eq!(s.code(), Code::InvalidArgument);
        assert!(s.message().contains("metadata.name: bad"));
        let br = s.get_details_bad_request().expect("BadRequest detail");
        let fields: Vec<_> = br
            .field_violations
            .iter()
            .map(|v| v.field.as_str())
            .collect();
        assert_eq!(fields, ["metadata.name", "spec.containers"]);
    }

    #[test]
    fn each_error_has_its_design_code() {
        let cases: Vec<(ApiError, Code)> = vec![
            (
                ApiError::NotFound {
                    kind: "Pod".into(),
                    name: "a".into(),
                },
                Code::NotFound,
            ),
            (
                ApiError::AlreadyExists {
                    kind: "Pod".into(),
                    name: "a".into(),
                },
                Code::AlreadyExists,
            ),
            (
                ApiError::Conflict {
                    kind: "Pod".into(),
                    name: "a".into(),
                    reason: "stale".into(),
                },
                Code::Aborted,
            ),
            (ApiError::Expired("old".into()), Code::OutOfRange),
            (
                ApiError::Unauthenticated("no credentials".into()),
                Code::Unauthenticated,
            ),
            (
                ApiError::FailedPrecondition("terminating".into()),
                Code::FailedPrecondition,
            ),
            (
                ApiError::ResourceExhausted {
                    message: "too big".into(),
                    retry_after: None,
                },
                Code::ResourceExhausted,
            ),
            (
                ApiError::Unavailable {
                    message: "down".into(),
                    retry_after: Some(Duration::from_secs(1)),
                },
                Code::Unavailable,
            ),
        ];
        for (e, code) in cases {
            assert_eq!(Status::from(e).code(), code);
        }
    }
}
