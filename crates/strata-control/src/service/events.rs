//! What agents and receivers report, and recovery after a restart.

use super::*;

impl Control {
    // ---- events from agents -------------------------------------------------

    pub(crate) async fn agent_connected(self: &Arc<Self>, sender_id: &str) {
        lock(&self.senders)
            .entry(sender_id.to_owned())
            .or_default()
            .unobserved_since = None;
        let _ = self.store.sender_seen(sender_id, None, now_ms()).await;
        self.emit(UiEvent::Presence {
            sender_id: sender_id.to_owned(),
            presence: Presence::Online.as_str(),
        });
    }

    pub(crate) async fn agent_disconnected(&self, sender_id: &str) {
        if self.hub.presence(sender_id) == Presence::Online {
            return; // a newer session took over
        }
        lock(&self.senders)
            .entry(sender_id.to_owned())
            .or_default()
            .unobserved_since = Some(now_ms());
        tracing::info!(%sender_id, "agent unobserved");
        self.emit(UiEvent::Presence {
            sender_id: sender_id.to_owned(),
            presence: Presence::Unobserved.as_str(),
        });
    }

    /// A heartbeat: record it and reconcile streams with what the agent runs.
    pub(crate) async fn heartbeat(self: &Arc<Self>, sender_id: &str, status: DeviceStatus) {
        let now = now_ms();
        let hostname = Name::parse("hostname", &status.hostname).ok();
        let running: HashSet<String> = status.running_streams.iter().cloned().collect();
        let write_seen = {
            let mut senders = lock(&self.senders);
            let live = senders.entry(sender_id.to_owned()).or_default();
            let hostname_changed =
                live.status.as_ref().map(|s| &s.hostname) != Some(&status.hostname);
            live.status = Some(status);
            // `last_seen_at` is for people: one write per sender every
            // SEEN_WRITE_MS keeps 1,000 heartbeats a second off the disk.
            let due = hostname_changed || now - live.seen_written_at >= SEEN_WRITE_MS;
            if due {
                live.seen_written_at = now;
            }
            due
        };
        if write_seen {
            let _ = self
                .store
                .sender_seen(sender_id, hostname.as_ref().map(Name::as_str), now)
                .await;
        }

        let active: Vec<StreamRow> = match self.store.active_streams_of(sender_id).await {
            Ok(rows) => rows,
            Err(e) => {
                tracing::error!(error = %e, "reading streams for a heartbeat");
                return;
            }
        };
        let active_ids: HashSet<&str> = active.iter().map(|s| s.id.as_str()).collect();
        for id in running
            .iter()
            .filter(|id| !active_ids.contains(id.as_str()))
        {
            tracing::info!(%sender_id, stream_id = %id, "agent runs a stream that is over; stopping it");
            self.hub.send(
                sender_id,
                &Message::StreamStop(StreamStop {
                    stream_id: id.clone(),
                }),
            );
        }
        for stream in active.iter().filter(|s| s.state != "stopping") {
            let mut resend = false;
            let mut rekey = false;
            {
                let mut runtime = lock(&self.runtime);
                let rt = runtime.entry(stream.id.clone()).or_insert_with(|| Runtime {
                    sender_id: sender_id.to_owned(),
                    ..Runtime::default()
                });
                if running.contains(&stream.id) && !rt.needs_start {
                    rt.agent_started = true;
                } else if rt.psk.is_some() && (rt.needs_start || rt.agent_started) {
                    // The agent lost the stream (restarted) or must be
                    // re-keyed: send it again.
                    rt.agent_started = false;
                    rt.needs_start = true;
                    resend = true;
                } else if rt.psk.is_none() && rt.standby.is_some() && !rt.needs_start {
                    // An adopted receiver holds a key this process never
                    // knew, and the agent no longer has it either: replace
                    // the receiver (it gets the standby key) and send the
                    // agent that key when the new one is up.
                    rt.needs_start = true;
                    rekey = true;
                }
            }
            if resend {
                self.spawn_agent_start(stream.id.clone());
            }
            if rekey {
                tracing::warn!(stream_id = %stream.id, "agent lost an adopted stream; re-keying it");
                self.receivers.restart(&stream.id);
                self.audit(
                    "control",
                    "stream.rekey",
                    &stream.id,
                    "agent lost the stream",
                )
                .await;
            }
            self.maybe_live(&stream.id).await;
        }
    }

    pub(super) fn owns(&self, sender_id: &str, stream_id: &str) -> bool {
        lock(&self.runtime)
            .get(stream_id)
            .is_some_and(|rt| rt.sender_id == sender_id)
    }

