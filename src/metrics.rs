//! Prometheus metrics, served on the admin listener.
//!
//! Labels come only from configuration (service names, source names) and
//! from a fixed list of outcomes, never from a request, so a caller cannot
//! grow the series count. SECURITY: no label ever holds a secret, a URL
//! path or a token.

use std::sync::atomic::AtomicI64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WebhookLabels {
    pub service: String,
    pub source: String,
    pub outcome: &'static str,
}

/// Why the listener closed or refused a connection (a fixed list).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabels {
    pub op: &'static str,
}

/// A `resolve_digest` request's outcome, per service (a fixed list).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DigestLabels {
    pub service: String,
    pub outcome: &'static str,
}

/// Every metric tagbridge exports.
pub struct Metrics {
    registry: Registry,
    pub webhooks: Family<WebhookLabels, Counter>,
    pub ingest_seconds: Histogram,
    pub consul_errors: Family<OpLabels, Counter>,
    pub tls_not_after: Gauge<i64, AtomicI64>,
    pub connections_open: Gauge,
    pub connections_closed: Family<ConnLabels, Counter>,
    pub failed_attempt_addresses: Gauge,
    pub digest_resolves: Family<DigestLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("tagbridge");
        let webhooks = Family::<WebhookLabels, Counter>::default();
        registry.register(
            "webhooks",
            "Webhook requests by service, source and outcome",
            webhooks.clone(),
        );
        // 250 µs .. ~4 s: loopback Consul answers in well under a
        // millisecond, a struggling one in seconds.
        let ingest_seconds = Histogram::new([
            0.00025, 0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512,
            1.024, 2.048, 4.096,
        ]);
        registry.register(
            "ingest_duration_seconds",
            "Time from a webhook's body being read to its answer",
            ingest_seconds.clone(),
        );
        let consul_errors = Family::<OpLabels, Counter>::default();
        registry.register(
            "consul_request_errors",
            "Consul requests that failed, by operation",
            consul_errors.clone(),
        );
        let tls_not_after = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "tls_cert_not_after_seconds",
            "notAfter of the served TLS certificate, unix seconds",
            tls_not_after.clone(),
        );
        let connections_open = Gauge::default();
        registry.register(
            "connections_open",
            "Webhook listener connections open now",
            connections_open.clone(),
        );
        let connections_closed = Family::<ConnLabels, Counter>::default();
        registry.register(
            "connections_closed",
            "Webhook listener connections closed or refused by a limit, by reason",
            connections_closed.clone(),
        );
        let failed_attempt_addresses = Gauge::default();
        registry.register(
            "failed_attempt_addresses",
            "Client addresses the failed-attempt limit tracks now (bounded)",
            failed_attempt_addresses.clone(),
        );
        let digest_resolves = Family::<DigestLabels, Counter>::default();
        registry.register(
            "digest_resolves",
            "resolve_digest requests to a service's registry, by outcome",
            digest_resolves.clone(),
        );
        Self {
            registry,
            webhooks,
            ingest_seconds,
            consul_errors,
            tls_not_after,
            connections_open,
            connections_closed,
            failed_attempt_addresses,
            digest_resolves,
        }
    }

    pub fn digest_resolved(&self, service: &str, outcome: &'static str) {
        self.digest_resolves
            .get_or_create(&DigestLabels {
                service: service.to_string(),
                outcome,
            })
            .inc();
    }

    pub fn connection_closed(&self, reason: &'static str) {
        self.connections_closed
            .get_or_create(&ConnLabels { reason })
            .inc();
    }

    pub fn consul_error(&self, op: &'static str) {
        self.consul_errors.get_or_create(&OpLabels { op }).inc();
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
