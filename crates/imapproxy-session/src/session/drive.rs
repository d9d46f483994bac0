//! Running the relay of a logged-in session (moving it to another backend connection when its
//! own fails or an operator asks), then handing its backend session back.

use super::*;

use std::time::Duration;

use crate::registry::{MigrationCause, Request, Signal};
use crate::relay::{Link, SessionFacts};
use crate::state::Condition;
use rehome::{Cause, Homed, KeptCredentials};

const BYE_KICKED: &[u8] =
    b"* BYE [UNAVAILABLE] Session ended by the administrator, please reconnect.\r\n";
const BYE_SHUTDOWN: &[u8] = b"* BYE [UNAVAILABLE] Server shutting down.\r\n";
const BYE_UNAVAILABLE: &[u8] = b"* BYE [UNAVAILABLE] Server unavailable, please reconnect.\r\n";

impl Session {
    /// Takes the login boxed and moves its parts out in a block: this future's state then
    /// holds each part once (an argument by value, or a local moved from, keeps its slot in
    /// every later state of the future), which is what an idle session costs.
    pub(super) async fn relay(&mut self, logged_in: Box<LoggedIn>) -> Result<(), Error> {
        self.pre = None;
        let (homed, registration, link, leftover) = {
            let mut logged_in = logged_in;
            let leftover = logged_in.session.conn().take_buffered();
            let intercept = self.proxy.pool.settings().reuse;
            let link = Link::new(
                std::mem::take(&mut logged_in.pipelined),
                self.proxy.settings.auth_timeout,
                intercept,
            );
            let LoggedIn {
                session,
                backend,
                user_key,
                creds,
                _guard,
                registration,
                ..
            } = *logged_in;
            let homed = Homed {
                session: Some(session),
                backend,
                user_key,
                creds: creds.as_ref().map(KeptCredentials::keep),
                guard: _guard,
            };
            (homed, registration, link, leftover)
        };
        let mut live = Live {
            homed,
            link,
            registration,
            leftover,
        };
        loop {
            let Some(session) = live.homed.session.as_mut() else {
                return Ok(());
            };
            let mut asked: Option<MigrationCause> = None;
            // Parking: the session learns from its registration that a client of its user
            // started waiting for a slot (no timer while nobody waits, so an idle session
            // costs no wake-ups). Only once someone waits does a timer run, until the session
            // has been quiet for `park_after`.
            let mut park_check: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
            if self.proxy.settings.park_after.is_some()
                && self.proxy.pool.has_waiters(&live.homed.user_key)
            {
                // Someone already waits (a re-home, say): look at once.
                park_check = Some(Box::pin(tokio::time::sleep(Duration::ZERO)));
            }
            let (end, facts, reusable, condition, last_client) = {
                let mut relay = Relay::new(
                    &mut self.stream,
                    session.conn().stream_mut(),
                    &mut live.link,
                    &live.registration,
                    std::mem::take(&mut live.leftover),
                    &self.proxy.policy,
                    &self.proxy.command_metrics,
                );
                let end = loop {
                    tokio::select! {
                        // The relay first: bytes the client sent are read before its idle
                        // deadline is looked at.
                        biased;
                        end = &mut relay => break Some(end),
                        // One small future for everything from outside. While a move is under
                        // way a later one stays asked, for the next relay (a drain asked while
                        // a move picks its backend is not lost).
                        signal = live.registration.signalled(asked.is_none(), true) => match signal {
                            Signal::Request(Request::End) | Signal::Shutdown => break None,
                            Signal::Request(Request::Move(cause)) => {
                                asked = Some(cause);
                                relay.request_migration();
                            }
                            Signal::IdleDue => {
                                if let Some(end) = relay.idle_expired() {
                                    break Some(end);
                                }
                            }
                            // A client of this user started waiting (only heard with parking
                            // on: the hook is installed then): check from now on.
                            Signal::WaiterArrived => {
                                if park_check.is_none() {
                                    park_check = Some(Box::pin(tokio::time::sleep(Duration::ZERO)));
                                }
                            }
                        },
                        // Parking: give the backend session to a waiting client of this user
                        // while this one is quiet between commands.
                        _ = async {
                            match park_check.as_mut() {
                                Some(timer) => timer.await,
                                None => std::future::pending().await,
                            }
                        }, if park_check.is_some() => {
                            let quiet = self.proxy.settings.park_after.unwrap_or_default();
                            if !self.proxy.pool.has_waiters(&live.homed.user_key) {
                                // Nobody waits (any more): back to the signal, no timer.
                                park_check = None;
                                continue;
                            }
                            if relay.parkable(quiet) {
                                break Some(RelayEnd::Park);
                            }
                            let next = (relay.last_client() + quiet)
                                .max(tokio::time::Instant::now() + quiet / 4);
                            if let Some(timer) = park_check.as_mut() {
                                timer.as_mut().reset(next);
                            }
                        }
                    }
                };

                (
                    end,
                    relay.facts(),
                    relay.reusable(),
                    relay.condition(),
                    relay.last_client(),
                )
            };
            let cause = match &end {
                // Not when the server is answering the client's own LOGOUT, and not for a
                // session whose framing the proxy lost: the server's own words (relayed) are
                // then the last ones.
                Some(
                    RelayEnd::BackendClosed | RelayEnd::BackendError(_) | RelayEnd::BackendBye,
                ) if !live.link.state().logging_out() && !live.link.state().is_desynchronised() => {
                    Some(Cause::Failure)
                }
                Some(RelayEnd::Migrate) => asked.map(Cause::from),
                _ => None,
            };
            // Each way on is boxed and takes what it needs by value: this future then keeps
            // no slot for any of it beside the relay's (what an idle session costs).
            let resumed = if matches!(end, Some(RelayEnd::Park)) {
                drop(end);
                Box::pin(self.park(&mut live, reusable, last_client)).await
            } else if let (Some(cause), false) = (cause, facts.mid_response) {
                // A response cut short cannot be completed from another server: the
                // client's view of it would be wrong, so that session ends (below).
                Box::pin(self.recover(&mut live, end, facts.mid_command, cause)).await
            } else {
                return Box::pin(self.finish(live, end, facts, reusable, condition)).await;
            };
            if !resumed {
                return Ok(());
            }
        }
    }

