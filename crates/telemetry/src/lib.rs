//! Telemetry: logging and Prometheus metrics set up the same way in every product.
//!
//! This crate installs a `tracing` subscriber and a process-wide `metrics`
//! recorder that renders the Prometheus text format. It does not serve HTTP:
//! each product mounts [`Metrics::render`] on its own admin or API router, so
//! the choice of port, auth and framework stays with the product.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Errors from setting telemetry up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("invalid histogram buckets for {metric}: {reason}")]
    Buckets { metric: String, reason: String },
    #[error("installing the metrics recorder: {0}")]
    Install(String),
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Installs the global `tracing` subscriber, writing to stderr.
///
/// `filter` is an `EnvFilter` directive (for example `info,hyper=warn`); the
/// `RUST_LOG` variable wins when set. Calling this twice is harmless: the
/// second call does nothing, which keeps tests that start several servers in
/// one process simple.
pub fn init_logging(filter: &str, format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(filter));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// A handle on the process-wide Prometheus recorder.
#[derive(Clone)]
pub struct Metrics {
    handle: PrometheusHandle,
}

impl Metrics {
    /// Renders every metric recorded so far in the Prometheus text format.
    pub fn render(&self) -> String {
        self.handle.render()
    }
}

/// Histogram buckets (seconds) fine enough to see sub-millisecond latencies.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.000_75, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

static METRICS: OnceLock<Metrics> = OnceLock::new();

/// How often queued histogram samples are folded into their buckets.
const UPKEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// Installs the global metrics recorder once and returns its handle.
///
/// Every histogram whose name ends in `_seconds` gets [`LATENCY_BUCKETS`].
/// Later calls return the handle installed by the first, so servers started
/// several times in one test process share one registry.
pub fn metrics() -> Result<Metrics, TelemetryError> {
    if let Some(m) = METRICS.get() {
        return Ok(m.clone());
    }
    let builder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
        .map_err(|e| TelemetryError::Buckets {
            metric: "*_seconds".into(),
            reason: e.to_string(),
        })?;
    let recorder = builder.build_recorder();
    let handle = recorder.handle();
    // Another thread may have won the race; only the winner installs.
    let mut installed = false;
    let m = METRICS.get_or_init(|| {
        installed = true;
        Metrics { handle }
    });
    if installed {
        metrics::set_global_recorder(recorder)
            .map_err(|e| TelemetryError::Install(e.to_string()))?;
        // Histogram samples queue up until they are folded into buckets;
        // without regular upkeep a process nobody scrapes would grow by
        // every sample it records.
        let upkeep = m.handle.clone();
        std::thread::Builder::new()
            .name("metrics-upkeep".into())
            .spawn(move || loop {
                std::thread::sleep(UPKEEP_INTERVAL);
                upkeep.run_upkeep();
            })
            .map_err(|e| TelemetryError::Install(format!("starting the upkeep thread: {e}")))?;
    }
    Ok(m.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_histogram_renders_sub_millisecond_buckets() {
        let m = metrics().unwrap();
        metrics::histogram!("telemetry_test_latency_seconds").record(0.0002);
        let text = m.render();
        assert!(
            text.contains("telemetry_test_latency_seconds_bucket{le=\"0.00025\"} 1"),
            "{text}"
        );
        assert!(text.contains("telemetry_test_latency_seconds_bucket{le=\"0.0001\"} 0"));
        // A second call hands back the same registry.
        metrics::counter!("telemetry_test_total").increment(2);
        assert!(metrics()
            .unwrap()
            .render()
            .contains("telemetry_test_total 2"));
    }
}
