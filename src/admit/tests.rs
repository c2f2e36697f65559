//! Unit tests of `admit` (beside it, so the module itself stays short).

use super::*;
use crate::threads::Role;
use tiny_http::TestRequest;

fn admission(config: &Config) -> (Arc<Admission>, Arc<Metrics>, Threads) {
    let metrics = Arc::new(Metrics::default());
    let threads = Threads::new();
    let conns = Arc::new(ConnTable::new(config.listen));
    let bodies = Arc::new(Bodies::new(conns.clone(), None, metrics.clone()));
    let admit = Admission::new(config, metrics.clone(), threads.clone(), conns, bodies);
    (admit, metrics, threads)
}

#[test]
fn a_stream_asked_for_during_shutdown_is_refused_to_retry() {
    let (admit, metrics, threads) = admission(&Config::default());
    admit.close_streams();
    let ran = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = ran.clone();
    let request: Request = TestRequest::new().with_path("/sse/call/1").into();
    admit.spawn_stream(Role::AlarmStream, request, move |_, _, _| {
        flag.store(true, Ordering::SeqCst);
    });
    assert_eq!(threads.live(), 0, "no thread for a refusal");
    assert!(!ran.load(Ordering::SeqCst));
    assert_eq!(admit.stream_count(), 0, "no slot taken");
    assert!(metrics
        .render(Default::default(), crate::metrics::Format::Prometheus)
        .contains("syncast_rejected_total{reason=\"shutting-down\"} 1\n"));
}

#[test]
fn retry_delays_are_the_base_plus_or_minus_half() {
    let base = Duration::from_secs(2);
    assert_eq!(jittered_ms(base, 0), 1000);
    assert_eq!(jittered_ms(base, 2000), 3000);
    assert_eq!(jittered_ms(base, 2001), 1000);
    let (admit, _, _) = admission(&Config::default());
    let delays: Vec<u64> = (0..1000)
        .map(|_| admit.retry_ms(Refusal::RoomFull))
        .collect();
    assert!(delays.iter().all(|d| (2500..=7500).contains(d)));
    let mean = delays.iter().sum::<u64>() as f64 / delays.len() as f64;
    assert!((4500.0..5500.0).contains(&mean), "mean {mean}");
    for why in [
        Refusal::MaxClients,
        Refusal::ThreadSpawn,
        Refusal::ShuttingDown,
        Refusal::StoreUnavailable,
        Refusal::RoomFull,
    ] {
        assert!(
            crate::metrics::REJECT_REASONS.contains(&why.reason()),
            "{why:?}"
        );
    }
}
