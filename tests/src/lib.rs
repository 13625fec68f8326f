//! Integration and fault tests of dledger-rs: they start real `dledger`
//! processes on 127.0.0.1 (see `tests/harness`). The library holds what the
//! tests share that needs no process: the history checker ([`history`]).

pub mod history;
