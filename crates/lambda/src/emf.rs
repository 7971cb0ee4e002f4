//! The Lambdas' figures (`lineup_core::metrics`) as CloudWatch Embedded Metric Format:
//! recorded during an invocation, written to stdout as one JSON log line after it, which
//! CloudWatch Logs turns into metrics in the namespace `LINEUP_METRICS_NAMESPACE` (the
//! template sets `Lineup/{Deployment}`; its alarms read them there). No `pool` label
//! here: every label value would be a dimension, billed as a metric of its own.

use metrics_cloudwatch_embedded::{Builder, Collector};

pub type Emf = Option<&'static Collector>;

/// Installs the recorder once per process. `None` (logged) if another recorder won.
pub fn init(namespace: &str) -> Emf {
    lineup_core::metrics::set_per_pool(false);
    match Builder::new().cloudwatch_namespace(namespace.to_owned()).init() {
        Ok(c) => {
            lineup_core::metrics::describe();
            Some(c)
        }
        Err(e) => {
            tracing::warn!(error = %e, "no embedded metrics: cannot install the recorder");
            None
        }
    }
}

/// Writes what was recorded since the last flush.
pub fn flush(emf: Emf) {
    if let Some(c) = emf {
        if let Err(e) = c.flush(std::io::stdout().lock()) {
            tracing::warn!(error = %e, "cannot write embedded metrics");
        }
    }
}
