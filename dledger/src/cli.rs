//! The `dledger` command line: the server and the tools around it
//! (quick start, cluster table, append, get, leadership transfer, doctor).
#![allow(missing_docs)]
#![allow(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Parser, Subcommand};
use dledger_client::Client;
use dledger_proto::GroupStatus;
use dledger_server::ServerConfig;

#[derive(Parser)]
#[command(name = "dledger", version, about = "A Raft-replicated commit log")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(clap::Args, Clone)]
struct Target {
    /// Comma-separated ip:port of the nodes.
    #[arg(long, value_delimiter = ',', required = true)]
    endpoints: Vec<String>,
    /// Raft group.
    #[arg(long, default_value_t = 0)]
    group: u64,
    /// Cluster name (must match the servers').
    #[arg(long, default_value = "dledger")]
    cluster: String,
    /// Give up after this many milliseconds.
    #[arg(long, default_value_t = 5000)]
    timeout_ms: u64,
}

/// The state machines `dledger server` can run itself.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum BuiltinMachine {
    /// A running CRC32C and count of applied entries.
    Checksum,
    /// A key-value map (`key=value` entries; see the `kv` module).
    Kv,
}

#[derive(Subcommand)]
enum MemberAction {
    /// One row per member: id, address, role (voter or learner), lag.
    List {
        #[command(flatten)]
        target: Target,
    },
    /// Add a node (running, started with `server --join`) that receives the
    /// log and does not vote.
    AddLearner {
        #[command(flatten)]
        target: Target,
        /// Its node id (never used before in this cluster).
        #[arg(long)]
        id: u64,
        /// Its ip:port.
        #[arg(long)]
        address: String,
    },
    /// Make a caught-up learner a voter.
    Promote {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        id: u64,
    },
    /// Make a voter a learner (not the leader: transfer first).
    Demote {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        id: u64,
    },
    /// Remove a member (the leader hands over first).
    Remove {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        id: u64,
        /// Even if the new configuration's quorum is not reachable now.
        #[arg(long)]
        force: bool,
    },
    /// Replace member `old` by the node at `new-address` (running, started
    /// with `server --join` under a new id): add it as a learner, wait for
    /// it, promote it, remove the old one. Run again to resume.
    Replace {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        old: u64,
        #[arg(long)]
        new_address: String,
        /// Promote once the learner is at most this many entries behind.
        #[arg(long, default_value_t = 1000)]
        max_lag: u64,
        /// Give up waiting for it to catch up after this many seconds.
        #[arg(long, default_value_t = 600)]
        wait_secs: u64,
    },
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a node.
    Server {
        #[arg(long)]
        config: PathBuf,
        /// Overrides `listen` in the config.
        #[arg(long)]
        listen: Option<String>,
        /// Overrides `data_dir` in the config.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Overrides `cores` in the config.
        #[arg(long)]
        cores: Option<usize>,
        /// Overrides `metrics_listen` in the config.
        #[arg(long)]
        metrics_listen: Option<String>,
        /// Give every group a built-in state machine: `checksum` (a running
        /// CRC32C of what is applied; for measuring what a state machine costs)
        /// or `kv` (a key-value map of `key=value` entries, queried with
        /// `dledger query`; its snapshots grow with what is written).
        #[arg(long, value_enum)]
        state_machine: Option<BuiltinMachine>,
        /// Create the data directory if it is missing or empty (the first start
        /// of a new cluster's node, as `dledger init` does). Never on a restart:
        /// without it, a node whose data was lost refuses to start.
        #[arg(long)]
        bootstrap: bool,
        /// Create the data directory if it is missing or empty, as a new node
        /// of a running cluster: it waits, serving nothing, until an operator
        /// adds it (`dledger member add-learner`, or `member replace`). Give it
        /// a node id the cluster never had; `[[peers]]` tell it where the
        /// cluster is.
        #[arg(long, conflicts_with = "bootstrap")]
        join: bool,
    },
    /// List a group's members, or change them (one change at a time).
    Member {
        #[command(subcommand)]
        action: MemberAction,
    },
    /// Create a node's data directory for a new cluster (once, before its first start).
    Init {
        #[arg(long)]
        config: PathBuf,
    },
    /// A local cluster (three nodes by default) in the background.
    Quickstart {
        #[command(subcommand)]
        action: Quick,
    },
    /// One row per group and node: role, term, indexes, lag.
    Cluster {
        #[arg(long, value_delimiter = ',', required = true)]
        endpoints: Vec<String>,
        #[arg(long, default_value = "dledger")]
        cluster: String,
        #[arg(long)]
        json: bool,
    },
    /// Append entries (each argument is one entry) and print index and term.
    Append {
        #[command(flatten)]
        target: Target,
        #[arg(required = true)]
        data: Vec<String>,
    },
    /// Print committed entries [index, to].
    Get {
        #[command(flatten)]
        target: Target,
        index: u64,
        /// Last index to print (default: just `index`).
        #[arg(long)]
        to: Option<u64>,
    },
    /// Print committed entries in order as `index<TAB>term<TAB>payload`, read
    /// from any replica (like `tail -f` with `--follow`): from `--from N`,
    /// `--earliest` (the log start; the default) or `--latest` (only new
    /// entries). Without `--follow` it stops at the cluster's commit index
    /// when it started (the leader's read point).
    Tail {
        #[command(flatten)]
        target: Target,
        /// Start at this index (purged entries are skipped to the log start).
        #[arg(long, conflicts_with_all = ["earliest", "latest"])]
        from: Option<u64>,
        /// Start at the log start.
        #[arg(long)]
        earliest: bool,
        /// Start after the last committed entry.
        #[arg(long)]
        latest: bool,
        /// Keep printing entries as they commit.
        #[arg(long)]
        follow: bool,
    },
    /// Query the group's state machine (a server run with `--state-machine`),
    /// linearizably, through the leader; prints the answer (for `kv`: a key's
    /// value, or with no key the state's digest in hex).
    Query {
        #[command(flatten)]
        target: Target,
        /// What to ask (for `kv`: a key); empty by default.
        #[arg(default_value = "")]
        query: String,
    },
    /// Purge the group's log up to index `to` on every replica, as a
    /// replicated command (refused above the commit index). Each replica then
    /// drops its whole sealed segments up to `to`, as far as its own limits
    /// allow (applied, durable, snapshotted); followers left behind are sent
    /// the log start.
    Purge {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        to: u64,
    },
    /// Ask the leader to hand over to node `to`.
    TransferLeader {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        to: u64,
    },
    /// Load a running cluster and report throughput and latency (optionally against an SLO).
    Bench {
        #[arg(long, value_delimiter = ',', required = true)]
        endpoints: Vec<String>,
        #[arg(long, default_value = "dledger")]
        cluster: String,
        /// Concurrent clients, each with one request in flight.
        #[arg(long, default_value_t = 64)]
        clients: usize,
        /// Connections the clients share (requests multiplexed by id); default:
        /// one per client.
        #[arg(long)]
        connections: Option<usize>,
        /// Payload bytes per entry.
        #[arg(long, default_value_t = 256)]
        entry_size: usize,
        /// Entries per request.
        #[arg(long, default_value_t = 1)]
        batch: usize,
        /// Spread clients over groups 0..groups.
        #[arg(long, default_value_t = 1)]
        groups: u64,
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        #[arg(long, default_value_t = 2.0)]
        warmup: f64,
        /// Open loop: requests per second over all clients (latency from the intended send time).
        #[arg(long)]
        rate: Option<f64>,
        /// Append with a producer session per client (appended at most once
        /// however often retried); by default plain appends.
        #[arg(long)]
        idempotent: bool,
        #[arg(long)]
        json: bool,
        /// For example "p99<=5ms,p999<=20ms"; exit non-zero when missed.
        #[arg(long)]
        slo: Option<String>,
        /// Write an SVG with the latency distribution and the per-second timeline.
        #[arg(long)]
        plot: Option<PathBuf>,
    },
    /// What the storage engine can use in a directory; with `--config`, also
    /// checks the server's configuration (warns when retention is off).
    Doctor {
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// A server config file: probe its data directory and check its settings.
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum Quick {
    /// Start three nodes (or `--nodes N`) on 127.0.0.1 and wait for a
    /// leader; on a directory whose quick start is partly running, start
    /// only the missing nodes (with their configs as written, and the same
    /// `--state-machine`).
    Start {
        #[arg(long, default_value = "./dledger-quickstart")]
        dir: PathBuf,
        /// First of the nodes' ports; metrics on P+100.. (0: free ports below the ephemeral range).
        #[arg(long, default_value_t = 20911)]
        base_port: u16,
        /// How many nodes (1 to 7).
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// Run the nodes with this built-in state machine (see `server --state-machine`).
        #[arg(long, value_enum)]
        state_machine: Option<BuiltinMachine>,
        /// More TOML for every node's config (keys such as `segment_mib = 8`, then
        /// tables such as `[retention]`), placed before the peers.
        #[arg(long, default_value = "")]
        config_extra: String,
    },
    /// Start one more node (a new id, free ports) and add it to every
    /// group: as a learner, then, once it has caught up, as a voter.
    AddNode {
        #[arg(long, default_value = "./dledger-quickstart")]
        dir: PathBuf,
        /// Run it with this built-in state machine (the others' choice).
        #[arg(long, value_enum)]
        state_machine: Option<BuiltinMachine>,
    },
    /// Show the processes and the cluster table.
    Status {
        #[arg(long, default_value = "./dledger-quickstart")]
        dir: PathBuf,
    },
    /// Stop exactly the processes `start` started.
    Stop {
        #[arg(long, default_value = "./dledger-quickstart")]
        dir: PathBuf,
    },
}

fn init_logs(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| default.into());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

/// Runs the `dledger` command line; the binaries call this.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Init { config } => {
            init_logs("info");
            ServerConfig::from_file(&config).map_err(|e| e.to_string()).and_then(|cfg| {
                let id = dledger_server::init(&cfg).map_err(|e| e.to_string())?;
                println!(
                    "initialized {} for node {} of cluster {:?} (incarnation {:016x})",
                    cfg.data_dir.display(),
                    id.node,
                    id.cluster,
                    id.incarnation
                );
                Ok(())
            })
        }
        Cmd::Server { config, listen, data_dir, cores, metrics_listen, state_machine, bootstrap, join } => {
            init_logs("info");
            match server(&config, listen, data_dir, cores, metrics_listen, state_machine, (bootstrap, join)) {
                // A fatal error after start (a log failed): 70, EX_SOFTWARE, so that a
                // supervisor tells "stopped on an error" from "refused to start".
                Err(dledger_server::RunError::Fatal(e)) => {
                    eprintln!("dledger: stopped: {e}");
                    return ExitCode::from(70);
                }
                r => r.map_err(|e| e.to_string()),
            }
        }
        cmd => {
            init_logs("warn");
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(tool(cmd))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dledger: {e}");
            ExitCode::FAILURE
        }
    }
}

