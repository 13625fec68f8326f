//! The client library: append, read, read barrier, status and leadership
//! transfer against a dledger cluster.
//!
//! A [`Client`] talks to one group. It finds the leader itself (any endpoint
//! answers `NotLeader` with the leader's address), follows redirects, and
//! retries on leader change until its deadline; then it says why it gave up:
//! [`ClientError::NoQuorum`] when no leader could be found (a quorum is down
//! or partitioned), [`ClientError::Timeout`] when a leader took the request
//! but did not answer in time; [`ClientError::maybe_applied`] says whether a
//! failed call can have taken effect. Each attempt of an append waits at
//! most [`DEFAULT_ATTEMPT_TIMEOUT`] at one node before the client looks
//! elsewhere, so a paused leader costs about what a killed one does.
//!
//! Appends are idempotent by default: a client is a producer session
//! (a random producer id, an epoch, a sequence per payload), and the
//! cluster appends a retried append at most once, answering the retry with
//! the original's indexes (see `Request::AppendSession`). Without one
//! ([`Client::without_session`]) a retry after an unanswered attempt may
//! append the payloads twice, and [`Client::append_outcome`] says when.
//!
//! [`Client::subscribe`] reads the committed log back in order from any
//! replica, as a long poll that follows the commit index (see
//! [`Subscription`]).
//!
//! By default a client owns its connections and has one request in flight.
//! Clients built with [`Client::shared`] instead send over [`SharedConns`]:
//! one connection per endpoint carrying the requests of many clients at once
//! (the wire protocol matches answers to requests by id), which is how a
//! broker with many producer threads would use a few sockets.
//!
//! The crate depends on `dledger-proto` (without its Raft messages) and on
//! tokio's network, time and sync parts only: no server, no Raft core.
//!
//! ```
//! # // A one-node server in this process, so that the example runs.
//! # let dir = tempfile::tempdir().unwrap();
//! # let peers = vec![dledger_server::Peer { id: 1, address: "127.0.0.1:0".into(), client_address: None }];
//! # let mut config = dledger_server::ServerConfig::new(1, "127.0.0.1:0", dir.path(), peers);
//! # config.cpus = Some(vec![]);
//! # let server = dledger_server::Server::builder(config).bootstrap(true).start().unwrap();
//! # let endpoint = server.local_addr().to_string();
//! use std::time::Duration;
//! use bytes::Bytes;
//! use dledger_client::Client;
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! // Any endpoints of the cluster; the client finds the leader of group 0.
//! let mut client = Client::new(vec![endpoint], "dledger", 0, Duration::from_secs(10));
//! let (index, _term) = client.append(Bytes::from_static(b"hello")).await?;
//! assert_eq!(client.get(index).await?.payload, "hello");
//! let read_up_to = client.read_barrier().await?; // a linearizable read point
//! assert!(read_up_to >= index);
//! # Ok::<(), dledger_client::ClientError>(())
//! # }).unwrap();
//! # server.stop();
//! # server.wait().unwrap();
//! ```
#![warn(missing_docs)]

mod subscription;

pub use subscription::{OnPurged, StartAt, Subscription};

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use dledger_proto::{
    decode_frame, encode_frame, ClientEntry, Frame, GroupStatus, Hello, Request, Response, ServerError,
    DEFAULT_MAX_FRAME_BYTES,
};
pub use dledger_proto::{MemberView, MembersView, MembershipChange};

