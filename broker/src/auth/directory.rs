//! The tenants a token-authenticating broker serves, with their keys and revocations.
//!
//! One interface for every source of that data: files ([`super::files`]) today, the control
//! plane's state feed in managed mode. A source calls [`Directory::apply`] with a tenant's
//! complete state whenever it changes; the directory swaps the tenant's key set and revocation
//! list in place, then ends the sessions whose token was revoked or whose token's key left
//! the key set (rotation with `retire_after=0`, a retiring key past `retire_at`): a
//! connected session is disconnected (0x87) and ends with its connection, an offline one ends
//! at once. Their wills are discarded.
//!
//! A hook key (the key of a tenant's on-publish hook, or the standalone `[hook] key_file`) signs
//! hook requests only: its `kid` never selects a tenant and is never in a verifier, even when a
//! state's key set lists it, so a token signed with it is refused ([`Directory::is_hook_kid`]).
//!
//! Concurrency: lookups (every CONNECT) take a read lock on a small map and clone `Arc`s; a
//! change takes the write lock for the swap only.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use parking_lot::RwLock;
use starling_token::{Jwks, TokenError, Verifier};
use starling_types::LimitsSpec;
use tracing::{info, warn};

use crate::auth::Credential;
use crate::config::Limits;
use crate::hook::{Hook, HookSettings, HookTarget};
use crate::metrics::Metrics;
use crate::session::Kick;
use crate::session::lifecycle::end_for_credential;
use crate::storage::Storage;
use crate::tasks::Tasks;
use crate::tenant::Tenant;

/// Everything a source knows about one tenant.
#[derive(Debug, Clone, Default)]
pub struct TenantState {
    /// The public keys whose `kid`s select this tenant.
    pub jwks: Jwks,
    /// Revoked token ids.
    pub revoked: HashSet<String>,
    /// The on-publish hook, when the tenant has one.
    pub hook: Option<crate::hook::HookTarget>,
    /// The tenant's own limits, applied within the broker's (see [`crate::tenant_limits`]).
    pub limits: LimitsSpec,
}

/// One tenant's current keys and revocations.
#[derive(Debug)]
pub struct TenantAuth {
    /// The tenant.
    pub tenant: Arc<Tenant>,
    verifier: RwLock<Arc<Verifier>>,
    kids: RwLock<Vec<String>>,
    /// The `kid` of this tenant's hook key, if it has a hook.
    hook_kid: RwLock<Option<String>>,
    revoked: RwLock<Arc<HashSet<String>>>,
}

impl TenantAuth {
    /// The current key set.
    pub fn verifier(&self) -> Arc<Verifier> {
        self.verifier.read().clone()
    }

    /// Whether `jti` is revoked.
    pub fn is_revoked(&self, jti: &str) -> bool {
        self.revoked.read().contains(jti)
    }
}

#[derive(Debug, Default)]
struct Inner {
    tenants: HashMap<String, Arc<TenantAuth>>,
    by_kid: HashMap<String, Arc<TenantAuth>>,
    /// Every hook key's `kid`: the tenants' hooks' and the reserved ones.
    hook_kids: HashSet<String>,
    /// Hook kids not of a tenant (the standalone `[hook] key_file`).
    reserved_hook_kids: HashSet<String>,
}

/// The tenants of a token-authenticating broker.
#[derive(Debug)]
pub struct Directory {
    inner: RwLock<Inner>,
    limits: Limits,
    hook_settings: Arc<HookSettings>,
    metrics: Arc<Metrics>,
    tasks: Tasks,
    /// The durable store new tenants keep their state in, with a data directory.
    storage: Option<Storage>,
    /// The other replicas (`[cluster]`), which every tenant joins when it is added.
    cluster: std::sync::OnceLock<Arc<crate::cluster::link::Link>>,
}

impl Directory {
    /// An empty directory; tenants appear with their first [`Directory::apply`].
    pub fn new(
        limits: Limits,
        hook_settings: HookSettings,
        metrics: Arc<Metrics>,
        tasks: Tasks,
        storage: Option<Storage>,
    ) -> Self {
        Directory {
            inner: RwLock::new(Inner::default()),
            limits,
            hook_settings: Arc::new(hook_settings),
            metrics,
            tasks,
            storage,
            cluster: std::sync::OnceLock::new(),
        }
    }