    pub(crate) async fn agent_stats(&self, sender_id: &str, stats: StreamStats) {
        if !self.owns(sender_id, &stats.stream_id) {
            tracing::debug!(%sender_id, stream_id = %stats.stream_id, "stats for a stream not of this sender");
            return;
        }
        for link in &stats.links {
            let labels = [
                ("stream_id", stats.stream_id.clone()),
                ("link", link.name.clone()),
            ];
            metrics::gauge!("strata_stream_link_bitrate_kbps", &labels).set(link.bitrate_kbps);
            metrics::gauge!("strata_stream_link_loss_pct", &labels).set(link.loss_pct);
            metrics::gauge!("strata_stream_link_rtt_ms", &labels).set(link.rtt_ms);
        }
        metrics::gauge!("strata_stream_encoder_kbps", "stream_id" => stats.stream_id.clone())
            .set(stats.encoder_kbps);
        let receiver_kbps = {
            let mut runtime = lock(&self.runtime);
            let Some(rt) = runtime.get_mut(&stats.stream_id) else {
                return;
            };
            rt.agent_stats = Some((now_ms(), stats.clone()));
            rt.receiver_kbps
        };
        self.emit(UiEvent::StreamStats {
            stream_id: stats.stream_id,
            encoder_kbps: stats.encoder_kbps,
            receiver_kbps,
            links: stats.links,
        });
    }

    pub(crate) async fn agent_stream_ended(&self, sender_id: &str, ended: StreamEnded) {
        if !self.owns(sender_id, &ended.stream_id) {
            return;
        }
        let reason = format!(
            "the sender ended it: {}",
            ended.reason.as_deref().unwrap_or("no reason given")
        );
        self.fail_stream(&ended.stream_id, &reason).await;
    }

    // ---- events from receivers ------------------------------------------------

    pub(super) async fn on_receiver_event(self: &Arc<Self>, stream_id: &str, event: RxEvent) {
        match event {
            RxEvent::Ready { pid } => {
                tracing::info!(%stream_id, pid, "receiver ready");
                if let Some(rt) = lock(&self.runtime).get_mut(stream_id) {
                    rt.receiver_ready = true;
                    // Health is judged from stats; count from readiness.
                    rt.receiver_stats_at = Some(now_ms());
                }
                self.maybe_live(stream_id).await;
            }
            RxEvent::Stats {
                bytes_in,
                bitrate_kbps,
            } => {
                metrics::gauge!("strata_receiver_bitrate_kbps", "stream_id" => stream_id.to_owned())
                    .set(bitrate_kbps);
                metrics::gauge!("strata_receiver_bytes_in", "stream_id" => stream_id.to_owned())
                    .set(bytes_in as f64);
                if let Some(rt) = lock(&self.runtime).get_mut(stream_id) {
                    rt.receiver_stats_at = Some(now_ms());
                    rt.receiver_kbps = bitrate_kbps;
                }
            }
            RxEvent::Error(message) => {
                tracing::warn!(%stream_id, %message, "receiver error");
            }
            RxEvent::Stopped(reason) => {
                tracing::info!(%stream_id, %reason, "receiver stopped");
                if let Some(rt) = lock(&self.runtime).get_mut(stream_id) {
                    rt.receiver_ready = false;
                }
            }
            RxEvent::Respawned { pid } => {
                tracing::warn!(%stream_id, pid, "receiver replaced");
                let rekey = {
                    let mut runtime = lock(&self.runtime);
                    match runtime.get_mut(stream_id) {
                        Some(rt) if rt.psk.is_none() => {
                            rt.psk = rt.standby.take();
                            rt.needs_start = true;
                            true
                        }
                        _ => false,
                    }
                };
                if rekey {
                    self.spawn_agent_start(stream_id.to_owned());
                }
            }
            RxEvent::GaveUp(reason) => {
                self.fail_stream(stream_id, &format!("receiver: {reason}"))
                    .await;
            }
        }
    }

