//! dledger-bench
