//! The key-value state machine: commands in the log, the map in memory,
//! snapshots as JSON.
//!
//! Every write is a [`Command`] appended to the group's log as JSON; applying
//! it yields an [`Output`]. Reads are [`Query`]s answered from the map after
//! a linearizable read index. An entry that is not a valid command (another
//! client may append anything to the log) is applied as a no-op with an
//! error output: one bad entry must never stop every replica.

use std::collections::BTreeMap;
use std::io::{Read, Write};

use bytes::Bytes;
use dledger_server::{CommittedEntry, StateMachine, StateMachineError};
use serde::{Deserialize, Serialize};

/// A write, as stored in the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Command {
    /// Set `key` to `value`.
    Put {
        /// The key.
        key: String,
        /// The new value.
        value: String,
    },
    /// Remove `key`.
    Delete {
        /// The key.
        key: String,
    },
    /// Set `key` to `new` (`None`: remove it) if its value is `expected` (`None`: absent).
    Cas {
        /// The key.
        key: String,
        /// The value it must have.
        expected: Option<String>,
        /// The value it gets.
        new: Option<String>,
    },
}

/// What applying a [`Command`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Output {
    /// Put: always; delete: the key existed; compare-and-set: it swapped.
    pub ok: bool,
    /// The key's value before the command.
    pub previous: Option<String>,
    /// Why the entry was not a command, if it was not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Query {
    /// The value of `key`.
    Get {
        /// The key.
        key: String,
    },
}

/// A query's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Value {
    /// The key's value, if it has one.
    pub value: Option<String>,
}

/// The replicated map.
#[derive(Debug, Default)]
pub struct KvStore {
    map: BTreeMap<String, String>,
}

impl KvStore {
    /// Applies one command.
    pub fn execute(&mut self, c: Command) -> Output {
        match c {
            Command::Put { key, value } => Output { ok: true, previous: self.map.insert(key, value), error: None },
            Command::Delete { key } => {
                let previous = self.map.remove(&key);
                Output { ok: previous.is_some(), previous, error: None }
            }
            Command::Cas { key, expected, new } => {
                let previous = self.map.get(&key).cloned();
                let ok = previous == expected;
                if ok {
                    match new {
                        Some(v) => self.map.insert(key, v),
                        None => self.map.remove(&key),
                    };
                }
                Output { ok, previous, error: None }
            }
        }
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&String> {
        self.map.get(key)
    }
}

fn json(v: &impl Serialize) -> Bytes {
    Bytes::from(serde_json::to_vec(v).expect("plain data serializes"))
}

impl StateMachine for KvStore {
    fn apply(&mut self, entries: &[CommittedEntry], outputs: &mut Vec<Bytes>) -> Result<(), StateMachineError> {
        for e in entries {
            let out = match serde_json::from_slice::<Command>(&e.payload) {
                Ok(c) => self.execute(c),
                Err(err) => Output { ok: false, previous: None, error: Some(format!("not a command: {err}")) },
            };
            outputs.push(json(&out));
        }
        Ok(())
    }

    fn query(&mut self, query: &[u8]) -> Result<Bytes, StateMachineError> {
        let q: Query = serde_json::from_slice(query).map_err(|e| StateMachineError::Invalid(e.to_string()))?;
        match q {
            Query::Get { key } => Ok(json(&Value { value: self.map.get(&key).cloned() })),
        }
    }

    fn snapshot(&mut self, out: &mut dyn Write) -> Result<(), StateMachineError> {
        serde_json::to_writer(out, &self.map).map_err(|e| StateMachineError::Io(e.into()))
    }

    fn restore(&mut self, snapshot: &mut dyn Read) -> Result<(), StateMachineError> {
        self.map = serde_json::from_reader(snapshot).map_err(|e| StateMachineError::Invalid(e.to_string()))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, c: &Command) -> CommittedEntry {
        CommittedEntry { index, term: 1, payload: json(c) }
    }

    #[test]
    fn commands_apply_and_a_snapshot_restores_the_map() {
        let mut kv = KvStore::default();
        let put = |k: &str, v: &str| Command::Put { key: k.into(), value: v.into() };
        let cas = |k: &str, e: Option<&str>, n: Option<&str>| Command::Cas {
            key: k.into(),
            expected: e.map(Into::into),
            new: n.map(Into::into),
        };
        let entries = [
            entry(1, &put("a", "1")),
            entry(2, &cas("a", Some("2"), Some("3"))),
            entry(3, &cas("a", Some("1"), Some("3"))),
            entry(4, &Command::Delete { key: "b".into() }),
            CommittedEntry { index: 5, term: 1, payload: Bytes::from_static(b"garbage") },
            entry(6, &cas("b", None, Some("x"))),
        ];
        let mut out = Vec::new();
        kv.apply(&entries, &mut out).unwrap();
        let outs: Vec<Output> = out.iter().map(|b| serde_json::from_slice(b).unwrap()).collect();
        assert_eq!(outs.iter().map(|o| o.ok).collect::<Vec<_>>(), [true, false, true, false, false, true]);
        assert_eq!(outs[2].previous.as_deref(), Some("1"));
        assert!(outs[4].error.as_deref().unwrap().contains("not a command"));
        let mut snap = Vec::new();
        kv.snapshot(&mut snap).unwrap();
        let mut back = KvStore::default();
        back.restore(&mut &snap[..]).unwrap();
        assert_eq!((back.get("a").unwrap().as_str(), back.get("b").unwrap().as_str()), ("3", "x"));
        let v: Value = serde_json::from_slice(&back.query(br#"{"op":"get","key":"a"}"#).unwrap()).unwrap();
        assert_eq!(v.value.as_deref(), Some("3"));
        assert!(back.query(b"nonsense").is_err());
    }
}
