//! A layer's response future that is, request by request, either its inner
//! service's own (the answer mapped to the layer's type) or the layer's own
//! boxed work: a request the layer has nothing to do for costs no clone of
//! the inner service and no allocation.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;

/// A boxed future, as the layers' own work is kept.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

pin_project! {
    /// The inner service's future with its answer mapped by `map`, or a
    /// layer's boxed future, both resolving to `Result<R, E>`.
    ///
    /// ```
    /// use tower_ai_core::future::LayerFuture;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let inner = async { Ok::<u32, ()>(20) };
    /// assert_eq!(LayerFuture::inner(inner, |n: u32| n + 1).await, Ok(21));
    /// let own = LayerFuture::<std::future::Ready<Result<u32, ()>>, u32, u32, ()>::boxed(
    ///     Box::pin(async { Ok(7) }),
    /// );
    /// assert_eq!(own.await, Ok(7));
    /// # }
    /// ```
    pub struct LayerFuture<F, T, R, E> {
        #[pin]
        kind: Kind<F, T, R, E>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, T, R, E> {
        Inner {
            #[pin]
            future: F,
            map: fn(T) -> R,
        },
        Boxed {
            future: BoxFuture<Result<R, E>>,
        },
    }
}

impl<F, T, R, E> LayerFuture<F, T, R, E> {
    /// The inner service's `future`, its answer mapped by `map`.
    pub fn inner(future: F, map: fn(T) -> R) -> Self {
        Self {
            kind: Kind::Inner { future, map },
        }
    }

    /// The layer's own work.
    pub fn boxed(future: BoxFuture<Result<R, E>>) -> Self {
        Self {
            kind: Kind::Boxed { future },
        }
    }
}

impl<F, T, R, E> fmt::Debug for LayerFuture<F, T, R, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LayerFuture").finish_non_exhaustive()
    }
}

impl<F, T, R, E> Future for LayerFuture<F, T, R, E>
where
    F: Future<Output = Result<T, E>>,
{
    type Output = Result<R, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Inner { future, map } => Poll::Ready(ready!(future.poll(cx)).map(*map)),
            KindProj::Boxed { future } => future.as_mut().poll(cx),
        }
    }
}
