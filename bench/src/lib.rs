//! dledger-bench: load generators and micro-benchmarks for dledger-rs.
//!
//! - `engine-bench` (binary): P closed-loop producers against one [`dledger_engine::Log`].
//! - `benches/append.rs` (criterion): append throughput by entry and batch size.
//! - `fio-limit.sh`: the disk's own limit beside `engine-bench`.
//! - [`loadgen`]: the cluster load generator behind `dledger bench` (clients,
//!   report, SLO check, SVG timeline).

pub mod engine_load;
pub mod loadgen;
