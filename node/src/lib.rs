//! dledger-node: Raft core (see `raft`).