fn server(
    config: &Path,
    listen: Option<String>,
    data_dir: Option<PathBuf>,
    cores: Option<usize>,
    metrics_listen: Option<String>,
    machine: Option<BuiltinMachine>,
    (bootstrap, join): (bool, bool),
) -> Result<(), dledger_server::RunError> {
    let invalid = dledger_server::StartError::Config;
    let mut cfg = ServerConfig::from_file(config).map_err(invalid)?;
    if let Some(l) = listen {
        cfg.listen = l;
    }
    if let Some(d) = data_dir {
        cfg.data_dir = d;
    }
    if let Some(c) = cores {
        cfg.cores = c;
    }
    if metrics_listen.is_some() {
        cfg.metrics_listen = metrics_listen;
    }
    cfg.validate().map_err(invalid)?;
    let groups = cfg.groups;
    let mut builder = dledger_server::Server::builder(cfg).bootstrap(bootstrap).join(join);
    for g in 0..groups {
        builder = match machine {
            Some(BuiltinMachine::Checksum) => builder.state_machine(g, crate::checksum::Checksum::default()),
            Some(BuiltinMachine::Kv) => builder.state_machine(g, crate::kv::Kv::default()),
            None => builder,
        };
    }
    builder.run()
}

fn client(t: &Target) -> Client {
    Client::new(t.endpoints.clone(), &t.cluster, t.group, Duration::from_millis(t.timeout_ms))
}

