//! The state feed between the api (`GET /internal/v1/brokers/{id}/state`) and a broker in
//! managed mode.
//!
//! Every poll reports the broker process's counters ([`StatsReport`]) in the [`STATS_HEADER`]
//! request header, which the api keeps for its health view.

/// The request header of a state-feed poll that carries the broker's [`StatsReport`].
pub const STATS_HEADER: &str = "x-starling-broker-stats";

/// The longest [`STATS_HEADER`] value read.
const MAX_STATS_LEN: usize = 256;

/// A small summary of a broker process's counters, sent with every state-feed poll:
/// `instance=<id>; connections=N; messages_in=N; messages_out=N; dropped=N`. Counts only (never
/// a topic, a client id or a secret); the counters are the process's since it started (a process
/// serving several tenants reports the same figures for each).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StatsReport {
    /// Which process reports (random per process and tenant; 1 to 64 of `[A-Za-z0-9_-]`).
    pub instance: String,
    /// Connections open now.
    pub connections: u64,
    /// PUBLISH packets received since start.
    pub messages_in: u64,
    /// PUBLISH packets sent since start.
    pub messages_out: u64,
    /// Messages dropped since start, for any reason.
    pub dropped: u64,
}

impl StatsReport {
    /// The header value.
    pub fn to_header(&self) -> String {
        format!(
            "instance={}; connections={}; messages_in={}; messages_out={}; dropped={}",
            self.instance, self.connections, self.messages_in, self.messages_out, self.dropped
        )
    }

    /// Reads a header value; `None` when it is longer than 256 bytes, has no valid `instance`,
    /// or a known key with a value that is not a count. Unknown keys are skipped, so a newer
    /// broker can add figures.
    pub fn parse(text: &str) -> Option<StatsReport> {
        if text.len() > MAX_STATS_LEN {
            return None;
        }
        let mut report = StatsReport::default();
        for part in text.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = part.split_once('=')?;
            let count = || value.trim().parse::<u64>().ok();
            match key.trim() {
                "instance" => report.instance = value.trim().to_string(),
                "connections" => report.connections = count()?,
                "messages_in" => report.messages_in = count()?,
                "messages_out" => report.messages_out = count()?,
                "dropped" => report.dropped = count()?,
                _ => {}
            }
        }
        let id_ok = (1..=64).contains(&report.instance.len())
            && report
                .instance
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        id_ok.then_some(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_reports_read_back_and_bad_ones_are_refused() {
        let r = StatsReport {
            instance: "0123abcd".into(),
            connections: 3,
            messages_in: 10,
            messages_out: 20,
            dropped: 1,
        };
        assert_eq!(StatsReport::parse(&r.to_header()), Some(r.clone()));
        assert_eq!(
            StatsReport::parse(&format!("{}; newer=7", r.to_header())),
            Some(r),
            "unknown keys are skipped"
        );
        for bad in [
            "connections=3",
            "instance=; connections=3",
            "instance=a b; connections=3",
            "instance=p; connections=-1",
            "instance=p; dropped=x",
            "instance=p; novalue",
            &format!("instance=p; x={}", "1".repeat(300)),
        ] {
            assert_eq!(StatsReport::parse(bad), None, "{bad}");
        }
    }
}
