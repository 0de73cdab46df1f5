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
        let method = request
            .uri()
            .path()
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_owned();
        let fut = self.inner.call(request);
        Box::pin(async move {
            let mut response = fut.await?;
            rewrite_too_large(response.headers_mut(), limit, &method);
            Ok(response)
        })
    }
}

/// What to do about a request of `method` over the limit: an object is
/// split or its data stored elsewhere; anything else (a selector, a
/// command) is made shorter.
fn advice(method: &str) -> &'static str {
    if ["Create", "Update", "Apply", "Replace"]
        .iter()
        .any(|p| method.starts_with(p))
    {
        "split the object or store large data elsewhere"
    } else {
        "shorten it (a selector or a command this long is not supported)"
    }
}

fn rewrite_too_large(headers: &mut http::HeaderMap, limit: usize, method: &str) {
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
            "{method} request is too large: the limit is {limit} bytes (1.5 MiB); {}",
            advice(method)
        );
        if let Ok(v) = HeaderValue::from_str(&message) {
            headers.insert("grpc-message", v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The headers of tonic's refusal of a message over its limit.
    fn tonics_refusal() -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        h.insert("grpc-status", HeaderValue::from_static("11"));
        h.insert(
            "grpc-message",
            HeaderValue::from_static(
                "Error, decoded message length too large: found 9 bytes, the limit is: 4 bytes",
            ),
        );
        h
    }

    #[test]
    fn only_tonics_size_refusal_is_rewritten() {
        let mut h = tonics_refusal();
        rewrite_too_large(&mut h, 4, "CreatePod");
        assert_eq!(h["grpc-status"], "8");
        let m = h["grpc-message"].to_str().unwrap();
        assert!(m.starts_with("CreatePod request is too large"), "{m}");
        assert!(m.contains("split the object"), "{m}");

        let mut other = http::HeaderMap::new();
        other.insert("grpc-status", HeaderValue::from_static("11"));
        other.insert(
            "grpc-message",
            HeaderValue::from_static("resource version 3 is too old"),
        );
        rewrite_too_large(&mut other, 4, "ListPods");
        assert_eq!(other["grpc-status"], "11");
    }

    #[test]
    fn an_oversized_list_is_told_to_shorten_its_selector_not_to_split_an_object() {
        let mut h = tonics_refusal();
        rewrite_too_large(&mut h, 4, "ListPods");
        let m = h["grpc-message"].to_str().unwrap();
        assert!(m.starts_with("ListPods request is too large"), "{m}");
        assert!(m.contains("a selector"), "{m}");
        assert!(!m.contains("split the object"), "{m}");
    }
}
