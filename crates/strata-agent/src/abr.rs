//! Adaptive bitrate: the encoder's target follows what the links deliver.
//!
//! Once a second the sender measures what the encoder actually produced and
//! what each link carried (librist's bandwidth, and the share of its packets
//! that were retransmissions).
//!
//! - Links behind the encoder (they delivered under 85% of its measured
//!   output): the target is scaled so that the output lands at 92% of what
//!   they delivered, at most halving it in one step.
//! - Links keeping up but resending more than a tenth of their packets (a
//!   queue overflowing near capacity): the target steps down 15%.
//! - A clean second: up 10%, but only 3% once within 10% of the rate where
//!   trouble last began, so the controller probes near capacity instead of
//!   running into it again at full speed.
//!
//! Judging by measured output and delivery rather than by the target matters
//! twice: a link that silently caps its rate is not asked for more than it
//! carries, and an encoder that overshoots its target (x264 on noise made
//! 1.6 times what it was asked for) is corrected by the ratio.

/// One second of measurements.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sample {
    /// What the encoder produced (kb/s), measured at its output.
    pub encoder_kbps: f64,
    pub links: Vec<LinkSample>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct LinkSample {
    /// Sent on this link, retransmissions included (kb/s).
    pub sent_kbps: f64,
    /// Share of this link's packets in the second that were resent, 0 to 1.
    pub retransmitted_share: f64,
    /// librist's quality, 0 to 100.
    pub quality: f64,
    pub up: bool,
}

/// The controller's state.
#[derive(Debug, Clone, PartialEq)]
pub struct Abr {
    pub target_kbps: f64,
    pub min_kbps: f64,
    pub max_kbps: f64,
    clean_seconds: u32,
    /// The target when trouble last began.
    trouble_at: Option<f64>,
}

/// Seconds without trouble before the target is raised, and by how much.
const CLEAN_BEFORE_RAISE: u32 = 1;
const RAISE: f64 = 1.10;
/// The step once near the rate where trouble last began.
const NEAR_RAISE: f64 = 1.03;

impl Abr {
    pub fn new(start_kbps: f64, min_kbps: f64, max_kbps: f64) -> Abr {
        Abr {
            target_kbps: start_kbps.clamp(min_kbps, max_kbps),
            min_kbps,
            max_kbps,
            clean_seconds: 0,
            trouble_at: None,
        }
    }

