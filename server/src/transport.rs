//! TCP between nodes and to clients.
//!
//! Outbound: each core keeps one connection to every peer, written by one
//! task. Groups of the core queue their messages on the peer's [`PeerLink`]
//! and wake the writer; the writer takes everything queued and writes it in
//! one `write_all`, so the messages of all groups bound for a peer in one loop
//! turn go out together. A broken connection is dropped with what was queued
//! (Raft tolerates lost messages) and reopened with exponential backoff.
//!
//! Peers come and go with the membership: a core opens a link to a node the
//! first time one of its groups sends to it, at the address the group's
//! configuration names ([`Links`]).
//!
//! Inbound: a connection opens with a `Hello`. A peer names a node id other
//! than this node's and, when the cluster has a secret (`peer_secret_file`),
//! answers a challenge (see `auth.rs`) before any of its frames is read; its
//! hello's incarnation must be the one this node recorded when it first met
//! that id (`members::PeerIncarnations`: a wiped node cannot come back as its
//! old self); then its frames go to the owning group's inbox, whatever core
//! it is on, and the Raft core drops what a non-member may not say. A client's requests go there too, with a handle to the
//! connection's writer for the answer. A malformed, oversized or unexpected
//! frame closes that connection with a logged reason; nothing else happens
//! to the node.
//!
//! Limits (configured in `ServerConfig`, documented in the README): at most
//! `max_client_connections` client connections at once (peers are not
//! counted; one more is answered `TooManyConnections` with request id 0 and
//! closed); a client connection with nothing in flight and no request for
//! `client_idle_timeout_secs` is closed; per connection, `MAX_IN_FLIGHT_PER_CONNECTION`
//! requests and `MAX_ANSWER_BYTES_PER_CONNECTION` of worst-case answers.
//! When accept fails (out of descriptors), the accept loop pauses 100 ms
//! and logs once per 10 s (`dledger_accept_errors_total`).

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Notify};

use crate::auth::{nonce, PeerSecret};
use crate::group::{GroupInput, ReplyTo};
use dledger_proto::peer::{decode_peer_body, encode_peer_frame, PeerMessage};
use dledger_proto::{decode_frame, encode_frame, Frame, Hello, Request, Response, ServerError, ALL_GROUPS};
use dledger_raft::NodeId;

/// The queue from one core's groups to one peer.
#[derive(Default)]
pub(crate) struct PeerLink {
    queue: RefCell<Vec<(u64, PeerMessage)>>,
    notify: Notify,
    /// Its address changed (a new link took over): the writer ends.
    retired: std::cell::Cell<bool>,
}

/// What every link of a node says of it, and when it stops.
#[derive(Clone)]
pub(crate) struct LinkParams {
    /// This node.
    pub(crate) me: NodeId,
    /// Its data directory's incarnation (sent in its hello).
    pub(crate) incarnation: u64,
    pub(crate) cluster: String,
    pub(crate) secret: Option<PeerSecret>,
    pub(crate) limits: PeerLimits,
    pub(crate) stop: Arc<AtomicBool>,
}

/// One core's links to its peers, opened on first use.
pub(crate) struct Links {
    links: RefCell<std::collections::HashMap<NodeId, (String, Rc<PeerLink>)>>,
    params: LinkParams,
}

impl Links {
    pub(crate) fn new(params: LinkParams) -> Links {
        Links { links: Default::default(), params }
    }

    /// The link to `to` at `address`, opened now if there is none (or it
    /// was for another address).
    pub(crate) fn link(&self, to: NodeId, address: &str) -> Rc<PeerLink> {
        let mut links = self.links.borrow_mut();
        if let Some((a, l)) = links.get(&to) {
            if a == address {
                return l.clone();
            }
            l.retired.set(true);
            l.wake();
        }
        let link = Rc::new(PeerLink::default());
        tokio::task::spawn_local(peer_writer(link.clone(), to, address.to_string(), self.params.clone()));
        links.insert(to, (address.to_string(), link.clone()));
        link
    }

    /// Wakes every writer with something queued.
    pub(crate) fn wake_queued(&self) {
        for (_, l) in self.links.borrow().values() {
            if l.has_queued() {
                l.wake();
            }
        }
    }
}

/// Messages queued while a peer is unreachable are dropped beyond this many.
const MAX_QUEUED: usize = 64 * 1024;

