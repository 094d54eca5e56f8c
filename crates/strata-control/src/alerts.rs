//! Alert rules, evaluated on observations, and their delivery by webhook.
//!
//! [`evaluate`] is a pure function of what the control plane observes and
//! the thresholds; [`Tracker`] turns successive evaluations into `firing` and
//! `resolved` notifications, each sent once. Delivery POSTs JSON to the
//! configured URL, retrying a few times.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::config::AlertConfig;
use crate::service::{now_ms, Control};

#[derive(Debug, Clone)]
pub struct StreamObs {
    pub id: String,
    pub sender_id: String,
    pub state: String,
    pub reason: Option<String>,
    pub live_at: Option<i64>,
    pub ended_at: Option<i64>,
    /// Highest loss over the links in the latest (recent) agent stats.
    pub max_loss_pct: Option<f64>,
    pub receiver_stats_at: Option<i64>,
}

#[derive(Debug, Clone)]
pub struct SenderObs {
    pub id: String,
    pub online: bool,
    pub unobserved_since: Option<i64>,
}

#[derive(Debug, Clone)]
pub struct Observations {
    pub now: i64,
    pub streams: Vec<StreamObs>,
    pub senders: Vec<SenderObs>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    StreamDown,
    SenderOffline,
    HighLoss,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Alert {
    pub rule: Rule,
    pub subject: String,
    pub detail: String,
}

/// A failed stream stays alerting this long (then it is history).
const FAILED_WINDOW_MS: i64 = 5 * 60 * 1000;
/// A live stream whose receiver said nothing this long is down.
const RECEIVER_SILENCE_MS: i64 = 5_000;

/// The alerts firing now.
pub fn evaluate(obs: &Observations, config: &AlertConfig) -> Vec<Alert> {
    let mut out = Vec::new();
    for s in &obs.streams {
        match s.state.as_str() {
            "failed" if s.ended_at.is_some_and(|t| obs.now - t < FAILED_WINDOW_MS) => {
                out.push(Alert {
                    rule: Rule::StreamDown,
                    subject: s.id.clone(),
                    detail: format!(
                        "stream failed: {}",
                        s.reason.as_deref().unwrap_or("no reason")
                    ),
                })
            }
            "live" => {
                let last = s.receiver_stats_at.or(s.live_at).unwrap_or(obs.now);
                if obs.now - last > RECEIVER_SILENCE_MS {
                    out.push(Alert {
                        rule: Rule::StreamDown,
                        subject: s.id.clone(),
                        detail: format!(
                            "no word from the receiver for {} s",
                            (obs.now - last) / 1000
                        ),
                    });
                }
                if let Some(loss) = s.max_loss_pct.filter(|l| *l > config.loss_pct) {
                    out.push(Alert {
                        rule: Rule::HighLoss,
                        subject: s.id.clone(),
                        detail: format!("loss {loss:.1}% above {:.1}%", config.loss_pct),
                    });
                }
            }
            _ => {}
        }
    }
    let limit = (config.sender_offline_secs * 1000) as i64;
    for sender in &obs.senders {
        let has_active = obs
            .streams
            .iter()
            .any(|s| s.sender_id == sender.id && matches!(s.state.as_str(), "starting" | "live"));
        if let (false, Some(since)) = (sender.online, sender.unobserved_since) {
            if has_active && obs.now - since >= limit {
                out.push(Alert {
                    rule: Rule::SenderOffline,
                    subject: sender.id.clone(),
                    detail: format!(
                        "unobserved for {} s with a stream running",
                        (obs.now - since) / 1000
                    ),
                });
            }
        }
    }
    out
}

/// A change in an alert's state, to be delivered.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Notification {
    pub status: &'static str,
    #[serde(flatten)]
    pub alert: Alert,
    pub at: i64,
}

/// Remembers what is firing so each change is notified once.
#[derive(Debug, Default)]
pub struct Tracker {
    firing: BTreeMap<(Rule, String), Alert>,
}

impl Tracker {
    pub fn update(&mut self, now_firing: Vec<Alert>, at: i64) -> Vec<Notification> {
        let mut next = BTreeMap::new();
        let mut out = Vec::new();
        for alert in now_firing {
            let key = (alert.rule, alert.subject.clone());
            if !self.firing.contains_key(&key) {
                out.push(Notification {
                    status: "firing",
                    alert: alert.clone(),
                    at,
                });
            }
            next.insert(key, alert);
        }
        for (key, alert) in &self.firing {
            if !next.contains_key(key) {
                out.push(Notification {
                    status: "resolved",
                    alert: alert.clone(),
                    at,
                });
            }
        }
        self.firing = next;
        out
    }