/// Why a client call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// No leader could be found before the deadline. When `maybe_applied`, an
    /// earlier attempt reached a leader that then lost leadership: the append may
    /// still commit (its outcome is unknown), so a retry may duplicate it.
    #[error(
        "no leader reachable within {waited:?}: a quorum of nodes is down or cut off{}",
        if *maybe_applied { "; an earlier attempt reached a leader, so the request may still take effect" } else { "" }
    )]
    NoQuorum {
        /// How long the client tried.
        waited: Duration,
        /// Whether an earlier attempt may have taken effect.
        maybe_applied: bool,
    },
    /// A leader took the request but did not answer within the deadline (it may still take effect).
    #[error("the request was not answered within {0:?}")]
    Timeout(Duration),
    /// The server answered with an error that retrying does not fix.
    #[error("{0}")]
    Server(ServerError),
    /// The connection broke after the request was (or may have been)
    /// written and before its answer: it may take effect.
    #[error("lost the connection to {endpoint} with the request in flight (it may take effect): {reason}")]
    ConnectionLost {
        /// The endpoint.
        endpoint: String,
        /// The connection error.
        reason: String,
    },
    /// The endpoint cannot be connected to: nothing was sent.
    #[error("cannot reach {endpoint}: {reason}")]
    Unreachable {
        /// The endpoint.
        endpoint: String,
        /// The connection error.
        reason: String,
    },
    /// The node refused the connection before reading any request (it
    /// serves as many client connections as it takes): nothing took effect.
    #[error("{endpoint} refused the connection: {reason}")]
    Refused {
        /// The endpoint.
        endpoint: String,
        /// The node's reason.
        reason: String,
    },
    /// The endpoint answered with something that is not a valid frame (or not the answer asked).
    #[error("protocol error from {endpoint}: {reason}")]
    Protocol {
        /// The endpoint.
        endpoint: String,
        /// What was wrong.
        reason: String,
    },
}

impl ClientError {
    /// Whether the request may have taken effect (or may still): it reached
    /// a node that did not say it refused it. `false` means it was not
    /// applied and never will be.
    pub fn maybe_applied(&self) -> bool {
        match self {
            ClientError::NoQuorum { maybe_applied, .. } => *maybe_applied,
            ClientError::Timeout(_) | ClientError::ConnectionLost { .. } | ClientError::Protocol { .. } => true,
            // A failing group's proposals may be on followers already.
            ClientError::Server(ServerError::Internal(_) | ServerError::LeadershipLost) => true,
            ClientError::Server(_) | ClientError::Unreachable { .. } | ClientError::Refused { .. } => false,
        }
    }
}

/// What an append did ([`Client::append_outcome`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// Index of the first payload.
    pub first_index: u64,
    /// Index of the last payload.
    pub last_index: u64,
    /// The term they were appended in.
    pub term: u64,
    /// A retry of the producer session found the append in the log already
    /// (an earlier attempt took effect; it is in the log once).
    pub duplicate: bool,
    /// Without a producer session only: an earlier attempt of this append
    /// reached a leader and got no answer, so the payloads may be in the log
    /// a second time. Always `false` with a session.
    pub earlier_attempt_may_commit: bool,
}

/// A client's producer session (see [`Client::with_producer`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerSession {
    /// The producer.
    pub producer_id: u64,
    /// Its epoch: appends of lower epochs are refused once this one appended.
    pub epoch: u32,
    /// The sequence of the next append.
    pub next_seq: u64,
}

/// A producer id no other client is likely to pick: 64 bits from the
/// process's randomly keyed hasher, the time and a counter.
fn random_producer_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    h.write_u32(std::process::id());
    h.finish()
}

/// How long one attempt at one node may take before the client looks for
/// another leader (a paused leader answers nothing): a little more than
/// the default maximum election timeout (300 ms).
pub const DEFAULT_ATTEMPT_TIMEOUT: Duration = Duration::from_millis(400);

/// One open connection.
struct Conn {
    endpoint: String,
    stream: TcpStream,
    buf: BytesMut,
}

impl Conn {
    async fn open(endpoint: &str, cluster: &str) -> Result<Conn, ClientError> {
        let unreachable =
            |e: std::io::Error| ClientError::Unreachable { endpoint: endpoint.into(), reason: e.to_string() };
        let mut stream = TcpStream::connect(endpoint).await.map_err(unreachable)?;
        let _ = stream.set_nodelay(true);
        let mut b = BytesMut::new();
        encode_frame(&Frame::Hello(Hello { node_id: 0, cluster: cluster.into(), incarnation: 0 }), &mut b);
        stream.write_all(&b).await.map_err(unreachable)?;
        Ok(Conn { endpoint: endpoint.into(), stream, buf: BytesMut::with_capacity(64 * 1024) })
    }

