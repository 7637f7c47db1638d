//! What the paths and addresses inside an event may reach.
//!
//! A `file_change` makes a handler read and hash a file; a `report_ready` makes
//! one read a file, write a `.meta.json` beside it and mail it. Those paths and
//! addresses are input. [`Access`] says which of them a process honours:
//!
//! - **Files** ([`FileRoots`]): `Any` for the CLI the operator runs on their own
//!   files (`publish`, `watch`, `replay`, `demo`); `Under(roots)` for `serve`,
//!   whose events arrive over HTTP. There a path must lie under one of
//!   `PM_FILE_ROOTS` after it is made absolute and canonical (`..` and symlinks
//!   resolved; for a file that no longer exists, its nearest existing ancestor).
//!   With `PM_FILE_ROOTS` unset, `serve` honours no path at all.
//! - **Mail** ([`Access::mail_domains`]): with `PM_MAIL_ALLOWED_DOMAINS` set
//!   (comma-separated, e.g. `example.com,example.org`), a report goes only to
//!   addresses whose domain is one of them (compared without case; subdomains are
//!   not included). It applies to every process, since it is the operator's own rule.
//!
//! A refusal names the field and the setting that would allow it.

use crate::config::Config;
use crate::error::ConfigError;
use std::path::{Component, Path, PathBuf};

/// Which files the paths inside events may name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileRoots {
    /// Any file the process can reach (the CLI, run by the operator).
    Any,
    /// Only files under these canonical directories (`serve`); none when empty.
    Under(Vec<PathBuf>),
}

/// The access rules of one process (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    /// The files events may name.
    pub files: FileRoots,
    /// Lower-case domains mail may go to; `None`: any.
    pub mail_domains: Option<Vec<String>>,
}

impl Access {
    /// The operator's rules: any file; mail as `PM_MAIL_ALLOWED_DOMAINS` says.
    pub fn operator(config: &Config) -> Self {
        Access {
            files: FileRoots::Any,
            mail_domains: config.mail_allowed_domains.clone(),
        }
    }

    /// The rules for events that arrive over HTTP: files under `PM_FILE_ROOTS`
    /// only (each root canonicalized now; a root that does not exist is an error
    /// naming the variable), mail as `PM_MAIL_ALLOWED_DOMAINS` says.
    pub fn server(config: &Config) -> Result<Self, ConfigError> {
        let mut roots = Vec::new();
        for root in &config.file_roots {
            let canonical = std::fs::canonicalize(root).map_err(|e| ConfigError {
                var: "PM_FILE_ROOTS".into(),
                value: root.display().to_string(),
                expected: format!("existing directories separated by ':' ({e})"),
            })?;
            roots.push(canonical);
        }
        Ok(Access {
            files: FileRoots::Under(roots),
            mail_domains: config.mail_allowed_domains.clone(),
        })
    }

    /// The canonical form of the file `path` named by `field`, if these rules
    /// allow it; otherwise why not, naming the field and `PM_FILE_ROOTS`.
    pub fn check_path(&self, field: &str, path: &str) -> Result<PathBuf, String> {
        let roots = match &self.files {
            FileRoots::Any => return Ok(PathBuf::from(path)),
            FileRoots::Under(roots) => roots,
        };
        if roots.is_empty() {
            return Err(format!(
                "{field}: this server reads no files named in events; set PM_FILE_ROOTS to the directories it may read"
            ));
        }
        let canonical = canonical_path(Path::new(path)).map_err(|m| format!("{field}: {m}"))?;
        if roots.iter().any(|r| canonical.starts_with(r)) {
            Ok(canonical)
        } else {
            Err(format!(
                "{field}: {path:?} is outside the directories this server may read (PM_FILE_ROOTS)"
            ))
        }
    }

