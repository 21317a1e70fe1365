//! `/metrics` in the Prometheus text format: connections, links, meshes, envelopes routed
//! (by route kind) and stored, shared-state ops, handshake failures, queued bytes,
//! commit-latency histograms and, on a cluster, the nodes alive. Served on
//! `metrics_listen` (plain HTTP, for scrapers inside a trusted network) and, only with
//! `metrics_on_tls_port`, on the public TLS port.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::hub::Hub;
use crate::store::Store;

/// Upper bounds of the latency buckets, seconds.
const BOUNDS: [f64; 12] = [
    0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// A latency histogram with fixed buckets, lock-free.
#[derive(Debug, Default)]
pub(crate) struct Histogram {
    buckets: [AtomicU64; BOUNDS.len()],
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl Histogram {
    pub(crate) fn observe(&self, d: Duration) {
        // Count first: a concurrent scrape never sees a bucket above `+Inf`.
        self.count.fetch_add(1, Ordering::Relaxed);
        let s = d.as_secs_f64();
        for (i, b) in BOUNDS.iter().enumerate() {
            if s <= *b {
                self.buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.sum_us
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    fn render(&self, name: &str, help: &str, out: &mut String) {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} histogram");
        for (i, b) in BOUNDS.iter().enumerate() {
            let n = self.buckets[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {n}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {count}");
    }
}

/// Route kinds, in the order of [`crate::hub::Stats::routed`].
pub(crate) const ROUTE_KINDS: [&str; 4] = ["session", "member", "sessions", "all"];

fn metric(out: &mut String, name: &str, kind: &str, help: &str, value: u64) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    let _ = writeln!(out, "{name} {value}");
}

/// The whole exposition.
pub(crate) fn render<S: Store>(hub: &Hub<S>) -> String {
    let s = &hub.stats;
    let g = hub.gauges();
    let mut out = String::with_capacity(4096);
    let ld = |a: &AtomicU64| a.load(Ordering::Relaxed);
    metric(
        &mut out,
        "claudemesh_relay_connections",
        "gauge",
        "Open client connections.",
        ld(&s.connections),
    );
    metric(
        &mut out,
        "claudemesh_relay_links",
        "gauge",
        "Member links past hello.",
        ld(&s.links),
    );
    metric(
        &mut out,
        "claudemesh_relay_meshes",
        "gauge",
        "Meshes hosted.",
        hub.mesh_count() as u64,
    );
    let _ = writeln!(
        out,
        "# HELP claudemesh_relay_envelopes_routed_total Envelopes accepted for routing, by route kind."
    );
    let _ = writeln!(
        out,
        "# TYPE claudemesh_relay_envelopes_routed_total counter"
    );
    for (i, k) in ROUTE_KINDS.iter().enumerate() {
        let _ = writeln!(
            out,
            "claudemesh_relay_envelopes_routed_total{{route=\"{k}\"}} {}",
            ld(&s.routed[i])
        );
    }
    metric(
        &mut out,
        "claudemesh_relay_envelopes_stored",
        "gauge",
        "Undelivered envelopes stored.",
        g.stored,
    );
    metric(
        &mut out,
        "claudemesh_relay_stored_bytes",
        "gauge",
        "Bytes of undelivered envelopes stored.",
        g.stored_bytes,
    );
    let (chunks, blob_bytes) = crate::hub::lock(&hub.blob_usage).totals();
    metric(
        &mut out,
        "claudemesh_relay_blob_chunks",
        "gauge",
        "File chunks stored in the blob store.",
        chunks,
    );
    metric(
        &mut out,
        "claudemesh_relay_blob_bytes",
        "gauge",
        "Bytes of file chunks stored in the blob store.",
        blob_bytes,
    );
    metric(
        &mut out,
        "claudemesh_relay_ops_total",
        "counter",
        "Shared-state ops sequenced.",
        ld(&s.ops),
    );
    metric(
        &mut out,
        "claudemesh_relay_handshake_failures_total",
        "counter",
        "Refused or failed handshakes.",
        ld(&s.handshake_failures),
    );
    metric(
        &mut out,
        "claudemesh_relay_queued_bytes",
        "gauge",
        "Bytes queued to connections and not yet written.",
        g.queued_bytes,
    );
    let (_, preauth) = hub.gate.counts();
    metric(
        &mut out,
        "claudemesh_relay_preauth_connections",
        "gauge",
        "Open connections that have not said hello yet.",
        preauth as u64,
    );
    metric(
        &mut out,
        "claudemesh_relay_connections_refused_total",
        "counter",
        "Connections refused at accept by the connection caps.",
        ld(&s.refused_at_accept),
    );
    metric(
        &mut out,
        "claudemesh_relay_acks_dropped_total",
        "counter",
        "Acknowledged ids dropped before the store (never given to that link, or over its budget).",
        ld(&s.acks_dropped),
    );
    let _ = writeln!(
        out,
        "# HELP claudemesh_relay_connections_closed_total Connections closed, by reason."
    );
    let _ = writeln!(
        out,
        "# TYPE claudemesh_relay_connections_closed_total counter"
    );
    for (i, k) in crate::conn::END_KINDS.iter().enumerate() {
        let _ = writeln!(
            out,
            "claudemesh_relay_connections_closed_total{{reason=\"{k}\"}} {}",
            ld(&s.closed[i])
        );
    }
    if hub.bus.is_some() {
        let nodes = crate::hub::lock(&hub.leases).count(std::time::Instant::now());
        metric(
            &mut out,
            "claudemesh_relay_cluster_nodes",
            "gauge",
            "Relay nodes of the cluster heard alive within the lease, this one included.",
            nodes as u64,
        );
        if let Some(b) = &hub.bus {
            metric(
                &mut out,
                "claudemesh_relay_cluster_bus_dropped_total",
                "counter",
                "Live copies for other nodes dropped because the queue to NATS was full (recovered from the store).",
                b.dropped(),
            );
        }
    }
    s.envelope_commit.render(
        "claudemesh_relay_envelope_commit_seconds",
        "Time from accepting an envelope to its durable commit.",
        &mut out,
    );
    s.op_commit.render(
        "claudemesh_relay_op_commit_seconds",
        "Time from receiving an op to its sequencing commit.",
        &mut out,
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(300));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(10));
        let mut s = String::new();
        h.render("x", "help", &mut s);
        assert!(s.contains("x_bucket{le=\"0.0005\"} 1"), "{s}");
        assert!(s.contains("x_bucket{le=\"0.005\"} 2"), "{s}");
        assert!(s.contains("x_bucket{le=\"2.5\"} 2"), "{s}");
        assert!(s.contains("x_bucket{le=\"+Inf\"} 3"), "{s}");
        assert!(s.contains("x_count 3"), "{s}");
    }
}