    async fn call(&mut self, id: u64, group: u64, request: Request) -> Result<Response, ClientError> {
        let mut b = BytesMut::new();
        encode_frame(&Frame::Request { id, group, request }, &mut b);
        let lost =
            |e: std::io::Error, ep: &str| ClientError::ConnectionLost { endpoint: ep.into(), reason: e.to_string() };
        self.stream.write_all(&b).await.map_err(|e| lost(e, &self.endpoint))?;
        loop {
            match decode_frame(&mut self.buf, DEFAULT_MAX_FRAME_BYTES) {
                Ok(Some(Frame::Response { id: rid, response })) if rid == id => return Ok(response),
                // Id 0: the node refuses the connection itself (see `ServerError::TooManyConnections`).
                Ok(Some(Frame::Response { id: 0, response: Response::Error(e) })) => {
                    return Err(ClientError::Refused { endpoint: self.endpoint.clone(), reason: e.to_string() })
                }
                Ok(Some(Frame::Response { .. })) => continue, // the answer to an abandoned call
                Ok(Some(_)) => {
                    return Err(ClientError::Protocol {
                        endpoint: self.endpoint.clone(),
                        reason: "unexpected frame".into(),
                    })
                }
                Ok(None) => {}
                Err(e) => return Err(ClientError::Protocol { endpoint: self.endpoint.clone(), reason: e.to_string() }),
            }
            let n = self.stream.read_buf(&mut self.buf).await.map_err(|e| lost(e, &self.endpoint))?;
            if n == 0 {
                return Err(ClientError::ConnectionLost {
                    endpoint: self.endpoint.clone(),
                    reason: "connection closed".into(),
                });
            }
        }
    }
}

/// Where one answer goes.
type Answer = tokio::sync::oneshot::Sender<Result<Response, ClientError>>;
type Waiters = Arc<Mutex<HashMap<u64, Answer>>>;

/// One connection many clients send over at once; answers are routed by id.
struct MuxConn {
    /// (group, request, where its answer goes).
    requests: tokio::sync::mpsc::UnboundedSender<(u64, Request, Answer)>,
    /// The reader stopped: nothing sent from now on would be answered.
    dead: Arc<std::sync::atomic::AtomicBool>,
}

impl MuxConn {
    async fn open(endpoint: &str, cluster: &str) -> Result<MuxConn, ClientError> {
        let Conn { stream, buf, .. } = Conn::open(endpoint, cluster).await?;
        let (mut rd, mut wr) = stream.into_split();
        let waiters: Waiters = Default::default();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(u64, Request, Answer)>();
        let lost = |endpoint: &str, reason: String| ClientError::ConnectionLost { endpoint: endpoint.into(), reason };
        let unsent = |endpoint: &str, reason: String| ClientError::Unreachable { endpoint: endpoint.into(), reason };
        let dead = Arc::new(std::sync::atomic::AtomicBool::new(false));
        // Writer: takes every queued request, assigns ids, one write for all of them.
        let w = waiters.clone();
        let dead_w = dead.clone();
        let ep = endpoint.to_string();
        tokio::spawn(async move {
            let mut next_id = 1u64;
            let mut out = BytesMut::with_capacity(64 * 1024);
            while let Some(first) = rx.recv().await {
                out.clear();
                let mut item = Some(first);
                while let Some((group, request, reply)) = item.take().or_else(|| rx.try_recv().ok()) {
                    let id = next_id;
                    next_id += 1;
                    let mut waiting = w.lock().expect("waiters");
                    // Checked under the lock the reader drains with: no request is left unanswered.
                    if dead_w.load(std::sync::atomic::Ordering::SeqCst) {
                        let _ = reply.send(Err(unsent(&ep, "connection closed".into())));
                        continue;
                    }
                    waiting.insert(id, reply);
                    drop(waiting);
                    encode_frame(&Frame::Request { id, group, request }, &mut out);
                }
                if let Err(e) = wr.write_all(&out).await {
                    for (_, reply) in w.lock().expect("waiters").drain() {
                        let _ = reply.send(Err(lost(&ep, e.to_string())));
                    }
                    return;
                }
            }
        });
        // Reader: answers go to whoever waits for their id.
        let ep = endpoint.to_string();
        let dead_at_exit = dead.clone();
        tokio::spawn(async move {
            let mut buf = buf;
            let mut refused = false;
            let reason = loop {
                match decode_frame(&mut buf, DEFAULT_MAX_FRAME_BYTES) {
                    Ok(Some(Frame::Response { id: 0, response: Response::Error(e) })) => {
                        refused = true;
                        break e.to_string();
                    }
                    Ok(Some(Frame::Response { id, response })) => {
                        if let Some(reply) = waiters.lock().expect("waiters").remove(&id) {
                            let _ = reply.send(Ok(response));
                        }
                        continue;
                    }
                    Ok(Some(_)) => break "unexpected frame".to_string(),
                    Ok(None) => {}
                    Err(e) => break e.to_string(),
                }
                match rd.read_buf(&mut buf).await {
                    Ok(0) => break "connection closed".to_string(),
                    Ok(_) => {}
                    Err(e) => break e.to_string(),
                }
            };
            let mut waiters = waiters.lock().expect("waiters");
            dead_at_exit.store(true, std::sync::atomic::Ordering::SeqCst);
            for (_, reply) in waiters.drain() {
                let e = if refused {
                    ClientError::Refused { endpoint: ep.clone(), reason: reason.clone() }
                } else {
                    lost(&ep, reason.clone())
                };
                let _ = reply.send(Err(e));
            }
        });
        Ok(MuxConn { requests: tx, dead })
    }
}

