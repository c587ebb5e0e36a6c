//! starling-bench: the MQTT load generator of Starling's benchmarks (`scripts/bench-broker.sh`,
//! `scripts/bench-hook.sh`). It measures any MQTT 3.1.1 or 5.0 broker on this machine, so the
//! same runs measure Mosquitto and Starling side by side.
//!
//! * `fanin`: P publishers, each on its own topic, to one subscriber on a wildcard filter
//! * `fanout`: one publisher to N subscribers of its topic
//! * `latency`: one publisher at a fixed rate to one subscriber; p50, p90, p99, p99.9, max
//! * `conns`: C idle connections; connect rate and the broker's memory per connection
//! * `retained`, `sessions`, `resume`: retained messages written, persistent sessions created,
//!   one resumed (`scripts/bench-persistence.sh`)
//!
//! Every run is bounded (each phase has its limit, and a watchdog ends the process after
//! duration + warm-up + 60 s), talks to loopback only, and prints exactly one JSON line on
//! stdout, also when it fails (`{"error": ...}`, exit 1; the watchdog's, exit 3).

mod args;
mod client;
mod conns;
mod durable;
mod probe;
mod pubsub;
mod wire;

use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use serde_json::{Value, json};

use crate::args::{Args, Scenario};
use crate::pubsub::Flow;

fn main() {
    let args = Arc::new(Args::parse());
    raise_open_files_limit();
    let watchdog = args.clone();
    std::thread::spawn(move || {
        let limit = watchdog.time_limit_secs();
        std::thread::sleep(Duration::from_secs_f64(limit));
        let mut out = json!({ "error": format!("the run did not end within {limit} s") });
        merge(&mut out, settings(&watchdog));
        println!("{out}");
        std::process::exit(3);
    });
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("starling-bench: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    let (mut out, code) = match runtime.block_on(run(args.clone())) {
        Ok(out) => (out, 0),
        Err(e) => (json!({ "error": e.to_string() }), 1),
    };
    merge(&mut out, settings(&args));
    println!("{out}");
    std::process::exit(code);
}

async fn run(args: Arc<Args>) -> std::io::Result<Value> {
    let prefix = format!("starling-bench/{}", std::process::id());
    match args.scenario {
        Scenario::Fanin => {
            let flow = Flow {
                subscribers: 1,
                filter: format!("{prefix}/in/#"),
                topics: (0..args.publishers)
                    .map(|i| format!("{prefix}/in/{i}"))
                    .collect(),
                rate: args.rate,
                latency: false,
            };
            pubsub::run(args, flow).await
        }
        Scenario::Fanout => {
            let topic = format!("{prefix}/out");
            let flow = Flow {
                subscribers: args.subscribers as usize,
                filter: topic.clone(),
                topics: vec![topic],
                rate: args.rate,
                latency: false,
            };
            pubsub::run(args, flow).await
        }
        Scenario::Latency => {
            let topic = format!("{prefix}/latency");
            let flow = Flow {
                subscribers: 1,
                filter: topic.clone(),
                topics: vec![topic],
                rate: if args.rate == 0 { 5000 } else { args.rate },
                latency: true,
            };
            pubsub::run(args, flow).await
        }
        Scenario::Conns => conns::run(args).await,
        Scenario::Retained => durable::retained(args).await,
        Scenario::Sessions => durable::sessions(args).await,
        Scenario::Resume => durable::resume(args).await,
    }
}

/// The run's settings, echoed into its result.
fn settings(args: &Args) -> Value {
    json!({
        "tool": "starling-bench",
        "tool_version": env!("CARGO_PKG_VERSION"),
        "scenario": args.scenario.name(),
        "label": args.label,
        "host": args.host,
        "port": args.port,
        "subscriber_port": args.subscriber_port,
        "mqtt_version": if args.v5() { "5.0" } else { "3.1.1" },
        "qos": args.qos,
        "payload": args.payload,
        "duration_s": args.duration,
        "cores": std::thread::available_parallelism().map_or(0, |n| n.get()),
    })
}

fn merge(out: &mut Value, more: Value) {
    if let (Some(out), Value::Object(more)) = (out.as_object_mut(), more) {
        out.extend(more);
    }
}

/// conns holds up to 100,000 sockets: the soft limit of open files goes up to the hard one.
fn raise_open_files_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum
        && let Err(e) = setrlimit(
            Resource::Nofile,
            rustix::process::Rlimit {
                current: limit.maximum,
                maximum: limit.maximum,
            },
        )
    {
        eprintln!("starling-bench: cannot raise the open files limit: {e}");
    }
}
