//! The autoscaler's Prometheus metrics source against a real Prometheus (Debian's package),
//! scraping a stand-in runtime whose counters grow at known rates: the PromQL the source sends
//! must give back those rates, the lag, the busy and backpressured shares and the slot count, and
//! a window without data must be unknown, never zero.

use std::{
    io::{BufRead, BufReader, Write},
    net::TcpListener,
    time::{Duration, Instant},
};

use pipeline_e2e::prometheus::Prometheus;
use pipeline_operator::autoscale::{
    observation::{Expectation, Unknown},
    source::{MetricsSource, Prometheus as Source, Query, Target},
};

/// Serves a runtime-like exposition: 2 slots, 4 partitions of topic `t`; every partition's end
/// offset grows 100/s and its position 90/s; each slot is busy half the time and backpressured a
/// tenth.
fn stand_in_runtime() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let started = Instant::now();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(&stream);
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            let t = started.elapsed().as_secs_f64() + 1_000.0;
            let mut body = String::new();
            let labels = |slot: u32| {
                format!("pipeline=\"iot\",namespace=\"ns\",pod=\"iot-0\",slot=\"{slot}\"")
            };
            for slot in 0..2 {
                body += &format!(
                    "pipeline_busy_seconds_total{{{}}} {}\n",
                    labels(slot),
                    0.5 * t
                );
                body += &format!(
                    "pipeline_backpressured_seconds_total{{{}}} {}\n",
                    labels(slot),
                    0.1 * t
                );
            }
            for partition in 0..4 {
                let l = format!(
                    "{},topic=\"t\",partition=\"{partition}\"",
                    labels(partition % 2)
                );
                body += &format!(
                    "pipeline_partition_end_offset{{{l}}} {}\n",
                    (100.0 * t).floor()
                );
                body += &format!(
                    "pipeline_partition_position{{{l}}} {}\n",
                    (90.0 * t).floor()
                );
                body += &format!(
                    "pipeline_consumer_lag_records{{{l}}} {}\n",
                    (100.0 * t).floor() - (90.0 * t).floor()
                );
            }
            let mut stream = stream;
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    addr
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[cfg_attr(
    sluice_skip_broker_tests,
    ignore = "needs the tansu broker and Prometheus (SLUICE_SKIP_BROKER_TESTS)"
)]
#[test]
fn the_prometheus_source_reads_rates_lag_and_shares_over_the_window_and_unknown_when_absent() {
    let dir = std::env::temp_dir().join(format!("sluice-e2e-prometheus-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let runtime = stand_in_runtime();
    let prometheus = Prometheus::start(&dir, &[runtime]);
    let source = Source::new(&prometheus.url, 1.0).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let expect = Expectation {
        partitions: 4,
        slots: 2,
        min_window: 4.0,
        max_age: 10.0,
    };
    let target = Target {
        namespace: "ns".into(),
        name: "iot".into(),
    };
    // Wait until Prometheus holds well over a window of samples (its first scrape comes a few
    // seconds after it is ready; `increase()` does not extrapolate over a window it has no data
    // for).
    std::thread::sleep(Duration::from_secs(16));
    let t = now();
    let query = Query {
        now: t,
        settling_since: None,
        window_since: t - 8.0,
        expect,
    };
    let input = rt.block_on(source.read(&target, query));
    let o = input.observation.expect("a window of 8 s");
    let near = |have: f64, want: f64| (have - want).abs() <= want * 0.15;
    assert!(near(o.arrival_rate, 400.0), "arrival {}", o.arrival_rate);
    assert!(
        near(o.recent_arrival_rate, 400.0),
        "recent {}",
        o.recent_arrival_rate
    );
    assert!(
        near(o.processing_rate, 360.0),
        "processing {}",
        o.processing_rate
    );
    assert!(
        near(o.busy_max, 0.5) && near(o.busy_mean, 0.5),
        "busy {o:?}"
    );
    assert!(near(o.backpressure_max, 0.1), "backpressure {o:?}");
    assert_eq!((o.slots, o.partitions.len()), (2, 4));
    assert!(o.lag() > 0.0);
    let slot = &o.slot_rates["iot-0/0"];
    assert!(near(slot.processing_rate, 180.0), "slot 0 {slot:?}");

    // A rescale that started a moment ago settles once Prometheus saw 2 slots and 4 partitions.
    let settling = Query {
        settling_since: Some(t - 5.0),
        ..query
    };
    let input = rt.block_on(source.read(&target, settling));
    assert!(input.stable_at.is_some_and(|at| at >= t - 5.0), "{input:?}");

    // Another pipeline has no series: unknown, never zero.
    let other = Target {
        namespace: "ns".into(),
        name: "other".into(),
    };
    let input = rt.block_on(source.read(&other, query));
    assert!(
        matches!(input.observation, Err(Unknown::Missing(_))),
        "{:?}",
        input.observation
    );
    // A slot more than reports: partial.
    let three = Query {
        expect: Expectation { slots: 3, ..expect },
        ..query
    };
    let input = rt.block_on(source.read(&target, three));
    assert!(
        matches!(input.observation, Err(Unknown::Partial(_))),
        "{:?}",
        input.observation
    );
    // Prometheus unreachable.
    drop(prometheus);
    let input = rt.block_on(source.read(&target, query));
    assert!(matches!(input.observation, Err(Unknown::Missing(_))));
    let _ = std::fs::remove_dir_all(&dir);
}
