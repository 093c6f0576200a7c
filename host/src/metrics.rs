//! Prometheus metrics, served at `/metrics` on the admin listener.
//!
//! The code that logs an event bumps the matching metric in the same place,
//! so logs and metrics agree.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of per-flow, per-version metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FlowLabels {
    /// The flow.
    pub flow: String,
    /// `owner/name@version`.
    pub algorithm: String,
}

/// Labels of outcome counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// The flow.
    pub flow: String,
    /// `owner/name@version`.
    pub algorithm: String,
    /// The failure reason code.
    pub reason: String,
}

/// Labels of per-flow metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FlowOnly {
    /// The flow.
    pub flow: String,
}

/// Labels of per-algorithm-version metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AlgorithmLabels {
    /// `owner/name/version`.
    pub algorithm: String,
}

/// Labels of a canary's rollout decisions.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RolloutLabels {
    /// The flow.
    pub flow: String,
    /// The canary version.
    pub version: String,
    /// `rolled_back` or `promoted`.
    pub decision: String,
}

/// Labels of a shadow version's metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ShadowLabels {
    /// The flow.
    pub flow: String,
    /// The shadow version.
    pub version: String,
}

/// Labels of a shadow's runs: how each ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ShadowRunLabels {
    /// The flow.
    pub flow: String,
    /// The shadow version.
    pub version: String,
    /// `ok`, or the failure reason (`trap`, `timeout`, ...).
    pub verdict: String,
    /// Whether its output equals the serving version's: `equal`,
    /// `different`, or `none` when the serving attempt failed.
    pub output: String,
}

/// What is counted of flows' shadow versions.
pub struct ShadowMetrics {
    /// Shadow runs, by verdict and agreement with the serving output.
    pub runs: Family<ShadowRunLabels, Counter>,
    /// Messages not shadowed: the shadow's budget or the pool was full.
    pub skipped: Family<ShadowLabels, Counter>,
    /// Shadows stopped because their gate failed.
    pub stopped: Family<ShadowLabels, Counter>,
    /// Time of each shadow run.
    pub seconds: HistogramFamily<ShadowLabels>,
    /// Peak linear memory of each shadow run.
    pub peak_memory_bytes: HistogramFamily<ShadowLabels>,
}

impl ShadowMetrics {
    fn new() -> Self {
        Self {
            runs: Family::default(),
            skipped: Family::default(),
            stopped: Family::default(),
            seconds: Family::new_with_constructor(seconds),
            peak_memory_bytes: Family::new_with_constructor(bytes),
        }
    }

    fn register(&self, registry: &mut Registry) {
        registry.register(
            "shadow_runs",
            "Messages run again by a flow's shadow version, by verdict and by whether its output equals the serving one",
            self.runs.clone(),
        );
        registry.register(
            "shadow_skipped",
            "Messages a flow's shadow did not run: its concurrency budget or the instance pool was full",
            self.skipped.clone(),
        );
        registry.register(
            "shadow_stopped",
            "Shadow versions stopped because their gate failed",
            self.stopped.clone(),
        );
        registry.register(
            "shadow_duration_seconds",
            "Time to instantiate and run a shadow version on one message",
            self.seconds.clone(),
        );
        registry.register(
            "shadow_peak_memory_bytes",
            "Peak linear memory of a shadow version's run on one message",
            self.peak_memory_bytes.clone(),
        );
    }
}

/// Labels of per-broker metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BrokerLabels {
    /// The broker connection.
    pub broker: String,
}

/// Labels of per-partition metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartitionLabels {
    /// The flow.
    pub flow: String,
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: String,
}

/// Labels of outgoing HTTP requests.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutboundLabels {
    /// `owner/name`.
    pub algorithm: String,
    /// The destination host, as the request named it.
    pub host: String,
    /// `2xx` to `5xx`, or `error` when no response came.
    pub status: String,
}

/// Labels of refused outgoing HTTP requests.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutboundDenialLabels {
    /// `owner/name`.
    pub algorithm: String,
    /// `not_granted`, `not_public`, `admin`, `limit` or `invalid`.
    pub reason: String,
}