async fn tool(cmd: Cmd) -> Result<(), String> {
    match cmd {
        Cmd::Server { .. } | Cmd::Init { .. } => unreachable!("handled in main"),
        Cmd::Append { target, data } => {
            let mut c = client(&target);
            let payloads: Vec<Bytes> = data.into_iter().map(Bytes::from).collect();
            let (first, last, term) = c.append_batch(payloads).await.map_err(|e| e.to_string())?;
            for i in first..=last {
                println!("appended index={i} term={term}");
            }
            Ok(())
        }
        Cmd::Get { target, index, to } => {
            let mut c = client(&target);
            let hi = to.unwrap_or(index) + 1;
            let entries = c.read(index, hi, 0).await.map_err(|e| e.to_string())?;
            for e in entries {
                println!("{}\t{}\t{}", e.index, e.term, String::from_utf8_lossy(&e.payload));
            }
            Ok(())
        }
        Cmd::Tail { target, from, earliest: _, latest, follow } => {
            use dledger_client::{OnPurged, StartAt};
            let start = match (from, latest) {
                (Some(n), _) => StartAt::Index(n),
                (None, true) => StartAt::Latest,
                (None, false) => StartAt::Earliest,
            };
            let mut c = client(&target);
            let mut sub = c.subscribe(start, OnPurged::Earliest);
            // Without --follow: up to what the cluster has committed now (the leader's read
            // point, so an append acknowledged before the command shows), else what the
            // first replica answering knows.
            let mut until: Option<u64> = if follow { None } else { c.read_barrier().await.ok() };
            loop {
                let batch = sub.poll().await.map_err(|e| e.to_string())?;
                let stop_at = *until.get_or_insert(sub.commit_index);
                for e in &batch {
                    println!("{}\t{}\t{}", e.index, e.term, String::from_utf8_lossy(&e.payload));
                }
                if !follow && sub.position().is_some_and(|next| next > stop_at) {
                    return Ok(());
                }
            }
        }
        Cmd::Query { target, query } => {
            let mut c = client(&target);
            let answer = c.query(Bytes::from(query.clone().into_bytes())).await.map_err(|e| e.to_string())?;
            if query.is_empty() {
                println!("{}", answer.iter().map(|b| format!("{b:02x}")).collect::<String>());
            } else {
                println!("{}", String::from_utf8_lossy(&answer));
            }
            Ok(())
        }
        Cmd::Purge { target, to } => {
            let mut c = client(&target);
            let at = c.purge_to(to).await.map_err(|e| e.to_string())?;
            println!("purge to index {to} committed at index {at}: every replica drops its whole segments up to it");
            Ok(())
        }
        Cmd::Member { action } => member(action).await,
        Cmd::TransferLeader { target, to } => {
            let mut c = client(&target);
            let term = c.transfer_leader(to).await.map_err(|e| e.to_string())?;
            println!("leadership handed to node {to} (term {term})");
            Ok(())
        }
        Cmd::Cluster { endpoints, cluster, json } => {
            let rows = cluster_rows(&endpoints, &cluster).await;
            print_rows(&rows, json);
            Ok(())
        }
        Cmd::Bench {
            endpoints,
            cluster,
            clients,
            connections,
            entry_size,
            batch,
            groups,
            seconds,
            warmup,
            rate,
            idempotent,
            json,
            slo,
            plot,
        } => {
            let slo = slo.as_deref().map(dledger_bench::loadgen::parse_slo).transpose()?;
            let spec = dledger_bench::loadgen::BenchSpec {
                endpoints,
                cluster,
                clients,
                connections,
                entry_size,
                batch,
                groups,
                seconds,
                warmup,
                rate,
                timeout: Duration::from_secs(10),
                idempotent,
            };
            let bar = indicatif::ProgressBar::new(((warmup + seconds) * 10.0) as u64);
            bar.set_style(
                indicatif::ProgressStyle::with_template("{bar:40} {elapsed}/{duration} {msg}")
                    .map_err(|e| e.to_string())?,
            );
            let mut last = (Duration::ZERO, 0u64);
            let report = dledger_bench::loadgen::run(spec, |elapsed, entries| {
                bar.set_position((elapsed.as_secs_f64() * 10.0) as u64);
                let dt = (elapsed - last.0).as_secs_f64().max(1e-3);
                bar.set_message(format!("{:.0} entries/s", (entries - last.1) as f64 / dt));
                last = (elapsed, entries);
            })
            .await;
            bar.finish_and_clear();
            if json {
                println!("{}", serde_json::to_string_pretty(&report.to_json()).map_err(|e| e.to_string())?);
            } else {
                print!("{report}");
            }
            if let Some(path) = plot {
                dledger_bench::loadgen::plot_svg(&report, &path)?;
                eprintln!("plot written to {}", path.display());
            }
            if let Some(slo) = slo {
                let missed = dledger_bench::loadgen::check_slo(&report, &slo);
                if !missed.is_empty() {
                    return Err(format!("SLO missed: {}", missed.join("; ")));
                }
                eprintln!("SLO met");
            }
            Ok(())
        }
        Cmd::Doctor { dir, config } => {
            let cfg = match &config {
                Some(path) => Some(dledger_server::ServerConfig::from_file(path).map_err(|e| e.to_string())?),
                None => None,
            };
            let dir = cfg.as_ref().map_or(dir, |c| c.data_dir.clone());
            let probe_dir =
                if dir.is_dir() { dir.clone() } else { dir.parent().map_or(dir.clone(), Path::to_path_buf) };
            let r = dledger_engine::probe(&probe_dir).map_err(|e| format!("probe {}: {e}", probe_dir.display()))?;
            println!("{r}");
            if let Some(cfg) = cfg {
                for warning in config_warnings(&cfg) {
                    println!("warning: {warning}");
                }
            }
            Ok(())
        }
        Cmd::Quickstart { action } => match action {
            Quick::Start { dir, base_port, state_machine, config_extra, nodes } => {
                if !(1..=7).contains(&nodes) {
                    return Err(format!("--nodes {nodes}: a quick start runs 1 to 7 nodes"));
                }
                quick_start(&dir, base_port, state_machine, &config_extra, nodes).await
            }
            Quick::AddNode { dir, state_machine } => quick_add_node(&dir, state_machine).await,
            Quick::Status { dir } => quick_status(&dir).await,
            Quick::Stop { dir } => quick_stop(&dir),
        },
    }
}