/// Connections shared by many clients (see the module docs): one per
/// endpoint, opened on first use and replaced when it breaks. Cheap to clone.
#[derive(Clone, Default)]
pub struct SharedConns(Arc<Mutex<HashMap<String, Arc<MuxConn>>>>);

impl SharedConns {
    async fn get(&self, endpoint: &str, cluster: &str) -> Result<Arc<MuxConn>, ClientError> {
        if let Some(c) = self.0.lock().expect("conns").get(endpoint) {
            if !c.requests.is_closed() && !c.dead.load(std::sync::atomic::Ordering::SeqCst) {
                return Ok(c.clone());
            }
        }
        let c = Arc::new(MuxConn::open(endpoint, cluster).await?);
        self.0.lock().expect("conns").insert(endpoint.to_string(), c.clone());
        Ok(c)
    }

    fn forget(&self, endpoint: &str, broken: &Arc<MuxConn>) {
        let mut conns = self.0.lock().expect("conns");
        if conns.get(endpoint).is_some_and(|c| Arc::ptr_eq(c, broken)) {
            conns.remove(endpoint);
        }
    }

    /// One request over the endpoint's shared connection, answered within `limit`.
    /// A connection that failed or let a request time out is replaced for the
    /// next caller (a half-open socket would otherwise swallow every request);
    /// requests already on it still get their answers if it delivers them.
    async fn call(
        &self,
        endpoint: &str,
        cluster: &str,
        group: u64,
        request: Request,
        limit: Duration,
    ) -> Result<Response, ClientError> {
        let deadline = tokio::time::Instant::now() + limit;
        let conn = match tokio::time::timeout_at(deadline, self.get(endpoint, cluster)).await {
            Ok(c) => c?,
            Err(_) => return Err(connect_timed_out(endpoint, limit)),
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        let gone = || ClientError::Unreachable { endpoint: endpoint.into(), reason: "connection closed".into() };
        let r = match conn.requests.send((group, request, tx)) {
            Ok(()) => match tokio::time::timeout_at(deadline, rx).await {
                Ok(answer) => answer.unwrap_or_else(|_| Err(gone())),
                Err(_) => Err(ClientError::Timeout(limit)),
            },
            Err(_) => Err(gone()),
        };
        if r.is_err() {
            self.forget(endpoint, &conn);
        }
        r
    }
}

/// A client of one group of a cluster.
pub struct Client {
    endpoints: Vec<String>,
    cluster: String,
    group: u64,
    timeout: Duration,
    leader: Option<String>,
    conns: Vec<Conn>,
    next_id: u64,
    rotate: usize,
    shared: Option<SharedConns>,
    /// The producer session appends are stamped with (`None`: plain appends).
    session: Option<ProducerSession>,
    attempt_timeout: Duration,
}

impl Client {
    /// A client for `group` of the cluster reachable at `endpoints`; calls give up after `timeout`.
    pub fn new(endpoints: Vec<String>, cluster: &str, group: u64, timeout: Duration) -> Client {
        Client {
            endpoints,
            cluster: cluster.into(),
            group,
            timeout,
            leader: None,
            conns: Vec::new(),
            next_id: 1,
            rotate: 0,
            shared: None,
            session: Some(ProducerSession { producer_id: random_producer_id(), epoch: 0, next_seq: 0 }),
            attempt_timeout: DEFAULT_ATTEMPT_TIMEOUT,
        }
    }