    /// Joins every tenant, now and added later, to the other replicas through `link`.
    pub fn set_cluster(&self, link: Arc<crate::cluster::link::Link>) {
        for t in self.inner.read().tenants.values() {
            t.tenant.join_cluster(&link);
        }
        let _ = self.cluster.set(link);
    }

    /// Sets the complete state of tenant `name` (creating it when new) and ends its sessions
    /// whose token id is now revoked or whose token's key is no longer in the key set.
    pub fn apply(&self, name: &str, state: &TenantState) -> Result<(), TokenError> {
        let hook_kid = state.hook.as_ref().and_then(|h| h.kid()).map(str::to_owned);
        let jwks = {
            let inner = self.inner.read();
            let is_hook = |kid: &str| {
                hook_kid.as_deref() == Some(kid) || inner.reserved_hook_kids.contains(kid)
            };
            let (hooks, tokens): (Vec<_>, Vec<_>) = state
                .jwks
                .keys
                .iter()
                .cloned()
                .partition(|k| is_hook(&k.kid));
            for k in &hooks {
                warn!(
                    tenant = name,
                    kid = k.kid.as_str(),
                    "a hook key is in the tenant's key set; it is left out and never verifies a token"
                );
            }
            Jwks { keys: tokens }
        };
        let verifier = Arc::new(Verifier::new(&jwks)?);
        let revoked = Arc::new(state.revoked.clone());
        let kids: Vec<String> = jwks.keys.iter().map(|k| k.kid.clone()).collect();
        let retired;
        let entry = {
            let mut inner = self.inner.write();
            let entry = match inner.tenants.get(name) {
                Some(e) => {
                    retired = e.kids.read().iter().any(|k| !verifier.has_kid(k));
                    *e.verifier.write() = verifier;
                    *e.kids.write() = kids;
                    *e.hook_kid.write() = hook_kid;
                    *e.revoked.write() = revoked.clone();
                    e.clone()
                }
                None => {
                    let e = Arc::new(TenantAuth {
                        tenant: Tenant::with_storage(
                            name,
                            self.limits.clone(),
                            self.metrics.clone(),
                            self.tasks.clone(),
                            self.storage.as_ref(),
                        ),
                        verifier: RwLock::new(verifier),
                        kids: RwLock::new(kids),
                        hook_kid: RwLock::new(hook_kid),
                        revoked: RwLock::new(revoked.clone()),
                    });
                    inner.tenants.insert(name.to_string(), e.clone());
                    // Sessions read back from the store hold the credentials they were served
                    // with: those revoked or signed by a key gone meanwhile end now.
                    retired = true;
                    if let Some(link) = self.cluster.get() {
                        e.tenant.join_cluster(link);
                    }
                    info!(tenant = name, "tenant added");
                    e
                }
            };
            rebuild_kids(&mut inner);
            entry
        };
        self.update_limits(name, &entry.tenant, &state.limits);
        self.update_hook(name, &entry.tenant, state.hook.as_ref());
        if retired || !revoked.is_empty() {
            end_sessions(&entry);
        }
        Ok(())
    }

    /// Removes tenant `name`, disconnects every client of it (0x87), ends its sessions and
    /// deletes what the durable store keeps of it (also when it was not loaded here) and, with
    /// a cluster, its retained messages' JetStream bucket.
    pub fn remove(&self, name: &str) -> bool {
        if let Some(storage) = &self.storage {
            storage.forget_tenant(name);
        }
        let removed = {
            let mut inner = self.inner.write();
            let removed = inner.tenants.remove(name);
            rebuild_kids(&mut inner);
            removed
        };
        match removed {
            Some(entry) => {
                entry.tenant.delete_replicated();
                for session in entry.tenant.sessions() {
                    end_for_credential(&entry.tenant, &session, Kick::TenantRemoved, |_| true);
                }
                info!(tenant = name, "tenant removed");
                true
            }
            None => false,
        }
    }

    /// The tenant whose key set has `kid`.
    pub fn by_kid(&self, kid: &str) -> Option<Arc<TenantAuth>> {
        self.inner.read().by_kid.get(kid).cloned()
    }

