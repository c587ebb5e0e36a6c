//! The broker's background work that outlives a connection: will delays, session expiry,
//! the on-publish hook's verdicts on a closed connection's messages, session ends. It runs
//! under the broker's task tracker, so a graceful shutdown waits for it (within the drain
//! deadline); timers end when shutdown starts, as the sessions they wait on go with the
//! process.

use std::future::Future;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Spawns the broker's background tasks (see the module documentation).
#[derive(Debug, Clone, Default)]
pub struct Tasks {
    tracker: TaskTracker,
    shutdown: CancellationToken,
}

impl Tasks {
    /// Tasks tracked by `tracker`, whose timers end when `shutdown` is cancelled.
    pub fn new(tracker: TaskTracker, shutdown: CancellationToken) -> Self {
        Tasks { tracker, shutdown }
    }

    /// Runs `task` to its end; shutdown waits for it.
    pub fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tracker.spawn(task);
    }

    /// Runs `timer` until it ends or shutdown starts, whichever comes first.
    pub fn spawn_timer<F>(&self, timer: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let shutdown = self.shutdown.clone();
        self.tracker.spawn(async move {
            tokio::select! {
                _ = timer => {}
                _ = shutdown.cancelled() => {}
            }
        });
    }
}
