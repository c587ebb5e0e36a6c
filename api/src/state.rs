//! Shared state of the handlers: the store, the key-encryption key, the configuration, metrics
//! and the clock.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use crate::config::Config;
use crate::keys::Kek;
use crate::metrics::Metrics;
use crate::store::Store;

/// The wall clock, with an offset that tests move forward (to pass `retire_at` or `exp`), and
/// which a test that counts seconds to a boundary can stop.
#[derive(Debug, Default)]
pub struct Clock {
    offset_secs: AtomicI64,
    /// When stopped: the Unix microseconds it stopped at; 0 while it runs.
    stopped_at: AtomicI64,
}

impl Clock {
    /// Unix microseconds.
    pub fn now_micros(&self) -> i64 {
        let stopped = self.stopped_at.load(Ordering::Relaxed);
        let now = if stopped != 0 {
            stopped
        } else {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
                .unwrap_or(0)
        };
        now.saturating_add(
            self.offset_secs
                .load(Ordering::Relaxed)
                .saturating_mul(1_000_000),
        )
    }

    /// Unix seconds.
    pub fn now_secs(&self) -> i64 {
        self.now_micros().div_euclid(1_000_000)
    }

    /// Moves the clock forward (tests).
    pub fn advance(&self, secs: i64) {
        self.offset_secs.fetch_add(secs, Ordering::Relaxed);
    }

    /// Stops the clock where it is (tests): it then moves only by [`Clock::advance`], so a
    /// second boundary passing while the test runs cannot shift what it counts.
    pub fn stop(&self) {
        let now = self.now_micros().saturating_sub(
            self.offset_secs
                .load(Ordering::Relaxed)
                .saturating_mul(1_000_000),
        );
        self.stopped_at.store(now.max(1), Ordering::Relaxed);
    }
}

/// Everything a handler needs. Cheap to clone.
#[derive(Clone)]
pub struct AppState(pub Arc<Inner>);

/// The contents of [`AppState`].
pub struct Inner {
    /// The database.
    pub store: Arc<dyn Store>,
    /// Seals and opens signing-key seeds.
    pub kek: Kek,
    /// The configuration.
    pub config: Config,
    /// Prometheus metrics.
    pub metrics: Metrics,
    /// The clock.
    pub clock: Clock,
    /// The brokers' latest counter reports (the console's health charts).
    pub stats: crate::stats::StatsBoard,
}

impl AppState {
    /// State over a store.
    pub fn new(store: Arc<dyn Store>, kek: Kek, config: Config) -> Self {
        Self(Arc::new(Inner {
            store,
            kek,
            config,
            metrics: Metrics::new(),
            clock: Clock::default(),
            stats: crate::stats::StatsBoard::default(),
        }))
    }
}

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}
