//! The `dledger` command line as a user runs it: the quick start, and the
//! one-line errors for bad input that leave the disk as it was.

mod harness;

use std::path::Path;
use std::process::{Command, Output};

use harness::{dledger_bin, free_ports};

fn run(args: &[&str]) -> Output {
    Command::new(dledger_bin()).args(args).output().expect("run dledger")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn listing(dir: &Path) -> Vec<String> {
    let mut v = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            v.push(e.file_name().to_string_lossy().into_owned());
            if e.path().is_dir() {
                v.extend(listing(&e.path()).into_iter().map(|n| format!("{}/{n}", e.file_name().to_string_lossy())));
            }
        }
    }
    v.sort();
    v
}

#[test]
fn quickstart_start_status_append_get_cluster_stop() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("qs");
    let d = d.to_str().unwrap();
    let start = run(&["quickstart", "start", "--dir", d, "--base-port", "0"]);
    assert!(start.status.success(), "start: {}", text(&start));
    assert!(text(&start).contains("leader"), "{}", text(&start));
    let endpoints = std::fs::read_to_string(Path::new(d).join("endpoints")).unwrap();
    let status = run(&["quickstart", "status", "--dir", d]);
    assert_eq!(text(&status).matches(": running").count(), 3, "{}", text(&status));
    let append = run(&["append", "--endpoints", &endpoints, "hello", "world"]);
    assert!(append.status.success(), "{}", text(&append));
    assert_eq!(text(&append).matches("appended index=").count(), 2, "{}", text(&append));
    let get = run(&["get", "--endpoints", &endpoints, "1", "--to", "3"]);
    assert!(get.status.success() && text(&get).contains("hello") && text(&get).contains("world"), "{}", text(&get));
    let cluster = run(&["cluster", "--endpoints", &endpoints, "--json"]);
    let rows: serde_json::Value = serde_json::from_slice(&cluster.stdout).expect("cluster --json is JSON");
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 3);
    for field in ["group", "node", "address", "role", "term", "last_index", "commit_index", "lag"] {
        assert!(rows.iter().all(|r| r.get(field).is_some()), "rows lack {field}");
    }
    assert_eq!(rows.iter().filter(|r| r["role"] == "leader").count(), 1);
    // Every node's metrics endpoint answers (listed in the `metrics` file).
    let metrics = std::fs::read_to_string(Path::new(d).join("metrics")).unwrap();
    for address in metrics.trim().split(',') {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(address).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).unwrap();
        assert!(body.contains("dledger_commit_index{group=\"0\"}"), "{address}: {body}");
    }
    let pids: Vec<i32> = (1..=3)
        .map(|n| std::fs::read_to_string(Path::new(d).join(format!("n{n}.pid"))).unwrap().trim().parse().unwrap())
        .collect();
    let stop = run(&["quickstart", "stop", "--dir", d]);
    assert_eq!(text(&stop).matches("stopped node").count(), 3, "{}", text(&stop));
    for pid in pids {
        // Gone, or a zombie its (exited) parent left for init to reap.
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let running = state.rsplit_once(')').is_some_and(|(_, r)| !r.trim_start().starts_with(['Z', 'X']));
        assert!(!running, "process {pid} still running after stop: {state}");
    }
}

#[test]
fn quickstart_start_on_a_partly_running_cluster_starts_only_the_missing_node() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("qs");
    let d = d.to_str().unwrap();
    let start = run(&["quickstart", "start", "--dir", d, "--base-port", "0"]);
    assert!(start.status.success(), "start: {}", text(&start));
    let endpoints = std::fs::read_to_string(Path::new(d).join("endpoints")).unwrap();
    let pid = |n: u64| -> i32 {
        std::fs::read_to_string(Path::new(d).join(format!("n{n}.pid"))).unwrap().trim().parse().unwrap()
    };
    let (first, third) = (pid(1), pid(3));
    let killed = pid(2);
    // SAFETY: signalling a child process this test started (through the quick start).
    unsafe { libc::kill(killed, libc::SIGKILL) };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{killed}/stat")).unwrap_or_default();
        if stat.rsplit_once(')').is_none_or(|(_, r)| r.trim_start().starts_with(['Z', 'X'])) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "node 2 did not die");
        std::thread::yield_now();
    }
    let again = run(&["quickstart", "start", "--dir", d, "--base-port", "0"]);
    assert!(again.status.success(), "{}", text(&again));
    assert!(text(&again).contains("started node 2"), "{}", text(&again));
    assert_eq!((pid(1), pid(3)), (first, third), "the running nodes were left alone");
    assert_eq!(std::fs::read_to_string(Path::new(d).join("endpoints")).unwrap(), endpoints, "same ports");
    let status = run(&["quickstart", "status", "--dir", d]);
    let log2 = std::fs::read_to_string(Path::new(d).join("n2.log")).unwrap_or_default();
    assert_eq!(text(&status).matches(": running").count(), 3, "{}\n{log2}", text(&status));
    let append = run(&["append", "--endpoints", &endpoints, "after"]);
    assert!(append.status.success(), "{}", text(&append));
    // All three running: refused, naming how to stop.
    let third_time = run(&["quickstart", "start", "--dir", d, "--base-port", "0"]);
    assert!(!third_time.status.success());
    assert!(text(&third_time).contains("already runs all 3 nodes"), "{}", text(&third_time));
    let stop = run(&["quickstart", "stop", "--dir", d]);
    assert_eq!(text(&stop).matches("stopped node").count(), 3, "{}", text(&stop));
}

