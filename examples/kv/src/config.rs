//! `dledger-kv`'s configuration: the HTTP front, every node's HTTP address
//! (to point clients at the leader), and the embedded server's own config.
//!
//! ```toml
//! http = "127.0.0.1:8081"
//!
//! [[http_peers]]            # every node, this one included
//! id = 1
//! address = "127.0.0.1:8081"
//!
//! [server]                  # a dledger server config (see dledger-server's `config`)
//! node_id = 1
//! listen = "127.0.0.1:20921"
//! data_dir = "./kv/n1"
//! [[server.peers]]
//! id = 1
//! address = "127.0.0.1:20921"
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use dledger_server::ServerConfig;
use serde::Deserialize;

/// One node's HTTP address.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HttpPeer {
    /// The node id.
    pub id: u64,
    /// Where its HTTP front listens.
    pub address: String,
}

/// A `dledger-kv` node's configuration.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KvConfig {
    /// Where this node's HTTP front listens.
    pub http: String,
    /// Every node's HTTP front.
    pub http_peers: Vec<HttpPeer>,
    /// The embedded dledger server (group 0 holds the map).
    pub server: ServerConfig,
}

/// Why a configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KvConfigError {
    /// The file cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Not valid TOML for [`KvConfig`].
    #[error("invalid config {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// The embedded server's part is not valid.
    #[error(transparent)]
    Server(#[from] dledger_server::ConfigError),
    /// The HTTP part is not valid (named).
    #[error("invalid config: {0}")]
    Invalid(String),
}

impl KvConfig {
    /// Reads and validates a file.
    pub fn from_file(path: &Path) -> Result<KvConfig, KvConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| KvConfigError::Read { path: path.into(), source })?;
        let c: KvConfig = toml::from_str(&text)
            .map_err(|e| KvConfigError::Parse { path: path.into(), message: e.message().to_string() })?;
        c.server.validate()?;
        let ids: Vec<u64> = c.http_peers.iter().map(|p| p.id).collect();
        for id in c.server.voters() {
            if !ids.contains(&id) {
                return Err(KvConfigError::Invalid(format!("node {id} has no entry in http_peers")));
            }
        }
        Ok(c)
    }

    /// Node id to HTTP address.
    pub fn http_addresses(&self) -> HashMap<u64, String> {
        self.http_peers.iter().map(|p| (p.id, p.address.clone())).collect()
    }
}
