//! The metrics `GET /metrics` serves, in the Prometheus exposition format
//! (OpenMetrics text, with `prometheus-client`): requests by route and status,
//! latency histograms, script runs and their durations, syncs and their outcomes,
//! and the commit served.
//!
//! Routes are labelled by their template (`/files/{path}`, an endpoint's own
//! path), never by the raw path, so that the number of series stays bounded
//! whatever clients send.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry as Exposition;

type Labels = Vec<(&'static str, String)>;
type Histograms = Family<Labels, Histogram, fn() -> Histogram>;

/// Seconds, from 1 ms to about 65 s.
fn duration_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

pub struct Metrics {
    registry: Exposition,
    requests: Family<Labels, Counter>,
    request_seconds: Histograms,
    script_runs: Family<Labels, Counter>,
    script_seconds: Histograms,
    syncs: Family<Labels, Counter>,
    commit: Family<Labels, Gauge>,
}

/// The content type of `render`'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Exposition::with_prefix("dynapi");
        let requests = Family::<Labels, Counter>::default();
        let request_seconds: Histograms = Family::new_with_constructor(duration_buckets);
        let script_runs = Family::<Labels, Counter>::default();
        let script_seconds: Histograms = Family::new_with_constructor(duration_buckets);
        let syncs = Family::<Labels, Counter>::default();
        let commit = Family::<Labels, Gauge>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by route template, method and status",
            requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Time to answer HTTP requests, by route template",
            request_seconds.clone(),
        );
        registry.register(
            "script_runs",
            "Script runs that ended, by endpoint and outcome (ok, failed, timeout, killed, error)",
            script_runs.clone(),
        );
        registry.register(
            "script_duration_seconds",
            "Time scripts ran, by endpoint",
            script_seconds.clone(),
        );
        registry.register(
            "syncs",
            "Syncs of the branch, by outcome (ok, invalid: manifests refused, failed: not fetched or read)",
            syncs.clone(),
        );
        registry.register(
            "commit",
            "The commit served (value 1, the commit in a label)",
            commit.clone(),
        );
        Metrics {
            registry,
            requests,
            request_seconds,
            script_runs,
            script_seconds,
            syncs,
            commit,
        }
    }

    /// A request answered; `route` is the template it matched (`/files/{path}`,
    /// an endpoint's own path) or `other`, never the raw path.
    pub fn request(&self, route: String, method: &str, status: u16, seconds: f64) {
        self.request_seconds
            .get_or_create(&vec![("route", route.clone())])
            .observe(seconds);
        self.requests
            .get_or_create(&vec![
                ("route", route),
                ("method", method.to_string()),
                ("status", status.to_string()),
            ])
            .inc();
    }

    pub fn script(&self, endpoint: &str, outcome: &str, seconds: f64) {
        self.script_seconds
            .get_or_create(&vec![("endpoint", endpoint.to_string())])
            .observe(seconds);
        self.script_runs
            .get_or_create(&vec![
                ("endpoint", endpoint.to_string()),
                ("outcome", outcome.to_string()),
            ])
            .inc();
    }

    pub fn sync(&self, outcome: &str) {
        self.syncs
            .get_or_create(&vec![("outcome", outcome.to_string())])
            .inc();
    }

    /// Sets the commit served (replacing the one before).
    pub fn serving(&self, commit: &str) {
        let labels = vec![("commit", commit.to_string())];
        if self.commit.get(&labels).is_none() {
            self.commit.clear();
            self.commit.get_or_create(&labels).set(1);
        }
    }

    /// Everything, as text for a scraper.
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }
}