/// What `dledger doctor --config` warns about.
fn config_warnings(cfg: &dledger_server::ServerConfig) -> Vec<String> {
    let mut out = Vec::new();
    if !cfg.retention.is_on() {
        out.push(
            "retention is off: every group's log grows until the disk is full; set [retention] max_log_mib or \
             max_age_secs"
                .to_string(),
        );
    }
    if cfg.peer_secret_file.is_none() {
        out.push("peer_secret_file is not set: peers are not authenticated".to_string());
    }
    out
}

async fn member(action: MemberAction) -> Result<(), String> {
    use dledger_client::MembershipChange as Change;
    match action {
        MemberAction::List { target } => {
            let v = client(&target).members().await.map_err(|e| e.to_string())?;
            crate::member::print_members(&v);
            Ok(())
        }
        MemberAction::AddLearner { target, id, address } => {
            crate::member::change(&mut client(&target), &target.cluster, Change::AddLearner { id, address }, false)
                .await
        }
        MemberAction::Promote { target, id } => {
            crate::member::change(&mut client(&target), &target.cluster, Change::Promote { id }, false).await
        }
        MemberAction::Demote { target, id } => {
            crate::member::change(&mut client(&target), &target.cluster, Change::Demote { id }, false).await
        }
        MemberAction::Remove { target, id, force } => {
            let v = crate::member::remove(&mut client(&target), id, force).await?;
            crate::member::print_members(&v);
            Ok(())
        }
        MemberAction::Replace { target, old, new_address, max_lag, wait_secs } => {
            let mut c = client(&target);
            let wait = Duration::from_secs(wait_secs);
            crate::member::replace(&mut c, &target.cluster, old, &new_address, max_lag, wait).await
        }
    }
}