impl PeerLink {
    pub(crate) fn push(&self, group: u64, m: PeerMessage) {
        let mut q = self.queue.borrow_mut();
        if q.len() < MAX_QUEUED {
            q.push((group, m));
        }
    }

    pub(crate) fn has_queued(&self) -> bool {
        !self.queue.borrow().is_empty()
    }

    pub(crate) fn wake(&self) {
        self.notify.notify_one();
    }
}

/// The largest first frame a connection may send (a hello names a node and a cluster).
const MAX_HELLO_BYTES: usize = 4096;

/// How long a peer waits for the other side's challenge, and a node for the answer.
const AUTH_TIMEOUT: Duration = Duration::from_secs(5);

/// Answers the challenge of the node at the other end of `stream` (with `secret`).
async fn answer_challenge(
    stream: &mut TcpStream,
    secret: &PeerSecret,
    cluster: &str,
    me: NodeId,
    to: NodeId,
) -> Result<(), String> {
    let mut buf = BytesMut::with_capacity(256);
    let (mut rd, mut wr) = stream.split();
    let frame = tokio::time::timeout(AUTH_TIMEOUT, read_frame(&mut rd, &mut buf, 1024))
        .await
        .map_err(|_| format!("no challenge within {AUTH_TIMEOUT:?} (does it have the same peer_secret_file?)"))??;
    let Some(Frame::Challenge { nonce }) = frame else {
        return Err("closed or answered without a challenge (does it have the same peer_secret_file?)".into());
    };
    buf.clear();
    encode_frame(&Frame::Auth { mac: secret.answer(cluster, me, to, &nonce) }, &mut buf);
    wr.write_all(&buf).await.map_err(|e| e.to_string())
}

/// The limits a node's peers must share (see [`Frame::Limits`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PeerLimits {
    pub(crate) max_entry_bytes: u64,
    pub(crate) max_frame_bytes: u64,
    pub(crate) producer_expiry_ms: u64,
    pub(crate) max_producers: u64,
}

/// A peer connection that ends within this of being opened counts as a
/// failed attempt: an L4 proxy in front of a dead node accepts and closes at
/// once, and reconnecting at once spun about 250 times a second.
const HEALTHY_CONNECTION: Duration = Duration::from_secs(1);

/// A peer connection that lived `lived` ended: how long to wait before the
/// next attempt, and the backoff after that one.
fn after_connection(lived: Duration, backoff: Duration) -> (Duration, Duration) {
    if lived < HEALTHY_CONNECTION {
        (backoff, (backoff * 2).min(Duration::from_millis(500)))
    } else {
        (Duration::ZERO, Duration::from_millis(20))
    }
}

/// Writes a peer's queued messages over a connection it keeps open.
async fn peer_writer(link: Rc<PeerLink>, to: NodeId, address: String, params: LinkParams) {
    let LinkParams { me, incarnation, cluster, secret, limits, stop } = params;
    let mut backoff = Duration::from_millis(20);
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut opened: Option<std::time::Instant> = None;
    while !stop.load(Ordering::Relaxed) && !link.retired.get() {
        if let Some(at) = opened.take() {
            let (wait, next) = after_connection(at.elapsed(), backoff);
            if !wait.is_zero() {
                link.queue.borrow_mut().clear();
                tokio::time::sleep(wait).await;
            }
            backoff = next;
        }
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
        opened = Some(std::time::Instant::now());
        buf.clear();
        encode_frame(&Frame::Hello(Hello { node_id: me, cluster: cluster.clone(), incarnation }), &mut buf);
        if stream.write_all(&buf).await.is_err() {
            continue;
        }
        if let Some(secret) = &secret {
            if let Err(reason) = answer_challenge(&mut stream, secret, &cluster, me, to).await {
                tracing::warn!(%address, %reason, "peer authentication failed; retrying");
                continue;
            }
        }
        buf.clear();
        let PeerLimits { max_entry_bytes, max_frame_bytes, producer_expiry_ms, max_producers } = limits;
        encode_frame(&Frame::Limits { max_entry_bytes, max_frame_bytes, producer_expiry_ms, max_producers }, &mut buf);
        if stream.write_all(&buf).await.is_err() {
            continue;
        }
        tracing::info!(%address, "connected to peer");
        loop {
            if link.queue.borrow().is_empty() {
                link.notify.notified().await;
            }
            if stop.load(Ordering::Relaxed) || link.retired.get() {
                return;
            }
            let batch = std::mem::take(&mut *link.queue.borrow_mut());
            buf.clear();
            for (group, message) in batch {
                encode_peer_frame(group, &message, &mut buf);
            }
            if let Err(e) = stream.write_all(&buf).await {
                tracing::info!(%address, error = %e, "peer connection lost; reconnecting");
                break;
            }
        }
    }
}

