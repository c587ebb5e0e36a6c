//! The saved login: `<config dir>/starling/login.json`, mode 0600, written atomically.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The API URL and token `starling login` saved.
#[derive(Clone, Serialize, Deserialize)]
pub(crate) struct Login {
    pub(crate) url: String,
    pub(crate) token: String,
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Login")
            .field("url", &self.url)
            .field("token", &"<redacted>")
            .finish()
    }
}

/// Where the login lives: `$STARLING_CONFIG_DIR` if set, else the user's config directory
/// (`$XDG_CONFIG_HOME/starling`, `~/.config/starling` on Linux).
pub(crate) fn path() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("STARLING_CONFIG_DIR").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir).join("login.json"));
    }
    dirs::config_dir().map(|d| d.join("starling").join("login.json"))
}

/// The saved login, `None` when there is none.
pub(crate) fn load(path: &Path) -> Result<Option<Login>, String> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| format!("{} is not a login this client wrote: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// Saves `login` at `path` (directory 0700, file 0600), replacing any previous one.
pub(crate) fn save(path: &Path, login: &Login) -> Result<(), String> {
    let dir = path
        .parent()
        .ok_or_else(|| format!("{} has no directory", path.display()))?;
    let err = |e: std::io::Error| format!("cannot write {}: {e}", path.display());
    std::fs::create_dir_all(dir).map_err(err)?;
    let tmp = dir.join(".login.json.tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
        opts.mode(0o600);
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    }
    let mut f = opts.open(&tmp).map_err(err)?;
    let body = serde_json::to_vec_pretty(login).map_err(|e| e.to_string())?;
    f.write_all(&body).map_err(err)?;
    f.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

/// Removes the saved login; `false` when there was none.
pub(crate) fn remove(path: &Path) -> Result<bool, String> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(format!("cannot remove {}: {e}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_login_is_private_and_reads_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("starling").join("login.json");
        let login = Login {
            url: "http://127.0.0.1:8000".into(),
            token: "sat_secret".into(),
        };
        save(&path, &login).expect("saves");
        save(&path, &login).expect("saves again");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let back = load(&path).expect("reads").expect("present");
        assert_eq!(back.token, "sat_secret");
        assert!(!format!("{back:?}").contains("sat_secret"));
        assert!(remove(&path).expect("removes"));
        assert!(load(&path).expect("reads").is_none());
    }
}