    /// Appends without a producer session: a retry after an unanswered
    /// attempt may append the payloads twice ([`Appended::earlier_attempt_may_commit`]
    /// says when). Sessions are on by default.
    pub fn without_session(mut self) -> Client {
        self.session = None;
        self
    }

    /// Appends as producer `producer_id` in `epoch`, from sequence 0: a
    /// producer that restarts with a stable id passes a higher epoch than
    /// its last instance used, which fences that instance's late retries.
    /// By default a client is a new producer with a random id.
    pub fn with_producer(mut self, producer_id: u64, epoch: u32) -> Client {
        self.session = Some(ProducerSession { producer_id, epoch, next_seq: 0 });
        self
    }

    /// The producer session, if appends use one.
    pub fn producer(&self) -> Option<ProducerSession> {
        self.session
    }

    /// How long one attempt of an append or read barrier waits at one node
    /// before the client looks for the leader elsewhere (default
    /// [`DEFAULT_ATTEMPT_TIMEOUT`]; the call as a whole still has its timeout).
    pub fn set_attempt_timeout(&mut self, limit: Duration) {
        self.attempt_timeout = limit;
    }

    /// A client that sends over `conns`, alongside the other clients using them.
    pub fn shared(endpoints: Vec<String>, cluster: &str, group: u64, timeout: Duration, conns: SharedConns) -> Client {
        Client { shared: Some(conns), ..Client::new(endpoints, cluster, group, timeout) }
    }

    /// The group this client talks to.
    pub fn group(&self) -> u64 {
        self.group
    }

    /// The leader address last learned, if any.
    pub fn leader(&self) -> Option<&str> {
        self.leader.as_deref()
    }

    async fn conn(&mut self, endpoint: &str) -> Result<&mut Conn, ClientError> {
        if let Some(i) = self.conns.iter().position(|c| c.endpoint == endpoint) {
            return Ok(&mut self.conns[i]);
        }
        let c = Conn::open(endpoint, &self.cluster).await?;
        self.conns.push(c);
        Ok(self.conns.last_mut().expect("pushed"))
    }

    /// One request to one endpoint, bounded by `limit`.
    pub async fn call_at(
        &mut self,
        endpoint: &str,
        request: Request,
        limit: Duration,
    ) -> Result<Response, ClientError> {
        let group = self.group;
        if let Some(shared) = &self.shared {
            // Ids belong to the shared connection; a late answer is simply dropped there.
            return shared.call(endpoint, &self.cluster, group, request, limit).await;
        }
        let id = self.next_id;
        self.next_id += 1;
        // A pooled connection may have been closed by a node that restarted since:
        // a request that changes nothing is sent once more over a fresh one.
        let pooled = self.conns.iter().any(|c| c.endpoint == endpoint);
        let retry_on_fresh = pooled
            && matches!(
                request,
                Request::Get { .. }
                    | Request::Read { .. }
                    | Request::Status
                    | Request::Subscribe { .. }
                    | Request::Query { .. }
                    | Request::ReadBarrier
            );
        if !retry_on_fresh {
            return self.call_once(endpoint, id, request, limit).await;
        }
        let started = Instant::now();
        let r = self.call_once(endpoint, id, request.clone(), limit).await;
        if matches!(r, Err(ClientError::Unreachable { .. } | ClientError::ConnectionLost { .. })) {
            return self.call_once(endpoint, id, request, limit.saturating_sub(started.elapsed())).await;
        }
        r
    }

    /// One request over this client's connection to `endpoint` (opened if
    /// needed, dropped after a failure or a timeout), bounded by `limit`.
    async fn call_once(
        &mut self,
        endpoint: &str,
        id: u64,
        request: Request,
        limit: Duration,
    ) -> Result<Response, ClientError> {
        let group = self.group;
        let started = Instant::now();
        // A connect that fails or times out sent nothing.
        match tokio::time::timeout(limit, self.conn(endpoint)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(connect_timed_out(endpoint, limit)),
        }
        let r = tokio::time::timeout(limit.saturating_sub(started.elapsed()), async {
            let c = self.conn(endpoint).await?;
            c.call(id, group, request).await
        })
        .await;
        match r {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) => {
                self.conns.retain(|c| c.endpoint != endpoint);
                Err(e)
            }
            Err(_) => {
                // The connection may still deliver the late answer; drop it to stay in step.
                self.conns.retain(|c| c.endpoint != endpoint);
                Err(ClientError::Timeout(limit))
            }
        }
    }