    pub fn firing(&self) -> impl Iterator<Item = &Alert> {
        self.firing.values()
    }
}

/// Evaluates the rules periodically and delivers changes until the control
/// plane is dropped.
pub fn spawn(control: Arc<Control>) -> tokio::task::JoinHandle<()> {
    let config = control.config().alerts.clone();
    let weak = Arc::downgrade(&control);
    drop(control);
    tokio::spawn(async move {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .ok();
        let mut tracker = Tracker::default();
        let mut tick = tokio::time::interval(Duration::from_millis(config.interval_ms));
        loop {
            tick.tick().await;
            let Some(control) = weak.upgrade() else {
                return;
            };
            let now = now_ms();
            let Ok(obs) = control.observe(now).await else {
                continue;
            };
            drop(control);
            let changes = tracker.update(evaluate(&obs, &config), now);
            metrics::gauge!("strata_alerts_firing").set(tracker.firing().count() as f64);
            for n in changes {
                tracing::warn!(rule = ?n.alert.rule, subject = %n.alert.subject, status = n.status, detail = %n.alert.detail, "alert");
                if let (Some(url), Some(client)) = (&config.webhook, &client) {
                    deliver(client, url, &n).await;
                }
            }
        }
    })
}

async fn deliver(client: &reqwest::Client, url: &str, n: &Notification) {
    for attempt in 0..3u32 {
        match client.post(url).json(n).send().await {
            Ok(resp) if resp.status().is_success() => {
                metrics::counter!("strata_alerts_delivered_total").increment(1);
                return;
            }
            Ok(resp) => tracing::warn!(status = %resp.status(), attempt, "alert webhook refused"),
            Err(e) => tracing::warn!(error = %e, attempt, "alert webhook failed"),
        }
        tokio::time::sleep(Duration::from_millis(500 << attempt)).await;
    }
    metrics::counter!("strata_alerts_undelivered_total").increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(state: &str) -> StreamObs {
        StreamObs {
            id: "str_1".into(),
            sender_id: "snd_1".into(),
            state: state.into(),
            reason: None,
            live_at: Some(0),
            ended_at: None,
            max_loss_pct: None,
            receiver_stats_at: Some(10_000),
        }
    }

    fn obs(streams: Vec<StreamObs>, senders: Vec<SenderObs>) -> Observations {
        Observations {
            now: 11_000,
            streams,
            senders,
        }
    }

    #[test]
    fn healthy_live_stream_fires_nothing() {
        assert!(evaluate(&obs(vec![stream("live")], vec![]), &AlertConfig::default()).is_empty());
    }

    #[test]
    fn loss_above_threshold_fires() {
        let mut s = stream("live");
        s.max_loss_pct = Some(7.5);
        let alerts = evaluate(&obs(vec![s], vec![]), &AlertConfig::default());
        assert_eq!(alerts.len(), 1);
        assert_eq!(alerts[0].rule, Rule::HighLoss);
    }

    #[test]
    fn silent_receiver_and_failed_stream_are_down() {
        let mut s = stream("live");
        s.receiver_stats_at = Some(1_000);
        let mut f = stream("failed");
        f.id = "str_2".into();
        f.ended_at = Some(10_500);
        let alerts = evaluate(&obs(vec![s, f], vec![]), &AlertConfig::default());
        assert_eq!(alerts.len(), 2);
        assert!(alerts.iter().all(|a| a.rule == Rule::StreamDown));
    }

    #[test]
    fn unobserved_sender_with_a_stream_fires_after_the_limit() {
        let config = AlertConfig {
            sender_offline_secs: 5,
            ..AlertConfig::default()
        };
        let sender = |since| SenderObs {
            id: "snd_1".into(),
            online: false,
            unobserved_since: Some(since),
        };
        assert!(
            evaluate(&obs(vec![stream("live")], vec![sender(8_000)]), &config)
                .iter()
                .all(|a| a.rule != Rule::SenderOffline)
        );
        assert!(
            evaluate(&obs(vec![stream("live")], vec![sender(5_000)]), &config)
                .iter()
                .any(|a| a.rule == Rule::SenderOffline)
        );
    }

    #[test]
    fn tracker_notifies_each_change_once() {
        let a = Alert {
            rule: Rule::HighLoss,
            subject: "str_1".into(),
            detail: "x".into(),
        };
        let mut t = Tracker::default();
        assert_eq!(t.update(vec![a.clone()], 1)[0].status, "firing");
        assert!(t.update(vec![a.clone()], 2).is_empty());
        let resolved = t.update(vec![], 3);
        assert_eq!(resolved.len(), 1);
        assert_eq!(resolved[0].status, "resolved");
    }
}
