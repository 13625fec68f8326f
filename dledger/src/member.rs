//! `dledger member`: list a group's members and change them, one step at a
//! time or as a whole replacement.
//!
//! `replace` is what a tired operator runs after a disk died: start the new
//! node (`dledger server --join`, a new node id), then
//! `dledger member replace --endpoints … --old 3 --new-address A`. It finds
//! the new node's id by asking it, adds it as a learner, waits while it
//! catches up (printing its lag), promotes it, hands leadership over if the
//! old node leads, and removes the old node. Each step first reads the
//! configuration in force, so running it again after an interruption goes
//! on from where it stopped.

use std::time::{Duration, Instant};

use dledger_client::{Client, ClientError, MembersView, MembershipChange};
use dledger_proto::ServerError;

/// How often `replace` looks at the learner's lag.
const POLL: Duration = Duration::from_millis(200);

/// Prints one row per member: id, address, role, lag behind the leader.
pub(crate) fn print_members(v: &MembersView) {
    println!(
        "configuration version {}{} (leader: {})",
        v.version,
        if v.committed { "" } else { ", not yet committed" },
        v.leader.map_or("-".to_string(), |l| l.to_string())
    );
    println!("{:<6} {:<22} {:<8} {:>10}", "ID", "ADDRESS", "ROLE", "LAG");
    for m in &v.members {
        let lag = m.match_index.map_or("-".to_string(), |i| v.last_index.saturating_sub(i).to_string());
        println!("{:<6} {:<22} {:<8} {:>10}", m.id, m.address, m.role, lag);
    }
}

fn err(e: ClientError) -> String {
    e.to_string()
}

fn role_of(v: &MembersView, id: u64) -> Option<&str> {
    v.members.iter().find(|m| m.id == id).map(|m| m.role.as_str())
}

/// One change; prints the configuration it led to. A new learner must
/// answer at its address with the id given (a typo, a node not started, a
/// node of another cluster: refused before anything changes).
pub(crate) async fn change(c: &mut Client, cluster: &str, change: MembershipChange, force: bool) -> Result<(), String> {
    if let MembershipChange::AddLearner { id, address } = &change {
        let found = node_id_at(cluster, address, Duration::from_secs(3)).await?;
        if found != *id {
            return Err(format!("the node at {address} is node {found}, not node {id} (nothing changed)"));
        }
    }
    let v = c.change_membership(change, None, force).await.map_err(err)?;
    print_members(&v);
    Ok(())
}

/// Removes `id`, handing leadership to another voter first if `id` leads.
pub(crate) async fn remove(c: &mut Client, id: u64, force: bool) -> Result<MembersView, String> {
    let v = c.members().await.map_err(err)?;
    if role_of(&v, id).is_none() {
        return Err(format!("node {id} is not a member of group {} (nothing changed)", c.group()));
    }
    if v.leader == Some(id) {
        let target = v
            .members
            .iter()
            .filter(|m| m.id != id && m.role == "voter")
            .max_by_key(|m| m.match_index.unwrap_or(0))
            .map(|m| m.id)
            .ok_or_else(|| format!("node {id} is the only voter: it cannot be removed"))?;
        println!("node {id} leads group {}: handing leadership to node {target} first", c.group());
        c.transfer_leader(target).await.map_err(err)?;
    }
    c.change_membership(MembershipChange::Remove { id }, Some(v.version), force).await.map_err(err)
}

/// Asks the node at `address` for its id (it must be running, started with `--join`).
async fn node_id_at(cluster: &str, address: &str, timeout: Duration) -> Result<u64, String> {
    let mut probe = Client::new(vec![address.to_string()], cluster, 0, timeout);
    let status = probe.node_status(address).await.map_err(|e| {
        format!("the new node at {address} does not answer ({e}): start it first with `dledger server --join`")
    })?;
    status.first().map(|g| g.node).ok_or_else(|| format!("the node at {address} reports no group"))
}

/// Adds node `new` at `address` as a learner (unless it is a member
/// already), waits until it is within `max_lag` entries, and promotes it;
/// prints progress as steps `[1..3{of}]`.
pub(crate) async fn add_and_promote(
    c: &mut Client,
    new: u64,
    new_address: &str,
    max_lag: u64,
    wait: Duration,
    of: &str,
) -> Result<(), String> {
    let group = c.group();
    let v = c.members().await.map_err(err)?;
    // 1. The new node, as a learner.
    if role_of(&v, new).is_none() {
        println!("group {group}: [1{of}] adding node {new} ({new_address}) as a learner");
        let add = MembershipChange::AddLearner { id: new, address: new_address.to_string() };
        c.change_membership(add, Some(v.version), false).await.map_err(err)?;
    } else {
        println!("group {group}: [1{of}] node {new} is already a member ({})", role_of(&v, new).unwrap_or("?"));
    }
    // 2. Caught up, within `max_lag` entries.
    let deadline = Instant::now() + wait;
    let mut last_print = Instant::now() - Duration::from_secs(10);
    loop {
        let v = c.members().await.map_err(err)?;
        let m = v.members.iter().find(|m| m.id == new).ok_or_else(|| format!("node {new} left the group"))?;
        if m.role == "voter" {
            return Ok(());
        }
        let lag = m.match_index.map(|i| v.last_index.saturating_sub(i));
        if last_print.elapsed() >= Duration::from_secs(1) {
            last_print = Instant::now();
            match lag {
                Some(l) => {
                    println!("group {group}: [2{of}] node {new} is {l} entries behind (promoting at <= {max_lag})")
                }
                None => println!("group {group}: [2{of}] waiting for node {new} to answer the leader"),
            }
        }
        if lag.is_some_and(|l| l <= max_lag) {
            // 3. Promote (the leader checks the lag again, by its own bounds).
            println!("group {group}: [3{of}] promoting node {new} to voter");
            match c.change_membership(MembershipChange::Promote { id: new }, Some(v.version), false).await {
                Ok(_) => return Ok(()),
                Err(ClientError::Server(ServerError::MembershipRefused(reason))) if Instant::now() < deadline => {
                    println!("group {group}: not yet: {reason}");
                }
                Err(e) => return Err(err(e)),
            }
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "node {new} did not catch up within {wait:?}; run the same command again to go on (nothing is undone)"
            ));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Replaces member `old` by the node at `new_address`; see the module docs.
pub(crate) async fn replace(
    c: &mut Client,
    cluster: &str,
    old: u64,
    new_address: &str,
    max_lag: u64,
    wait: Duration,
) -> Result<(), String> {
    let group = c.group();
    let new = node_id_at(cluster, new_address, Duration::from_secs(5)).await?;
    if new == old {
        return Err(format!(
            "the node at {new_address} is node {old} itself: a replacement needs a new node id (ids are never reused)"
        ));
    }
    let v = c.members().await.map_err(err)?;
    if role_of(&v, old).is_none() && role_of(&v, new) == Some("voter") {
        println!("group {group}: node {old} is already replaced by node {new}");
        print_members(&v);
        return Ok(());
    }
    add_and_promote(c, new, new_address, max_lag, wait, "/4").await?;
    // 4. The old node goes (leadership first, if it leads).
    let v = c.members().await.map_err(err)?;
    if role_of(&v, old).is_some() {
        println!("group {group}: [4/4] removing node {old}");
        let v = remove(c, old, false).await?;
        print_members(&v);
    }
    println!("group {group}: node {old} replaced by node {new}");
    Ok(())
}