    /// Takes one second's sample; returns the new target when it changed.
    pub fn step(&mut self, sample: &Sample) -> Option<f64> {
        let up: Vec<&LinkSample> = sample.links.iter().filter(|l| l.up).collect();
        let delivered: f64 = up
            .iter()
            .map(|l| l.sent_kbps * (1.0 - l.retransmitted_share).clamp(0.0, 1.0))
            .sum();
        let retrying = up.iter().any(|l| l.retransmitted_share > 0.10);
        let worst_quality = up.iter().map(|l| l.quality).fold(100.0, f64::min);
        let behind = sample.encoder_kbps > 0.0 && delivered < 0.85 * sample.encoder_kbps;
        let congested = up.is_empty() || behind || retrying || worst_quality < 90.0;
        let before = self.target_kbps;
        if congested {
            if self.clean_seconds > 0 || self.trouble_at.is_none() {
                self.trouble_at = Some(before);
            }
            self.clean_seconds = 0;
            // With every link down there is no measure of capacity: hold.
            if !up.is_empty() {
                let next = if behind && delivered > 0.0 && sample.encoder_kbps > 0.0 {
                    // Aim the encoder's measured output at 92% of what got
                    // through, correcting for how far it misses its target.
                    (before * 0.92 * delivered / sample.encoder_kbps)
                        .clamp(before * 0.5, before * 0.95)
                } else {
                    before * 0.85
                };
                self.target_kbps = next.clamp(self.min_kbps, self.max_kbps);
            }
        } else {
            self.clean_seconds += 1;
            if self.clean_seconds >= CLEAN_BEFORE_RAISE {
                self.clean_seconds = 0;
                let near = self.trouble_at.is_some_and(|t| before >= t * 0.9);
                let step = if near { NEAR_RAISE } else { RAISE };
                self.target_kbps = (before * step).min(self.max_kbps);
            }
        }
        ((self.target_kbps - before).abs() >= 1.0).then_some(self.target_kbps)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(sent: f64, retry: f64, quality: f64) -> LinkSample {
        LinkSample {
            sent_kbps: sent,
            retransmitted_share: retry / sent,
            quality,
            up: true,
        }
    }

    #[test]
    fn drops_to_what_the_links_delivered_then_climbs_back() {
        let mut abr = Abr::new(4000.0, 300.0, 5000.0);
        // The encoder makes 4000 but the links only get 2000 through.
        let starved = Sample {
            encoder_kbps: 4000.0,
            links: vec![link(1500.0, 200.0, 80.0), link(900.0, 200.0, 85.0)],
        };
        let lowered = abr.step(&starved).expect("lowered");
        // 92% of the 2000 delivered would be 1840, but one step at most
        // halves the target.
        assert_eq!(lowered, 2000.0);
        // Healthy seconds raise it again, a step at a time, not at once.
        let healthy = Sample {
            encoder_kbps: lowered,
            links: vec![
                link(lowered / 2.0, 0.0, 100.0),
                link(lowered / 2.0, 0.0, 100.0),
            ],
        };
        let mut raised = None;
        for _ in 0..CLEAN_BEFORE_RAISE {
            raised = abr.step(&healthy);
        }
        let raised = raised.expect("raised after clean seconds");
        assert!((raised - lowered * RAISE).abs() < 1.0, "{raised}");
    }

    #[test]
    fn an_encoder_that_overshoots_is_corrected_by_the_ratio() {
        let mut abr = Abr::new(4000.0, 300.0, 6000.0);
        // Asked for 4000, it makes 6400; the links carry 3600.
        let sample = Sample {
            encoder_kbps: 6400.0,
            links: vec![link(1800.0, 0.0, 100.0), link(1800.0, 0.0, 100.0)],
        };
        let target = abr.step(&sample).unwrap();
        // 4000 * 0.92 * 3600 / 6400: the output should land near 3312.
        assert!((target - 2070.0).abs() < 1.0, "{target}");
    }

    #[test]
    fn retransmissions_near_capacity_step_down_gently_then_probe_slowly() {
        let mut abr = Abr::new(5000.0, 300.0, 6000.0);
        // The links keep up, but over a tenth of the packets are resends.
        let full = Sample {
            encoder_kbps: 5000.0,
            links: vec![link(2600.0, 300.0, 95.0), link(2600.0, 300.0, 95.0)],
        };
        assert_eq!(abr.step(&full), Some(4250.0));
        let clean = Sample {
            encoder_kbps: 4250.0,
            links: vec![link(2125.0, 0.0, 100.0), link(2125.0, 0.0, 100.0)],
        };
        // 15% under where trouble began: back up by 10% ...
        let next = abr.step(&clean).unwrap();
        assert!((next - 4250.0 * RAISE).abs() < 1.0, "{next}");
        // ... and, now within 10% of it, by 3%.
        let after = abr.step(&clean).unwrap();
        assert!((after - next * NEAR_RAISE).abs() < 1.0, "{after}");
    }

    #[test]
    fn judged_by_delivery_not_by_the_target() {
        let mut abr = Abr::new(3000.0, 300.0, 5000.0);
        // The encoder undershoots its target (a static scene): the links
        // carry all of it, so nothing is wrong and the target never drops.
        let sample = Sample {
            encoder_kbps: 800.0,
            links: vec![link(400.0, 0.0, 100.0), link(400.0, 0.0, 100.0)],
        };
        for _ in 0..5 {
            abr.step(&sample);
            assert!(abr.target_kbps >= 3000.0, "{}", abr.target_kbps);
        }
    }

    #[test]
    fn stays_within_bounds_and_holds_when_every_link_is_down() {
        let mut abr = Abr::new(1000.0, 300.0, 1100.0);
        let down = Sample {
            encoder_kbps: 1000.0,
            links: vec![LinkSample::default()],
        };
        assert_eq!(abr.step(&down), None);
        let starved = Sample {
            encoder_kbps: 1000.0,
            links: vec![link(50.0, 40.0, 10.0)],
        };
        for _ in 0..10 {
            abr.step(&starved);
        }
        assert_eq!(abr.target_kbps, 300.0);
        let healthy = Sample {
            encoder_kbps: 300.0,
            links: vec![link(300.0, 0.0, 100.0)],
        };
        for _ in 0..100 {
            abr.step(&healthy);
        }
        assert_eq!(abr.target_kbps, 1100.0);
    }
}
