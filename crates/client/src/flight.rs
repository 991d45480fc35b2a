//! In-process single-flight: one load per key at a time in a process, whatever number of tasks
//! (and clones of the client) read it; the others wait for its outcome.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// A finished load as followers see it: the value and since when it is known fresh (the start
/// of the Redis read or load that produced it), or the leader's error as text.
pub(crate) type Outcome = Result<(String, std::time::Instant), String>;

type Slot = watch::Receiver<Option<Outcome>>;

/// The loads running in this process, by key.
#[derive(Default)]
pub(crate) struct Flights {
    running: Mutex<HashMap<String, Slot>>,
}

pub(crate) enum Flight {
    /// Load, then [`Leader::finish`]; dropping it unfinished (a cancelled read) releases the
    /// followers, who try again.
    Leader(Leader),
    Follower(Slot),
}

pub(crate) struct Leader {
    flights: Arc<Flights>,
    key: String,
    done: watch::Sender<Option<Outcome>>,
}

impl Flights {
    pub(crate) fn join(self: &Arc<Self>, key: &str) -> Flight {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(slot) = running.get(key) {
            return Flight::Follower(slot.clone());
        }
        let (done, slot) = watch::channel(None);
        running.insert(key.to_string(), slot);
        Flight::Leader(Leader {
            flights: self.clone(),
            key: key.to_string(),
            done,
        })
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.running.lock().unwrap().len()
    }
}

impl Leader {
    pub(crate) fn finish(self, outcome: Outcome) {
        let _ = self.done.send(Some(outcome));
    }
}

impl Drop for Leader {
    fn drop(&mut self) {
        // Removed before the sender goes: a reader arriving after this starts a load of its own.
        let mut running = self.flights.running.lock().unwrap_or_else(|p| p.into_inner());
        running.remove(&self.key);
    }
}

/// Waits for the leader's outcome; `None` when the leader was dropped without one.
pub(crate) async fn follow(mut slot: Slot) -> Option<Outcome> {
    match slot.wait_for(Option::is_some).await {
        Ok(outcome) => outcome.clone(),
        Err(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn followers_get_the_leaders_outcome_and_the_key_is_free_again() {
        let flights = Arc::new(Flights::default());
        let Flight::Leader(leader) = flights.join("k") else {
            panic!("first is the leader")
        };
        let Flight::Follower(slot) = flights.join("k") else {
            panic!("second follows")
        };
        let Flight::Leader(other) = flights.join("other") else {
            panic!("other key")
        };
        drop(other);
        let waiter = tokio::spawn(follow(slot));
        let now = std::time::Instant::now();
        leader.finish(Ok(("v".into(), now)));
        assert_eq!(waiter.await.unwrap(), Some(Ok(("v".into(), now))));
        assert_eq!(flights.len(), 0);
        assert!(matches!(flights.join("k"), Flight::Leader(_)));
    }

    #[tokio::test]
    async fn a_dropped_leader_releases_its_followers_without_an_outcome() {
        let flights = Arc::new(Flights::default());
        let Flight::Leader(leader) = flights.join("k") else {
            panic!()
        };
        let Flight::Follower(slot) = flights.join("k") else {
            panic!()
        };
        drop(leader);
        assert_eq!(follow(slot).await, None);
    }
}
