//! Bounded in-memory stdout/stderr for guests.
//!
//! Two policies: a response pipe (a command module's stdout) fails the guest's write once
//! full and remembers that it overflowed, so the host can answer 413; a log pipe keeps the
//! first bytes and drops the rest, so chatty guests cannot exhaust host memory.

use bytes::{Bytes, BytesMut};
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};

#[derive(Debug)]
struct State {
    buf: BytesMut,
    cap: usize,
    truncate: bool,
    overflowed: bool,
}

#[derive(Debug, Clone)]
pub struct CappedPipe(Arc<Mutex<State>>);

impl CappedPipe {
    /// Writes past `cap` fail and mark the pipe overflowed.
    pub fn response(cap: usize) -> Self {
        Self::new(cap, false)
    }

    /// Writes past `cap` are dropped silently (and marked overflowed).
    pub fn logs(cap: usize) -> Self {
        Self::new(cap, true)
    }

    fn new(cap: usize, truncate: bool) -> Self {
        Self(Arc::new(Mutex::new(State {
            buf: BytesMut::new(),
            cap,
            truncate,
            overflowed: false,
        })))
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A poisoned lock only means another writer panicked mid-append; the bytes are
        // still the best record we have.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn overflowed(&self) -> bool {
        self.state().overflowed
    }

    pub fn contents(&self) -> Bytes {
        self.state().buf.clone().freeze()
    }

    /// Empties the pipe for the environment's next invocation: what was written, and
    /// whether anything was lost.
    pub fn take(&self) -> (Bytes, bool) {
        let mut s = self.state();
        let overflowed = std::mem::take(&mut s.overflowed);
        (s.buf.split().freeze(), overflowed)
    }

    /// Appends what fits; returns how many bytes were taken, or an error for a full
    /// response pipe.
    fn append(&self, bytes: &[u8]) -> Result<usize, ()> {
        let mut s = self.state();
        let room = s.cap - s.buf.len();
        if bytes.len() > room {
            s.overflowed = true;
            if !s.truncate {
                return Err(());
            }
        }
        let take = bytes.len().min(room);
        s.buf.extend_from_slice(&bytes[..take]);
        // A truncating pipe claims everything so the guest carries on normally.
        Ok(if s.truncate { bytes.len() } else { take })
    }
}

fn overflow_error() -> io::Error {
    io::Error::other("output exceeds the function's response size limit")
}

impl IsTerminal for CappedPipe {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CappedPipe {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl OutputStream for CappedPipe {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        self.append(&bytes)
            .map(|_| ())
            .map_err(|()| StreamError::LastOperationFailed(overflow_error().into()))
    }
    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }
    fn check_write(&mut self) -> Result<usize, StreamError> {
        // Always accept a chunk; `write` enforces the cap so overflow is observable.
        Ok(64 * 1024)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for CappedPipe {
    async fn ready(&mut self) {}
}

impl AsyncWrite for CappedPipe {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Poll::Ready(self.append(buf).map_err(|()| overflow_error()))
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_pipe_fails_when_full() {
        let p = CappedPipe::response(4);
        assert_eq!(p.append(b"abc"), Ok(3));
        assert_eq!(p.append(b"de"), Err(()));
        assert!(p.overflowed());
        assert_eq!(&p.contents()[..], b"abc");
    }

    #[test]
    fn taking_empties_the_pipe_for_the_next_invocation() {
        let p = CappedPipe::logs(4);
        p.append(b"abcdef").unwrap();
        assert_eq!(p.take(), (Bytes::from_static(b"abcd"), true));
        p.append(b"xy").unwrap();
        assert_eq!(p.take(), (Bytes::from_static(b"xy"), false));
    }

    #[test]
    fn log_pipe_truncates_quietly() {
        let p = CappedPipe::logs(4);
        assert_eq!(p.append(b"abcdef"), Ok(6));
        assert!(p.overflowed());
        assert_eq!(&p.contents()[..], b"abcd");
    }
}
