//! Streams: start, stop, the state machine's transitions.

use super::*;

impl Control {
    // ---- streams ----------------------------------------------------------------

    pub(super) fn stream_view(&self, row: StreamRow) -> StreamView {
        StreamView {
            receiver_pid: self.receivers.pid(&row.id),
            receiver_ready: lock(&self.runtime)
                .get(&row.id)
                .is_some_and(|rt| rt.receiver_ready),
            port: u16::try_from(row.port).unwrap_or(0),
            id: row.id,
            sender_id: row.sender_id,
            state: row.state,
            reason: row.reason,
            destination_ids: row.destination_ids,
            created_by: row.created_by,
            created_at: row.created_at,
            live_at: row.live_at,
            ended_at: row.ended_at,
        }
    }

    pub async fn list_streams(&self, who: &Principal, limit: i64) -> Result<Vec<StreamView>> {
        self.authorize(who, Action::View)?;
        let rows = self.store.list_streams(false, limit.clamp(1, 1000)).await?;
        Ok(rows.into_iter().map(|r| self.stream_view(r)).collect())
    }

    pub async fn stream(&self, who: &Principal, id: &str) -> Result<StreamView> {
        self.authorize(who, Action::View)?;
        let id = parse_id("stream_id", "str", id)?;
        let row = self
            .store
            .stream(&id)
            .await?
            .ok_or(ControlError::NotFound("stream"))?;
        Ok(self.stream_view(row))
    }

    /// Picks the lowest free even port of the pool (RIST takes P and P+1).
    pub(super) async fn allocate_port(&self) -> Result<u16> {
        let used: HashSet<i64> = self.store.ports_in_use().await?.into_iter().collect();
        let (lo, hi) = self.config.port_range;
        let first = lo + lo % 2;
        (first..hi)
            .step_by(2)
            .find(|p| !used.contains(&i64::from(*p)))
            .ok_or_else(|| ControlError::Conflict("no free receiver port in the pool".into()))
    }

    /// Starts a stream from a sender to destinations: spawns its receiver
    /// and tells the agent, with a fresh pre-shared key for both.
    pub async fn start_stream(
        self: &Arc<Self>,
        who: &Principal,
        sender_id: &str,
        destination_ids: &[String],
        now: i64,
    ) -> Result<StreamView> {
        self.authorize(who, Action::StartStream)?;
        let sender_id = parse_id("sender_id", "snd", sender_id)?;
        let mut dest_ids = Vec::new();
        for d in destination_ids {
            let d = parse_id("destination_ids", "dst", d)?;
            if !dest_ids.contains(&d) {
                dest_ids.push(d);
            }
        }
        if dest_ids.is_empty() || dest_ids.len() > 8 {
            return Err(Invalid {
                field: "destination_ids",
                reason: "give 1 to 8 destinations".into(),
            }
            .into());
        }
        let sender = self
            .store
            .sender(&sender_id)
            .await?
            .ok_or(ControlError::NotFound("sender"))?;
        if sender.public_key.is_none() {
            return Err(ControlError::Conflict("the sender is not enrolled".into()));
        }
        if self.hub.presence(&sender_id) != Presence::Online {
            return Err(ControlError::Conflict("the sender is not connected".into()));
        }
        let destinations = self.open_destinations(&dest_ids).await?;

        let psk = Psk::generate()?;
        let row = {
            let _guard = self.port_lock.lock().await;
            if self
                .store
                .list_streams(true, 1000)
                .await?
                .iter()
                .any(|s| s.sender_id == sender_id)
            {
                return Err(ControlError::Conflict(
                    "the sender is already streaming".into(),
                ));
            }
            let port = self.allocate_port().await?;
            let row = StreamRow {
                id: new_id("str"),
                sender_id: sender_id.clone(),
                state: StreamState::Starting.as_str().into(),
                reason: None,
                port: i64::from(port),
                created_by: who.email.clone(),
                created_at: now,
                live_at: None,
                ended_at: None,
                destination_ids: dest_ids.clone(),
            };
            self.store.insert_stream(&row).await?;
            row
        };
        let port = row.port as u16;
        lock(&self.runtime).insert(
            row.id.clone(),
            Runtime {
                sender_id: sender_id.clone(),
                psk: Some(psk.clone()),
                ..Runtime::default()
            },
        );
        self.receivers
            .spawn(&row.id, port, receiver_secrets(psk.to_hex(), destinations));
        self.audit(
            &who.email,
            "stream.start",
            &row.id,
            &format!("sender {sender_id} to {}", dest_ids.join(",")),
        )
        .await;
        self.emit(UiEvent::StreamState {
            stream_id: row.id.clone(),
            state: row.state.clone(),
            reason: None,
        });
        self.spawn_agent_start(row.id.clone());
        Ok(self.stream_view(row))
    }