    /// Whether mail may go to `address` (named by `field`); why not, naming
    /// `PM_MAIL_ALLOWED_DOMAINS`.
    pub fn check_recipient(&self, field: &str, address: &str) -> Result<(), String> {
        let Some(domains) = &self.mail_domains else {
            return Ok(());
        };
        let domain = address
            .rsplit_once('@')
            .map(|(_, d)| d.trim_end_matches('>').to_ascii_lowercase())
            .unwrap_or_default();
        if domains.contains(&domain) {
            Ok(())
        } else {
            Err(format!(
                "{field}: mail to {address:?} is not allowed; its domain is not in PM_MAIL_ALLOWED_DOMAINS"
            ))
        }
    }
}

/// `path` made absolute and canonical. A path that does not exist (a deleted
/// file) is its nearest existing ancestor, canonicalized, joined with the rest,
/// which may hold only plain names (no `..`).
fn canonical_path(path: &Path) -> Result<PathBuf, String> {
    if let Ok(c) = std::fs::canonicalize(path) {
        return Ok(c);
    }
    let absolute =
        std::path::absolute(path).map_err(|e| format!("{path:?} cannot be resolved: {e}"))?;
    for ancestor in absolute.ancestors().skip(1) {
        let Ok(base) = std::fs::canonicalize(ancestor) else {
            continue;
        };
        let tail = absolute.strip_prefix(ancestor).unwrap_or(Path::new(""));
        if !tail.components().all(|c| matches!(c, Component::Normal(_))) {
            return Err("a path through a missing directory may not use '..'".into());
        }
        return Ok(base.join(tail));
    }
    Err(format!("{path:?} cannot be resolved"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(roots: &[&Path]) -> Access {
        let config = Config {
            file_roots: roots.iter().map(|p| p.to_path_buf()).collect(),
            ..Config::default()
        };
        Access::server(&config).unwrap()
    }

    #[test]
    fn paths_must_lie_under_the_roots_after_resolution() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir(&root).unwrap();
        std::fs::write(root.join("a.txt"), "a").unwrap();
        std::fs::write(dir.path().join("secret.txt"), "s").unwrap();
        std::os::unix::fs::symlink(dir.path().join("secret.txt"), root.join("link")).unwrap();
        let access = server(&[&root]);
        let ok = |p: PathBuf| access.check_path("data.file_path", p.to_str().unwrap());
        assert!(ok(root.join("a.txt")).is_ok());
        assert!(
            ok(root.join("gone.txt")).is_ok(),
            "a deleted file under the root"
        );
        let e = ok(root.join("../secret.txt")).unwrap_err();
        assert!(
            e.starts_with("data.file_path: ") && e.contains("PM_FILE_ROOTS"),
            "{e}"
        );
        assert!(ok(root.join("link")).is_err(), "a symlink out of the root");
        assert!(ok(root.join("missing/../../secret.txt")).is_err());
        assert!(ok(PathBuf::from("/etc/passwd")).is_err());
        let none = server(&[]);
        assert!(
            none.check_path("f", "/tmp/x")
                .unwrap_err()
                .contains("set PM_FILE_ROOTS")
        );
        let e = Access::server(&Config {
            file_roots: vec![dir.path().join("nope")],
            ..Config::default()
        })
        .unwrap_err();
        assert_eq!(e.var, "PM_FILE_ROOTS");
    }

    #[test]
    fn mail_goes_only_to_allowed_domains_when_set() {
        let mut access = Access::operator(&Config::default());
        assert!(access.check_recipient("r", "anyone@example.net").is_ok());
        access.mail_domains = Some(vec!["example.com".into()]);
        assert!(access.check_recipient("r", "Me@Example.COM").is_ok());
        let e = access
            .check_recipient("data.recipients[0]", "x@example.net")
            .unwrap_err();
        assert!(e.contains("data.recipients[0]") && e.contains("PM_MAIL_ALLOWED_DOMAINS"));
        assert!(access.check_recipient("r", "x@sub.example.com").is_err());
    }
}
