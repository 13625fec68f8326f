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
use std::path::Path;

use dledger_server::{ConfigError, ServerConfig};
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

impl KvConfig {
    /// Reads and validates a file (errors are the server's config errors:
    /// unreadable, not valid TOML, or values that do not work, named).
    pub fn from_file(path: &Path) -> Result<KvConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        let c: KvConfig = toml::from_str(&text)
            .map_err(|e| ConfigError::Parse { path: path.into(), message: e.message().to_string() })?;
        c.server.validate()?;
        let ids: Vec<u64> = c.http_peers.iter().map(|p| p.id).collect();
        for id in c.server.voters() {
            if !ids.contains(&id) {
                return Err(ConfigError::Invalid(format!("node {id} has no entry in http_peers")));
            }
        }
        Ok(c)
    }

    /// Node id to HTTP address.
    pub fn http_addresses(&self) -> HashMap<u64, String> {
        self.http_peers.iter().map(|p| (p.id, p.address.clone())).collect()
    }
}