    /// Whether `kid` is a hook key's: it signs hook requests and never a client token.
    pub fn is_hook_kid(&self, kid: &str) -> bool {
        self.inner.read().hook_kids.contains(kid)
    }

    /// Marks `kid` as a hook key's that belongs to no tenant (the standalone `[hook] key_file`),
    /// so no tenant's key set makes it verify a token.
    pub fn reserve_hook_kid(&self, kid: &str) {
        let mut inner = self.inner.write();
        inner.reserved_hook_kids.insert(kid.to_owned());
        rebuild_kids(&mut inner);
    }

    /// The tenant called `name`.
    pub fn tenant(&self, name: &str) -> Option<Arc<TenantAuth>> {
        self.inner.read().tenants.get(name).cloned()
    }

    /// Names of every tenant.
    pub fn names(&self) -> Vec<String> {
        self.inner.read().tenants.keys().cloned().collect()
    }

    /// Applies the tenant's own limits when they changed, and logs what did not apply as asked.
    fn update_limits(&self, name: &str, tenant: &Tenant, spec: &LimitsSpec) {
        let Some(notes) = tenant.apply_limits(spec) else {
            return;
        };
        for note in &notes {
            warn!(tenant = name, "tenant limits: {note}");
        }
        info!(tenant = name, limits = ?tenant.limits.current(), "tenant limits applied");
    }

    /// Starts, replaces or stops the tenant's hook when its target changed.
    fn update_hook(&self, name: &str, tenant: &Tenant, target: Option<&HookTarget>) {
        let current = tenant.hook();
        match (target, current) {
            (None, None) => {}
            (None, Some(_)) => {
                tenant.set_hook(None);
                info!(tenant = name, "on-publish hook removed");
            }
            (Some(t), Some(hook)) if hook.target() == t => {}
            (Some(t), _) => {
                if t.key.is_none() {
                    warn!(
                        tenant = name,
                        "on-publish hook without a signing key: every message will be dropped"
                    );
                }
                let hook = Hook::start(
                    name,
                    t.clone(),
                    self.hook_settings.clone(),
                    self.metrics.clone(),
                );
                tenant.set_hook(Some(hook));
                info!(tenant = name, kid = t.kid(), "on-publish hook set");
            }
        }
    }
}

/// Why `credential` no longer holds in `entry`, if it does not.
fn ended(entry: &TenantAuth, credential: &Credential) -> Option<Kick> {
    if entry.is_revoked(&credential.jti) {
        Some(Kick::Revoked)
    } else if !entry.verifier().has_kid(&credential.kid) {
        Some(Kick::KeyRetired)
    } else {
        None
    }
}

/// Ends the sessions of `entry`'s tenant whose credential no longer holds. Whether it holds is
/// asked again when an offline session's state is taken (a resumption with a fresh token may
/// have come first).
fn end_sessions(entry: &Arc<TenantAuth>) {
    for session in entry.tenant.sessions() {
        let Some(kick) = session.credential().and_then(|c| ended(entry, &c)) else {
            continue;
        };
        let e = entry.clone();
        end_for_credential(&entry.tenant, &session, kick, move |c| {
            ended(&e, c).is_some()
        });
    }
}

fn rebuild_kids(inner: &mut Inner) {
    inner.by_kid.clear();
    inner.hook_kids.clone_from(&inner.reserved_hook_kids);
    let Inner {
        tenants,
        by_kid,
        hook_kids,
        ..
    } = inner;
    for entry in tenants.values() {
        if let Some(kid) = entry.hook_kid.read().as_ref() {
            hook_kids.insert(kid.clone());
        }
    }
    for (name, entry) in tenants.iter() {
        for kid in entry.kids.read().iter() {
            if hook_kids.contains(kid) {
                // Another tenant's hook key: it never selects a tenant.
                continue;
            }
            if let Some(other) = by_kid.insert(kid.clone(), entry.clone()) {
                if !Arc::ptr_eq(&other, entry) {
                    warn!(
                        kid = kid.as_str(),
                        tenant = name.as_str(),
                        "a key id is in the key sets of two tenants"
                    );
                }
            }
        }
    }
}
