//! dledger-engine