    /// A parked session: its backend session goes back to the pool (to the client waiting for
    /// it) and the session waits for its client's next command, then moves to a backend
    /// connection again. False when the session is over (it was told why).
    async fn park(
        &mut self,
        live: &mut Live,
        reusable: bool,
        last_client: tokio::time::Instant,
    ) -> bool {
        self.checkin(live.homed.session.take(), disposition(reusable))
            .await;
        live.homed.guard = None;
        metrics::counter!("imapproxy_parks_total").increment(1);
        debug!("session parked");
        let deadline = last_client + self.proxy.settings.auth_timeout;
        let read = tokio::select! {
            r = live.link.read_parked(&mut self.stream) => Some(r),
            _ = self.shutdown.cancelled() => None,
            () = live.registration.ended() => None,
            _ = tokio::time::sleep_until(deadline) => None,
        };
        let woke = match read {
            // The client went away while parked: nothing to move, nobody to tell.
            Some(Ok(0) | Err(_)) => {
                debug!("parked session's client closed");
                return false;
            }
            Some(Ok(_)) => true,
            None => false,
        };
        // LOGOUT needs no backend (RFC 9051 §6.1.3): answered at once.
        if let Some(tag) = live.link.lone_logout().filter(|_| woke) {
            let _ = self
                .untagged_and_tagged(b"* BYE Logging out.", &tag, "OK Logout completed.")
                .await;
            return false;
        }
        if woke {
            match Box::pin(self.rehome(&mut live.link, &mut live.homed, Cause::Unpark)).await {
                Ok(rest) => {
                    live.registration.set_backend(&live.homed.backend);
                    live.leftover = rest;
                    return true;
                }
                Err(reason) => info!(reason, "parked session could not resume"),
            }
        }
        let bye: &[u8] = if live.registration.kicked() {
            BYE_KICKED
        } else if self.shutdown.is_cancelled() {
            BYE_SHUTDOWN
        } else if woke {
            BYE_UNAVAILABLE
        } else {
            b"* BYE Autologout; idle for too long.\r\n"
        };
        self.say_bye(bye).await;
        false
    }

