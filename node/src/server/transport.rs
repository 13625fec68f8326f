//! TCP between nodes and to clients.
//!
//! Outbound: each core keeps one connection to every peer, written by one
//! task. Groups of the core queue their messages on the peer's [`PeerLink`]
//! and wake the writer; the writer takes everything queued and writes it in
//! one `write_all`, so the messages of all groups bound for a peer in one loop
//! turn go out together. A broken connection is dropped with what was queued
//! (Raft tolerates lost messages) and reopened with exponential backoff.
//!
//! Inbound: a connection opens with a `Hello`. A peer's frames go to the
//! owning group's inbox, whatever core it is on; a client's requests too,
//! with a handle to the connection's writer for the answer. A malformed,
//! oversized or unexpected frame closes that connection with a logged reason;
//! nothing else happens to the node.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Notify};

use super::group::GroupInput;
use super::wire::{decode_frame, encode_frame, Frame, Hello, Request, Response, ServerError, ALL_GROUPS};
use crate::raft::{Message, NodeId};

/// The queue from one core's groups to one peer.
#[derive(Default)]
pub struct PeerLink {
    queue: RefCell<Vec<(u64, Message)>>,
    notify: Notify,
}

/// Messages queued while a peer is unreachable are dropped beyond this many.
const MAX_QUEUED: usize = 64 * 1024;

impl PeerLink {
    pub fn push(&self, group: u64, m: Message) {
        let mut q = self.queue.borrow_mut();
        if q.len() < MAX_QUEUED {
            q.push((group, m));
        }
    }

    pub fn has_queued(&self) -> bool {
        !self.queue.borrow().is_empty()
    }

    pub fn wake(&self) {
        self.notify.notify_one();
    }
}

/// Writes a peer's queued messages over a connection it keeps open.
pub async fn peer_writer(link: Rc<PeerLink>, me: NodeId, cluster: String, address: String, stop: Arc<AtomicBool>) {
    let mut backoff = Duration::from_millis(20);
    let mut buf = BytesMut::with_capacity(64 * 1024);
    while !stop.load(Ordering::Relaxed) {
        let mut stream = match TcpStream::connect(&address).await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(%address, error = %e, "peer unreachable; retrying");
                link.queue.borrow_mut().clear();
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(500));
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        buf.clear();
        encode_frame(&Frame::Hello(Hello { node_id: me, cluster: cluster.clone() }), &mut buf);
        if stream.write_all(&buf).await.is_err() {
            continue;
        }
        backoff = Duration::from_millis(20);
        tracing::info!(%address, "connected to peer");
        loop {
            if link.queue.borrow().is_empty() {
                link.notify.notified().await;
            }
            if stop.load(Ordering::Relaxed) {
                return;
            }
            let batch = std::mem::take(&mut *link.queue.borrow_mut());
            buf.clear();
            for (group, message) in batch {
                encode_frame(&Frame::Raft { group, message }, &mut buf);
            }
            if let Err(e) = stream.write_all(&buf).await {
                tracing::info!(%address, error = %e, "peer connection lost; reconnecting");
                break;
            }
        }
    }
}

/// What a connection needs to route frames.
pub struct ConnContext {
    pub me: NodeId,
    pub cluster: String,
    pub groups: Arc<Vec<mpsc::UnboundedSender<GroupInput>>>,
    pub max_frame_bytes: usize,
    pub stopping: Arc<AtomicBool>,
}

