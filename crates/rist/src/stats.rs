//! librist's statistics, from the JSON it renders (the same numbers as its
//! C structs, without depending on their layout).

use serde_json::Value;

/// One report.
#[derive(Debug, Clone, PartialEq)]
pub enum Stats {
    SenderPeer(SenderPeerStats),
    ReceiverFlow(ReceiverFlowStats),
}

/// A sender's view of one peer (link).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SenderPeerStats {
    pub peer_id: u64,
    /// The name of our link this peer is (`Link::name`), filled in by the
    /// sender from the peer's id: librist numbers a context's peers 1, 2,
    /// ... in the order they were created.
    pub link: String,
    /// The remote's name, once it has told it.
    pub cname: String,
    /// Bits per second sent, retransmissions included.
    pub bandwidth_bps: f64,
    pub retry_bandwidth_bps: f64,
    pub sent: u64,
    /// Control packets (RTCP) received from the remote in the interval:
    /// none means the link carries nothing back, so it is down.
    pub received: u64,
    pub retransmitted: u64,
    /// librist's quality: share of packets sent without trouble, percent.
    pub quality: f64,
    pub rtt_ms: f64,
}

/// A receiver's view of its flow (all peers together).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReceiverFlowStats {
    /// Peers (links) the flow arrives on, and how many of them are alive.
    pub peers: u64,
    pub peers_alive: u64,
    pub bandwidth_bps: f64,
    pub received: u64,
    pub missing: u64,
    pub recovered: u64,
    pub lost: u64,
    pub quality: f64,
    pub rtt_ms: f64,
}

fn num(v: &Value, key: &str) -> f64 {
    v.get(key).and_then(Value::as_f64).unwrap_or(0.0)
}

fn count(v: &Value, key: &str) -> u64 {
    v.get(key).and_then(Value::as_u64).unwrap_or(0)
}

impl Stats {
    /// Reads one of librist's JSON reports; `None` for a shape we do not know.
    pub fn parse(json: &str) -> Option<Stats> {
        let v: Value = serde_json::from_str(json).ok()?;
        if let Some(peer) = v.pointer("/sender-stats/peer") {
            let s = peer.get("stats").unwrap_or(peer);
            return Some(Stats::SenderPeer(SenderPeerStats {
                peer_id: count(peer, "id"),
                link: String::new(),
                cname: peer
                    .get("cname")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
                bandwidth_bps: num(s, "bandwidth"),
                retry_bandwidth_bps: num(s, "retry_bandwidth"),
                sent: count(s, "sent"),
                received: count(s, "received"),
                retransmitted: count(s, "retransmitted"),
                quality: num(s, "quality"),
                rtt_ms: num(s, "rtt"),
            }));
        }
        if let Some(flow) = v.pointer("/receiver-stats/flowinstant") {
            let s = flow.get("stats").unwrap_or(flow);
            let peers = flow
                .get("peers")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let rtt_ms = peers
                .iter()
                .filter_map(|p| p.pointer("/stats/avg_rtt").and_then(Value::as_f64))
                .fold(0.0, f64::max);
            return Some(Stats::ReceiverFlow(ReceiverFlowStats {
                peers: peers.len() as u64,
                peers_alive: peers.iter().filter(|p| count(p, "dead") == 0).count() as u64,
                bandwidth_bps: num(s, "bitrate"),
                received: count(s, "received"),
                missing: count(s, "missing"),
                recovered: count(s, "recovered_total"),
                lost: count(s, "lost"),
                quality: num(s, "quality"),
                rtt_ms,
            }));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_librists_reports() {
        let sender = r#"{"sender-stats":{"peer":{"flow_id":6,"id":1,"cname":"a","type":"data","stats":{"quality":99.5,"sent":168,"received":19,"retransmitted":2,"bandwidth":1531649,"retry_bandwidth":100,"rtt":5,"avg_rtt":5}}}}"#;
        let Some(Stats::SenderPeer(p)) = Stats::parse(sender) else {
            panic!()
        };
        assert_eq!((p.peer_id, p.sent, p.retransmitted), (1, 168, 2));
        assert_eq!(
            (p.bandwidth_bps, p.quality, p.rtt_ms),
            (1531649.0, 99.5, 5.0)
        );
        let receiver = r#"{"receiver-stats":{"flowinstant":{"flow_id":6,"dead":0,"stats":{"quality":100,"received":148,"missing":3,"recovered_total":3,"lost":0,"bitrate":1489595},"peers":[{"id":2,"dead":0,"stats":{"avg_rtt":6}},{"id":3,"dead":1,"stats":{"avg_rtt":9}}]}}}"#;
        let Some(Stats::ReceiverFlow(f)) = Stats::parse(receiver) else {
            panic!()
        };
        assert_eq!(
            (f.peers, f.peers_alive, f.received, f.recovered),
            (2, 1, 148, 3)
        );
        assert_eq!((f.bandwidth_bps, f.rtt_ms), (1489595.0, 9.0));
        assert!(Stats::parse("{}").is_none());
    }
}
