//! Request size limits. tonic refuses a message over its decoding limit
//! before reading it, but reports OUT_OF_RANGE; DESIGN.md says a request
//! that is too large is RESOURCE_EXHAUSTED. This layer rewrites exactly that
//! refusal (tonic's trailers-only response) and nothing else.
//!
//! Owns only that rewrite; must not look inside messages.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::HeaderValue;
use tower::{Layer, Service};

/// Tonic's message for a request over the decoding limit.
const TONIC_TOO_LARGE: &str = "Error, decoded message length too large";

/// Layer giving oversized requests RESOURCE_EXHAUSTED.
#[derive(Debug, Clone, Copy)]
pub struct RequestSizeLayer {
    limit: usize,
}

impl RequestSizeLayer {
    /// A layer reporting `limit` bytes in its message.
    pub fn new(limit: usize) -> Self {
        Self { limit }
    }
}

impl<S> Layer<S> for RequestSizeLayer {
    type Service = RequestSize<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RequestSize {
            inner,
            limit: self.limit,
        }
    }
}

/// Service of [`RequestSizeLayer`].
#[derive(Debug, Clone)]
pub struct RequestSize<S> {
    inner: S,
    limit: usize,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for RequestSize<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let limit = self.limit;
        let fut = self.inner.call(request);
        Box::pin(async move {
            let mut response = fut.await?;
            rewrite_too_large(response.headers_mut(), limit);
            Ok(response)
        })
    }
}

fn rewrite_too_large(headers: &mut http::HeaderMap, limit: usize) {
    let is_out_of_range = headers
        .get("grpc-status")
        .is_some_and(|v| v.as_bytes() == b"11");
    let is_too_large = headers
        .get("grpc-message")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|m| {
            m.starts_with(TONIC_TOO_LARGE) || m.starts_with("Error,%20decoded%20message")
        });
    if is_out_of_range && is_too_large {
        headers.insert("grpc-status", HeaderValue::from_static("8"));
        let message = format!(
            "request is too large: the limit is {limit} bytes (1.5 MiB); split the object or store large data elsewhere"
        );
        if let Ok(v) = HeaderValue::from_str(&message) {
            headers.insert("grpc-message", v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_tonics_size_refusal_is_rewritten() {
        let mut h = http::HeaderMap::new();
        h.insert("grpc-status", HeaderValue::from_static("11"));
        h.insert(
            "grpc-message",
            HeaderValue::from_static(
                "Error, decoded message length too large: found 9 bytes, the limit is: 4 bytes",
            ),
        );
        rewrite_too_large(&mut h, 4);
        assert_eq!(h["grpc-status"], "8");

        let mut other = http::HeaderMap::new();
        other.insert("grpc-status", HeaderValue::from_static("11"));
        other.insert(
            "grpc-message",
            HeaderValue::from_static("resource version 3 is too old"),
        );
        rewrite_too_large(&mut other, 4);
        assert_eq!(other["grpc-status"], "11");
    }
}
