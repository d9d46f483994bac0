//! Is an idle connection still usable? Checked without blocking and without a round trip.

use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use tokio::io::{AsyncRead, ReadBuf};

use crate::BackendStream;

/// True when nothing is waiting on an idle connection: no EOF, no error, no unsolicited data.
///
/// An idle backend session has nothing to say; bytes waiting mean a `BYE`, an alert or state
/// the next client must not see, so such a connection is not reused. For TLS this reads
/// through rustls, so that post-handshake messages (session tickets) are consumed, not
/// mistaken for data.
pub(crate) fn idle_and_alive(stream: &mut BackendStream) -> bool {
    let mut cx = Context::from_waker(Waker::noop());
    let mut byte = [0u8; 1];
    let mut buf = ReadBuf::new(&mut byte);
    matches!(Pin::new(stream).poll_read(&mut cx, &mut buf), Poll::Pending)
}