    /// The session's backend connection failed, or an operator asked it to move: it moves to
    /// another backend connection, replaying its state. False when it could not (the client
    /// was told `BYE`).
    async fn recover(
        &mut self,
        live: &mut Live,
        end: Option<RelayEnd>,
        mid_command: bool,
        cause: Cause,
    ) -> bool {
        if let Some(RelayEnd::BackendError(e)) = &end {
            warn!(error = %e, "backend connection failed");
        }
        drop(end);
        // A command the client is still sending cannot go on elsewhere: the new backend never
        // saw its start. One whose client waits for a literal's `+` is answered NO (the
        // client then sends no literal); one whose bytes are still coming cannot be cut off
        // cleanly, and that session ends.
        let mut refused = None;
        let movable = !mid_command || {
            refused = live.link.cancel_waiting_command();
            refused.is_some()
        };
        if !movable {
            info!(
                cause = cause.as_str(),
                "session could not move: mid-command"
            );
            metrics::counter!("imapproxy_rehome_failures_total", "reason" => "mid_command")
                .increment(1);
        } else if self.proxy.settings.rehome {
            match Box::pin(self.rehome(&mut live.link, &mut live.homed, cause)).await {
                Ok(rest) => {
                    live.registration.set_backend(&live.homed.backend);
                    live.leftover = rest;
                    if let Some(tag) = refused {
                        let mut no = tag.as_bytes().to_vec();
                        no.extend_from_slice(
                            b" NO [UNAVAILABLE] Server connection lost, please retry.\r\n",
                        );
                        if self.write(&no).await.is_err() {
                            return false;
                        }
                    }
                    return true;
                }
                Err(reason) => {
                    info!(cause = cause.as_str(), reason, "session could not move");
                }
            }
        }
        self.checkin(live.homed.session.take(), Disposition::Close)
            .await;
        self.say_bye(BYE_UNAVAILABLE).await;
        false
    }

    /// The relay is over for good: the backend session goes back to the pool (cached when it
    /// can serve another client) and the client gets its last answer.
    async fn finish(
        &mut self,
        live: Live,
        end: Option<RelayEnd>,
        facts: SessionFacts,
        state_reusable: bool,
        condition: Condition,
    ) -> Result<(), Error> {
        let Live {
            mut homed,
            registration,
            ..
        } = live;
        debug!(
            bytes_up = facts.bytes_up,
            bytes_down = facts.bytes_down,
            commands = facts.commands,
            state = condition.as_str(),
            "relay finished"
        );
        metrics::counter!("imapproxy_session_end_state_total", "state" => condition.as_str())
            .increment(1);
        // Ended by an operator (a move, most likely): the backend session must not be cached,
        // or the user's next login could be handed the old backend again.
        let kicked = end.is_none() && registration.kicked();
        let clean = !kicked && matches!(end, Some(RelayEnd::Logout(_) | RelayEnd::ClientClosed));
        // Back to the pool before the client hears the answer to its LOGOUT, so that its
        // next login (webmail logs in again at once) finds the session cached.
        self.checkin(homed.session.take(), disposition(clean && state_reusable))
            .await;
        drop(homed);
        // A BYE written into the middle of a response would become part of it (a literal's
        // bytes, say): at such a point the connection is just closed.
        let can_speak = !facts.mid_response;
        match end {
            None if kicked => {
                info!("session ended by the administrator");
                if can_speak {
                    let _ = self.write(BYE_KICKED).await;
                }
                Ok(())
            }
            None => {
                if can_speak {
                    let _ = self.write(BYE_SHUTDOWN).await;
                }
                Err(Error::Shutdown)
            }
            Some(RelayEnd::Logout(tag)) => {
                self.untagged_and_tagged(b"* BYE Logging out.", &tag, "OK Logout completed.")
                    .await?;
                Ok(())
            }
            Some(RelayEnd::ClientClosed) => Ok(()),
            // The backend went away in the middle of a response, or it answered the client's
            // LOGOUT itself (a desynchronised session): nothing more can be said.
            Some(
                RelayEnd::BackendClosed | RelayEnd::BackendBye | RelayEnd::Migrate | RelayEnd::Park,
            ) => Ok(()),
            Some(RelayEnd::IdleTimeout) => {
                if can_speak {
                    let _ = self
                        .write(b"* BYE Autologout; idle for too long.\r\n")
                        .await;
                }
                Err(Error::Timeout)
            }
            Some(RelayEnd::ClientError(e)) => Err(Error::Client(e)),
            Some(RelayEnd::BackendError(e)) => {
                warn!(error = %e, "backend connection failed");
                Ok(())
            }
        }
    }

    /// A last word to the client (the TLS close_notify follows in `serve`). Boxed by callers:
    /// it runs once, at the end.
    async fn say_bye(&mut self, bye: &[u8]) {
        let _ = self.write(bye).await;
    }
}

/// What a logged-in session keeps through its relays: one local, so that its future lays
/// it out once.
struct Live {
    homed: Homed,
    link: Link,
    registration: Registration,
    leftover: Vec<u8>,
}

impl Session {
    /// Gives the backend session back to the pool (the reset it may need included).
    async fn checkin(&self, session: Option<PooledSession>, disposition: Disposition) {
        if let Some(session) = session {
            self.proxy.pool.checkin(session, disposition).await;
        }
    }
}

/// How a backend session goes back to the pool: cached only when it may serve another client.
fn disposition(reusable: bool) -> Disposition {
    if reusable {
        Disposition::Reuse
    } else {
        Disposition::Close
    }
}
