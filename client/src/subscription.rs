//! Reading the log back in order: a [`Subscription`] long-polls any replica
//! (`Request::Subscribe`) for the committed entries after the last one it
//! delivered, and yields them one by one.
//!
//! It picks a replica itself (any node serves up to its own commit index,
//! so readers spread over the cluster) and moves to the next when one
//! fails, resuming from the index after the last entry it delivered: no
//! entry is skipped or delivered twice across a failover. A start below
//! the log start (entries purged) is resolved by [`OnPurged`], as Kafka's
//! `auto.offset.reset`. Memory is bounded by one answer (`max_bytes`).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use dledger_proto::{ClientEntry, Request, Response, ServerError};

use crate::{Client, ClientError};

/// Where a subscription starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    /// The first entry the log still holds.
    Earliest,
    /// The next entry to commit (none of those the cluster has committed
    /// when the subscription starts: it asks the leader where that is).
    Latest,
    /// This index.
    Index(u64),
}

/// What a subscription does when the entries it needs next were purged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnPurged {
    /// Go on from the log start (the purged entries are skipped).
    Earliest,
    /// Go on from the next entry to commit.
    Latest,
    /// Fail with `OutOfRange` naming the log start.
    Fail,
}

/// An ordered reader of one group's committed log (see the module docs).
pub struct Subscription {
    client: Client,
    start: StartAt,
    on_purged: OnPurged,
    /// The next index to deliver, once known.
    next: Option<u64>,
    buffered: VecDeque<ClientEntry>,
    replica: usize,
    /// Payload bytes one answer may carry.
    pub max_bytes: u32,
    /// How long one long poll may be held by the node.
    pub max_wait: Duration,
    /// The commit index of the replica last heard from.
    pub commit_index: u64,
    /// The log start of the replica last heard from.
    pub log_start: u64,
}

impl Client {
    /// A subscription to this client's group, from `start`; entries below
    /// the log start are handled as `on_purged` says. It gives up (with the
    /// last error) only when no replica answers for the client's timeout.
    pub fn subscribe(&self, start: StartAt, on_purged: OnPurged) -> Subscription {
        let client = Client::new(self.endpoints.clone(), &self.cluster, self.group, self.timeout);
        let replica = (self.group as usize).wrapping_add(std::process::id() as usize) % self.endpoints.len().max(1);
        Subscription {
            client,
            start,
            on_purged,
            next: match start {
                StartAt::Index(i) => Some(i.max(1)),
                _ => None,
            },
            buffered: VecDeque::new(),
            replica,
            max_bytes: 1 << 20,
            max_wait: Duration::from_secs(1),
            commit_index: 0,
            log_start: 0,
        }
    }
}

impl Subscription {
    /// The subscription as an async stream (`futures::Stream`) of committed
    /// entries, in order, for `StreamExt` combinators and `select!`. It ends
    /// after yielding the first error (the same error [`Self::next`] gives:
    /// no replica answered for the client's timeout, or `OnPurged::Fail`).
    pub fn into_stream(self) -> impl futures_core::Stream<Item = Result<ClientEntry, ClientError>> {
        futures_util::stream::unfold(Some(self), |state| async move {
            let mut sub = state?;
            match sub.next().await {
                Ok(entry) => Some((Ok(entry), Some(sub))),
                Err(e) => Some((Err(e), None)),
            }
        })
    }

    /// The next committed entry, waiting for one as long as it takes.
    pub async fn next(&mut self) -> Result<ClientEntry, ClientError> {
        loop {
            if let Some(e) = self.buffered.pop_front() {
                return Ok(e);
            }
            let batch = self.poll().await?;
            self.buffered.extend(batch);
        }
    }

    /// One long poll: the entries that arrived (possibly none, after
    /// `max_wait`), in order, after those delivered before.
    pub async fn poll(&mut self) -> Result<Vec<ClientEntry>, ClientError> {
        let deadline = Instant::now() + self.client.timeout;
        let mut last_error = None;
        loop {
            if Instant::now() >= deadline {
                return Err(last_error.unwrap_or(ClientError::Timeout(self.client.timeout)));
            }
            if self.next.is_none() && self.start == StartAt::Latest {
                // The end of the log as the cluster has committed it (a replica may lag behind).
                if let Ok(commit) = self.client.read_barrier().await {
                    self.next = Some(commit + 1);
                    self.commit_index = self.commit_index.max(commit);
                    return Ok(Vec::new());
                }
            }
            let endpoints = &self.client.endpoints;
            let endpoint = endpoints[self.replica % endpoints.len()].clone();
            let (from, wait) = match (self.next, self.start) {
                (Some(n), _) => (n, self.max_wait),
                (None, StartAt::Earliest) => (1, Duration::ZERO),
                // Far past any commit, answered at once: where the log ends now.
                (None, _) => (u64::MAX / 2, Duration::ZERO),
            };
            let request = Request::Subscribe {
                from,
                max_bytes: self.max_bytes,
                min_bytes: 1,
                max_wait_ms: wait.as_millis() as u32,
            };
            let limit = wait + self.client.timeout.min(Duration::from_secs(5));
            match self.client.call_at(&endpoint, request, limit).await {
                Ok(Response::Batch { entries, commit_index, log_start, .. }) => {
                    self.commit_index = commit_index;
                    self.log_start = log_start;
                    if self.next.is_none() {
                        self.next = Some(match self.start {
                            StartAt::Earliest => log_start.max(1),
                            _ => commit_index + 1,
                        });
                    }
                    return Ok(self.take_from(entries));
                }
                Ok(Response::Error(ServerError::OutOfRange { first, commit, index })) if index < first => {
                    self.log_start = first;
                    self.commit_index = commit;
                    match (self.next, self.on_purged, self.start) {
                        (None, _, StartAt::Earliest) | (Some(_), OnPurged::Earliest, _) => self.next = Some(first),
                        (Some(_), OnPurged::Latest, _) => self.next = Some(commit + 1),
                        (Some(_), OnPurged::Fail, _) | (None, _, _) => {
                            return Err(ClientError::Server(ServerError::OutOfRange { index, first, commit }));
                        }
                    }
                }
                Ok(Response::Error(e @ ServerError::ShuttingDown))
                | Ok(Response::Error(e @ ServerError::Internal(_))) => {
                    last_error = Some(ClientError::Server(e));
                    self.replica += 1;
                }
                Ok(other) => return Err(crate::unexpected(other)),
                Err(e) => {
                    // This replica is gone or slow: the next one, from the same index.
                    last_error = Some(e);
                    self.replica += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }

    /// The entries of an answer from the next index on (a replica answers
    /// from the index asked; anything before it was delivered already).
    fn take_from(&mut self, entries: Vec<ClientEntry>) -> Vec<ClientEntry> {
        let mut next = self.next.expect("known once an answer arrived");
        let mut out = Vec::with_capacity(entries.len());
        for e in entries {
            if e.index < next {
                continue;
            }
            if e.index != next {
                break;
            }
            next += 1;
            out.push(e);
        }
        self.next = Some(next);
        out
    }

    /// The replica this subscription reads from now.
    pub fn replica(&self) -> &str {
        let endpoints = &self.client.endpoints;
        &endpoints[self.replica % endpoints.len()]
    }

    /// The index the next entry delivered will have (once known).
    pub fn position(&self) -> Option<u64> {
        self.next
    }
}
