//! The command line. Every count and duration has an upper bound, so no run is unbounded.

use std::net::IpAddr;

use clap::{Parser, ValueEnum};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Scenario {
    /// PUBLISHERS publishers, each on its own topic, to one subscriber on a wildcard filter
    Fanin,
    /// one publisher to SUBSCRIBERS subscribers of its topic
    Fanout,
    /// one publisher at RATE messages/s to one subscriber; latency percentiles
    Latency,
    /// CONNS idle connections held for DURATION seconds; the broker's memory per connection
    Conns,
    /// PUBLISHERS publishers write COUNT retained QoS 1 messages on distinct topics; writes/s
    Retained,
    /// CONNS persistent sessions (one subscription each) are created and left offline
    Sessions,
    /// the first session `sessions` created resumes: session present, and how long it took
    Resume,
}

impl Scenario {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Fanin => "fanin",
            Self::Fanout => "fanout",
            Self::Latency => "latency",
            Self::Conns => "conns",
            Self::Retained => "retained",
            Self::Sessions => "sessions",
            Self::Resume => "resume",
        }
    }
}

/// Starling's MQTT load generator: measures a broker on this machine and prints one JSON line.
#[derive(Debug, Clone, Parser)]
#[command(version)]
pub(crate) struct Args {
    /// What to measure
    #[arg(long, value_enum)]
    pub(crate) scenario: Scenario,
    /// The broker's address: loopback only (127.0.0.0/8, ::1 or localhost)
    #[arg(long, default_value = "127.0.0.1", value_parser = loopback)]
    pub(crate) host: String,
    #[arg(long, default_value_t = 1883)]
    pub(crate) port: u16,
    /// fanin, fanout, latency: the subscribers connect to this port instead of `--port` (another
    /// replica of the same broker, to measure the way between replicas); several ports
    /// (comma-separated or repeated) spread the subscribers over them in turn
    #[arg(long, value_delimiter = ',')]
    pub(crate) subscriber_port: Vec<u16>,
    /// Seconds of publishing (fanin, fanout, latency) or of holding the connections (conns)
    #[arg(long, default_value_t = 10.0, value_parser = seconds)]
    pub(crate) duration: f64,
    /// QoS of the PUBLISHes and of the subscriptions
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=1))]
    pub(crate) qos: u8,
    /// Payload bytes: the first 16 hold the publisher, the sequence number and the send time
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(16..=1_048_576))]
    pub(crate) payload: u32,
    /// Publishers in fanin
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1_000))]
    pub(crate) publishers: u32,
    /// Subscribers in fanout
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub(crate) subscribers: u32,
    /// retained: retained messages written, each on a topic of its own
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub(crate) count: u32,
    /// fanin, fanout, latency: subscribers keep their sessions (clean start 0, an expiry of
    /// one hour), so a broker that keeps sessions on disk writes every QoS 1 message
    #[arg(long)]
    pub(crate) persistent: bool,
    /// Idle connections in conns, sessions created in sessions
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub(crate) conns: u32,
    /// Messages per second over all publishers; 0 publishes as fast as the broker takes them
    /// (latency needs a rate: 0 means 5000 there)
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=10_000_000))]
    pub(crate) rate: u64,
    /// The broker's process id: its memory and CPU time go into the result
    #[arg(long)]
    pub(crate) broker_pid: Option<u32>,
    /// 3 for MQTT 3.1.1, 5 for MQTT 5.0
    #[arg(long, default_value_t = 5, value_parser = mqtt_version)]
    pub(crate) mqtt_version: u8,
    /// Unacknowledged QoS 1 PUBLISHes per publisher at most (the broker's Receive Maximum may
    /// lower it)
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u16).range(1..))]
    pub(crate) inflight: u16,
    /// latency: seconds published first and left out of the percentiles
    #[arg(long, default_value_t = 1.0, value_parser = seconds)]
    pub(crate) warmup: f64,
    /// conns: handshakes in flight at once (keep it below the broker's listen backlog)
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub(crate) connect_concurrency: u32,
    /// Copied into the result, to tell runs apart (the broker's name, say)
    #[arg(long, default_value = "")]
    pub(crate) label: String,
}

impl Args {
    pub(crate) fn v5(&self) -> bool {
        self.mqtt_version == 5
    }

    /// The longest a run can take: its phases have their own limits, this is the backstop.
    pub(crate) fn time_limit_secs(&self) -> f64 {
        self.duration + self.warmup + 60.0
    }
}

fn loopback(host: &str) -> Result<String, String> {
    let is_loopback =
        host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if is_loopback {
        Ok(host.to_owned())
    } else {
        Err(format!(
            "{host} is not a loopback address: the generator only measures brokers on this machine"
        ))
    }
}

fn mqtt_version(s: &str) -> Result<u8, String> {
    match s {
        "3" => Ok(3),
        "5" => Ok(5),
        _ => Err(format!("{s} is neither 3 (MQTT 3.1.1) nor 5 (MQTT 5.0)")),
    }
}

fn seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..=3600.0).contains(&v) => Ok(v),
        Ok(v) => Err(format!("{v} s is outside 0 to 3600 s")),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(["starling-bench"].iter().chain(args))
    }

    #[test]
    fn only_loopback_brokers_are_measured() {
        for host in ["127.0.0.1", "127.1.2.3", "::1", "localhost"] {
            assert!(
                parse(&["--scenario", "fanin", "--host", host]).is_ok(),
                "{host}"
            );
        }
        for host in ["10.0.0.1", "192.168.1.1", "example.com", "0.0.0.0"] {
            let e = parse(&["--scenario", "fanin", "--host", host]).unwrap_err();
            assert!(
                e.to_string().contains("not a loopback address"),
                "{host}: {e}"
            );
        }
    }

    #[test]
    fn counts_and_durations_are_bounded() {
        for bad in [
            ["--duration", "3601"],
            ["--duration", "-1"],
            ["--conns", "100001"],
            ["--subscribers", "0"],
            ["--payload", "15"],
            ["--qos", "2"],
            ["--mqtt-version", "4"],
        ] {
            let mut args = vec!["--scenario", "conns"];
            args.extend(bad);
            assert!(parse(&args).is_err(), "{bad:?} was accepted");
        }
        assert!(parse(&["--scenario", "conns", "--mqtt-version", "3"]).is_ok());
    }
}
