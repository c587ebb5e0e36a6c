//! Broker health as the api sees it: the latest counter summaries of each broker, kept in memory
//! for the console's charts (`GET /v1/namespaces/{ns}/brokers/{b}/stats`).
//!
//! A managed broker reports a [`StatsReport`] (connections, messages in and out, drops: counts,
//! never a topic, a client id or a secret) in a header of every state-feed long-poll, so a report
//! arrives at least every 30 s and at once after each change; the internal route records it once
//! the broker secret checked out. `starling-dev` samples its embedded broker's metrics every
//! [`DEV_SAMPLE_EVERY`] under [`EMBEDDED`], which then stands for every broker (one process serves
//! them all). Nothing here is persisted: after an api restart the charts start empty, and with
//! several api replicas each keeps what reached it (a broker's polls go to one replica at a time).
//!
//! Bounded: per broker at most [`MAX_INSTANCES`] reporting processes (the one heard from longest
//! ago leaves first), per process [`MAX_SAMPLES`] samples (a sample within [`MIN_SPACING_MS`] of
//! the previous one replaces it), and processes silent for [`STALE_MS`] are forgotten.

use std::collections::{BTreeMap, HashMap, VecDeque};

use parking_lot::Mutex;
pub use starling_types::feed::{STATS_HEADER, StatsReport};

/// The key under which `dev` records its embedded broker, which serves every broker.
pub const EMBEDDED: &str = "*";
/// How often `dev` samples its embedded broker.
pub const DEV_SAMPLE_EVERY: std::time::Duration = std::time::Duration::from_secs(2);
/// Reporting processes kept per broker.
pub const MAX_INSTANCES: usize = 16;
/// Samples kept per reporting process.
pub const MAX_SAMPLES: usize = 64;
/// A sample this close to the previous one replaces it.
pub const MIN_SPACING_MS: i64 = 1000;
/// A process not heard from for this long is forgotten (two long-polls of 30 s and then some).
pub const STALE_MS: i64 = 180_000;

/// One report with the time it arrived (unix milliseconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// When it arrived.
    pub at_ms: i64,
    /// Connections open then.
    pub connections: u64,
    /// PUBLISH packets received since the process started.
    pub messages_in: u64,
    /// PUBLISH packets sent since the process started.
    pub messages_out: u64,
    /// Messages dropped since the process started.
    pub dropped: u64,
}

impl Sample {
    /// A report as it arrived at `at_ms`.
    pub fn new(at_ms: i64, r: &StatsReport) -> Self {
        Sample {
            at_ms,
            connections: r.connections,
            messages_in: r.messages_in,
            messages_out: r.messages_out,
            dropped: r.dropped,
        }
    }
}

/// A point of a chart: connections then, and rates over the time before it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    /// Unix milliseconds.
    pub at_ms: i64,
    /// Connections open.
    pub connections: u64,
    /// Messages received per second.
    pub messages_in_per_sec: f64,
    /// Messages sent per second.
    pub messages_out_per_sec: f64,
    /// Messages dropped per second.
    pub dropped_per_sec: f64,
}

/// What the board knows about one broker.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Series {
    /// Whether the figures come from `dev`'s embedded broker (every broker's, together).
    pub embedded: bool,
    /// Each reporting process: its id and its latest sample.
    pub instances: Vec<(String, Sample)>,
    /// The chart, summed over the processes, oldest first.
    pub points: Vec<Point>,
}

#[derive(Debug, Default)]
struct Instance {
    samples: VecDeque<Sample>,
}

impl Instance {
    fn last_at(&self) -> i64 {
        self.samples.back().map_or(i64::MIN, |s| s.at_ms)
    }
}

/// The latest reports of every broker. Cheap to share; one short lock per report or read.
#[derive(Debug, Default)]
pub struct StatsBoard {
    brokers: Mutex<HashMap<String, BTreeMap<String, Instance>>>,
}

