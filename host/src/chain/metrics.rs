//! The chain's metrics in Prometheus text.

use std::sync::atomic::Ordering;

use super::Chain;
use crate::plugins::{FailureKind, PluginShared};

impl Chain {
    /// Appends this chain's metrics (Prometheus text) to `out`.
    pub async fn render_metrics(&self, out: &mut String) {
        use std::fmt::Write as _;
        if self.interceptors.is_empty() {
            return;
        }
        let _ = writeln!(
            out,
            "# HELP shoal_plugin_failures_total Interceptor calls that trapped, timed out or hit the memory cap."
        );
        let _ = writeln!(out, "# TYPE shoal_plugin_failures_total counter");
        for ic in &self.interceptors {
            for k in [FailureKind::Trap, FailureKind::Timeout, FailureKind::Memory] {
                let _ = writeln!(
                    out,
                    "shoal_plugin_failures_total{{plugin=\"{}\",kind=\"{}\"}} {}",
                    ic.spec.name,
                    k.label(),
                    ic.shared.failures_of(k)
                );
            }
        }
        for (metric, help, get) in [
            (
                "shoal_plugin_dropped_total",
                "Messages an interceptor dropped.",
                (|s: &PluginShared| s.drops.load(Ordering::Relaxed)) as fn(&PluginShared) -> u64,
            ),
            (
                "shoal_plugin_deferred_total",
                "Messages an interceptor deferred to the queue.",
                |s| s.defers.load(Ordering::Relaxed),
            ),
            (
                "shoal_plugin_instantiations_total",
                "Interceptor instances created.",
                |s| s.instantiations.load(Ordering::Relaxed),
            ),
            (
                "shoal_plugin_log_lines_suppressed_total",
                "Log lines of an interceptor not written: it logged more than 20 a second (bursts of 100).",
                |s| s.logs_suppressed.load(Ordering::Relaxed),
            ),
        ] {
            let _ = writeln!(out, "# HELP {metric} {help}\n# TYPE {metric} counter");
            for ic in &self.interceptors {
                let _ = writeln!(
                    out,
                    "{metric}{{plugin=\"{}\"}} {}",
                    ic.spec.name,
                    get(&ic.shared)
                );
            }
        }
        for ic in &self.interceptors {
            let counters = ic
                .shared
                .counters
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            for c in counters {
                let _ = writeln!(
                    out,
                    "# HELP shoal_plugin_{} {}\n# TYPE shoal_plugin_{} counter\nshoal_plugin_{}{{plugin=\"{}\"}} {}",
                    c.name,
                    c.help,
                    c.name,
                    c.name,
                    ic.spec.name,
                    c.value.load(Ordering::Relaxed)
                );
            }
            for (name, value, counter, help) in ic.guest_stats().await {
                let name = crate::plugins::metric_name(&name);
                let kind = if counter { "counter" } else { "gauge" };
                let help: String = help.chars().filter(|c| *c != '\n').collect();
                let _ = writeln!(
                    out,
                    "# HELP shoal_plugin_{name} {help}\n# TYPE shoal_plugin_{name} {kind}\nshoal_plugin_{name}{{plugin=\"{}\"}} {value}",
                    ic.spec.name
                );
            }
        }
    }
}