/// One row of `dledger cluster`.
#[derive(serde::Serialize)]
struct Row {
    group: Option<u64>,
    node: Option<u64>,
    address: String,
    role: String,
    /// `voter`, `learner` or `-` (not a member, as the node itself sees it).
    member: String,
    config_version: Option<u64>,
    term: Option<u64>,
    last_index: Option<u64>,
    commit_index: Option<u64>,
    lag: Option<u64>,
    first_index: Option<u64>,
    disk_bytes: Option<u64>,
}

async fn cluster_rows(endpoints: &[String], cluster: &str) -> Vec<Row> {
    let mut per_node: Vec<(String, Option<Vec<GroupStatus>>)> = Vec::new();
    for ep in endpoints {
        let mut c = Client::new(vec![ep.clone()], cluster, 0, Duration::from_millis(1500));
        per_node.push((ep.clone(), c.node_status(ep).await.ok()));
    }
    let mut rows = Vec::new();
    for (ep, status) in &per_node {
        let Some(groups) = status else {
            rows.push(Row {
                group: None,
                node: None,
                address: ep.clone(),
                role: "unreachable".into(),
                member: "-".into(),
                config_version: None,
                term: None,
                last_index: None,
                commit_index: None,
                lag: None,
                first_index: None,
                disk_bytes: None,
            });
            continue;
        };
        for g in groups {
            // The leader of this group: the reachable node claiming it in the highest term.
            let leader_last = per_node
                .iter()
                .filter_map(|(_, s)| s.as_ref())
                .flatten()
                .filter(|o| o.group == g.group && o.role == "leader")
                .max_by_key(|o| o.term)
                .map(|o| o.last_index);
            rows.push(Row {
                group: Some(g.group),
                node: Some(g.node),
                address: ep.clone(),
                role: g.role.clone(),
                member: if g.voters.contains(&g.node) {
                    "voter".into()
                } else if g.learners.contains(&g.node) {
                    "learner".into()
                } else {
                    "-".into()
                },
                config_version: Some(g.config_version),
                term: Some(g.term),
                last_index: Some(g.last_index),
                commit_index: Some(g.commit_index),
                lag: leader_last.map(|l| l.saturating_sub(g.last_index)),
                first_index: Some(g.first_index),
                disk_bytes: Some(g.disk_bytes),
            });
        }
    }
    rows.sort_by_key(|r| (r.group.unwrap_or(u64::MAX), r.node.unwrap_or(u64::MAX), r.address.clone()));
    rows
}

fn print_rows(rows: &[Row], json: bool) {
    if json {
        println!("{}", serde_json::to_string_pretty(rows).expect("rows serialize"));
        return;
    }
    let opt = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
    let mib = |v: Option<u64>| v.map_or("-".to_string(), |v| format!("{:.1}", v as f64 / (1 << 20) as f64));
    println!(
        "{:<6} {:<5} {:<22} {:<12} {:<8} {:>5} {:>6} {:>11} {:>11} {:>13} {:>6} {:>9}",
        "GROUP",
        "NODE",
        "ADDRESS",
        "ROLE",
        "MEMBER",
        "CONF",
        "TERM",
        "FIRST_INDEX",
        "LAST_INDEX",
        "COMMIT_INDEX",
        "LAG",
        "DISK_MIB"
    );
    for r in rows {
        println!(
            "{:<6} {:<5} {:<22} {:<12} {:<8} {:>5} {:>6} {:>11} {:>11} {:>13} {:>6} {:>9}",
            opt(r.group),
            opt(r.node),
            r.address,
            r.role,
            r.member,
            opt(r.config_version),
            opt(r.term),
            opt(r.first_index),
            opt(r.last_index),
            opt(r.commit_index),
            opt(r.lag),
            mib(r.disk_bytes)
        );
    }
}

