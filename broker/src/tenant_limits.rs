//! A tenant's limits: the broker's own, tightened by the tenant's (`limits` of its state in the
//! control plane's feed, or of `dev`'s store).
//!
//! A tenant may lower every limit the table marks [`SetBy::Tenant`](starling_types::SetBy) and
//! raise none (a higher value is clamped to the broker's and logged); operator-only limits stay
//! the broker's. Tenant-wide limits (connections, retained messages, a new session's queue) are
//! the broker's `[limits]` tightened; a connection's limits are its listener's tightened, once
//! its credential has named the tenant. A change applies at once to the tenant-wide counts and
//! to connections made after it; connections already open keep the limits they started with.
//!
//! Concurrency: reads clone an `Arc` under a short read lock (every CONNECT, every new session);
//! a change takes the write locks for the swap only.

use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use starling_types::{Limits, LimitsSpec};

/// The limits of one tenant.
#[derive(Debug)]
pub struct TenantLimits {
    /// The broker's `[limits]`.
    base: Limits,
    /// The tenant's own, as its source gave them.
    spec: RwLock<Arc<LimitsSpec>>,
    /// `base` tightened by `spec`.
    wide: RwLock<Arc<Limits>>,
    /// Connection limits by listener: the listener's `Arc` (compared by address) and its limits
    /// tightened by `spec`. One entry per listener at most; cleared when `spec` changes.
    per_listener: Mutex<Vec<(Arc<Limits>, Arc<Limits>)>>,
}

impl TenantLimits {
    /// The broker's limits, with nothing of the tenant's yet.
    pub fn new(base: Limits) -> Self {
        TenantLimits {
            wide: RwLock::new(Arc::new(base.clone())),
            base,
            spec: RwLock::new(Arc::new(LimitsSpec::default())),
            per_listener: Mutex::new(Vec::new()),
        }
    }

    /// The tenant-wide limits now.
    pub fn current(&self) -> Arc<Limits> {
        self.wide.read().clone()
    }

    /// The tenant's own limits, as last set.
    pub fn spec(&self) -> Arc<LimitsSpec> {
        self.spec.read().clone()
    }

    /// The limits of a connection of this tenant on a listener whose limits are `listener`.
    pub fn for_connection(&self, listener: &Arc<Limits>) -> Arc<Limits> {
        let spec = self.spec();
        if spec.is_empty() {
            return listener.clone();
        }
        let mut cache = self.per_listener.lock();
        if let Some((_, l)) = cache.iter().find(|(k, _)| Arc::ptr_eq(k, listener)) {
            return l.clone();
        }
        let (tightened, _) = listener.tightened(&spec);
        let tightened = Arc::new(tightened);
        cache.push((listener.clone(), tightened.clone()));
        tightened
    }

    /// Sets the tenant's own limits. Returns `None` when they did not change, else a line for
    /// every value that did not apply as asked (clamped to the broker's, or operator-only).
    pub fn set(&self, spec: &LimitsSpec) -> Option<Vec<String>> {
        if **self.spec.read() == *spec {
            return None;
        }
        let (wide, notes) = self.base.tightened(spec);
        // Connection limits come from the listener's, which may be looser than `[limits]`: the
        // notes of the tenant-wide ones say what was clamped.
        *self.spec.write() = Arc::new(spec.clone());
        *self.wide.write() = Arc::new(wide);
        self.per_listener.lock().clear();
        Some(notes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_tenant_limits_a_connection_shares_its_listeners() {
        let t = TenantLimits::new(Limits::default());
        let listener = Arc::new(Limits::default());
        assert!(Arc::ptr_eq(&t.for_connection(&listener), &listener));
    }

    #[test]
    fn tenant_limits_tighten_the_listeners_once_per_listener() {
        let t = TenantLimits::new(Limits::default());
        let notes = t.set(&LimitsSpec {
            max_packet_size: Some(2048),
            max_connections: Some(3),
            ..LimitsSpec::default()
        });
        assert_eq!(notes, Some(Vec::new()));
        assert_eq!(t.current().max_connections, 3);
        let listener = Arc::new(Limits::default());
        let a = t.for_connection(&listener);
        assert_eq!(a.max_packet_size, 2048);
        assert!(Arc::ptr_eq(&a, &t.for_connection(&listener)), "cached");
        assert_eq!(t.set(&t.spec()), None, "unchanged");
        t.set(&LimitsSpec::default());
        assert!(Arc::ptr_eq(&t.for_connection(&listener), &listener));
        assert_eq!(
            t.current().max_connections,
            Limits::default().max_connections
        );
    }
}