/// Algorithms' outgoing HTTP requests (`wasi:http`), counted by the
/// sandbox and registered with [`Metrics::register_outbound`].
#[derive(Clone, Debug)]
pub struct OutboundMetrics {
    /// Requests sent, by algorithm, host and status class.
    pub requests: Family<OutboundLabels, Counter>,
    /// Their durations, to the response head.
    pub duration_seconds: HistogramFamily<OutboundLabels>,
    /// Requests refused, by algorithm and reason.
    pub denied: Family<OutboundDenialLabels, Counter>,
}

impl Default for OutboundMetrics {
    fn default() -> Self {
        Self {
            requests: Family::default(),
            duration_seconds: Family::new_with_constructor(seconds),
            denied: Family::default(),
        }
    }
}

/// One flow's per-message metrics for one algorithm version, from
/// [`Metrics::flow_handles`].
#[derive(Clone, Debug)]
pub struct FlowMetrics {
    /// The labels they were made for.
    pub labels: FlowLabels,
    /// See [`Metrics::received`].
    pub received: Counter,
    /// See [`Metrics::succeeded`].
    pub succeeded: Counter,
    /// See [`Metrics::in_flight`].
    pub in_flight: Gauge,
    /// See [`Metrics::invocation_seconds`].
    pub invocation_seconds: Histogram,
    /// See [`Metrics::instance_wait_seconds`].
    pub instance_wait_seconds: Histogram,
    /// See [`Metrics::end_to_end_seconds`].
    pub end_to_end_seconds: Histogram,
    /// See [`Metrics::peak_memory_bytes`].
    pub peak_memory_bytes: Histogram,
    /// See [`Metrics::fuel_used`].
    pub fuel_used: Histogram,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn seconds() -> Histogram {
    // 50 µs to ~100 s.
    Histogram::new(exponential_buckets(0.00005, 2.0, 22))
}

fn bytes() -> Histogram {
    // 64 KiB to 4 GiB.
    Histogram::new(exponential_buckets(65536.0, 2.0, 17))
}

fn fuel() -> Histogram {
    Histogram::new(exponential_buckets(1000.0, 4.0, 16))
}

/// Every metric of the router.
pub struct Metrics {
    registry: Registry,
    /// Messages handed to a flow.
    pub received: Family<FlowLabels, Counter>,
    /// Messages processed and acknowledged.
    pub succeeded: Family<FlowLabels, Counter>,
    /// Messages given back for another attempt, by reason.
    pub retried: Family<ReasonLabels, Counter>,
    /// Messages sent to a dead-letter topic, by reason.
    pub dead_lettered: Family<ReasonLabels, Counter>,
    /// Messages that failed for good on a flow without a dead-letter topic.
    pub dropped: Family<ReasonLabels, Counter>,
    /// Messages acknowledged without invocation: the flow's filter left
    /// them out.
    pub filtered: Family<FlowOnly, Counter>,
    /// Calls of `apply-batch` (flows with `batch`).
    pub batches: Family<FlowOnly, Counter>,
    /// Messages in those calls.
    pub batched_messages: Family<FlowOnly, Counter>,
    /// Acks, retries and extensions the broker refused.
    pub settle_errors: Family<FlowOnly, Counter>,
    /// Canaries rolled back (their gate failed, or an operator said so) or
    /// promoted.
    pub rollout_decisions: Family<RolloutLabels, Counter>,
    /// The flows' shadow versions.
    pub shadow: ShadowMetrics,
    /// Messages being handled now.
    pub in_flight: Family<FlowOnly, Gauge>,
    /// Time to instantiate and run the algorithm.
    pub invocation_seconds: HistogramFamily<FlowLabels>,
    /// Time an invocation waited for a free instance slot of the pool.
    pub instance_wait_seconds: HistogramFamily<FlowOnly>,
    /// Log lines of repeated errors left out (counted in the next line).
    pub log_lines_suppressed: Family<FlowOnly, Counter>,
    /// From the broker's enqueue time to settlement.
    pub end_to_end_seconds: HistogramFamily<FlowOnly>,
    /// Peak linear memory of each invocation.
    pub peak_memory_bytes: HistogramFamily<FlowLabels>,
    /// Fuel used by each invocation, when fuel is counted.
    pub fuel_used: HistogramFamily<FlowLabels>,
    /// Algorithm versions loaded or reloaded.
    pub plugin_loads: Family<AlgorithmLabels, Counter>,
    /// Plugin files rejected.
    pub plugin_rejections: Family<AlgorithmLabels, Counter>,
    /// Whether each broker connection answers (1) or not (0).
    pub broker_up: Family<BrokerLabels, Gauge>,
    /// Messages behind the end of each partition (Kafka).
    pub consumer_lag: Family<PartitionLabels, Gauge>,
    /// Keys parked by a failed message (`on_key_failure = "park"`).
    pub parked_keys: Family<FlowOnly, Gauge>,
    /// Messages held for parked keys.
    pub parked_messages: Family<FlowOnly, Gauge>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("eventflow");
        let m = Self {
            received: Family::default(),
            succeeded: Family::default(),
            retried: Family::default(),
            dead_lettered: Family::default(),
            dropped: Family::default(),
            filtered: Family::default(),
            batches: Family::default(),
            batched_messages: Family::default(),
            settle_errors: Family::default(),
            rollout_decisions: Family::default(),
            shadow: ShadowMetrics::new(),
            in_flight: Family::default(),
            invocation_seconds: Family::new_with_constructor(seconds),
            instance_wait_seconds: Family::new_with_constructor(seconds),
            log_lines_suppressed: Family::default(),
            end_to_end_seconds: Family::new_with_constructor(seconds),
            peak_memory_bytes: Family::new_with_constructor(bytes),
            fuel_used: Family::new_with_constructor(fuel),
            plugin_loads: Family::default(),
            plugin_rejections: Family::default(),
            broker_up: Family::default(),
            consumer_lag: Family::default(),
            parked_keys: Family::default(),
            parked_messages: Family::default(),
            registry: Registry::default(),
        };
        m.register_message_counts(&mut registry);
        m.register_invocation_metrics(&mut registry);
        m.register_router_metrics(&mut registry);
        m.shadow.register(&mut registry);
        Self { registry, ..m }
    }