impl StatsBoard {
    /// Records a report from process `instance` of broker `broker_id` (or [`EMBEDDED`]).
    pub fn record(&self, broker_id: &str, instance: &str, sample: Sample) {
        let mut brokers = self.brokers.lock();
        // Forget processes gone silent everywhere, now and then (the map holds few entries per
        // live broker, so a walk is cheap).
        if brokers.len() > 64 && sample.at_ms % 16 == 0 {
            prune(&mut brokers, sample.at_ms);
        }
        let instances = brokers.entry(broker_id.to_string()).or_default();
        instances.retain(|_, i| sample.at_ms - i.last_at() < STALE_MS);
        if !instances.contains_key(instance) && instances.len() >= MAX_INSTANCES {
            if let Some(oldest) = instances
                .iter()
                .min_by_key(|(_, i)| i.last_at())
                .map(|(k, _)| k.clone())
            {
                instances.remove(&oldest);
            }
        }
        let samples = &mut instances.entry(instance.to_string()).or_default().samples;
        if samples
            .back()
            .is_some_and(|last| sample.at_ms - last.at_ms < MIN_SPACING_MS)
        {
            samples.pop_back();
        }
        if samples.len() >= MAX_SAMPLES {
            samples.pop_front();
        }
        samples.push_back(sample);
    }

    /// Forgets a broker (deleted).
    pub fn forget(&self, broker_id: &str) {
        self.brokers.lock().remove(broker_id);
    }

    /// What is known about `broker_id` at `now_ms`: `dev`'s embedded broker when it reports,
    /// else the broker's own processes.
    pub fn series(&self, broker_id: &str, now_ms: i64) -> Series {
        let brokers = self.brokers.lock();
        let (embedded, instances) = match brokers.get(EMBEDDED) {
            Some(i) if !i.is_empty() => (true, i),
            _ => match brokers.get(broker_id) {
                Some(i) => (false, i),
                None => return Series::default(),
            },
        };
        let live: Vec<(&String, &Instance)> = instances
            .iter()
            .filter(|(_, i)| now_ms - i.last_at() < STALE_MS)
            .collect();
        Series {
            embedded,
            instances: live
                .iter()
                .filter_map(|(k, i)| i.samples.back().map(|s| ((*k).clone(), *s)))
                .collect(),
            points: merge(
                &live
                    .iter()
                    .map(|(_, i)| i.samples.iter().copied().collect::<Vec<_>>())
                    .collect::<Vec<_>>(),
            ),
        }
    }
}

fn prune(brokers: &mut HashMap<String, BTreeMap<String, Instance>>, now_ms: i64) {
    brokers.retain(|_, instances| {
        instances.retain(|_, i| now_ms - i.last_at() < STALE_MS);
        !instances.is_empty()
    });
}

/// The rate points of one process: one per sample after the first, with the rates over the
/// time since the sample before. A counter that went down (the process restarted under the same
/// id) gives a rate of 0 for that stretch.
fn rates(samples: &[Sample]) -> Vec<Point> {
    samples
        .windows(2)
        .map(|w| {
            let (a, b) = (w[0], w[1]);
            let secs = ((b.at_ms - a.at_ms) as f64 / 1000.0).max(0.001);
            let rate = |x: u64, y: u64| y.checked_sub(x).map_or(0.0, |d| d as f64 / secs);
            Point {
                at_ms: b.at_ms,
                connections: b.connections,
                messages_in_per_sec: rate(a.messages_in, b.messages_in),
                messages_out_per_sec: rate(a.messages_out, b.messages_out),
                dropped_per_sec: rate(a.dropped, b.dropped),
            }
        })
        .collect()
}