/// Reads frames until one is complete; `Ok(None)` at a clean end of stream.
async fn read_frame(
    rd: &mut tokio::net::tcp::OwnedReadHalf,
    buf: &mut BytesMut,
    max: usize,
) -> Result<Option<Frame>, String> {
    loop {
        match decode_frame(buf, max) {
            Ok(Some(f)) => return Ok(Some(f)),
            Ok(None) => {}
            Err(e) => return Err(e.to_string()),
        }
        buf.reserve(64 * 1024);
        match rd.read_buf(buf).await {
            Ok(0) if buf.is_empty() => return Ok(None),
            Ok(0) => return Err(format!("connection closed inside a frame ({} bytes pending)", buf.len())),
            Ok(_) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// Serves one accepted connection until it closes or misbehaves.
pub async fn serve_connection(stream: TcpStream, ctx: Rc<ConnContext>) {
    let peer = stream.peer_addr().map(|a| a.to_string()).unwrap_or_default();
    let _ = stream.set_nodelay(true);
    let (mut rd, wr) = stream.into_split();
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let hello = tokio::time::timeout(Duration::from_secs(10), read_frame(&mut rd, &mut buf, ctx.max_frame_bytes)).await;
    let hello = match hello {
        Ok(Ok(Some(Frame::Hello(h)))) => h,
        Ok(Ok(None)) => return,
        Ok(Ok(Some(other))) => {
            tracing::warn!(%peer, "closing connection: expected hello, got {}", frame_name(&other));
            return;
        }
        Ok(Err(reason)) => {
            tracing::warn!(%peer, %reason, "closing connection: bad first frame");
            return;
        }
        Err(_) => {
            tracing::warn!(%peer, "closing connection: no hello within 10 s");
            return;
        }
    };
    if hello.cluster != ctx.cluster {
        tracing::warn!(%peer, theirs = %hello.cluster, ours = %ctx.cluster, "closing connection: other cluster");
        return;
    }
    if hello.node_id != 0 {
        serve_peer(rd, buf, hello.node_id, &peer, &ctx).await;
    } else {
        serve_client(rd, wr, buf, &peer, &ctx).await;
    }
}

fn frame_name(f: &Frame) -> &'static str {
    match f {
        Frame::Hello(_) => "hello",
        Frame::Raft { .. } => "raft",
        Frame::Request { .. } => "request",
        Frame::Response { .. } => "response",
    }
}

async fn serve_peer(
    mut rd: tokio::net::tcp::OwnedReadHalf,
    mut buf: BytesMut,
    from: NodeId,
    peer: &str,
    ctx: &ConnContext,
) {
    loop {
        match read_frame(&mut rd, &mut buf, ctx.max_frame_bytes).await {
            Ok(None) => return,
            Ok(Some(Frame::Raft { group, message })) => {
                if message.to != ctx.me || message.from != from {
                    tracing::warn!(%peer, from, to = message.to, "closing peer connection: message not for this node");
                    return;
                }
                match ctx.groups.get(group as usize) {
                    Some(inbox) => {
                        let _ = inbox.send(GroupInput::Raft(message));
                    }
                    None => {
                        tracing::warn!(%peer, group, "closing peer connection: unknown group (configs differ?)");
                        return;
                    }
                }
            }
            Ok(Some(other)) => {
                tracing::warn!(%peer, "closing peer connection: unexpected {} frame", frame_name(&other));
                return;
            }
            Err(reason) => {
                tracing::warn!(%peer, %reason, "closing peer connection");
                return;
            }
        }
    }
}

async fn client_writer(mut wr: tokio::net::tcp::OwnedWriteHalf, mut rx: mpsc::UnboundedReceiver<Frame>) {
    let mut buf = BytesMut::with_capacity(64 * 1024);
    while let Some(f) = rx.recv().await {
        buf.clear();
        encode_frame(&f, &mut buf);
        // Coalesce every answer that is ready into one write.
        while let Ok(f) = rx.try_recv() {
            encode_frame(&f, &mut buf);
        }
        if wr.write_all(&buf).await.is_err() {
            return;
        }
    }
}

async fn serve_client(
    mut rd: tokio::net::tcp::OwnedReadHalf,
    wr: tokio::net::tcp::OwnedWriteHalf,
    mut buf: BytesMut,
    peer: &str,
    ctx: &ConnContext,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::task::spawn_local(client_writer(wr, rx));
    loop {
        let frame = match read_frame(&mut rd, &mut buf, ctx.max_frame_bytes).await {
            Ok(None) => return,
            Ok(Some(f)) => f,
            Err(reason) => {
                tracing::warn!(%peer, %reason, "closing client connection");
                return;
            }
        };
        let Frame::Request { id, group, request } = frame else {
            tracing::warn!(%peer, "closing client connection: unexpected {} frame", frame_name(&frame));
            return;
        };
        if ctx.stopping.load(Ordering::Relaxed) {
            let _ = tx.send(Frame::Response { id, response: Response::Error(ServerError::ShuttingDown) });
            continue;
        }
        if group == ALL_GROUPS && request == Request::Status {
            tokio::task::spawn_local(all_status(id, ctx.groups.clone(), tx.clone()));
            continue;
        }
        match ctx.groups.get(group as usize) {
            Some(inbox) => {
                if inbox.send(GroupInput::Client { id, request, reply: tx.clone() }).is_err() {
                    let _ = tx.send(Frame::Response { id, response: Response::Error(ServerError::ShuttingDown) });
                }
            }
            None => {
                let _ = tx.send(Frame::Response { id, response: Response::Error(ServerError::UnknownGroup(group)) });
            }
        }
    }
}

/// Asks every group for its status and answers with all of them.
async fn all_status(id: u64, groups: Arc<Vec<mpsc::UnboundedSender<GroupInput>>>, reply: mpsc::UnboundedSender<Frame>) {
    let mut all = Vec::new();
    for inbox in groups.iter() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        if inbox.send(GroupInput::Client { id, request: Request::Status, reply: tx }).is_err() {
            continue;
        }
        if let Some(Frame::Response { response: Response::Status(s), .. }) = rx.recv().await {
            all.extend(s);
        }
    }
    let _ = reply.send(Frame::Response { id, response: Response::Status(all) });
}

impl std::fmt::Debug for PeerLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerLink").field("queued", &self.queue.borrow().len()).finish()
    }
}
