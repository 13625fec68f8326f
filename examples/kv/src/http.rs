//! The HTTP front: one route per operation, answered by the group's leader.
//!
//! | request | answer |
//! |---|---|
//! | `PUT /kv/{key}` (body: the value) | `200` [`Output`] |
//! | `DELETE /kv/{key}` | `200` [`Output`] (`ok`: it existed) |
//! | `POST /kv/{key}/cas` (JSON [`CasBody`]) | `200` [`Output`] (`ok`: it swapped) |
//! | `GET /kv/{key}` (linearizable) | `200` [`Value`] |
//! | `GET /status` | `200` this node's view of the group |
//!
//! A follower answers `307 Temporary Redirect` to the same path on the
//! leader's HTTP front (`curl -L` follows it, method and body kept), with a
//! JSON body naming the leader (`leader`, `leader_http`); `421` when it
//! knows no leader's HTTP address. Other errors are JSON `{"error": ...}`: `503`
//! when no leader is known, leadership was lost with the write in flight
//! (`"outcome": "unknown"`: it may still commit) or the node is stopping;
//! `400` for a request the store refuses; `507` when the leader's disk is full.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use bytes::Bytes;
use dledger_server::{GroupError, GroupHandle, ServerError};
use serde::Deserialize;

use crate::store::{Command, Output, Query, Value};

/// The body of a compare-and-set.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
pub struct CasBody {
    /// The value the key must have (`null`: absent).
    pub expected: Option<String>,
    /// The value it gets (`null`: removed).
    pub new: Option<String>,
}

struct Front {
    group: GroupHandle,
    http: HashMap<u64, String>,
}

/// The routes, serving group `group` of this node.
pub fn router(group: GroupHandle, http_addresses: HashMap<u64, String>) -> Router {
    let front = Arc::new(Front { group, http: http_addresses });
    Router::new()
        .route("/kv/{key}", put(put_key).get(get_key).delete(delete_key))
        .route("/kv/{key}/cas", post(cas_key))
        .route("/status", get(status))
        .with_state(front)
}

fn error(front: &Front, path: &str, e: GroupError) -> Response {
    let (code, body) = match &e {
        GroupError::Server(ServerError::NotLeader { leader, .. }) => {
            let leader_http = leader.and_then(|l| front.http.get(&l));
            let body = serde_json::json!({"error": "not the leader", "leader": leader, "leader_http": leader_http});
            if let Some(to) = leader_http {
                let location = [(axum::http::header::LOCATION, format!("http://{to}{path}"))];
                return (StatusCode::TEMPORARY_REDIRECT, location, Json(body)).into_response();
            }
            (StatusCode::MISDIRECTED_REQUEST, body)
        }
        GroupError::Server(ServerError::LeadershipLost) => {
            (StatusCode::SERVICE_UNAVAILABLE, serde_json::json!({"error": e.to_string(), "outcome": "unknown"}))
        }
        GroupError::Server(ServerError::DiskFull(_)) => {
            (StatusCode::INSUFFICIENT_STORAGE, serde_json::json!({"error": e.to_string()}))
        }
        GroupError::Server(ServerError::BadRequest(_)) | GroupError::Query(_) => {
            (StatusCode::BAD_REQUEST, serde_json::json!({"error": e.to_string()}))
        }
        GroupError::Server(ServerError::ShuttingDown) | GroupError::Stopped => {
            (StatusCode::SERVICE_UNAVAILABLE, serde_json::json!({"error": e.to_string(), "outcome": "unknown"}))
        }
        _ => (StatusCode::INTERNAL_SERVER_ERROR, serde_json::json!({"error": e.to_string()})),
    };
    (code, Json(body)).into_response()
}

async fn write(front: &Front, path: &str, c: Command) -> Response {
    let payload = Bytes::from(serde_json::to_vec(&c).expect("a command serializes"));
    match front.group.append(vec![payload]).await {
        Ok(a) => match a.outputs.first().map(|o| serde_json::from_slice::<Output>(o)) {
            Some(Ok(out)) => (StatusCode::OK, Json(out)).into_response(),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "the store gave no output").into_response(),
        },
        Err(e) => error(front, path, e),
    }
}

async fn put_key(State(f): State<Arc<Front>>, Path(key): Path<String>, value: String) -> Response {
    let path = format!("/kv/{key}");
    write(&f, &path, Command::Put { key, value }).await
}

async fn delete_key(State(f): State<Arc<Front>>, Path(key): Path<String>) -> Response {
    let path = format!("/kv/{key}");
    write(&f, &path, Command::Delete { key }).await
}

async fn cas_key(State(f): State<Arc<Front>>, Path(key): Path<String>, Json(b): Json<CasBody>) -> Response {
    let path = format!("/kv/{key}/cas");
    write(&f, &path, Command::Cas { key, expected: b.expected, new: b.new }).await
}

async fn get_key(State(f): State<Arc<Front>>, Path(key): Path<String>) -> Response {
    let path = format!("/kv/{key}");
    let q = Bytes::from(serde_json::to_vec(&Query::Get { key }).expect("a query serializes"));
    match f.group.read(q).await {
        Ok(v) => match serde_json::from_slice::<Value>(&v) {
            Ok(v) => (StatusCode::OK, Json(v)).into_response(),
            Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "the store gave no value").into_response(),
        },
        Err(e) => error(&f, &path, e),
    }
}

async fn status(State(f): State<Arc<Front>>) -> Response {
    match f.group.status().await {
        Ok(s) => {
            let body = serde_json::json!({
                "node": s.node, "role": s.role, "term": s.term, "leader": s.leader,
                "commit_index": s.commit_index, "last_index": s.last_index,
            });
            (StatusCode::OK, Json(body)).into_response()
        }
        Err(e) => error(&f, "/status", e),
    }
}