    /// Sends `request` to the leader, finding it and retrying until the deadline.
    async fn call_leader(&mut self, request: Request) -> Result<Response, ClientError> {
        self.call_leader_outcome(request).await.map(|(r, _)| r)
    }

    /// [`Self::call_leader`], and whether an earlier attempt may have taken
    /// effect (reached a leader that gave no answer) before the one answered.
    async fn call_leader_outcome(&mut self, request: Request) -> Result<(Response, bool), ClientError> {
        let start = Instant::now();
        // Appends and barriers give up on a silent node after one attempt's
        // time and look for another leader; the rest (transfers, membership
        // changes) may legitimately take longer.
        let bounded = matches!(request, Request::Append { .. } | Request::AppendSession { .. } | Request::ReadBarrier);
        let session_seq = match &request {
            Request::AppendSession { seq, .. } => Some(*seq),
            _ => None,
        };
        let deadline = start + self.timeout;
        let mut backoff = Duration::from_millis(10);
        // Sticky: once a request may have reached a leader, its outcome is unknown.
        let mut maybe_applied = false;
        // The last attempt was held by a leader that did not answer in time.
        let mut leader_silent = false;
        // The last node tried refused the connection (at its cap).
        let mut refused: Option<ClientError> = None;
        let mut redirects = 0;
        loop {
            let now = Instant::now();
            if now >= deadline {
                if let Some(e) = refused {
                    return Err(e);
                }
                return Err(if leader_silent {
                    ClientError::Timeout(self.timeout)
                } else {
                    ClientError::NoQuorum { waited: self.timeout, maybe_applied }
                });
            }
            let target = match &self.leader {
                Some(l) => l.clone(),
                None => {
                    self.rotate += 1;
                    self.endpoints[self.rotate % self.endpoints.len()].clone()
                }
            };
            let limit = if bounded { (deadline - now).min(self.attempt_timeout) } else { deadline - now };
            match self.call_at(&target, request.clone(), limit).await {
                Ok(Response::Error(ServerError::NotLeader { address: Some(a), .. })) if a != target => {
                    self.leader = Some(a);
                    redirects += 1;
                    // Stale hints can point in a circle during an election: slow down after a few.
                    if redirects < 3 {
                        continue;
                    }
                    redirects = 0;
                }
                Ok(Response::Error(ServerError::NotLeader { .. })) => {
                    self.leader = None;
                    leader_silent = false;
                }
                // Nothing changed; the same leader takes it in a moment.
                Ok(Response::Error(ServerError::NotReady(_))) => {
                    self.leader = Some(target);
                    leader_silent = false;
                }
                // A leader of an older term that lacks this producer's last
                // append (it committed under a newer leader): look further.
                Ok(Response::Error(ServerError::OutOfOrderSequence { expected }))
                    if session_seq.is_some_and(|seq| expected < seq) =>
                {
                    self.leader = None;
                    leader_silent = false;
                }
                // Nothing was sent.
                Err(ClientError::Unreachable { .. }) => {
                    self.leader = None;
                    leader_silent = false;
                }
                // A leader may have taken the request: its outcome is unknown from now on.
                Ok(Response::Error(ServerError::LeadershipLost))
                | Ok(Response::Error(ServerError::ShuttingDown))
                | Err(ClientError::ConnectionLost { .. })
                | Err(ClientError::Protocol { .. }) => {
                    self.leader = None;
                    maybe_applied = true;
                    leader_silent = false;
                }
                Err(ClientError::Timeout(_)) => {
                    self.leader = None;
                    maybe_applied = true;
                    leader_silent = true;
                    refused = None;
                    continue;
                }
                // Refused before any request was read: try the others, and say so if none takes it.
                Err(e @ ClientError::Refused { .. }) => {
                    self.leader = None;
                    leader_silent = false;
                    refused = Some(e);
                }
                Ok(other) => {
                    self.leader = Some(target);
                    return Ok((other, maybe_applied));
                }
                Err(e) => return Err(e),
            }
            // Wait a little before the next round (an election takes a few hundred ms).
            tokio::time::sleep(backoff.min(deadline.saturating_duration_since(Instant::now()))).await;
            backoff = (backoff * 2).min(Duration::from_millis(100));
        }
    }

