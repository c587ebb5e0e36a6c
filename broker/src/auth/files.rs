//! Tenants from files: a JWKS file (`{"keys": [...]}`, OKP/Ed25519 keys with `kid`) and a
//! revocation file (one `jti` per line; blank lines and `#` comments ignored) per tenant.
//!
//! The files are polled every 250 ms by their metadata (modification time, length, inode, after
//! following symlinks), so an edit in place, a rename over the file and Kubernetes' `..data`
//! symlink swap are all seen well within a second. A file that fails to parse keeps the last good
//! state and is logged; at start it is an error.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use starling_token::Jwks;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::directory::{Directory, TenantState};

/// How often the files are checked.
pub const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// One tenant's files.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TenantFiles {
    /// The tenant's name.
    pub name: String,
    /// The JWKS file.
    pub jwks: PathBuf,
    /// The revocation file, if any.
    #[serde(default)]
    pub revocations: Option<PathBuf>,
}

/// A file that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// Not readable.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Not a JWKS document.
    #[error("{path} is not a JWKS document: {message}")]
    Jwks {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// Reads a tenant's files.
pub fn load(files: &TenantFiles) -> Result<TenantState, FileError> {
    let text = read(&files.jwks)?;
    let jwks: Jwks = serde_json::from_str(&text).map_err(|e| FileError::Jwks {
        path: files.jwks.clone(),
        message: e.to_string(),
    })?;
    // Check the keys now, so a bad file is reported with its path.
    starling_token::Verifier::new(&jwks).map_err(|e| FileError::Jwks {
        path: files.jwks.clone(),
        message: e.to_string(),
    })?;
    let revoked = match &files.revocations {
        Some(path) => parse_revocations(&read(path)?),
        None => Default::default(),
    };
    Ok(TenantState {
        jwks,
        revoked,
        hook: None,
        limits: Default::default(),
    })
}

/// The token ids of a revocation file.
pub fn parse_revocations(text: &str) -> std::collections::HashSet<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect()
}

fn read(path: &Path) -> Result<String, FileError> {
    std::fs::read_to_string(path).map_err(|source| FileError::Read {
        path: path.to_path_buf(),
        source,
    })
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Fingerprint(Option<(SystemTime, u64, u64)>);

fn fingerprint(path: &Path) -> Fingerprint {
    use std::os::unix::fs::MetadataExt;
    Fingerprint(std::fs::metadata(path).ok().map(|m| {
        (
            m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            m.len(),
            m.ino(),
        )
    }))
}

fn fingerprints(files: &TenantFiles) -> (Fingerprint, Fingerprint) {
    (
        fingerprint(&files.jwks),
        files
            .revocations
            .as_deref()
            .map(fingerprint)
            .unwrap_or(Fingerprint(None)),
    )
}

/// Loads every tenant into `directory`; an error names the file.
pub fn load_all(directory: &Directory, tenants: &[TenantFiles]) -> Result<(), FileError> {
    for t in tenants {
        let state = load(t)?;
        directory
            .apply(&t.name, &state)
            .map_err(|e| FileError::Jwks {
                path: t.jwks.clone(),
                message: e.to_string(),
            })?;
    }
    Ok(())
}

/// Polls the files until `stop` and applies every change to `directory`.
pub async fn watch(directory: Arc<Directory>, tenants: Vec<TenantFiles>, stop: CancellationToken) {
    let mut seen: Vec<_> = tenants.iter().map(fingerprints).collect();
    let mut tick = tokio::time::interval(POLL_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        for (t, last) in tenants.iter().zip(seen.iter_mut()) {
            let now = fingerprints(t);
            if now == *last {
                continue;
            }
            *last = now;
            match load(t) {
                Ok(state) => match directory.apply(&t.name, &state) {
                    Ok(()) => info!(
                        tenant = t.name.as_str(),
                        keys = state.jwks.keys.len(),
                        revoked = state.revoked.len(),
                        "reloaded keys and revocations"
                    ),
                    Err(e) => {
                        warn!(tenant = t.name.as_str(), error = %e, "keys not applied; keeping the last good ones")
                    }
                },
                Err(e) => {
                    warn!(tenant = t.name.as_str(), error = %e, "keeping the last good keys and revocations")
                }
            }
        }
    }
}