    /// After a restart: adopts the receivers of streams still active, or
    /// replaces those that are gone.
    pub(super) async fn recover(self: &Arc<Self>) -> Result<()> {
        let active = self.store.list_streams(true, 1000).await?;
        for stream in active {
            let port = stream.port as u16;
            if stream.state == "stopping" {
                let standby = receiver_secrets(Psk::generate()?.to_hex(), Vec::new());
                if self.receivers.adopt(&stream.id, port, standby).await {
                    self.receivers.stop(&stream.id).await;
                }
                self.transition(&stream.id, StreamState::Stopping, StreamState::Ended, None)
                    .await;
                continue;
            }
            let destinations = match self.open_destinations(&stream.destination_ids).await {
                Ok(d) => d,
                Err(e) => {
                    self.fail_stream(&stream.id, &format!("destinations: {e}"))
                        .await;
                    continue;
                }
            };
            let fresh = Psk::generate()?;
            let secrets = receiver_secrets(fresh.to_hex(), destinations);
            if self
                .receivers
                .adopt(&stream.id, port, secrets.clone())
                .await
            {
                tracing::info!(stream_id = %stream.id, "receiver re-adopted");
                lock(&self.runtime).insert(
                    stream.id.clone(),
                    Runtime {
                        sender_id: stream.sender_id.clone(),
                        psk: None,
                        standby: Some(fresh),
                        receiver_ready: true,
                        ..Runtime::default()
                    },
                );
                self.audit("control", "receiver.adopt", &stream.id, "")
                    .await;
            } else {
                tracing::warn!(stream_id = %stream.id, "receiver gone; starting a new one with a new key");
                lock(&self.runtime).insert(
                    stream.id.clone(),
                    Runtime {
                        sender_id: stream.sender_id.clone(),
                        psk: Some(fresh),
                        needs_start: true,
                        ..Runtime::default()
                    },
                );
                self.receivers.spawn(&stream.id, port, secrets);
                self.audit("control", "receiver.respawn", &stream.id, "")
                    .await;
            }
        }
        Ok(())
    }

    /// Restarts receivers that stopped reporting stats (health from their
    /// stats: a process that is alive but wedged is as good as dead).
    pub(super) async fn check_receivers(&self, now: i64) {
        let stall = self.config.receiver_stall_ms as i64;
        let wedged: Vec<String> = {
            let mut runtime = lock(&self.runtime);
            runtime
                .iter_mut()
                .filter(|(_, rt)| rt.receiver_ready)
                .filter(|(_, rt)| rt.receiver_stats_at.is_some_and(|at| now - at > stall))
                .map(|(id, rt)| {
                    // Not again until the replacement reports.
                    rt.receiver_ready = false;
                    id.clone()
                })
                .collect()
        };
        for id in wedged {
            tracing::warn!(stream_id = %id, stall_ms = stall, "receiver silent; restarting it");
            self.receivers.restart(&id);
            self.audit("control", "receiver.restart", &id, "no stats")
                .await;
        }
    }

    // ---- observations for metrics and alerts -----------------------------------

    /// Updates the gauges that are computed rather than counted.
    pub async fn refresh_gauges(&self) {
        metrics::gauge!("strata_senders_online").set(self.hub.online_count() as f64);
        if let Ok(counts) = self.store.count_streams_by_state().await {
            let counts: HashMap<String, i64> = counts.into_iter().collect();
            for state in StreamState::ALL {
                let n = counts.get(state.as_str()).copied().unwrap_or(0);
                metrics::gauge!("strata_streams", "state" => state.as_str()).set(n as f64);
            }
        }
    }

    /// What the alert rules look at.
    pub async fn observe(&self, now: i64) -> Result<crate::alerts::Observations> {
        use crate::alerts::{Observations, SenderObs, StreamObs};
        let streams = self.store.list_streams(false, 200).await?;
        let runtime = lock(&self.runtime);
        let stream_obs = streams
            .into_iter()
            .filter(|s| s.state != "ended")
            .map(|s| {
                let rt = runtime.get(&s.id);
                StreamObs {
                    max_loss_pct: rt.and_then(|rt| rt.agent_stats.as_ref()).and_then(
                        |(at, stats)| {
                            (now - at < 5_000).then(|| {
                                stats
                                    .links
                                    .iter()
                                    .map(|l| l.loss_pct)
                                    .fold(0.0_f64, f64::max)
                            })
                        },
                    ),
                    receiver_stats_at: rt.and_then(|rt| rt.receiver_stats_at),
                    id: s.id,
                    sender_id: s.sender_id,
                    state: s.state,
                    reason: s.reason,
                    ended_at: s.ended_at,
                    live_at: s.live_at,
                }
            })
            .collect();
        drop(runtime);
        let senders = lock(&self.senders);
        let sender_obs = senders
            .iter()
            .map(|(id, live)| SenderObs {
                id: id.clone(),
                online: self.hub.presence(id) == Presence::Online,
                unobserved_since: live.unobserved_since,
            })
            .collect();
        Ok(Observations {
            now,
            streams: stream_obs,
            senders: sender_obs,
        })
    }
}
