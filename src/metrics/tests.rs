//! Unit tests of `metrics` (beside it, so the module itself stays short).

use std::time::Duration;

use super::histogram::{bucket_of, BOUNDS_NS};
use super::*;

#[test]
fn renders_prometheus_text_with_process_figures() {
    let m = Arc::new(Metrics::default());
    m.events_sent.add(3);
    m.reject("max-clients");
    let gauges = Gauges {
        alarm_ids: 5,
        threads_by_role: vec![("dispatcher", 1)],
        ..Gauges::default()
    };
    let text = m.render(gauges, Format::Prometheus);
    for line in [
        "# TYPE syncast_events_sent_total counter\n",
        "syncast_events_sent_total 3\n",
        "syncast_rejected_total{reason=\"max-clients\"} 1\n",
        "syncast_alarm_ids_registered 5\n",
        "# HELP syncast_threads_live Live threads this server spawned, by role.\n",
        "# TYPE syncast_threads_live gauge\n",
        "syncast_threads_live{role=\"dispatcher\"} 1\n",
        "# TYPE syncast_thread_panics_total counter\n",
        "# TYPE syncast_refresh_duration_seconds histogram\n",
        "syncast_refresh_duration_seconds_bucket{le=\"+Inf\"} 0\n",
        "syncast_refresh_duration_seconds_sum 0",
        "# TYPE process_cpu_seconds_total counter\n",
        "# TYPE process_threads gauge\n",
        "syncast_refresh_window_seconds_count 0\n",
    ] {
        assert!(text.contains(line), "{line:?} missing from\n{text}");
    }
    assert!(!text.contains("# EOF"), "not OpenMetrics");
    let open = m.render(Gauges::default(), Format::OpenMetrics);
    assert!(open.ends_with("# EOF\n"), "{open}");
    assert!(
        open.contains("# TYPE syncast_events_sent counter\n"),
        "{open}"
    );
    assert!(
        open.contains("# UNIT syncast_refresh_duration_seconds seconds\n"),
        "{open}"
    );
}

#[test]
fn a_histogram_counts_each_sample_in_its_bucket_and_a_batch_as_many() {
    let h = Histogram::default();
    h.observe(Duration::from_micros(1));
    h.observe(Duration::from_micros(30));
    h.observe(Duration::from_secs(60));
    let now = now_ns();
    let starts = [
        now - 3_000_000,
        now - 3_000_000,
        now - 700_000,
        now - 3_000_000,
    ];
    h.observe_since(&starts, now);
    h.observe_since(&[], now);
    let (sum, count, buckets) = h.snapshot();
    assert_eq!(count, 7);
    let at = |bound: f64| buckets.iter().find(|(b, _)| *b == bound).unwrap().1;
    assert_eq!(at(0.000001), 1, "at the bound: le is inclusive");
    assert_eq!(at(0.00005), 1);
    assert_eq!(at(0.001), 1);
    assert_eq!(at(0.005), 3);
    assert_eq!(at(f64::INFINITY), 1, "past the last bound");
    assert!((sum - (60.0 + 0.000031 + 0.0097)).abs() < 1e-6, "{sum}");
}

#[test]
fn the_bucket_of_a_sample_is_the_first_bound_at_or_above_it() {
    for w in BOUNDS_NS.windows(2) {
        assert!(w[1] >= 2 * w[0], "at most one bound per power of two");
    }
    let mut samples: Vec<u64> = vec![0, 1, 2, 999, u64::MAX, u64::MAX / 2];
    for &b in &BOUNDS_NS {
        samples.extend([b - 1, b, b + 1]);
    }
    for k in 0..64 {
        let p = 1u64 << k;
        samples.extend([p - 1, p, p.saturating_add(1)]);
    }
    for ns in samples {
        assert_eq!(
            bucket_of(ns),
            BOUNDS_NS.partition_point(|&b| b < ns),
            "{ns}"
        );
    }
}

#[test]
fn openmetrics_only_when_the_client_asks_for_it() {
    let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    assert_eq!(Format::of_accept(Some(prometheus)), Format::OpenMetrics);
    assert_eq!(Format::of_accept(Some("text/plain")), Format::Prometheus);
    assert_eq!(Format::of_accept(None), Format::Prometheus);
    assert_eq!(
        Format::Prometheus.content_type(),
        "text/plain; version=0.0.4; charset=utf-8"
    );
}

#[test]
fn percentiles_by_nearest_rank() {
    let mut v: Vec<u64> = (1..=100).rev().collect();
    v.sort_unstable();
    assert_eq!(quantile(&v, 0.50), Some(50));
    assert_eq!(quantile(&v, 0.99), Some(99));
    assert_eq!(quantile(&v, 1.0), Some(100));
    assert_eq!(quantile::<u64>(&[], 0.50), None);
    assert_eq!(quantile(&[1.5, 2.5, 9.0], 0.5), Some(2.5));
}
