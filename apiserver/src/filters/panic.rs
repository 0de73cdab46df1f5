//! A handler that panics answers its caller INTERNAL and logs one line
//! naming the request, instead of dropping the connection (and every other
//! call on it) and printing a backtrace per request.
//!
//! [`CatchPanicLayer`] catches panics while a request's handler runs (up to
//! its response head); [`install_hook`] makes the panic message part of that
//! one line rather than printed on its own. Owns only this; must not look
//! inside messages.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context, Poll};

use tower::{Layer, Service};

thread_local! {
    /// Whether this thread is polling a request's handler under the layer.
    static GUARDED: Cell<bool> = const { Cell::new(false) };
    /// What the hook saw of the last guarded panic: message and place.
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Installs a panic hook that, for panics inside a request's handler,
/// keeps the message and place for the layer's one log line (and prints
/// nothing itself); other panics are reported as before.
pub fn install_hook() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if GUARDED.with(Cell::get) {
            let place = info
                .location()
                .map(|l| format!(" at {}:{}", l.file(), l.line()))
                .unwrap_or_default();
            let detail = format!("{}{place}", message(info.payload()));
            LAST_PANIC.with(|l| *l.borrow_mut() = Some(detail));
        } else {
            previous(info);
        }
    }));
}

fn message(payload: &(dyn Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_owned())
}

/// Layer answering INTERNAL for a request whose handler panicked.
#[derive(Debug, Clone, Copy, Default)]
pub struct CatchPanicLayer;

impl<S> Layer<S> for CatchPanicLayer {
    type Service = CatchPanic<S>;
    fn layer(&self, inner: S) -> Self::Service {
        CatchPanic { inner }
    }
}

/// Service of [`CatchPanicLayer`].
#[derive(Debug, Clone)]
pub struct CatchPanic<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for CatchPanic<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: Default,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Caught<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let method = request.uri().path().to_owned();
        // The handler may panic before its future exists, too.
        let future = guarded(|| self.inner.call(request));
        match future {
            Ok(f) => Caught {
                inner: Some(Box::pin(f)),
                method,
                early: None,
            },
            Err(detail) => Caught {
                inner: None,
                method,
                early: Some(detail),
            },
        }
    }
}

/// Runs `f` with the hook's guard on; on a panic, what it said.
fn guarded<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    GUARDED.with(|g| g.set(true));
    let result = std::panic::catch_unwind(AssertUnwindSafe(f));
    GUARDED.with(|g| g.set(false));
    result.map_err(|payload| {
        LAST_PANIC
            .with(|l| l.borrow_mut().take())
            .unwrap_or_else(|| message(payload.as_ref()))
    })
}

/// Future of [`CatchPanic`].
pub struct Caught<F> {
    inner: Option<Pin<Box<F>>>,
    method: String,
    early: Option<String>,
}

impl<F, ResBody, E> Future for Caught<F>
where
    F: Future<Output = Result<http::Response<ResBody>, E>>,
    ResBody: Default,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // Every field is Unpin (the inner future is boxed).
        let this = self.get_mut();
        let detail = match (this.early.take(), this.inner.as_mut()) {
            (Some(detail), _) => detail,
            (None, Some(inner)) => match guarded(|| inner.as_mut().poll(cx)) {
                Ok(poll) => return poll,
                Err(detail) => detail,
            },
            (None, None) => {
                return Poll::Ready(Ok(tonic::Status::internal(
                    "the request's handler was polled after it failed",
                )
                .into_http()));
            }
        };
        this.inner = None;
        tracing::error!(method = %this.method, "request handler panicked: {detail}");
        Poll::Ready(Ok(tonic::Status::internal(format!(
            "the server failed while handling {}; this is a bug in the server, and the request may be retried",
            this.method
        ))
        .into_http()))
    }
}

impl<F> Unpin for Caught<F> {}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use super::*;

    async fn answer(
        request: http::Request<()>,
    ) -> Result<http::Response<tonic::body::Body>, Infallible> {
        assert!(
            !request.uri().path().ends_with("/Panic"),
            "a handler bug on {}",
            request.uri().path()
        );
        Ok(tonic::Status::ok("fine").into_http())
    }

    fn request(path: &str) -> http::Request<()> {
        http::Request::builder().uri(path).body(()).unwrap()
    }

    #[tokio::test]
    async fn a_panicking_handler_answers_internal_naming_the_method_and_the_next_request_is_served()
    {
        install_hook();
        let mut service = CatchPanicLayer.layer(tower::service_fn(answer));
        let response = service
            .call(request("/skiff.core.v1.PodService/Panic"))
            .await
            .unwrap();
        assert_eq!(response.headers()["grpc-status"], "13");
        let message = response.headers()["grpc-message"].to_str().unwrap();
        assert!(message.contains("PodService/Panic"), "{message}");
        let response = service
            .call(request("/skiff.core.v1.PodService/ListPods"))
            .await
            .unwrap();
        assert_eq!(response.headers()["grpc-status"], "0");
        // The hook kept nothing behind, and unguarded code is unaffected.
        assert!(LAST_PANIC.with(|l| l.borrow().is_none()));
        assert!(!GUARDED.with(Cell::get));
    }
}
