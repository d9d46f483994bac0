//! Not an API: the relay's per-chunk work without sockets, for `benches/relay.rs`.

use imapproxy_codec::Tag;
use imapproxy_codec::capability::default_post_login_drop;
use imapproxy_codec::framer::Direction;

use super::pump::Pump;
use super::{Commands, Counts, ResponsePolicy, Responses};
use crate::command_metrics::{CommandMetrics, Delivering};
use crate::state::SessionState;

/// Both directions of a logged-in session's relay over sockets that always have the next
/// chunk and take everything written: what the relay does per read (framing, session state,
/// response rewrites, command metrics, counters, buffer upkeep) and nothing of the system
/// calls.
///
/// The chunks must make a session the proxy could relay: answer the commands sent, or the
/// state runs into its limit on commands in flight. The command metrics go to the recorder
/// installed when the value is made.
#[doc(hidden)]
pub struct ChunkBench {
    up: Pump,
    down: Pump,
    counts: Counts,
    state: SessionState,
    logout: Option<Box<Tag>>,
    swallow_continuation: bool,
    backend_bye: bool,
    delivering: Delivering,
    policy: ResponsePolicy,
    metrics: CommandMetrics,
}

impl Default for ChunkBench {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkBench {
    /// A session just logged in, with the proxy's default capability filter.
    pub fn new() -> Self {
        Self {
            up: Pump::new(Direction::Client),
            down: Pump::new(Direction::Server),
            counts: Counts::default(),
            state: SessionState::new(),
            logout: None,
            swallow_continuation: false,
            backend_bye: false,
            delivering: Delivering::default(),
            policy: ResponsePolicy {
                drop_capability: Box::new(default_post_login_drop),
                id_reply: b"* ID (\"name\" \"imapproxy\")\r\n".to_vec(),
            },
            metrics: CommandMetrics::default(),
        }
    }

    /// `chunk` as a read from the client brings it, relayed to the backend. Returns the bytes
    /// written to the backend.
    pub fn client(&mut self, chunk: &[u8]) -> usize {
        self.up.buffer_mut().extend_from_slice(chunk);
        let mut obs = Commands {
            metrics: Some(&self.metrics),
            counts: &mut self.counts,
            state: &mut self.state,
            logout: &mut self.logout,
            intercept_logout: true,
            active: false,
        };
        self.up.read(chunk.len(), &mut obs);
        self.up.write_all_to_sink(&mut obs)
    }

    /// `chunk` as a read from the backend brings it, relayed to the client. Returns the bytes
    /// written to the client.
    pub fn server(&mut self, chunk: &[u8]) -> usize {
        self.down.buffer_mut().extend_from_slice(chunk);
        let mut obs = Responses {
            policy: &self.policy,
            metrics: &self.metrics,
            state: &mut self.state,
            up: &mut self.up,
            swallow_continuation: &mut self.swallow_continuation,
            backend_bye: &mut self.backend_bye,
            delivering: &mut self.delivering,
            bytes_down: &mut self.counts.bytes_down,
        };
        self.down.read(chunk.len(), &mut obs);
        self.down.write_all_to_sink(&mut obs)
    }

    /// Commands sent and not answered yet.
    pub fn outstanding(&self) -> usize {
        self.state.outstanding()
    }

    /// Whether the session is as a clean session would be: nothing the proxy lost track of.
    pub fn clean(&self) -> bool {
        !self.state.is_desynchronised()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_are_relayed_whole_and_commands_tracked() {
        let mut b = ChunkBench::new();
        let cmd = b"a1 UID FETCH 1:* (FLAGS)\r\na2 NOOP\r\n";
        assert_eq!(b.client(cmd), cmd.len());
        assert_eq!(b.outstanding(), 2);
        // An unfinished line is held back until it completes (it may need rewriting).
        assert_eq!(b.server(b"* 1 FETCH (UID 1 FLAGS ())\r\na1 OK"), 28);
        assert_eq!(b.server(b" done\r\na2 OK done\r\n"), 5 + 19);
        assert_eq!(b.outstanding(), 0);
        assert!(b.clean());
        // A literal's bytes go through as they come.
        assert_eq!(b.client(b"a3 APPEND INBOX {100000+}\r\n"), 27);
        assert_eq!(b.client(&[b'x'; 16384]), 16384);
        assert_eq!(b.outstanding(), 0, "the APPEND has not ended");
    }
}
