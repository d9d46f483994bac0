//! A literal's bytes moved from one plain TCP socket to another through a pipe, with
//! `splice(2)`: the kernel hands the socket's pages to the pipe and on to the other socket,
//! so the bytes are neither copied into the relay's buffer nor back out of it.
//!
//! Only a literal's bytes go this way: the framer needs nothing of them but their count, and
//! nothing in them is ever rewritten. Every other byte (lines, the head of a message that
//! may need rewriting, anything over TLS) goes through the buffer as before.

use std::io;
use std::os::fd::OwnedFd;
use std::task::{Context, Poll, ready};

use rustix::pipe::{PipeFlags, SpliceFlags, fcntl_getpipe_size, pipe_with, splice};
use tokio::io::Interest;
use tokio::net::TcpStream;

/// A pipe between two sockets, and how many bytes it holds.
#[derive(Debug)]
pub(super) struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    /// Moved in from the source, not yet out to the destination.
    held: usize,
    /// What the pipe holds at most. It is only filled while empty, with at most this, so a
    /// call never finds it full.
    capacity: usize,
}

impl Pipe {
    /// A new, empty pipe (non-blocking, closed on exec).
    pub(super) fn new() -> io::Result<Self> {
        let (read, write) = pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK)?;
        // Linux gives 16 pages, fewer once the user's pipes hold more than
        // `fs.pipe-user-pages-soft`; one page at least. (Asking for 256 KiB with F_SETPIPE_SZ
        // made no measurable difference to the bulk bench, and holds more kernel memory.)
        let capacity = fcntl_getpipe_size(&write).unwrap_or(4096);
        Ok(Self {
            read,
            write,
            held: 0,
            capacity,
        })
    }

    /// Bytes in the pipe.
    pub(super) fn held(&self) -> usize {
        self.held
    }

    /// Moves up to `max` bytes from `src` into the pipe, which must be empty. `Ready(Ok(0))`
    /// is the source's end of stream.
    pub(super) fn poll_fill(
        &mut self,
        cx: &mut Context<'_>,
        src: &TcpStream,
        max: usize,
    ) -> Poll<io::Result<usize>> {
        debug_assert_eq!(self.held, 0, "a pipe is filled only when empty");
        let max = max.min(self.capacity);
        loop {
            ready!(src.poll_read_ready(cx))?;
            // The pipe is empty, so "would block" can only mean the socket has nothing: then
            // `try_io` clears its readiness and the next poll registers for more.
            match src.try_io(Interest::READABLE, || {
                Ok(splice(
                    src,
                    None,
                    &self.write,
                    None,
                    max,
                    SpliceFlags::NONBLOCK,
                )?)
            }) {
                Ok(n) => {
                    self.held += n;
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    /// Moves what the pipe holds to `dst`, as much as it takes. Returns how many bytes went.
    pub(super) fn poll_drain(
        &mut self,
        cx: &mut Context<'_>,
        dst: &TcpStream,
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(dst.poll_write_ready(cx))?;
            // The pipe holds bytes, so "would block" can only mean the socket's send buffer
            // is full.
            match dst.try_io(Interest::WRITABLE, || {
                Ok(splice(
                    &self.read,
                    None,
                    dst,
                    None,
                    self.held,
                    SpliceFlags::NONBLOCK,
                )?)
            }) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(n) => {
                    self.held -= n;
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}
