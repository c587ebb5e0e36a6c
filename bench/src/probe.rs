//! What a run costs, read from /proc: the broker's resident memory (now and at its peak) and CPU
//! time, the generator's own CPU time, and how busy the rest of the machine was (a run on a
//! shared machine is only as good as that last figure says).

use std::time::Instant;

use serde_json::{Value, json};

/// A `kB` field of /proc/PID/status, such as `VmRSS:` or `VmHWM:`.
pub(crate) fn status_kb(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The broker's resident memory in kB.
pub(crate) fn rss_kb(pid: Option<u32>) -> Option<u64> {
    pid.and_then(|p| status_kb(p, "VmRSS:"))
}

fn ticks_to_secs(ticks: u64) -> f64 {
    ticks as f64 / rustix::param::clock_ticks_per_second() as f64
}

/// User plus system CPU seconds of a process (`self` or a PID), all threads.
fn cpu_secs(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: count fields after its closing one.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(ticks_to_secs(utime + stime))
}

/// CPU seconds the whole machine was busy (every core; idle and iowait left out).
fn machine_busy_secs() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let ticks: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .take(8)
        .filter_map(|x| x.parse().ok())
        .collect();
    let idle = ticks.get(3)? + ticks.get(4)?;
    Some(ticks_to_secs(ticks.iter().sum::<u64>() - idle))
}

/// Readings at the start of a measured phase; `finish` turns them into the run's figures.
pub(crate) struct Probe {
    pid: Option<u32>,
    rss_kb: Option<u64>,
    broker_cpu: Option<f64>,
    own_cpu: Option<f64>,
    machine_busy: Option<f64>,
    started: Instant,
}

impl Probe {
    pub(crate) fn start(pid: Option<u32>) -> Self {
        if let Some(p) = pid {
            // Resets the peak (VmHWM) to the current RSS, so the peak is this run's. Needs the
            // broker's owner or root; without it the peak covers the broker's whole life.
            let _ = std::fs::write(format!("/proc/{p}/clear_refs"), "5");
        }
        Self {
            pid,
            rss_kb: rss_kb(pid),
            broker_cpu: pid.and_then(|p| cpu_secs(&p.to_string())),
            own_cpu: cpu_secs("self"),
            machine_busy: machine_busy_secs(),
            started: Instant::now(),
        }
    }

    pub(crate) fn finish(&self) -> Value {
        let wall = self.started.elapsed().as_secs_f64();
        let since = |now: Option<f64>, then: Option<f64>| now.zip(then).map(|(n, t)| n - t);
        let broker = since(
            self.pid.and_then(|p| cpu_secs(&p.to_string())),
            self.broker_cpu,
        );
        let own = since(cpu_secs("self"), self.own_cpu);
        let busy = since(machine_busy_secs(), self.machine_busy);
        let others = busy.map(|b| (b - broker.unwrap_or(0.0) - own.unwrap_or(0.0)).max(0.0));
        let per_sec = |secs: Option<f64>| secs.map(|s| s / wall);
        json!({
            "broker_rss_kb_before": self.rss_kb,
            "broker_rss_kb_after": rss_kb(self.pid),
            "broker_rss_kb_peak": self.pid.and_then(|p| status_kb(p, "VmHWM:")),
            "broker_cpu_s": broker,
            "broker_cpu_util": per_sec(broker),
            "loadgen_cpu_s": own,
            "loadgen_cpu_util": per_sec(own),
            "machine_cpu_util": per_sec(busy),
            "other_cpu_util": per_sec(others),
            "loadavg1": std::fs::read_to_string("/proc/loadavg")
                .ok()
                .and_then(|l| l.split_whitespace().next()?.parse::<f64>().ok()),
            "probe_wall_s": wall,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_memory_and_cpu_are_readable() {
        let pid = std::process::id();
        assert!(rss_kb(Some(pid)).is_some_and(|kb| kb > 0));
        let burn: u64 = (0..20_000_000u64).fold(0, |a, x| a ^ x.wrapping_mul(31));
        assert_ne!(burn, 1);
        assert!(cpu_secs("self").is_some_and(|s| s > 0.0));
        assert!(machine_busy_secs().is_some_and(|s| s > 0.0));
        assert_eq!(rss_kb(None), None);
    }
}
