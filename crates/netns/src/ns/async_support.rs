use super::*;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

/// The result of a future run inside a namespace by [`NetNs::spawn_async`].
///
/// Await it, or call [`NsTask::join`] from synchronous code. Dropping it
/// detaches the task; the thread ends when the future completes.
#[derive(Debug)]
pub struct NsTask<T> {
    rx: tokio::sync::oneshot::Receiver<thread::Result<T>>,
    label: String,
}

impl<T> NsTask<T> {
    /// Blocks until the future finishes. Panics in the future propagate.
    /// Must not be called from inside an async runtime.
    pub fn join(self) -> T {
        match self.rx.blocking_recv() {
            Ok(Ok(v)) => v,
            Ok(Err(panic)) => std::panic::resume_unwind(panic),
            Err(_) => panic!("task in network namespace {} vanished", self.label),
        }
    }
}

impl<T> Future for NsTask<T> {
    type Output = T;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        match Pin::new(&mut self.rx).poll(cx) {
            Poll::Ready(Ok(Ok(v))) => Poll::Ready(v),
            Poll::Ready(Ok(Err(panic))) => std::panic::resume_unwind(panic),
            Poll::Ready(Err(_)) => {
                panic!("task in network namespace {} vanished", self.label)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl NetNs {
    /// Runs the future made by `make` on a new thread inside the namespace,
    /// driven by its own current-thread tokio runtime (with I/O and
    /// timers). Every socket the future creates is created in the namespace.
    pub fn spawn_async<F, Fut>(&self, make: F) -> Result<NsTask<Fut::Output>>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future,
        Fut::Output: Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let me = self.try_clone()?;
        let label = self.label.clone();
        let entered = self.spawn(move || {
            let _ = tx.send(std::panic::catch_unwind(std::panic::AssertUnwindSafe(
                || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .unwrap_or_else(|e| {
                            panic!("building a runtime in network namespace {}: {e}", me.label)
                        });
                    rt.block_on(make())
                },
            )));
        })?;
        // Surface a setns failure now rather than as a vanished task.
        if entered.is_finished()
            && let Ok(Err(e)) = entered.join()
        {
            return Err(e);
        }
        Ok(NsTask { rx, label })
    }

    /// Binds a tokio TCP listener inside the namespace. Call from within a
    /// tokio runtime; the listener is registered with that runtime.
    pub fn tokio_tcp_listener(&self, addr: SocketAddr) -> Result<tokio::net::TcpListener> {
        let l = self.tcp_listener(addr)?;
        l.set_nonblocking(true)
            .and_then(|()| tokio::net::TcpListener::from_std(l))
            .map_err(|source| self.io_err_at("registering listener", addr, source))
    }

    /// Connects a tokio TCP stream from inside the namespace. The socket is
    /// created in the namespace; the connect runs on the caller's runtime.
    pub async fn tokio_tcp_connect(&self, addr: SocketAddr) -> Result<tokio::net::TcpStream> {
        let domain = Domain::for_address(addr);
        let sock = self.socket(domain, Type::STREAM, Some(Protocol::TCP))?;
        sock.set_nonblocking(true)
            .map_err(|source| self.io_err("configuring socket", source))?;
        let std_stream: TcpStream = sock.into();
        let socket = tokio::net::TcpSocket::from_std_stream(std_stream);
        socket
            .connect(addr)
            .await
            .map_err(|source| self.io_err_at("connecting to", addr, source))
    }

    /// Spawns a tokio child process inside the namespace, reaped by the
    /// caller's runtime. Call from within a tokio runtime.
    pub fn spawn_tokio_command(
        &self,
        cmd: &mut tokio::process::Command,
    ) -> Result<tokio::process::Child> {
        let handle = tokio::runtime::Handle::current();
        let prog = cmd.as_std().get_program().to_string_lossy().into_owned();
        self.run(|| {
            let _guard = handle.enter();
            cmd.spawn()
        })?
        .map_err(|source| Error::Io {
            ns: self.label.clone(),
            op: "spawning",
            path: prog,
            source,
        })
    }
}
