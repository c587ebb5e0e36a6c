//! starling-bench against a real broker: Debian's Mosquitto, started on a free loopback port with
//! the config the benchmark scripts use (`bench/mosquitto.conf`). Every scenario runs briefly at a
//! load Mosquitto carries without loss, and its one JSON line must say what happened.

use std::net::TcpListener;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::process::{Child, Command};

const BENCH: &str = env!("CARGO_BIN_EXE_starling-bench");

/// A Mosquitto process on a free port, ended when dropped.
struct Mosquitto {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Mosquitto {
    async fn start() -> Self {
        Self::start_with("").await
    }

    /// With `extra` lines after the benchmarks' config.
    async fn start_with(extra: &str) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let dir = tempfile::tempdir().expect("a scratch folder");
        let base = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/mosquitto.conf"))
            .expect("bench/mosquitto.conf");
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(&conf, format!("{base}{extra}listener {port} 127.0.0.1\n"))
            .expect("the config");
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("mosquitto (Debian package mosquitto; scripts/test installs it)");
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Self {
            child,
            port,
            _dir: dir,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id().expect("mosquitto is running")
    }
}

/// Runs the generator with `args`; returns its exit code and its one line of JSON.
async fn bench(args: &[&str]) -> (i32, Value) {
    let out = Command::new(BENCH)
        .args(args)
        .output()
        .await
        .expect("starling-bench runs");
    let stdout = String::from_utf8(out.stdout).expect("utf-8");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "one JSON line, got {stdout:?}");
    let json = serde_json::from_str(lines[0]).expect("the line is JSON");
    (out.status.code().expect("an exit code"), json)
}

fn with_port<'a>(port: &'a str, pid: &'a str, args: &[&'a str]) -> Vec<&'a str> {
    let mut all = vec!["--port", port, "--broker-pid", pid];
    all.extend_from_slice(args);
    all
}

async fn under_timeout<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(60), f)
        .await
        .expect("the test ended within 60 s")
}

#[tokio::test]
async fn fanin_at_qos1_delivers_every_message_once() {
    under_timeout(async {
        // Mosquitto drops what is beyond a subscriber's max_queued_messages (1000 by default),
        // which full-speed fan-in reaches; without that bound it loses nothing, so any
        // difference between sent and received would be the generator's.
        let broker = Mosquitto::start_with("max_queued_messages 0\n").await;
        let (port, pid) = (broker.port.to_string(), broker.pid().to_string());
        let args = ["--scenario", "fanin", "--qos", "1", "--publishers", "4"];
        let (code, r) = bench(&with_port(
            &port,
            &pid,
            &[&args[..], &["--duration", "1"]].concat(),
        ))
        .await;
        assert_eq!(code, 0, "{r}");
        assert_eq!(r["scenario"], "fanin");
        assert_eq!(r["publishers"], 4);
        assert!(r["sent"].as_u64().unwrap() > 100, "{r}");
        assert_eq!(r["received"], r["sent"], "{r}");
        assert_eq!(
            (r["lost"].as_u64(), r["extra"].as_u64()),
            (Some(0), Some(0))
        );
        // Mosquitto announces its max_inflight_messages (20) as Receive Maximum; the generator
        // keeps to it rather than to its own 100.
        assert_eq!(r["qos1_window"], 20);
        assert!(r["delivered_per_s"].as_f64().unwrap() > 0.0);
        assert!(r["broker_cpu_s"].as_f64().unwrap() > 0.0, "{r}");
        assert!(r["broker_rss_kb_peak"].as_u64().unwrap() > 0, "{r}");
    })
    .await;
}

#[tokio::test]
async fn fanout_at_a_fixed_rate_reaches_every_subscriber() {
    under_timeout(async {
        let broker = Mosquitto::start().await;
        let (port, pid) = (broker.port.to_string(), broker.pid().to_string());
        let args = [
            "--scenario",
            "fanout",
            "--subscribers",
            "20",
            "--rate",
            "500",
            "--duration",
            "1",
            "--mqtt-version",
            "3",
        ];
        let (code, r) = bench(&with_port(&port, &pid, &args)).await;
        assert_eq!(code, 0, "{r}");
        assert_eq!(r["mqtt_version"], "3.1.1");
        let sent = r["sent"].as_u64().unwrap();
        assert!(
            (400..=600).contains(&sent),
            "about 500 at 500/s for 1 s: {r}"
        );
        assert_eq!(r["expected"].as_u64(), Some(sent * 20));
        assert_eq!(r["received"], r["expected"], "{r}");
    })
    .await;
}

#[tokio::test]
async fn latency_reports_ordered_percentiles_after_the_warmup() {
    under_timeout(async {
        let broker = Mosquitto::start().await;
        let (port, pid) = (broker.port.to_string(), broker.pid().to_string());
        let args = [
            "--scenario",
            "latency",
            "--rate",
            "1000",
            "--duration",
            "1",
            "--warmup",
            "0.5",
        ];
        let (code, r) = bench(&with_port(&port, &pid, &args)).await;
        assert_eq!(code, 0, "{r}");
        let l = &r["latency_us"];
        let samples = l["samples"].as_u64().unwrap();
        // 1.5 s published at 1000/s, the first 0.5 s left out.
        assert!((800..=1100).contains(&samples), "{r}");
        assert!(
            samples < r["received"].as_u64().unwrap(),
            "the warm-up is not sampled: {r}"
        );
        let p = |k: &str| l[k].as_f64().unwrap();
        assert!(
            0.0 < p("p50") && p("p50") <= p("p99") && p("p99") <= p("max"),
            "{l}"
        );
    })
    .await;
}

#[tokio::test]
async fn conns_opens_every_connection_and_measures_the_broker() {
    under_timeout(async {
        let broker = Mosquitto::start().await;
        let (port, pid) = (broker.port.to_string(), broker.pid().to_string());
        let args = ["--scenario", "conns", "--conns", "500", "--duration", "0"];
        let (code, r) = bench(&with_port(&port, &pid, &args)).await;
        assert_eq!(code, 0, "{r}");
        assert_eq!(
            (r["connected"].as_u64(), r["failed"].as_u64()),
            (Some(500), Some(0)),
            "{r}"
        );
        assert!(r["rss_bytes_per_conn"].is_number(), "{r}");
        assert!(r["rss_kb_open"].as_u64().unwrap() >= r["rss_kb_before"].as_u64().unwrap());
    })
    .await;
}

#[tokio::test]
async fn a_broker_that_is_not_there_gives_an_error_line_and_exit_1() {
    under_timeout(async {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port()
            .to_string();
        let (code, r) = bench(&["--scenario", "fanin", "--port", &port, "--duration", "1"]).await;
        assert_eq!(code, 1, "{r}");
        assert!(r["error"].as_str().unwrap().contains("refused"), "{r}");
        assert_eq!(r["scenario"], "fanin");
    })
    .await;
}