fn write_config(dir: &Path, node: u64, listen: &str, data: &Path, peers: &[(u64, String)]) -> std::path::PathBuf {
    let peers: String = peers.iter().map(|(id, a)| format!("[[peers]]\nid = {id}\naddress = \"{a}\"\n")).collect();
    let p = dir.join(format!("bad-{node}.toml"));
    std::fs::write(&p, format!("node_id = {node}\nlisten = \"{listen}\"\ndata_dir = \"{}\"\n{peers}", data.display()))
        .unwrap();
    p
}

#[test]
fn bad_input_gets_one_line_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let ports = free_ports(3);
    let eps: Vec<(u64, String)> =
        ports.iter().enumerate().map(|(i, p)| (i as u64 + 1, format!("127.0.0.1:{p}"))).collect();

    // An incomplete config.
    let p = dir.path().join("incomplete.toml");
    std::fs::write(&p, "listen = \"127.0.0.1:1\"\n").unwrap();
    let o = run(&["server", "--config", p.to_str().unwrap()]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("missing field"), "{err}");

    // A port in use: refused before anything is written.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_addr = busy.local_addr().unwrap().to_string();
    let data = dir.path().join("fresh");
    let mut peers = eps.clone();
    peers[0].1 = busy_addr.clone();
    let cfg = write_config(dir.path(), 1, &busy_addr, &data, &peers);
    let o = run(&["server", "--config", cfg.to_str().unwrap()]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("cannot listen") && err.contains("another process has this port"), "{err}");
    assert!(!data.exists(), "nothing created for a node that cannot listen");
    drop(busy);

    // A data directory of another node.
    let owned = dir.path().join("owned");
    std::fs::create_dir_all(&owned).unwrap();
    std::fs::write(owned.join("IDENTITY"), "cluster=dledger\nnode=2\n").unwrap();
    std::fs::write(owned.join("keep"), "x").unwrap();
    let before = listing(&owned);
    let cfg = write_config(dir.path(), 1, &eps[0].1, &owned, &eps);
    let o = run(&["server", "--config", cfg.to_str().unwrap()]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("belongs to") && err.contains("node=2"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert_eq!(listing(&owned), before, "nothing on disk changed");

    // A directory that is not a dledger data directory at all.
    let stranger = dir.path().join("stranger");
    std::fs::create_dir_all(&stranger).unwrap();
    std::fs::write(stranger.join("photo.jpg"), "x").unwrap();
    let cfg = write_config(dir.path(), 1, &eps[0].1, &stranger, &eps);
    let o = run(&["server", "--config", cfg.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("not a dledger data directory"));
    assert_eq!(listing(&stranger), vec!["photo.jpg".to_string()]);
}

#[test]
fn quickstart_with_five_nodes_then_add_node_grows_to_six_voters() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("qs");
    let d = d.to_str().unwrap();
    let start = run(&["quickstart", "start", "--dir", d, "--base-port", "0", "--nodes", "5"]);
    assert!(start.status.success(), "start: {}", text(&start));
    assert!(text(&start).contains("5 nodes on"), "{}", text(&start));
    let add = run(&["quickstart", "add-node", "--dir", d]);
    assert!(add.status.success(), "add-node: {}", text(&add));
    assert!(text(&add).contains("node 6 is a voter of every group"), "{}", text(&add));
    let endpoints = std::fs::read_to_string(Path::new(d).join("endpoints")).unwrap();
    assert_eq!(endpoints.split(',').count(), 6);
    let list = run(&["member", "list", "--endpoints", &endpoints]);
    assert_eq!(text(&list).matches(" voter ").count(), 6, "{}", text(&list));
    let append = run(&["append", "--endpoints", &endpoints, "with six"]);
    assert!(append.status.success(), "{}", text(&append));
    let status = run(&["quickstart", "status", "--dir", d]);
    assert_eq!(text(&status).matches(": running").count(), 6, "{}", text(&status));
    let stop = run(&["quickstart", "stop", "--dir", d]);
    assert_eq!(text(&stop).matches("stopped node").count(), 6, "{}", text(&stop));
    let too_many = run(&["quickstart", "start", "--dir", d, "--nodes", "9"]);
    assert!(!too_many.status.success() && text(&too_many).contains("1 to 7 nodes"), "{}", text(&too_many));
}