/// Connection counts of a node, shared by every core.
#[derive(Debug, Default)]
pub(crate) struct ConnCounters {
    /// Client connections open now.
    pub(crate) clients: AtomicUsize,
    /// Client connections refused at the cap.
    pub(crate) refused: AtomicU64,
    /// Failed accepts (out of descriptors, say).
    pub(crate) accept_errors: AtomicU64,
}

impl ConnCounters {
    /// Node-level metric lines.
    pub(crate) fn render(&self) -> String {
        format!(
            "dledger_client_connections {}\ndledger_client_connections_refused_total {}\ndledger_accept_errors_total {}\n",
            self.clients.load(Ordering::Relaxed),
            self.refused.load(Ordering::Relaxed),
            self.accept_errors.load(Ordering::Relaxed)
        )
    }
}

/// A client connection counted against the cap while it lives.
struct ClientSlot(Arc<ConnCounters>);

impl Drop for ClientSlot {
    fn drop(&mut self) {
        self.0.clients.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What a connection needs to route frames.
pub(crate) struct ConnContext {
    pub(crate) me: NodeId,
    pub(crate) cluster: String,
    pub(crate) groups: Arc<Vec<mpsc::UnboundedSender<GroupInput>>>,
    pub(crate) max_frame_bytes: usize,
    pub(crate) stopping: Arc<AtomicBool>,
    /// Bytes of peer frames received (shared by every core's connections).
    pub(crate) peer_bytes_in: Arc<std::sync::atomic::AtomicU64>,
    /// Connection counts (shared by every core).
    pub(crate) conns: Arc<ConnCounters>,
    /// The most client connections at once.
    pub(crate) max_clients: usize,
    /// The most payload one read answer carries.
    pub(crate) max_read_bytes: usize,
    /// Close a client connection idle this long.
    pub(crate) client_idle: Option<Duration>,
    /// The largest entry a group's log takes (a `Get` may return one).
    pub(crate) max_entry_bytes: usize,
    /// The incarnation of every peer this node has met.
    pub(crate) incarnations: Arc<crate::members::PeerIncarnations>,
    /// With a secret, a peer must answer a challenge before anything else.
    pub(crate) secret: Option<PeerSecret>,
    /// What a peer's limits must equal.
    pub(crate) limits: PeerLimits,
}

/// Reads frames until one is complete; `Ok(None)` at a clean end of stream.
async fn read_frame(
    rd: &mut (impl tokio::io::AsyncRead + Unpin),
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
pub(crate) async fn serve_connection(stream: TcpStream, ctx: Rc<ConnContext>) {
    let peer = stream.peer_addr().map(|a| a.to_string()).unwrap_or_default();
    let _ = stream.set_nodelay(true);
    let (mut rd, mut wr) = stream.into_split();
    let mut buf = BytesMut::with_capacity(64 * 1024);
    // Nothing is known of the other side yet: a hello is small, and so is the limit.
    let hello = tokio::time::timeout(Duration::from_secs(10), read_frame(&mut rd, &mut buf, MAX_HELLO_BYTES)).await;
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
        let from = hello.node_id;
        if from == ctx.me {
            tracing::warn!(%peer, from, "closing connection: a peer claims this node's own id");
            return;
        }
        if let Some(secret) = &ctx.secret {
            let nonce = nonce();
            let mut out = BytesMut::new();
            encode_frame(&Frame::Challenge { nonce }, &mut out);
            if wr.write_all(&out).await.is_err() {
                return;
            }
            let answer = tokio::time::timeout(AUTH_TIMEOUT, read_frame(&mut rd, &mut buf, 1024)).await;
            match answer {
                Ok(Ok(Some(Frame::Auth { mac }))) if secret.verify(&ctx.cluster, from, ctx.me, &nonce, &mac) => {}
                Ok(Ok(Some(Frame::Auth { .. }))) => {
                    tracing::warn!(%peer, from, "closing connection: peer authentication failed (wrong secret)");
                    return;
                }
                _ => {
                    tracing::warn!(%peer, from, "closing connection: peer did not authenticate");
                    return;
                }
            }
        }
        match ctx.incarnations.check(from, hello.incarnation) {
            Ok(crate::members::Incarnation::Known) => {}
            Ok(crate::members::Incarnation::Replaced { was }) => {
                tracing::error!(
                    %peer,
                    from,
                    incarnation = %format!("{:016x}", hello.incarnation),
                    was = %format!("{was:016x}"),
                    "closing connection: node {from} came back with a new data directory; it has lost its votes and \
                     entries and must not rejoin as node {from}: start it with a new node id and `dledger member \
                     replace --old {from}`"
                );
                return;
            }
            Err(e) => {
                tracing::error!(%peer, from, error = %e, "closing connection: cannot record the peer's incarnation");
                return;
            }
        }
        let theirs = tokio::time::timeout(AUTH_TIMEOUT, read_frame(&mut rd, &mut buf, MAX_HELLO_BYTES)).await;
        match theirs {
            Ok(Ok(Some(Frame::Limits { max_entry_bytes, max_frame_bytes, producer_expiry_ms, max_producers }))) => {
                let theirs = PeerLimits { max_entry_bytes, max_frame_bytes, producer_expiry_ms, max_producers };
                if theirs != ctx.limits {
                    tracing::error!(
                        %peer, from, ?theirs, ours = ?ctx.limits,
                        "closing peer connection: its limits differ from this node's (max_batch_kib, segment_mib, \
                         max_frame_mib, producer_expiry_secs and max_producers must agree across the cluster, or \
                         entries one node accepts are refused by another, or retries deduplicated differently)"
                    );
                    return;
                }
            }
            _ => {
                tracing::warn!(%peer, from, "closing peer connection: no limits frame (an older or foreign node?)");
                return;
            }
        }
        serve_peer(rd, buf, from, &peer, &ctx).await;
    } else {
        let open = ctx.conns.clients.fetch_add(1, Ordering::Relaxed);
        let slot = ClientSlot(ctx.conns.clone());
        if open >= ctx.max_clients {
            ctx.conns.refused.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%peer, open, max = ctx.max_clients, "refusing a client connection: at the cap");
            let refusal = ServerError::TooManyConnections { max: ctx.max_clients as u64 };
            let mut out = BytesMut::new();
            encode_frame(&Frame::Response { id: 0, response: Response::Error(refusal) }, &mut out);
            // Say why, then let the client's pipelined bytes drain before closing (closing
            // with unread bytes would reset the connection under the answer).
            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                wr.write_all(&out).await?;
                wr.shutdown().await?;
                let mut sink = [0u8; 4096];
                while rd.read(&mut sink).await? > 0 {}
                Ok::<(), std::io::Error>(())
            })
            .await;
            return;
        }
        serve_client(rd, wr, buf, &peer, &ctx).await;
        drop(slot);
    }
}