    /// Appends one entry; returns its (index, term) once committed.
    pub async fn append(&mut self, payload: Bytes) -> Result<(u64, u64), ClientError> {
        let (first, _, term) = self.append_batch(vec![payload]).await?;
        Ok((first, term))
    }

    /// Appends entries as one batch; returns (first index, last index, term)
    /// once committed. With the producer session (the default), retries
    /// append it at most once.
    pub async fn append_batch(&mut self, payloads: Vec<Bytes>) -> Result<(u64, u64, u64), ClientError> {
        let a = self.append_outcome(payloads).await?;
        Ok((a.first_index, a.last_index, a.term))
    }

    /// Appends entries as one batch, and says what happened: whether it was
    /// found in the log already (a session's retry) or, without a session,
    /// whether an earlier attempt may have appended it too.
    ///
    /// With a session, a call that fails with an unknown outcome
    /// ([`ClientError::maybe_applied`]) starts a new epoch for the next
    /// append, so that the failed one, if it is still on its way, is fenced
    /// rather than leaving a gap in the sequence.
    pub async fn append_outcome(&mut self, payloads: Vec<Bytes>) -> Result<Appended, ClientError> {
        let Some(s) = self.session else {
            return match self.call_leader_outcome(Request::Append { payloads }).await? {
                (Response::Appended { first_index, last_index, term }, earlier) => Ok(Appended {
                    first_index,
                    last_index,
                    term,
                    duplicate: false,
                    earlier_attempt_may_commit: earlier,
                }),
                (other, _) => Err(unexpected(other)),
            };
        };
        let n = payloads.len() as u64;
        let request = Request::AppendSession { producer_id: s.producer_id, epoch: s.epoch, seq: s.next_seq, payloads };
        let r = self.call_leader(request).await;
        let session = self.session.as_mut().expect("a session");
        let (first_index, last_index, term, duplicate) = match r {
            Ok(Response::Appended { first_index, last_index, term }) => (first_index, last_index, term, false),
            Ok(Response::Duplicate { first_index, last_index, term }) => (first_index, last_index, term, true),
            Ok(other) => return Err(unexpected(other)),
            Err(e) => {
                if e.maybe_applied() {
                    (session.epoch, session.next_seq) = (session.epoch.wrapping_add(1), 0);
                }
                return Err(e);
            }
        };
        session.next_seq += n;
        Ok(Appended { first_index, last_index, term, duplicate, earlier_attempt_may_commit: false })
    }

    /// A linearizable read barrier: an index every committed write before the call is at or below.
    pub async fn read_barrier(&mut self) -> Result<u64, ClientError> {
        match self.call_leader(Request::ReadBarrier).await? {
            Response::ReadIndex(i) => Ok(i),
            other => Err(unexpected(other)),
        }
    }

    /// Committed entries `[lo, hi)` (at most `max_bytes` of payload, 0: no limit),
    /// linearizably: a read barrier first, then the read at the leader, so every
    /// entry acknowledged before the call is visible.
    pub async fn read(&mut self, lo: u64, hi: u64, max_bytes: u32) -> Result<Vec<ClientEntry>, ClientError> {
        let deadline = Instant::now() + self.timeout;
        loop {
            self.read_barrier().await?;
            // The read goes to the node that answered the barrier and to no other: a
            // lagging follower could miss entries acknowledged before the call.
            if let Some(at) = self.leader.clone() {
                let left = deadline.saturating_duration_since(Instant::now());
                match self.call_at(&at, Request::Read { lo, hi, max_bytes }, left).await {
                    Ok(Response::Entries(e)) => return Ok(e),
                    Ok(Response::Error(ServerError::NotLeader { .. })) | Err(_) => {}
                    Ok(other) => return Err(unexpected(other)),
                }
            }
            if Instant::now() >= deadline {
                return Err(ClientError::Timeout(self.timeout));
            }
            self.leader = None;
        }
    }

