//! `redelete_after`: delete keys once more after their delay, narrowing the window in which a
//! reader that loaded the old row before the commit can put a stale value back. Best effort on
//! connections of its own: the first delete is what was acknowledged.

use crate::sink::redis::RedisTarget;
use crate::sink::Batch;
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::time::Instant;

/// Hands keys to the long-lived re-delete task.
#[derive(Clone)]
pub struct Redeleter {
    tx: tokio::sync::mpsc::UnboundedSender<(Instant, Vec<String>)>,
}

impl Redeleter {
    /// One long-lived task with its own connection per target; keys that fall due together are
    /// merged and deleted in one pipelined round trip per target. (A connection per batch cost
    /// a TCP handshake per batch on Redis.)
    pub fn start(targets: Vec<RedisTarget>) -> Redeleter {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(run(targets, rx));
        Redeleter { tx }
    }

    /// Schedules the batch's `redelete_after` keys, each after its own delay.
    pub fn schedule(&self, batch: &Batch) {
        let mut by_delay: BTreeMap<Duration, Vec<String>> = BTreeMap::new();
        for (key, delay) in &batch.merged().redelete {
            by_delay.entry(*delay).or_default().push(key.clone());
        }
        let now = Instant::now();
        for (delay, keys) in by_delay {
            let _ = self.tx.send((now + delay, keys));
        }
    }
}

async fn run(mut targets: Vec<RedisTarget>, mut rx: tokio::sync::mpsc::UnboundedReceiver<(Instant, Vec<String>)>) {
    let mut due: BTreeMap<Instant, Vec<String>> = BTreeMap::new();
    loop {
        let next = due.keys().next().copied();
        let wait = async {
            match next {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            message = rx.recv() => match message {
                Some((at, keys)) => due.entry(at).or_default().extend(keys),
                None => break,
            },
            _ = wait => {
                let keys = take_due(&mut due, Instant::now());
                for target in targets.iter_mut() {
                    if let Err(e) = target.delete_keys(&keys).await {
                        tracing::warn!(target = %target.name, error = %e, keys = keys.len(), "delayed re-delete failed");
                    }
                }
            }
        }
    }
}

/// Removes and returns the distinct keys due at `now`.
fn take_due(due: &mut BTreeMap<Instant, Vec<String>>, now: Instant) -> Vec<String> {
    let mut keys = Vec::new();
    while let Some(entry) = due.first_entry() {
        if *entry.key() > now {
            break;
        }
        keys.extend(entry.remove());
    }
    keys.sort_unstable();
    keys.dedup();
    keys
}