fn frame_name(f: &Frame) -> &'static str {
    match f {
        Frame::Hello(_) => "hello",
        Frame::Raft { .. } => "raft",
        Frame::Request { .. } => "request",
        Frame::Response { .. } => "response",
        Frame::Challenge { .. } => "challenge",
        Frame::Auth { .. } => "auth",
        Frame::Limits { .. } => "limits",
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
            Ok(Some(Frame::Raft { group, body })) => {
                // The frame header (12 bytes) and the group id (8) came with the body.
                ctx.peer_bytes_in.fetch_add(body.len() as u64 + 20, Ordering::Relaxed);
                let message = match decode_peer_body(body) {
                    Ok(m) => m,
                    Err(reason) => {
                        tracing::warn!(%peer, %reason, "closing peer connection");
                        return;
                    }
                };
                let (said_from, to) = message.ends();
                if to != ctx.me || said_from != from {
                    tracing::warn!(%peer, from, to, "closing peer connection: message not for this node");
                    return;
                }
                let input = match message {
                    PeerMessage::Raft(m) => GroupInput::Raft(m),
                    PeerMessage::Snapshot { message, .. } => GroupInput::Snapshot { from, message },
                };
                match ctx.groups.get(group as usize) {
                    Some(inbox) => {
                        let _ = inbox.send(input);
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

/// Requests one client connection may have unanswered; beyond it the
/// connection is not read (TCP pushes back on the client), so a client that
/// pipelines without reading answers cannot grow the node's memory.
pub const MAX_IN_FLIGHT_PER_CONNECTION: usize = 4096;

/// Unanswered requests of one connection and the most their answers can
/// weigh. Every request gets exactly one answer frame; both are counted off
/// once the writer has written it (not when it takes it: a client that does
/// not read would otherwise let answers pile up in the writer's buffer).
#[derive(Default)]
struct InFlight {
    count: std::cell::Cell<usize>,
    /// Worst-case answer bytes of the requests in flight (see [`answer_budget`]).
    bytes: std::cell::Cell<usize>,
    /// The writer has stopped (the client is gone): the reader stops too.
    closed: std::cell::Cell<bool>,
    room: Notify,
}

/// The most answer bytes one connection may have in flight: reads are
/// admitted against their worst-case answer, so a client pipelining
/// `Read{1, MAX}` without reading answers holds at most this much of the
/// node's memory (it used to be 4,096 x 8 MiB).
pub const MAX_ANSWER_BYTES_PER_CONNECTION: usize = 256 << 20;

/// What `request` may hold of the node's memory until it is answered: what a
/// read may return (its byte budget, or one whole entry if that is larger),
/// an append's payloads (held until committed), a little for the rest.
fn answer_budget(request: &Request, max_entry_bytes: usize, max_read_bytes: usize) -> usize {
    const SMALL: usize = 256;
    match request {
        Request::Append { payloads } | Request::AppendSession { payloads, .. } => {
            payloads.iter().map(|p| p.len()).sum::<usize>() + SMALL
        }
        Request::Get { .. } => max_entry_bytes + SMALL,
        Request::Read { max_bytes, .. } | Request::Subscribe { max_bytes, .. } => {
            let asked = if *max_bytes == 0 { max_read_bytes } else { *max_bytes as usize };
            asked.min(max_read_bytes).max(max_entry_bytes) + SMALL
        }
        _ => SMALL,
    }
}

/// Answers coalesced into one write stop growing past this.
const MAX_COALESCED_BYTES: usize = 1 << 20;

async fn client_writer(
    mut wr: tokio::net::tcp::OwnedWriteHalf,
    mut rx: mpsc::UnboundedReceiver<(Frame, usize)>,
    in_flight: Rc<InFlight>,
) {
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let answered = |n: usize, bytes: usize| {
        in_flight.count.set(in_flight.count.get().saturating_sub(n));
        in_flight.bytes.set(in_flight.bytes.get().saturating_sub(bytes));
        in_flight.room.notify_one();
    };
    while let Some((f, budget)) = rx.recv().await {
        buf.clear();
        encode_frame(&f, &mut buf);
        drop(f);
        let (mut n, mut bytes) = (1, budget);
        // Coalesce the answers that are ready into one write, up to a bound.
        while buf.len() < MAX_COALESCED_BYTES {
            let Ok((f, budget)) = rx.try_recv() else { break };
            encode_frame(&f, &mut buf);
            n += 1;
            bytes += budget;
        }
        if wr.write_all(&buf).await.is_err() {
            // Wake a reader waiting for room: it must end too, or it would wait forever.
            in_flight.closed.set(true);
            in_flight.room.notify_one();
            return;
        }
        answered(n, bytes);
    }
}

async fn serve_client(
    mut rd: tokio::net::tcp::OwnedReadHalf,
    wr: tokio::net::tcp::OwnedWriteHalf,
    mut buf: BytesMut,
    peer: &str,
    ctx: &ConnContext,
) {
    let (answers, rx) = mpsc::unbounded_channel::<(Frame, usize)>();
    let in_flight = Rc::new(InFlight::default());
    tokio::task::spawn_local(client_writer(wr, rx, in_flight.clone()));
    loop {
        while in_flight.count.get() >= MAX_IN_FLIGHT_PER_CONNECTION
            || in_flight.bytes.get() >= MAX_ANSWER_BYTES_PER_CONNECTION
        {
            if in_flight.closed.get() {
                return;
            }
            in_flight.room.notified().await;
        }
        let read = read_frame(&mut rd, &mut buf, ctx.max_frame_bytes);
        let read = match ctx.client_idle {
            // Idle: nothing in flight; waiting for answers is not idle.
            Some(idle) if in_flight.count.get() == 0 => match tokio::time::timeout(idle, read).await {
                Ok(r) => r,
                Err(_) => {
                    tracing::debug!(%peer, idle_secs = idle.as_secs(), "closing an idle client connection");
                    return;
                }
            },
            _ => read.await,
        };
        let frame = match read {
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
        // Every path below sends exactly one answer for this request, charged its worst case.
        let budget = answer_budget(&request, ctx.max_entry_bytes, ctx.max_read_bytes);
        in_flight.count.set(in_flight.count.get() + 1);
        in_flight.bytes.set(in_flight.bytes.get() + budget);
        let tx = ReplyTo::new(answers.clone(), budget);
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
async fn all_status(id: u64, groups: Arc<Vec<mpsc::UnboundedSender<GroupInput>>>, reply: ReplyTo) {
    let mut all = Vec::new();
    for inbox in groups.iter() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        if inbox.send(GroupInput::Client { id, request: Request::Status, reply: ReplyTo::new(tx, 0) }).is_err() {
            continue;
        }
        if let Some((Frame::Response { response: Response::Status(s), .. }, _)) = rx.recv().await {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_closed_at_once_backs_off_like_a_refused_one() {
        let ms = Duration::from_millis;
        // Accepted and closed at once, again and again: the waits grow to the cap.
        let mut backoff = ms(20);
        let mut waits = Vec::new();
        for _ in 0..7 {
            let (wait, next) = after_connection(ms(1), backoff);
            waits.push(wait.as_millis());
            backoff = next;
        }
        assert_eq!(waits, [20, 40, 80, 160, 320, 500, 500]);
        // A connection that carried traffic for a while reconnects at once, from the start.
        assert_eq!(after_connection(Duration::from_secs(5), ms(500)), (Duration::ZERO, ms(20)));
    }
    use dledger_proto::DEFAULT_MAX_FRAME_BYTES;

    fn on_local_set(test: impl std::future::Future<Output = ()>) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        tokio::task::LocalSet::new().block_on(&rt, test);
    }

    /// One connection served as a node serves it, to a group that takes
    /// requests and answers only when the test says so (through `requests`).
    async fn serve_one_connection(
    ) -> (std::net::SocketAddr, mpsc::UnboundedReceiver<GroupInput>, tokio::task::JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (inbox, requests) = mpsc::unbounded_channel();
        let ctx = Rc::new(ConnContext {
            me: 1,
            cluster: "c".into(),
            groups: Arc::new(vec![inbox]),
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            stopping: Arc::new(AtomicBool::new(false)),
            peer_bytes_in: Default::default(),
            conns: Default::default(),
            max_clients: 2,
            max_read_bytes: crate::group::MAX_READ_BYTES,
            client_idle: None,
            max_entry_bytes: 4 << 20,
            incarnations: Arc::new(
                crate::members::PeerIncarnations::load(&std::env::temp_dir().join("no-such-dir")).unwrap(),
            ),
            secret: None,
            limits: PeerLimits {
                max_entry_bytes: 4 << 20,
                max_frame_bytes: DEFAULT_MAX_FRAME_BYTES as u64,
                producer_expiry_ms: 3_600_000,
                max_producers: 16_384,
            },
        });
        let served = tokio::task::spawn_local(async move {
            let (s, _) = listener.accept().await.unwrap();
            serve_connection(s, ctx).await;
        });
        (address, requests, served)
    }

    /// Takes `n` client requests off the group's inbox, with their reply handles.
    async fn hold(requests: &mut mpsc::UnboundedReceiver<GroupInput>, n: usize) -> Vec<(u64, ReplyTo)> {
        let mut held = Vec::new();
        while held.len() < n {
            match requests.recv().await.unwrap() {
                GroupInput::Client { id, reply, .. } => held.push((id, reply)),
                other => panic!("unexpected {other:?}"),
            }
        }
        held
    }

    /// A client that pipelines requests without limit is read only up to the
    /// cap; every answer lets exactly as many more in.
    #[test]
    fn a_connection_stops_being_read_at_its_in_flight_cap() {
        on_local_set(async {
            let (address, mut requests, _served) = serve_one_connection().await;
            let total = MAX_IN_FLIGHT_PER_CONNECTION + 1000;
            let mut out = BytesMut::new();
            encode_frame(&Frame::Hello(Hello { node_id: 0, cluster: "c".into(), incarnation: 0 }), &mut out);
            for id in 0..total as u64 {
                encode_frame(&Frame::Request { id, group: 0, request: Request::ReadBarrier }, &mut out);
            }
            let mut client = TcpStream::connect(address).await.unwrap();
            // About 300 KB: fits in the socket buffers, so the whole write completes.
            client.write_all(&out).await.unwrap();
            let mut held = hold(&mut requests, MAX_IN_FLIGHT_PER_CONNECTION).await;
            // At the cap: nothing more is read (a deadline, not a measurement).
            let more = tokio::time::timeout(Duration::from_millis(300), requests.recv()).await;
            assert!(more.is_err(), "a request beyond the cap of {MAX_IN_FLIGHT_PER_CONNECTION} was read");
            // Ten answers let exactly ten more requests in, then the connection stops again.
            for (id, reply) in held.drain(..10) {
                reply.send(Frame::Response { id, response: Response::ReadIndex(id) }).unwrap();
            }
            for _ in 0..10 {
                assert!(matches!(requests.recv().await, Some(GroupInput::Client { .. })));
            }
            let more = tokio::time::timeout(Duration::from_millis(300), requests.recv()).await;
            assert!(more.is_err(), "more requests read than answers given");
            // The answers reached the client.
            let mut buf = BytesMut::new();
            let mut answered = 0;
            while answered < 10 {
                client.read_buf(&mut buf).await.unwrap();
                while let Some(Frame::Response { .. }) = decode_frame(&mut buf, DEFAULT_MAX_FRAME_BYTES).unwrap() {
                    answered += 1;
                }
            }
        });
    }

    /// Reads are admitted against their worst-case answer: a client that
    /// pipelines `Read{1, MAX}` and never reads holds at most the
    /// connection's answer budget, and an answer written lets one more in.
    #[test]
    fn a_connection_stops_being_read_at_its_answer_byte_budget() {
        on_local_set(async {
            let (address, mut requests, _served) = serve_one_connection().await;
            let mut out = BytesMut::new();
            encode_frame(&Frame::Hello(Hello { node_id: 0, cluster: "c".into(), incarnation: 0 }), &mut out);
            for id in 0..1000u64 {
                let request = Request::Read { lo: 1, hi: u64::MAX, max_bytes: u32::MAX };
                encode_frame(&Frame::Request { id, group: 0, request }, &mut out);
            }
            let mut client = TcpStream::connect(address).await.unwrap();
            client.write_all(&out).await.unwrap();
            let per_read = crate::group::MAX_READ_BYTES + 256;
            let admitted = MAX_ANSWER_BYTES_PER_CONNECTION.div_ceil(per_read);
            let mut held = hold(&mut requests, admitted).await;
            let more = tokio::time::timeout(Duration::from_millis(300), requests.recv()).await;
            assert!(more.is_err(), "a read beyond the {admitted} the byte budget allows was read");
            let (id, reply) = held.pop().unwrap();
            reply.send(Frame::Response { id, response: Response::Entries(Vec::new()) }).unwrap();
            assert!(matches!(requests.recv().await, Some(GroupInput::Client { .. })), "one answer, one more read");
            let more = tokio::time::timeout(Duration::from_millis(300), requests.recv()).await;
            assert!(more.is_err());
        });
    }

    /// A client that fills its in-flight cap and then resets the connection:
    /// the writer's failed write wakes the reader, and the connection's tasks
    /// end (they used to wait for room forever, holding the socket).
    #[test]
    fn a_connection_whose_client_is_gone_ends_even_at_its_cap() {
        on_local_set(async {
            let (address, mut requests, served) = serve_one_connection().await;
            let mut out = BytesMut::new();
            encode_frame(&Frame::Hello(Hello { node_id: 0, cluster: "c".into(), incarnation: 0 }), &mut out);
            for id in 0..MAX_IN_FLIGHT_PER_CONNECTION as u64 {
                encode_frame(&Frame::Request { id, group: 0, request: Request::ReadBarrier }, &mut out);
            }
            let mut client = TcpStream::connect(address).await.unwrap();
            client.write_all(&out).await.unwrap();
            let held = hold(&mut requests, MAX_IN_FLIGHT_PER_CONNECTION).await;
            // Reset (not close): the node's next write fails at once.
            // Linger 0 sends a reset on drop; it blocks nothing here (the socket is idle).
            #[allow(deprecated)]
            client.set_linger(Some(Duration::ZERO)).unwrap();
            drop(client);
            for (id, reply) in held {
                let _ = reply.send(Frame::Response { id, response: Response::ReadIndex(id) });
            }
            // A deadline, not a measurement: the connection ends.
            tokio::time::timeout(Duration::from_secs(10), served)
                .await
                .expect("the connection's reader ended")
                .unwrap();
        });
    }
}