    /// Registers what happened to the flows' messages: received, settled each way, in flight.
    fn register_message_counts(&self, registry: &mut Registry) {
        registry.register(
            "messages_received",
            "Messages handed to a flow",
            self.received.clone(),
        );
        registry.register(
            "messages_succeeded",
            "Messages processed and acknowledged",
            self.succeeded.clone(),
        );
        registry.register(
            "messages_retried",
            "Messages given back for another attempt, by failure reason",
            self.retried.clone(),
        );
        registry.register(
            "messages_dead_lettered",
            "Messages sent to a dead-letter topic, by failure reason",
            self.dead_lettered.clone(),
        );
        registry.register(
            "messages_dropped",
            "Messages that failed for good on a flow without a dead-letter topic",
            self.dropped.clone(),
        );
        registry.register(
            "messages_filtered",
            "Messages acknowledged without invoking the algorithm: the flow's filter left them out",
            self.filtered.clone(),
        );
        registry.register(
            "batches",
            "Calls of apply-batch, on flows with batches",
            self.batches.clone(),
        );
        registry.register(
            "batched_messages",
            "Messages in calls of apply-batch: divided by eventflow_batches, the mean batch size",
            self.batched_messages.clone(),
        );
        registry.register(
            "rollout_decisions",
            "Canary versions rolled back or promoted",
            self.rollout_decisions.clone(),
        );
        registry.register(
            "settle_errors",
            "Acks, retries and lease extensions the broker refused",
            self.settle_errors.clone(),
        );
        registry.register(
            "in_flight",
            "Messages being handled now (running, waiting for a slot or for their commit)",
            self.in_flight.clone(),
        );
        registry.register(
            "parked_keys",
            "Keys whose later messages are held after a failure (on_key_failure = \"park\")",
            self.parked_keys.clone(),
        );
        registry.register(
            "parked_messages",
            "Messages held for parked keys until an operator releases or drops them",
            self.parked_messages.clone(),
        );
    }

