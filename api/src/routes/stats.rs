//! Broker health: `GET /v1/namespaces/{ns}/brokers/{b}/stats` (native only), the counters the
//! broker's processes reported with their state-feed polls (in `dev`, the embedded broker's),
//! as chart points: connections, and messages in, out and dropped per second.

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};

use super::{Auth, PathParams};
use crate::error::{Problem, Result};
use crate::state::AppState;
use crate::stats::Series;
use crate::store::Role;

/// Where the figures come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum StatsSource {
    /// `starling-dev`'s embedded broker, which serves every broker: the figures are theirs
    /// together.
    Embedded,
    /// The broker's own processes, with their state-feed polls.
    Reported,
    /// Nothing reported yet (or not for three minutes).
    None,
}

/// One reporting broker process.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StatsInstance {
    /// The process's report id (random per process).
    pub instance: String,
    /// When its latest report arrived (unix milliseconds).
    pub reported_at: i64,
    /// Connections open then.
    pub connections: u64,
    /// PUBLISH packets received since the process started.
    pub messages_in: u64,
    /// PUBLISH packets sent since the process started.
    pub messages_out: u64,
    /// Messages dropped since the process started.
    pub dropped: u64,
}

/// A chart point, summed over the broker's processes.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StatsPoint {
    /// Unix milliseconds.
    pub at: i64,
    /// Connections open.
    pub connections: u64,
    /// Messages received per second, over the time since the point before.
    pub messages_in_per_sec: f64,
    /// Messages sent per second.
    pub messages_out_per_sec: f64,
    /// Messages dropped per second.
    pub dropped_per_sec: f64,
}

/// A broker's health.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StatsView {
    /// Where the figures come from.
    pub source: StatsSource,
    /// What the figures cover, in a sentence.
    pub note: String,
    /// The processes that reported in the last three minutes.
    pub instances: Vec<StatsInstance>,
    /// Oldest first: at most 64 per process.
    pub points: Vec<StatsPoint>,
}

fn view(series: Series) -> StatsView {
    let (source, note) = if series.embedded {
        (
            StatsSource::Embedded,
            "starling-dev: one embedded broker serves every broker, so these figures are all of theirs together, sampled every 2 s",
        )
    } else if series.instances.is_empty() {
        (
            StatsSource::None,
            "no report yet: a broker's processes report their counters with each state-feed poll (at least every 30 s)",
        )
    } else {
        (
            StatsSource::Reported,
            "reported by the broker's processes with each state-feed poll (at least every 30 s, and at once after a change)",
        )
    };
    StatsView {
        source,
        note: note.to_string(),
        instances: series
            .instances
            .into_iter()
            .map(|(instance, s)| StatsInstance {
                instance,
                reported_at: s.at_ms,
                connections: s.connections,
                messages_in: s.messages_in,
                messages_out: s.messages_out,
                dropped: s.dropped,
            })
            .collect(),
        points: series
            .points
            .into_iter()
            .map(|p| StatsPoint {
                at: p.at_ms,
                connections: p.connections,
                messages_in_per_sec: p.messages_in_per_sec,
                messages_out_per_sec: p.messages_out_per_sec,
                dropped_per_sec: p.dropped_per_sec,
            })
            .collect(),
    }
}

/// The broker's health: connections, and messages in, out and dropped per second.
#[utoipa::path(get, path = "/namespaces/{namespace}/brokers/{broker}/stats", tag = "brokers",
    params(("namespace" = String, Path, description = "namespace name", example = "demo"), ("broker" = String, Path, description = "broker name", example = "demo")),
    responses(
        (status = 200, description = "the broker's latest figures", body = StatsView),
        (status = 400, description = "invalid request", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "no valid API token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "role too low", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "no such broker", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn native_stats(
    State(state): State<AppState>,
    auth: Auth,
    PathParams((ns, b)): PathParams<(String, String)>,
) -> Result<Json<StatsView>> {
    auth.require(Role::Read)?;
    let broker = super::brokers::find(&state, &auth, &ns, &b).await?;
    let now_ms = state.clock.now_micros() / 1000;
    Ok(Json(view(state.stats.series(&broker.id, now_ms))))
}
