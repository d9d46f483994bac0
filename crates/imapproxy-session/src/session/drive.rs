//! Running the relay of a logged-in session, then handing its backend session back.

use super::*;

impl Session {
    pub(super) async fn relay(&mut self, logged_in: LoggedIn) -> Result<(), Error> {
        let LoggedIn {
            mut session,
            pipelined,
            _guard,
            registration,
        } = logged_in;
        let kick = registration.token().clone();
        let leftover = session.conn().take_buffered();
        let idle = self.proxy.settings.auth_timeout;
        let proxy = Arc::clone(&self.proxy);
        let shutdown = self.shutdown.clone();
        let intercept = proxy.pool.settings().reuse;
        let (end, facts, state_reusable, condition) = {
            let mut relay = Relay::new(
                &mut self.stream,
                session.conn().stream_mut(),
                pipelined,
                leftover,
                idle,
                &proxy.policy,
                intercept,
            );
            let end = tokio::select! {
                end = &mut relay => Some(end),
                _ = shutdown.cancelled() => None,
                _ = kick.cancelled() => None,
            };
            (end, relay.facts(), relay.reusable(), relay.condition())
        };
        debug!(
            bytes_up = facts.bytes_up,
            bytes_down = facts.bytes_down,
            commands = facts.commands,
            state = condition.as_str(),
            "relay finished"
        );
        metrics::counter!("imapproxy_session_end_state_total", "state" => condition.as_str())
            .increment(1);
        metrics::counter!("imapproxy_bytes_relayed_total", "direction" => "client_to_backend")
            .increment(facts.bytes_up);
        metrics::counter!("imapproxy_bytes_relayed_total", "direction" => "backend_to_client")
            .increment(facts.bytes_down);
        // Ended by an operator (a move, most likely): the backend session must not be cached,
        // or the user's next login could be handed the old backend again.
        let kicked = end.is_none() && registration.kicked();
        let clean = !kicked && matches!(end, Some(RelayEnd::Logout(_) | RelayEnd::ClientClosed));
        let reusable = clean && state_reusable;
        let disposition = if reusable {
            Disposition::Reuse
        } else {
            Disposition::Close
        };
        // Back to the pool before the client hears the answer to its LOGOUT, so that its
        // next login (webmail logs in again at once) finds the session cached.
        // Boxed: the reset's state machine is needed once, not for the session's whole life.
        Box::pin(proxy.pool.checkin(session, disposition)).await;
        // A BYE written into the middle of a response would become part of it (a literal's
        // bytes, say): at such a point the connection is just closed.
        let can_speak = !facts.mid_response;
        match end {
            None if kicked => {
                info!("session ended by the administrator");
                if can_speak {
                    let _ = self
                        .write(
                            b"* BYE [UNAVAILABLE] Session ended by the administrator, please reconnect.\r\n",
                        )
                        .await;
                }
                let _ = self.stream.shutdown().await;
                Ok(())
            }
            None => {
                if can_speak {
                    let _ = self
                        .write(b"* BYE [UNAVAILABLE] Server shutting down.\r\n")
                        .await;
                }
                Err(Error::Shutdown)
            }
            Some(RelayEnd::Logout(tag)) => {
                let mut bye = b"* BYE Logging out.\r\n".to_vec();
                bye.extend_from_slice(tag.as_bytes());
                bye.extend_from_slice(b" OK Logout completed.\r\n");
                self.write(&bye).await?;
                let _ = self.stream.shutdown().await;
                Ok(())
            }
            Some(RelayEnd::ClientClosed | RelayEnd::BackendClosed) => Ok(()),
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
                if can_speak {
                    let _ = self
                        .write(b"* BYE [UNAVAILABLE] Internal error, reconnect.\r\n")
                        .await;
                }
                Ok(())
            }
        }
    }
}
