//! `loadgen`: writes IoT sensor readings (JSON or Avro) or clickstream events to a Kafka topic at
//! a rate that follows a profile, with hot keys, out-of-order event times and malformed records
//! in chosen shares, and shows its progress.

use std::{
    io::{IsTerminal, Write},
    process::ExitCode,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use clap::Parser;
use pipeline_runtime::loadgen::{self, Counters, LoadOptions, Profile, Shape, Workload};

/// Load generator for Sluice pipelines and benchmarks.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Broker list.
    #[arg(long, short = 'b')]
    bootstrap_servers: String,
    /// Topic to write (it must exist).
    #[arg(long, short = 't')]
    topic: String,
    /// iot-json, iot-avro or clicks-json.
    #[arg(long, default_value = "iot-json")]
    workload: Workload,
    /// Rate profile: constant:RATE, steps:RATE@DURATION,..., ramp:FROM..TO@DURATION or
    /// sine:MEAN~AMPLITUDE/PERIOD@DURATION.
    #[arg(long, default_value = "constant:1000")]
    profile: Profile,
    /// Stop after this long (a constant profile runs until stopped otherwise).
    #[arg(long, value_parser = pipeline_crds::Duration::parse_std)]
    duration: Option<Duration>,
    /// Distinct keys (devices or users).
    #[arg(long, default_value_t = 100_000)]
    keys: u64,
    /// Keys that get --hot-share of the records (hot keys make hot partitions).
    #[arg(long, default_value_t = 0)]
    hot_keys: u64,
    /// Share of records on the hot keys, 0..1.
    #[arg(long, default_value_t = 0.0, value_parser = parse_share)]
    hot_share: f64,
    /// Share of records with an event time up to --max-disorder in the past, 0..1.
    #[arg(long, default_value_t = 0.0, value_parser = parse_share)]
    out_of_order: f64,
    /// Largest event-time disorder.
    #[arg(long, default_value = "2s", value_parser = pipeline_crds::Duration::parse_std)]
    max_disorder: Duration,
    /// Share of malformed records, 0..1.
    #[arg(long, default_value_t = 0.0, value_parser = parse_share)]
    malformed: f64,
    /// Seed of the generator.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Schema Registry URL (iot-avro).
    #[arg(long)]
    schema_registry: Option<String>,
    /// Extra producer property, librdkafka name=value (repeatable), e.g. -X batch.num.messages=1.
    #[arg(short = 'X', value_parser = parse_property)]
    property: Vec<(String, String)>,
    /// After the run, write one record per partition this far ahead in event time, so that every
    /// window of the run closes.
    #[arg(long, value_parser = pipeline_crds::Duration::parse_std)]
    close_after: Option<Duration>,
    /// clicks-json: also write a profile table of this many users (`user-000000` …) before the
    /// clicks, with updates and deletions during the run (see --profile-updates).
    #[arg(long)]
    profiles: Option<u64>,
    /// The profile table's topic (it must exist).
    #[arg(long, default_value = "user-profiles")]
    profiles_topic: String,
    /// Profile updates or deletions written per click, 0..1.
    #[arg(long, default_value_t = 0.01, value_parser = parse_share)]
    profile_updates: f64,
    /// Share of those updates that delete the profile (a tombstone), 0..1.
    #[arg(long, default_value_t = 0.1, value_parser = parse_share)]
    profile_deletes: f64,
    /// No progress display.
    #[arg(long, short = 'q')]
    quiet: bool,
}

fn parse_share(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!("{text:?} is not a share between 0 and 1")),
    }
}

fn parse_property(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{text:?} is not name=value"))
}

fn main() -> ExitCode {
    let args = Args::parse();
    let profile = match (args.profile, args.duration) {
        (Profile::Constant(rate), Some(d)) => Profile::Steps(vec![(rate, d)]),
        (p, _) => p,
    };
    let options = LoadOptions {
        bootstrap_servers: args.bootstrap_servers,
        topic: args.topic,
        workload: args.workload,
        shape: Shape {
            keys: args.keys,
            hot_keys: args.hot_keys,
            hot_share: args.hot_share,
            out_of_order: args.out_of_order,
            max_disorder_ms: i64::try_from(args.max_disorder.as_millis()).unwrap_or(i64::MAX),
            malformed: args.malformed,
        },
        profile,
        seed: args.seed,
        schema_registry: args.schema_registry,
        properties: args.property,
        close_after_ms: args
            .close_after
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
        profiles: args.profiles.map(|users| loadgen::ProfileOptions {
            topic: args.profiles_topic,
            users,
            update_share: args.profile_updates,
            delete_share: args.profile_deletes,
        }),
    };
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let signals = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            if let Ok(rt) = signals {
                rt.block_on(async {
                    let _ = tokio::signal::ctrl_c().await;
                });
                stop.store(true, Ordering::Relaxed);
            }
        });
    }
    let counters = Arc::new(Counters::default());
    let done = Arc::new(AtomicBool::new(false));
    let display = (!args.quiet).then(|| {
        let (counters, done) = (counters.clone(), done.clone());
        std::thread::spawn(move || progress(&counters, &done))
    });
    eprintln!(
        "loadgen: {} to {} on {}, profile {}",
        options.workload, options.topic, options.bootstrap_servers, options.profile
    );
    let result = loadgen::run(&options, &counters, &stop);
    done.store(true, Ordering::Relaxed);
    if let Some(d) = display {
        let _ = d.join();
    }
    match result {
        Ok(report) => {
            eprintln!(
                "loadgen: wrote {} records ({} malformed, {} closing) to {} partitions in {:.1} s",
                report.sent, report.malformed, report.closing, report.partitions, report.seconds
            );
            if report.profile_records > 0 {
                eprintln!(
                    "loadgen: wrote {} profile records (first profiles, updates, deletions)",
                    report.profile_records
                );
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("loadgen: {error}");
            ExitCode::FAILURE
        }
    }
}

fn progress(counters: &Counters, done: &AtomicBool) {
    let started = Instant::now();
    let tty = std::io::stderr().is_terminal();
    let mut previous = 0;
    while !done.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_secs(1));
        let sent = counters.sent.load(Ordering::Relaxed);
        let line = format!(
            "{:>5.0}s  target {:>8.0}/s  sent {:>10} ({:>7}/s)  acked {:>10}  failed {}",
            started.elapsed().as_secs_f64(),
            counters.target_rate(),
            sent,
            sent - previous,
            counters.delivered.load(Ordering::Relaxed),
            counters.failed.load(Ordering::Relaxed),
        );
        previous = sent;
        let mut err = std::io::stderr().lock();
        if tty {
            let _ = write!(err, "\r{line}");
        } else {
            let _ = writeln!(err, "{line}");
        }
    }
    if tty {
        eprintln!();
    }
}