    /// One committed entry (linearizably, as [`Client::read`]).
    pub async fn get(&mut self, index: u64) -> Result<ClientEntry, ClientError> {
        let mut e = self.read(index, index + 1, 0).await?;
        match e.len() {
            1 => Ok(e.remove(0)),
            _ => Err(ClientError::Protocol { endpoint: String::new(), reason: "expected one entry".into() }),
        }
    }

    /// The entries `[lo, hi)` that `endpoint` itself has committed (no redirect;
    /// a follower may be behind). For tools and tests that compare nodes.
    pub async fn read_at(
        &mut self,
        endpoint: &str,
        lo: u64,
        hi: u64,
        max_bytes: u32,
    ) -> Result<Vec<ClientEntry>, ClientError> {
        match self.call_at(endpoint, Request::Read { lo, hi, max_bytes }, self.timeout).await? {
            Response::Entries(e) => Ok(e),
            other => Err(unexpected(other)),
        }
    }

    /// A linearizable query of the group's state machine (a group that runs
    /// one, such as `dledger server --state-machine kv`), answered by the
    /// leader once every entry committed before the query is applied.
    pub async fn query(&mut self, query: Bytes) -> Result<Bytes, ClientError> {
        match self.call_leader(Request::Query { query }).await? {
            Response::QueryResult(b) => Ok(b),
            other => Err(unexpected(other)),
        }
    }

    /// Purges the group's log up to index `to` on every replica, through a
    /// replicated command; returns the command's own index once committed.
    /// Each replica then drops its whole segments up to `to`, as far as its
    /// own limits allow (see `dledger_server`'s retention docs).
    pub async fn purge_to(&mut self, to: u64) -> Result<u64, ClientError> {
        match self.call_leader(Request::Purge { to }).await? {
            Response::Appended { last_index, .. } => Ok(last_index),
            other => Err(unexpected(other)),
        }
    }

    /// The group's configuration in force, from the leader (with each
    /// member's match index, so its lag).
    pub async fn members(&mut self) -> Result<MembersView, ClientError> {
        match self.call_leader(Request::Members).await? {
            Response::Members(v) => Ok(v),
            Response::Error(e) => Err(ClientError::Server(e)),
            other => Err(unexpected(other)),
        }
    }

    /// One membership change at the leader (see `dledger_raft::Membership`
    /// for what is checked); returns the new configuration once committed.
    /// A refusal is `ClientError::Server(ServerError::MembershipRefused)`,
    /// and nothing changed. `expected_version` makes it a compare-and-set.
    pub async fn change_membership(
        &mut self,
        change: MembershipChange,
        expected_version: Option<u64>,
        force: bool,
    ) -> Result<MembersView, ClientError> {
        match self.call_leader(Request::ChangeMembership { change, expected_version, force }).await? {
            Response::Members(v) => Ok(v),
            Response::Error(e) => Err(ClientError::Server(e)),
            other => Err(unexpected(other)),
        }
    }

    /// Asks the leader to hand over to `target`.
    pub async fn transfer_leader(&mut self, target: u64) -> Result<u64, ClientError> {
        match self.call_leader(Request::TransferLeader { target }).await? {
            Response::Transferred { new_term } => {
                self.leader = None;
                Ok(new_term)
            }
            other => Err(unexpected(other)),
        }
    }

    /// What `endpoint` knows of every group it hosts (no redirect).
    pub async fn node_status(&mut self, endpoint: &str) -> Result<Vec<GroupStatus>, ClientError> {
        let saved = self.group;
        self.group = dledger_proto::ALL_GROUPS;
        let r = self.call_at(endpoint, Request::Status, self.timeout).await;
        self.group = saved;
        match r? {
            Response::Status(s) => Ok(s),
            other => Err(unexpected(other)),
        }
    }
}

fn connect_timed_out(endpoint: &str, limit: Duration) -> ClientError {
    ClientError::Unreachable { endpoint: endpoint.into(), reason: format!("no connection within {limit:?}") }
}

fn unexpected(r: Response) -> ClientError {
    match r {
        Response::Error(e) => ClientError::Server(e),
        other => ClientError::Protocol { endpoint: String::new(), reason: format!("unexpected answer {other:?}") },
    }
}