/// Sums several processes' points on the times any of them reported. At time `t` a process
/// counts with the connections of its latest sample at or before `t`, and with the rates of its
/// stretch covering `t` (the first point at or after `t`; after its last report, its last
/// rates); before its first sample it does not count.
fn merge(processes: &[Vec<Sample>]) -> Vec<Point> {
    let per_process: Vec<(&[Sample], Vec<Point>)> = processes
        .iter()
        .filter(|s| !s.is_empty())
        .map(|s| (s.as_slice(), rates(s)))
        .collect();
    let mut times: Vec<i64> = per_process
        .iter()
        .flat_map(|(_, points)| points.iter().map(|p| p.at_ms))
        .collect();
    times.sort_unstable();
    times.dedup();
    times
        .into_iter()
        .map(|t| {
            let mut sum = Point {
                at_ms: t,
                connections: 0,
                messages_in_per_sec: 0.0,
                messages_out_per_sec: 0.0,
                dropped_per_sec: 0.0,
            };
            for (samples, points) in &per_process {
                let Some(gauge) = samples.iter().rev().find(|s| s.at_ms <= t) else {
                    continue;
                };
                sum.connections += gauge.connections;
                if let Some(p) = points.iter().find(|p| p.at_ms >= t).or(points.last()) {
                    sum.messages_in_per_sec += p.messages_in_per_sec;
                    sum.messages_out_per_sec += p.messages_out_per_sec;
                    sum.dropped_per_sec += p.dropped_per_sec;
                }
            }
            sum
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(
        at_ms: i64,
        connections: u64,
        messages_in: u64,
        messages_out: u64,
        dropped: u64,
    ) -> Sample {
        Sample {
            at_ms,
            connections,
            messages_in,
            messages_out,
            dropped,
        }
    }

    #[test]
    fn rates_are_per_second_between_reports_and_zero_across_a_restart() {
        let p = rates(&[
            s(0, 1, 0, 0, 0),
            s(2000, 3, 10, 40, 2),
            s(4000, 3, 4, 50, 2),
        ]);
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].at_ms, 2000);
        assert_eq!(p[0].connections, 3);
        assert_eq!(p[0].messages_in_per_sec, 5.0);
        assert_eq!(p[0].messages_out_per_sec, 20.0);
        assert_eq!(p[0].dropped_per_sec, 1.0);
        assert_eq!(p[1].messages_in_per_sec, 0.0, "the counter went down");
        assert_eq!(p[1].messages_out_per_sec, 5.0);
    }

    #[test]
    fn two_processes_are_summed_on_every_report_time() {
        let a = vec![
            s(0, 1, 0, 0, 0),
            s(10_000, 2, 100, 0, 0),
            s(20_000, 2, 300, 0, 0),
        ];
        let b = vec![s(5_000, 5, 0, 0, 0), s(15_000, 7, 0, 50, 0)];
        let m = merge(&[a, b]);
        let at: Vec<i64> = m.iter().map(|p| p.at_ms).collect();
        assert_eq!(at, vec![10_000, 15_000, 20_000]);
        // At 10 s: a's first stretch (10/s); b's first stretch ends at 15 s and covers 10 s.
        assert_eq!(m[0].messages_in_per_sec, 10.0);
        assert_eq!(m[0].messages_out_per_sec, 5.0);
        assert_eq!(m[0].connections, 2 + 5, "each process's latest gauge");
        // At 20 s: a's second stretch (20/s), b past its last report keeps its last rate.
        assert_eq!(m[2].messages_in_per_sec, 20.0);
        assert_eq!(m[2].messages_out_per_sec, 5.0);
    }

    #[test]
    fn the_board_is_bounded_and_forgets_silent_processes() {
        let board = StatsBoard::default();
        for i in 0..(MAX_SAMPLES as i64 + 10) {
            board.record("b", "p1", s(i * 2000, 1, i as u64, 0, 0));
        }
        let now = (MAX_SAMPLES as i64 + 9) * 2000;
        let series = board.series("b", now);
        assert_eq!(series.points.len(), MAX_SAMPLES - 1);
        assert!(!series.embedded);
        for i in 0..(MAX_INSTANCES + 5) {
            board.record("b", &format!("q{i}"), s(now + i as i64, 0, 0, 0, 0));
        }
        assert_eq!(board.series("b", now).instances.len(), MAX_INSTANCES);
        assert!(
            board.series("b", now + STALE_MS + 100).instances.is_empty(),
            "silent processes are left out"
        );
        board.record("b", "late", s(now + STALE_MS + 100, 0, 0, 0, 0));
        assert_eq!(board.series("b", now + STALE_MS + 100).instances.len(), 1);
    }

    #[test]
    fn close_samples_replace_each_other() {
        let board = StatsBoard::default();
        board.record("b", "p", s(0, 1, 0, 0, 0));
        board.record("b", "p", s(5000, 1, 10, 0, 0));
        board.record("b", "p", s(5500, 1, 20, 0, 0));
        let series = board.series("b", 6000);
        assert_eq!(series.points.len(), 1);
        assert_eq!(series.points[0].at_ms, 5500);
        assert_eq!(series.instances[0].1.messages_in, 20);
    }

    #[test]
    fn the_embedded_broker_stands_for_every_broker() {
        let board = StatsBoard::default();
        board.record("b", "p", s(0, 9, 0, 0, 0));
        assert!(!board.series("b", 0).embedded);
        board.record(EMBEDDED, "dev", s(0, 1, 0, 0, 0));
        let series = board.series("any", 0);
        assert!(series.embedded);
        assert_eq!(series.instances[0].1.connections, 1);
    }
}