    /// Registers the invocations' timings and resource use, and the log lines left out.
    fn register_invocation_metrics(&self, registry: &mut Registry) {
        registry.register(
            "invocation_duration_seconds",
            "Time to instantiate and run the algorithm on one message",
            self.invocation_seconds.clone(),
        );
        registry.register(
            "instance_wait_seconds",
            "Time an invocation waited for a free instance slot of the pool ([sandbox] max_instances)",
            self.instance_wait_seconds.clone(),
        );
        registry.register(
            "log_lines_suppressed",
            "Log lines of repeated errors left out; each summary line says how many",
            self.log_lines_suppressed.clone(),
        );
        registry.register(
            "end_to_end_latency_seconds",
            "From the broker's enqueue time to settlement",
            self.end_to_end_seconds.clone(),
        );
        registry.register(
            "invocation_peak_memory_bytes",
            "Peak linear memory of each invocation",
            self.peak_memory_bytes.clone(),
        );
        registry.register(
            "invocation_fuel_used",
            "Fuel used by each invocation, when fuel is counted",
            self.fuel_used.clone(),
        );
    }

    /// Registers the router's own health: plugin loads, broker connections, consumer lag.
    /// Registers the sandbox's outgoing-request metrics.
    pub fn register_outbound(&mut self, outbound: &OutboundMetrics) {
        self.registry.register(
            "outbound_requests",
            "Algorithms' outgoing HTTP requests, by algorithm, destination host and status class",
            outbound.requests.clone(),
        );
        self.registry.register(
            "outbound_request_duration_seconds",
            "Time from an algorithm's outgoing HTTP request to its response head",
            outbound.duration_seconds.clone(),
        );
        self.registry.register(
            "outbound_denied",
            "Algorithms' outgoing HTTP requests refused (not granted, a private address, a limit)",
            outbound.denied.clone(),
        );
    }

    fn register_router_metrics(&self, registry: &mut Registry) {
        registry.register(
            "plugin_loads",
            "Algorithm versions loaded or reloaded",
            self.plugin_loads.clone(),
        );
        registry.register(
            "plugin_rejections",
            "Plugin files that failed to load",
            self.plugin_rejections.clone(),
        );
        registry.register(
            "broker_up",
            "Whether each broker connection answers (1) or not (0)",
            self.broker_up.clone(),
        );
        registry.register(
            "consumer_lag",
            "Messages behind the end of each partition (Kafka)",
            self.consumer_lag.clone(),
        );
    }

    /// The per-message metrics of `flow` running `algorithm`
    /// (`owner/name@version`), looked up once: the handles share their
    /// values with the families, so bumping them needs no label formatting
    /// or map lookup per message.
    pub fn flow_handles(&self, flow: &str, algorithm: &str) -> FlowMetrics {
        let labels = FlowLabels {
            flow: flow.to_string(),
            algorithm: algorithm.to_string(),
        };
        let flow_only = FlowOnly {
            flow: flow.to_string(),
        };
        FlowMetrics {
            received: self.received.get_or_create_owned(&labels),
            succeeded: self.succeeded.get_or_create_owned(&labels),
            in_flight: self.in_flight.get_or_create_owned(&flow_only),
            invocation_seconds: self.invocation_seconds.get_or_create_owned(&labels),
            instance_wait_seconds: self.instance_wait_seconds.get_or_create_owned(&flow_only),
            end_to_end_seconds: self.end_to_end_seconds.get_or_create_owned(&flow_only),
            peak_memory_bytes: self.peak_memory_bytes.get_or_create_owned(&labels),
            fuel_used: self.fuel_used.get_or_create_owned(&labels),
            labels,
        }
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flow_handles_count_in_the_exported_families() {
        let m = Metrics::new();
        let h = m.flow_handles("f", "o/n@1.0.0");
        h.received.inc();
        h.received.inc();
        h.in_flight.inc();
        h.invocation_seconds.observe(0.001);
        // A second set for the same labels shares the values.
        m.flow_handles("f", "o/n@1.0.0").succeeded.inc();
        let text = m.encode();
        assert!(
            text.contains(r#"eventflow_messages_received_total{flow="f",algorithm="o/n@1.0.0"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#"eventflow_messages_succeeded_total{flow="f",algorithm="o/n@1.0.0"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"eventflow_in_flight{flow="f"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#"eventflow_invocation_duration_seconds_count{flow="f",algorithm="o/n@1.0.0"} 1"#
            ),
            "{text}"
        );
    }
}