    /// Tells the agent to start (or re-key) a stream, in the background.
    pub(super) fn spawn_agent_start(self: &Arc<Self>, stream_id: String) {
        let control = self.clone();
        tokio::spawn(async move {
            let (sender_id, psk) = {
                let runtime = lock(&control.runtime);
                let Some(rt) = runtime.get(&stream_id) else {
                    return;
                };
                let Some(psk) = rt.psk.clone() else { return };
                (rt.sender_id.clone(), psk)
            };
            let Ok(Some(row)) = control.store.stream(&stream_id).await else {
                return;
            };
            let start = Message::StreamStart(StreamStart {
                stream_id: stream_id.clone(),
                psk: psk.to_hex(),
                receiver: strata_protocol::ReceiverAddr {
                    host: control.config.public_host.clone(),
                    port: row.port as u16,
                },
                input: None,
            });
            match control
                .hub
                .command(&sender_id, &start, COMMAND_TIMEOUT)
                .await
            {
                Ok(rtt) => {
                    tracing::info!(%stream_id, ?rtt, "agent started the stream");
                    if let Some(rt) = lock(&control.runtime).get_mut(&stream_id) {
                        rt.agent_started = true;
                        rt.needs_start = false;
                    }
                    control.maybe_live(&stream_id).await;
                }
                Err(e) => {
                    tracing::warn!(%stream_id, error = %e, "agent did not start the stream");
                    if row.state == "starting" {
                        control
                            .fail_stream(&stream_id, &format!("agent: {e}"))
                            .await;
                    } else if let Some(rt) = lock(&control.runtime).get_mut(&stream_id) {
                        rt.needs_start = true;
                    }
                }
            }
        });
    }

    pub(super) async fn maybe_live(&self, stream_id: &str) {
        let ready = lock(&self.runtime)
            .get(stream_id)
            .is_some_and(|rt| rt.receiver_ready && rt.agent_started);
        if ready {
            self.transition(stream_id, StreamState::Starting, StreamState::Live, None)
                .await;
        }
    }

    /// Applies a checked transition if the stream is still in `from`.
    pub(super) async fn transition(
        &self,
        stream_id: &str,
        from: StreamState,
        to: StreamState,
        reason: Option<&str>,
    ) -> bool {
        if from.to(to).is_err() {
            return false;
        }
        match self
            .store
            .transition_stream(stream_id, from.as_str(), to.as_str(), reason, now_ms())
            .await
        {
            Ok(true) => {
                tracing::info!(%stream_id, from = %from, to = %to, ?reason, "stream state");
                self.emit(UiEvent::StreamState {
                    stream_id: stream_id.to_owned(),
                    state: to.as_str().into(),
                    reason: reason.map(str::to_owned),
                });
                true
            }
            Ok(false) => false,
            Err(e) => {
                tracing::error!(%stream_id, error = %e, "stream transition failed");
                false
            }
        }
    }

    /// Marks a stream failed from whatever active state it is in, and
    /// tears it down.
    pub(super) async fn fail_stream(&self, stream_id: &str, reason: &str) {
        for from in [
            StreamState::Starting,
            StreamState::Live,
            StreamState::Stopping,
        ] {
            if self
                .transition(stream_id, from, StreamState::Failed, Some(reason))
                .await
            {
                break;
            }
        }
        let sender = lock(&self.runtime).remove(stream_id).map(|rt| rt.sender_id);
        if let Some(sender) = sender {
            self.hub.send(
                &sender,
                &Message::StreamStop(StreamStop {
                    stream_id: stream_id.to_owned(),
                }),
            );
        }
        self.receivers.stop(stream_id).await;
        self.audit("control", "stream.failed", stream_id, reason)
            .await;
    }

    /// Stops a stream: the agent stops sending, the receiver is stopped,
    /// the stream ends.
    pub async fn stop_stream(&self, who: &Principal, id: &str) -> Result<StreamView> {
        self.authorize(who, Action::StopStream)?;
        let id = parse_id("stream_id", "str", id)?;
        let row = self
            .store
            .stream(&id)
            .await?
            .ok_or(ControlError::NotFound("stream"))?;
        let state = StreamState::parse(&row.state)?;
        state
            .to(StreamState::Stopping)
            .map_err(|e| ControlError::Conflict(e.to_string()))?;
        if !self
            .transition(&id, state, StreamState::Stopping, None)
            .await
        {
            return Err(ControlError::Conflict(
                "the stream changed state meanwhile; try again".into(),
            ));
        }
        self.audit(&who.email, "stream.stop", &id, "").await;
        let stop = Message::StreamStop(StreamStop {
            stream_id: id.clone(),
        });
        if let Err(e) = self
            .hub
            .command(&row.sender_id, &stop, Duration::from_secs(5))
            .await
        {
            tracing::warn!(stream_id = %id, error = %e, "agent did not confirm the stop");
        }
        self.receivers.stop(&id).await;
        lock(&self.runtime).remove(&id);
        self.transition(&id, StreamState::Stopping, StreamState::Ended, None)
            .await;
        let row = self
            .store
            .stream(&id)
            .await?
            .ok_or(ControlError::NotFound("stream"))?;
        Ok(self.stream_view(row))
    }

    pub async fn audit_log(&self, who: &Principal, limit: i64) -> Result<Vec<AuditView>> {
        self.authorize(who, Action::ViewAudit)?;
        Ok(self
            .store
            .list_audit(limit.clamp(1, 1000))
            .await?
            .into_iter()
            .map(|r| AuditView {
                at: r.at,
                actor: r.actor,
                action: r.action,
                target: r.target,
                detail: r.detail,
            })
            .collect())
    }
}
