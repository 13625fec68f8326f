//! dledger-kv: a replicated key-value store on dledger-server's embedding
//! API — DLedger's register example, done properly.
//!
//! Each node runs a dledger server in its own process with one group whose
//! state machine is a [`KvStore`]; writes (put, delete, compare-and-set)
//! are appended and answered with their effect once applied, reads are
//! linearizable (ReadIndex, then the map), snapshots bound the replay after
//! a restart, and an HTTP front ([`http`]) serves it all.
//!
//! ```
//! use bytes::Bytes;
//! use dledger_kv::store::{Command, KvStore, Output};
//! use dledger_server::{CommittedEntry, StateMachine};
//!
//! let mut kv = KvStore::default();
//! let put = Command::Put { key: "k".into(), value: "v".into() };
//! let entry = CommittedEntry { index: 1, term: 1, payload: Bytes::from(serde_json::to_vec(&put).unwrap()) };
//! let mut outputs = Vec::new();
//! kv.apply(&[entry], &mut outputs).unwrap();
//! let out: Output = serde_json::from_slice(&outputs[0]).unwrap();
//! assert!(out.ok && out.previous.is_none());
//! assert_eq!(kv.get("k").map(String::as_str), Some("v"));
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod config;
pub mod http;
pub mod store;

pub use config::KvConfig;
pub use store::KvStore;

/// Runs a node until SIGTERM or SIGINT (or a fatal error, returned);
/// `bootstrap`: create the data directory (first start of a new cluster).
pub async fn serve(config: KvConfig, bootstrap: bool) -> Result<(), ServeError> {
    let http = tokio::net::TcpListener::bind(&config.http)
        .await
        .map_err(|e| ServeError::Http(format!("cannot listen on {}: {e}", config.http)))?;
    let addresses = config.http_addresses();
    let server = dledger_server::Server::builder(config.server)
        .bootstrap(bootstrap)
        .state_machine(0, KvStore::default())
        .start()?;
    let group = server.group(0).expect("group 0 exists");
    tracing::info!(http = %config.http, raft = %server.local_addr(), "dledger-kv serving");
    let app = http::router(group, addresses);
    let stopper = server.stopper();
    let shutdown = async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
            // The server stopped by itself (a fatal error): the front goes too.
            _ = stopper.stopping() => {}
        }
        stopper.stop();
    };
    axum::serve(http, app).with_graceful_shutdown(shutdown).await.map_err(|e| ServeError::Http(e.to_string()))?;
    tokio::task::spawn_blocking(move || server.wait()).await.map_err(|e| ServeError::Http(e.to_string()))??;
    Ok(())
}

/// Why a node stopped or did not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The embedded server did not start.
    #[error(transparent)]
    Start(#[from] dledger_server::StartError),
    /// It stopped on a fatal error.
    #[error(transparent)]
    Fatal(#[from] dledger_server::Fatal),
    /// The HTTP front failed.
    #[error("http: {0}")]
    Http(String),
}
