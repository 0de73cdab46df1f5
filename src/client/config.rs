//! Client configuration: `~/.skiff/config` (or the file `SKIFF_CONFIG`
//! names), a small YAML file written by `skiff up`:
//!
//! ```yaml
//! server: 127.0.0.1:6443        # or `servers:` with several addresses
//! token: <bearer token>         # optional
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read the client config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid YAML of the expected shape.
    #[error("the client config {path} is invalid: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The file could not be written.
    #[error("cannot write the client config {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// No server address is configured.
    #[error(
        "no API server is configured: run `skiff up`, pass --server ADDR, or write ~/.skiff/config"
    )]
    NoServer,
}

/// Where and how to reach the API server.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The API server's address (or several, comma-separated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    /// Further API servers of the same cluster; calls use every one that answers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub servers: Vec<String>,
    /// Bearer token sent with every request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// PEM file of the CA that signed the server's certificate; set, the
    /// connection is TLS and the server must prove itself with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate (mutual TLS: its CN is the user, its O the groups).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert_file: Option<PathBuf>,
    /// PEM key of the client certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key_file: Option<PathBuf>,
}

impl Config {
    /// A configuration for one server and no credentials.
    pub fn for_server(server: &str) -> Self {
        Self {
            server: Some(server.to_owned()),
            ..Default::default()
        }
    }

    /// The file the configuration is read from: `$SKIFF_CONFIG`, else `~/.skiff/config`.
    pub fn default_path() -> PathBuf {
        if let Some(p) = std::env::var_os("SKIFF_CONFIG") {
            return PathBuf::from(p);
        }
        std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("."))
            .join(".skiff")
            .join("config")
    }

    /// Reads the default file; a missing file is an empty configuration.
    pub fn load_default() -> Result<Self, ConfigError> {
        let path = Self::default_path();
        if !path.exists() {
            return Ok(Self::default());
        }
        Self::load(&path)
    }

    /// Reads a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        serde_norway::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })
    }

    /// Writes the configuration (readable by its owner only: it may hold a token).
    pub fn save(&self, path: &Path) -> Result<(), ConfigError> {
        let err = |source| ConfigError::Write {
            path: path.to_owned(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        let text = serde_norway::to_string(self).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        std::fs::write(path, text).map_err(err)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
        }
        Ok(())
    }

    /// The TLS settings the configuration names (reading its files), if any.
    pub fn tls_options(&self) -> Result<Option<super::TlsOptions>, ConfigError> {
        let read = |path: &PathBuf| {
            std::fs::read(path).map_err(|source| ConfigError::Read {
                path: path.clone(),
                source,
            })
        };
        let Some(ca) = &self.ca_file else {
            return Ok(None);
        };
        let identity = match (&self.client_cert_file, &self.client_key_file) {
            (Some(c), Some(k)) => Some((read(c)?, read(k)?)),
            (None, None) => None,
            _ => {
                return Err(ConfigError::Parse {
                    path: PathBuf::from("client_cert_file"),
                    message: "client_cert_file and client_key_file go together".into(),
                });
            }
        };
        Ok(Some(super::TlsOptions {
            ca_pem: read(ca)?,
            identity,
        }))
    }

    /// Every API server's address: `server` then `servers`, each of which
    /// may itself be a comma-separated list ("a:6443,b:6443").
    pub fn servers(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for entry in self.server.iter().chain(&self.servers) {
            for address in entry.split(',').map(str::trim).filter(|a| !a.is_empty()) {
                if !out.iter().any(|a| a == address) {
                    out.push(address.to_owned());
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_round_trips_and_rejects_unknown_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config");
        let c = Config {
            server: Some("127.0.0.1:6443".into()),
            servers: vec!["127.0.0.1:7443".into()],
            token: Some("secret".into()),
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
        };
        c.save(&path).unwrap();
        assert_eq!(Config::load(&path).unwrap(), c);
        assert_eq!(c.servers(), ["127.0.0.1:6443", "127.0.0.1:7443"]);
        std::fs::write(&path, "sever: x\n").unwrap();
        let err = Config::load(&path).unwrap_err().to_string();
        assert!(err.contains("sever"), "{err}");
    }
}