fn free_ports(n: usize) -> Result<Vec<u16>, String> {
    crate::ports::free_ports(n).map_err(|e| e.to_string())
}

fn endpoints_of(dir: &Path) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(dir.join("endpoints"))
        .map_err(|e| format!("{}: {e} (is a quick start running there?)", dir.join("endpoints").display()))?;
    Ok(text.trim().split(',').map(str::to_string).collect())
}

/// True when `pid` is a live process (not gone, not a zombie waiting to be reaped).
fn pid_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name: "pid (comm) S ...".
        Ok(stat) => stat.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => false,
    }
}

async fn quick_start(
    dir: &Path,
    base_port: u16,
    machine: Option<BuiltinMachine>,
    config_extra: &str,
    nodes: usize,
) -> Result<(), String> {
    // A quick start made before: as many nodes as it has endpoints.
    let count = endpoints_of(dir).map_or(nodes, |e| e.len());
    let running = running_quick_nodes(dir, count);
    if running.len() == count {
        return Err(format!(
            "the quick start in {} already runs all {count} nodes (dledger quickstart stop --dir {0})",
            dir.display()
        ));
    }
    if !running.is_empty() {
        // Partly running: start only the missing nodes, as they were configured.
        let dir = dir.canonicalize().map_err(|e| e.to_string())?;
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let endpoints = endpoints_of(&dir)?;
        for n in (1..=count).filter(|n| !running.contains(n)) {
            let mut child = spawn_quick_node(&dir, n, &exe, machine, false, false)?;
            // Listening, or say why not (a port still held by the process it replaces, say).
            let deadline = Instant::now() + Duration::from_secs(20);
            let ep = endpoints[n - 1].clone();
            loop {
                // Answering, and still running: the socket of a dying predecessor may accept a moment.
                let answered = Client::new(vec![ep.clone()], "dledger", 0, Duration::from_millis(500))
                    .node_status(&ep)
                    .await
                    .is_ok();
                if answered && child.try_wait().is_ok_and(|s| s.is_none()) {
                    break;
                }
                if let Ok(Some(status)) = child.try_wait() {
                    let log = std::fs::read_to_string(dir.join(format!("n{n}.log"))).unwrap_or_default();
                    let last = log.lines().last().unwrap_or("").to_string();
                    // The process it replaces may still hold its port for a moment after
                    // dying (the kernel releases a dead process's files asynchronously).
                    if last.contains("Address already in use") && Instant::now() < deadline {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        child = spawn_quick_node(&dir, n, &exe, machine, false, false)?;
                        continue;
                    }
                    return Err(format!("node {n} exited ({status}) at start: {last}"));
                }
                if Instant::now() > deadline {
                    return Err(format!("node {n} did not listen within 20 s; see {}", dir.display()));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            println!("started node {n} (nodes {running:?} were running)");
        }
        wait_for_leader(&endpoints, &dir).await?;
        print_rows(&cluster_rows(&endpoints, "dledger").await, false);
        return Ok(());
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let dir = dir.canonicalize().map_err(|e| e.to_string())?;
    // Nodes on ports P, P+1, ...; their metrics endpoints on P+100, P+101, ...
    let (ports, metrics_ports): (Vec<u16>, Vec<u16>) = if base_port == 0 {
        let p = free_ports(2 * nodes)?;
        (p[..nodes].to_vec(), p[nodes..].to_vec())
    } else {
        let metrics_base =
            base_port.checked_add(100 + nodes as u16).ok_or_else(|| format!("--base-port {base_port} is too high"))?
                - nodes as u16;
        ((0..nodes as u16).map(|i| base_port + i).collect(), (0..nodes as u16).map(|i| metrics_base + i).collect())
    };
    let endpoints: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let metrics: Vec<String> = metrics_ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let peers: String =
        endpoints.iter().enumerate().map(|(i, e)| format!("[[peers]]\nid = {}\naddress = \"{e}\"\n", i + 1)).collect();
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let secret = write_peer_secret(&dir)?;
    for n in 1..=nodes {
        let cfg_path = dir.join(format!("n{n}.toml"));
        let cfg = format!(
            // The nodes share this host: let the kernel place their loops.
            "node_id = {n}\nlisten = \"{}\"\nmetrics_listen = \"{}\"\ndata_dir = \"{}\"\ncores = 1\ncpus = []\npeer_secret_file = \"{}\"\n{config_extra}\n\n{peers}",
            endpoints[n - 1],
            metrics[n - 1],
            dir.join(format!("n{n}")).display(),
            secret.display()
        );
        std::fs::write(&cfg_path, cfg).map_err(|e| e.to_string())?;
        // The bootstrap, once: a restarted node (even with this very command line) never re-creates its data.
        let parsed = ServerConfig::from_file(&cfg_path).map_err(|e| e.to_string())?;
        if !parsed.data_dir.join(dledger_server::IDENTITY_FILE).exists() {
            dledger_server::init(&parsed).map_err(|e| e.to_string())?;
        }
        spawn_quick_node(&dir, n, &exe, machine, true, false)?;
    }
    std::fs::write(dir.join("endpoints"), endpoints.join(",")).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("metrics"), metrics.join(",")).map_err(|e| e.to_string())?;
    wait_for_leader(&endpoints, &dir).await?;
    let eps = endpoints.join(",");
    println!("dledger quick start: {nodes} nodes on {eps}, data and logs in {}", dir.display());
    print_rows(&cluster_rows(&endpoints, "dledger").await, false);
    println!();
    println!("try:");
    println!("  dledger append --endpoints {eps} hello world");
    println!("  dledger get --endpoints {eps} 1 --to 3");
    println!("  dledger cluster --endpoints {eps}");
    println!("  curl -s http://{}/metrics", metrics[0]);
    println!("  dledger quickstart stop --dir {}", dir.display());
    Ok(())
}

/// The quick-start nodes (of `1..=count`) running in `dir` now.
fn running_quick_nodes(dir: &Path, count: usize) -> Vec<usize> {
    (1..=count)
        .filter(|n| {
            let pid = std::fs::read_to_string(dir.join(format!("n{n}.pid"))).ok();
            pid.and_then(|p| p.trim().parse().ok()).is_some_and(|p: i32| pid_alive(p) && is_our_node(p, dir))
        })
        .collect()
}

/// `quickstart add-node`: one more node, joined, then added to every group.
async fn quick_add_node(dir: &Path, machine: Option<BuiltinMachine>) -> Result<(), String> {
    let dir = dir.canonicalize().map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut endpoints = endpoints_of(&dir)?;
    let mut metrics: Vec<String> = std::fs::read_to_string(dir.join("metrics"))
        .map(|t| t.trim().split(',').map(str::to_string).collect())
        .unwrap_or_default();
    if running_quick_nodes(&dir, endpoints.len()).is_empty() {
        return Err(format!("no node of the quick start in {} runs (dledger quickstart start)", dir.display()));
    }
    let n = endpoints.len() + 1;
    let ports = free_ports(2)?;
    let (ep, metrics_ep) = (format!("127.0.0.1:{}", ports[0]), format!("127.0.0.1:{}", ports[1]));
    // Its config: node 1's, with its own id, ports and directory, and every node as a peer.
    let template = std::fs::read_to_string(dir.join("n1.toml")).map_err(|e| e.to_string())?;
    let head: String = template
        .split("[[peers]]")
        .next()
        .unwrap_or("")
        .lines()
        .map(|l| match l.split('=').next().map(str::trim) {
            Some("node_id") => format!("node_id = {n}\n"),
            Some("listen") => format!("listen = \"{ep}\"\n"),
            Some("metrics_listen") => format!("metrics_listen = \"{metrics_ep}\"\n"),
            Some("data_dir") => format!("data_dir = \"{}\"\n", dir.join(format!("n{n}")).display()),
            _ => format!("{l}\n"),
        })
        .collect();
    endpoints.push(ep.clone());
    metrics.push(metrics_ep);
    let peers: String =
        endpoints.iter().enumerate().map(|(i, e)| format!("[[peers]]\nid = {}\naddress = \"{e}\"\n", i + 1)).collect();
    std::fs::write(dir.join(format!("n{n}.toml")), format!("{}\n{peers}", head.trim_end()))
        .map_err(|e| e.to_string())?;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    spawn_quick_node(&dir, n, &exe, machine, true, true)?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while Client::new(vec![ep.clone()], "dledger", 0, Duration::from_millis(500)).node_status(&ep).await.is_err() {
        if Instant::now() > deadline {
            return Err(format!(
                "node {n} did not answer within 20 s; see {}",
                dir.join(format!("n{n}.log")).display()
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    std::fs::write(dir.join("endpoints"), endpoints.join(",")).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("metrics"), metrics.join(",")).map_err(|e| e.to_string())?;
    println!("started node {n} on {ep} (joined: it serves nothing until added)");
    let groups = ServerConfig::from_file(&dir.join("n1.toml")).map_err(|e| e.to_string())?.groups;
    for g in 0..groups {
        let mut c = Client::new(endpoints[..n - 1].to_vec(), "dledger", g, Duration::from_secs(10));
        crate::member::add_and_promote(&mut c, n as u64, &ep, 1000, Duration::from_secs(300), "/3").await?;
    }
    println!("node {n} is a voter of every group");
    print_rows(&cluster_rows(&endpoints, "dledger").await, false);
    Ok(())
}

/// Starts quick-start node `n` from its config in `dir` (a fresh log file
/// when `fresh_log`, else appended to; `--join` when `join`), and records its pid.
fn spawn_quick_node(
    dir: &Path,
    n: usize,
    exe: &Path,
    machine: Option<BuiltinMachine>,
    fresh_log: bool,
    join: bool,
) -> Result<std::process::Child, String> {
    use std::os::unix::process::CommandExt;
    let cfg_path = dir.join(format!("n{n}.toml"));
    if !cfg_path.exists() {
        return Err(format!("{} is missing: not a quick start directory", cfg_path.display()));
    }
    let log_path = dir.join(format!("n{n}.log"));
    let log = if fresh_log {
        std::fs::File::create(&log_path)
    } else {
        std::fs::OpenOptions::new().create(true).append(true).open(&log_path)
    }
    .map_err(|e| e.to_string())?;
    let err = log.try_clone().map_err(|e| e.to_string())?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("server").arg("--config").arg(&cfg_path);
    if join {
        cmd.arg("--join");
    }
    match machine {
        Some(BuiltinMachine::Checksum) => drop(cmd.args(["--state-machine", "checksum"])),
        Some(BuiltinMachine::Kv) => drop(cmd.args(["--state-machine", "kv"])),
        None => {}
    }
    let child = cmd
        .stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(err)
        .process_group(0)
        .spawn()
        .map_err(|e| format!("starting node {n}: {e}"))?;
    std::fs::write(dir.join(format!("n{n}.pid")), child.id().to_string()).map_err(|e| e.to_string())?;
    Ok(child)
}

/// Waits (up to 20 s) until some node of `endpoints` leads a group.
async fn wait_for_leader(endpoints: &[String], dir: &Path) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let rows = cluster_rows(endpoints, "dledger").await;
        if rows.iter().any(|r| r.role == "leader") {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("no leader within 20 s; see the logs in {}", dir.display()));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The quick start's cluster secret (made once, readable by this user only):
/// its nodes authenticate each other with it.
fn write_peer_secret(dir: &Path) -> Result<PathBuf, String> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join("peer.secret");
    if path.exists() {
        return Ok(path);
    }
    let bytes: [u8; 32] = rand::random();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    std::io::Write::write_all(&mut f, format!("{hex}\n").as_bytes()).map_err(|e| e.to_string())?;
    f.sync_all().map_err(|e| e.to_string())?;
    Ok(path)
}

async fn quick_status(dir: &Path) -> Result<(), String> {
    let endpoints = endpoints_of(dir)?;
    for n in 1..=endpoints.len() {
        let pid =
            std::fs::read_to_string(dir.join(format!("n{n}.pid"))).ok().and_then(|p| p.trim().parse::<i32>().ok());
        match pid {
            Some(p) if pid_alive(p) => println!("node {n}: running (pid {p})"),
            Some(p) => println!("node {n}: not running (pid {p} gone)"),
            None => println!("node {n}: not started"),
        }
    }
    print_rows(&cluster_rows(&endpoints, "dledger").await, false);
    Ok(())
}

/// True when `pid` runs `dledger server` with a config in `dir` (never signal a stranger).
fn is_our_node(pid: i32, dir: &Path) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).contains(&*dir.to_string_lossy()))
        .unwrap_or(false)
}

fn quick_stop(dir: &Path) -> Result<(), String> {
    let dir = dir.canonicalize().map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut stopped = 0;
    let count = endpoints_of(&dir).map_or(3, |e| e.len());
    for n in 1..=count {
        let pid_path = dir.join(format!("n{n}.pid"));
        let Some(pid) = std::fs::read_to_string(&pid_path).ok().and_then(|p| p.trim().parse::<i32>().ok()) else {
            continue;
        };
        if pid_alive(pid) && is_our_node(pid, &dir) {
            // SAFETY: sending SIGTERM to a process we started (checked by its command line).
            unsafe { libc::kill(pid, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            // Wait for the process itself, not its command line: an exiting process
            // loses its command line (its memory is gone) before it is a zombie.
            while pid_alive(pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if pid_alive(pid) && is_our_node(pid, &dir) {
                // SAFETY: as above; it ignored SIGTERM for 10 s.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            println!("stopped node {n} (pid {pid})");
            stopped += 1;
        }
        let _ = std::fs::remove_file(&pid_path);
    }
    if stopped == 0 {
        println!("nothing running in {}", dir.display());
    }
    Ok(())
}
