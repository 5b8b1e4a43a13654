//! The platform's first credentials: on its first start `mlops up` issues an admin token,
//! a producer token and the services' own token, writes each to a file only its owner can
//! read, and gives the services the hashes alone (`api-keys.json`). Later starts reuse
//! them, so a token handed out keeps working.

use std::{
    collections::BTreeSet,
    io::Write,
    path::{Path, PathBuf},
};

use mlops_service::auth::{ApiKeys, PlatformRole, Principal, StoredKey};

/// Where the credentials of a data directory live.
pub(crate) struct Credentials {
    pub(crate) keys_file: PathBuf,
    pub(crate) admin_token: PathBuf,
    pub(crate) producer_token: PathBuf,
    pub(crate) service_token: PathBuf,
}

impl Credentials {
    pub(crate) fn of(data_dir: &Path) -> Self {
        Self {
            keys_file: data_dir.join("api-keys.json"),
            admin_token: data_dir.join("admin.token"),
            producer_token: data_dir.join("producer.token"),
            service_token: data_dir.join("service.token"),
        }
    }

    /// Issues the three tokens unless all of them and the key file already exist.
    /// Returns whether it issued new ones.
    pub(crate) fn ensure(&self) -> Result<bool, String> {
        let files = [
            &self.keys_file,
            &self.admin_token,
            &self.producer_token,
            &self.service_token,
        ];
        if files.iter().all(|f| f.exists()) {
            return Ok(false);
        }
        let principal = |subject: &str, roles: &[PlatformRole]| Principal {
            subject: subject.to_owned(),
            roles: roles.iter().copied().collect::<BTreeSet<_>>(),
            datasets: None,
        };
        let issued = [
            (
                &self.admin_token,
                principal("admin", &[PlatformRole::Admin]),
            ),
            (
                &self.producer_token,
                principal("producer", &[PlatformRole::Producer]),
            ),
            // What the services ask of each other: schemas registered, training sets
            // built, versions registered, and everything read.
            (
                &self.service_token,
                principal("platform-services", &[PlatformRole::DataScientist]),
            ),
        ];
        let mut stored: Vec<StoredKey> = Vec::new();
        for (file, principal) in issued {
            let (token, key) = ApiKeys::issue(principal);
            write_private(file, format!("{token}\n").as_bytes())?;
            stored.push(key);
        }
        let json = serde_json::to_vec_pretty(&stored).map_err(|e| e.to_string())?;
        write_private(&self.keys_file, &json)?;
        Ok(true)
    }
}

/// Writes `bytes` to a new file of mode 0600 (replacing any), atomically.
/// `mlops credentials --dir D`.
pub(crate) fn main(dir: &Path) -> std::process::ExitCode {
    let credentials = Credentials::of(dir);
    match std::fs::create_dir_all(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))
        .and_then(|()| credentials.ensure())
    {
        Ok(issued) => {
            let word = if issued { "issued" } else { "kept" };
            println!(
                "mlops credentials: {word}: {} (hashes), {}, {}, {}",
                credentials.keys_file.display(),
                credentials.admin_token.display(),
                credentials.producer_token.display(),
                credentials.service_token.display()
            );
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("mlops credentials: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), String> {
    write_file(path, bytes, 0o600)
}

/// Writes `bytes` to a new file of `mode` (replacing any), atomically: a reader sees the
/// old file or the whole new one.
pub(crate) fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), String> {
    use std::os::unix::fs::OpenOptionsExt;
    let partial = path.with_extension("partial");
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&partial)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&partial, path)
    };
    write().map_err(|e| format!("{}: {e}", path.display()))
}

/// The token the command presents to the platform: `MLOPS_TOKEN`, else the data
/// directory's admin token.
pub(crate) fn admin_token(data_dir: &Path) -> Option<String> {
    std::env::var("MLOPS_TOKEN")
        .ok()
        .or_else(|| std::fs::read_to_string(Credentials::of(data_dir).admin_token).ok())
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn tokens_are_private_and_only_their_hashes_are_shared() {
        let dir = tempfile::tempdir().unwrap();
        let credentials = Credentials::of(dir.path());
        assert!(credentials.ensure().unwrap());
        let admin = std::fs::read_to_string(&credentials.admin_token).unwrap();
        let producer = std::fs::read_to_string(&credentials.producer_token).unwrap();
        for file in [&credentials.admin_token, &credentials.keys_file] {
            let mode = std::fs::metadata(file).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{}", file.display());
        }
        let stored = std::fs::read_to_string(&credentials.keys_file).unwrap();
        assert!(!stored.contains(admin.trim()) && !stored.contains(producer.trim()));
        let keys = ApiKeys::from_json(&stored).unwrap();
        let subject = |t: &str| keys.authenticate(t.trim()).map(|p| p.subject.clone());
        assert_eq!(subject(&admin).as_deref(), Some("admin"));
        assert_eq!(subject(&producer).as_deref(), Some("producer"));

        assert!(!credentials.ensure().unwrap(), "a second start reuses them");
        assert_eq!(
            std::fs::read_to_string(&credentials.admin_token).unwrap(),
            admin
        );
        assert_eq!(admin_token(dir.path()).as_deref(), Some(admin.trim()));
    }
}
