//! The faults the harness injects ([`Fault`]): their `--faults` names and labels, and
//! injecting one into the running system.

use super::processes::{active_index, drop_slot, pause_redis, terminate_walsender, wait_active, Daemon};
use super::shared::blocking;
use super::target::Target;
use super::ChaosError;
use crate::harness::PgInstance;
use std::path::Path;
use std::time::Duration;

/// The faults the harness injects, one per cycle, round robin over
/// [`ChaosOptions::faults`](super::ChaosOptions::faults).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Fault {
    /// kill -9 of the active walbust, restarted at once.
    Kill9,
    /// Redis restarted without persistence (cold cache).
    RedisRestart,
    /// Redis SIGSTOP for 2 s.
    RedisStop,
    /// pg_terminate_backend of the walsender.
    TerminateWalsender,
    /// PostgreSQL fast restart.
    PgRestart,
    /// A standby walbust takes over from the active one (kill -9).
    Takeover,
    /// Redis `SAVE`, 1 s more of the workload, kill -9 and restart from that snapshot: the
    /// invalidations of that second are gone from Redis (as after a restore from an older
    /// snapshot or the promotion of a lagging replica).
    RdbRestore,
    /// Redis with `appendonly yes` / `appendfsync everysec`, kill -9, restart from the AOF.
    AofKill9,
    /// The Redis replica is cut off (`REPLICAOF NO ONE`) for 1 s of the workload, then the
    /// primary dies (kill -9) and the replica's dataset takes over its address: a lagging
    /// replica promoted. With `--wait-replicas 1` walbust waits for the replica.
    RedisPromote,
    /// A physical standby (`pg_basebackup -R`, asynchronous) taken now is promoted 1 s later
    /// in place of the primary, which dies: the writes of that second are gone from the
    /// database, the slot too (a gap), and the new timeline's positions are behind walbust's.
    PgPromote,
    /// walbust runs with a failpoint inside gap recovery, the slot is dropped under it, it
    /// exits at that step and is started again; each injection takes the next step (after
    /// marking the gap, after the first bump, after recreating the slot, after the second bump).
    GapKill9,
}

/// The steps of gap recovery a [`Fault::GapKill9`] stops at, in turn (`WALBUST_FAILPOINT`).
pub const GAP_STEPS: [&str; 4] = ["gap:marked", "gap:bumped", "gap:slot_recreated", "gap:bumped_again"];

impl Fault {
    pub const ALL: [Fault; 11] = [
        Fault::Kill9,
        Fault::RedisRestart,
        Fault::RedisStop,
        Fault::TerminateWalsender,
        Fault::PgRestart,
        Fault::Takeover,
        Fault::RdbRestore,
        Fault::AofKill9,
        Fault::RedisPromote,
        Fault::PgPromote,
        Fault::GapKill9,
    ];

    /// The faults of a `--cluster` run: all but [`Fault::RedisPromote`] (no replicas there).
    pub fn cluster_faults() -> Vec<Fault> {
        Fault::ALL.into_iter().filter(|f| *f != Fault::RedisPromote).collect()
    }

    /// Whether the fault loses part of the slot's history (a gap): what walbust never saw is
    /// covered by an epoch bump, not by exact invalidations.
    pub fn is_gap(self) -> bool {
        matches!(self, Fault::PgPromote | Fault::GapKill9)
    }

    /// The name `--faults` takes.
    pub fn name(self) -> &'static str {
        match self {
            Fault::Kill9 => "kill9",
            Fault::RedisRestart => "redis-restart",
            Fault::RedisStop => "redis-stop",
            Fault::TerminateWalsender => "terminate-walsender",
            Fault::PgRestart => "pg-restart",
            Fault::Takeover => "takeover",
            Fault::RdbRestore => "rdb-restore",
            Fault::AofKill9 => "aof-kill9",
            Fault::RedisPromote => "redis-promote",
            Fault::PgPromote => "pg-promote",
            Fault::GapKill9 => "gap-kill9",
        }
    }

    pub(super) fn label(self) -> &'static str {
        match self {
            Fault::Kill9 => "kill -9 walbust, restart",
            Fault::RedisRestart => "redis restart (cold cache)",
            Fault::RedisStop => "redis SIGSTOP 2 s",
            Fault::TerminateWalsender => "pg_terminate_backend(walsender)",
            Fault::PgRestart => "postgresql fast restart",
            Fault::Takeover => "takeover by standby walbust",
            Fault::RdbRestore => "redis restored from a 1 s old snapshot",
            Fault::AofKill9 => "redis AOF everysec, kill -9",
            Fault::RedisPromote => "redis replica 1 s behind promoted",
            Fault::PgPromote => "postgresql standby promoted",
            Fault::GapKill9 => "crash inside gap recovery",
        }
    }
}

impl std::str::FromStr for Fault {
    type Err = String;
    fn from_str(s: &str) -> Result<Fault, String> {
        Fault::ALL.into_iter().find(|f| f.name() == s).ok_or_else(|| {
            let names: Vec<&str> = Fault::ALL.iter().map(|f| f.name()).collect();
            format!("unknown fault `{s}`; expected one of {}", names.join(", "))
        })
    }
}

/// How long a fault may keep walbust from streaming before the cycle goes on regardless.
const RECOVER: Duration = Duration::from_secs(30);

/// Injects one fault (`occurrence`: how many times it was injected before); returns how long
/// until walbust streamed again, where that applies.
pub(super) async fn inject(
    fault: Fault,
    occurrence: usize,
    pg: &mut PgInstance,
    target: &mut Target,
    daemons: &mut [Daemon],
    bin: &Path,
) -> Result<Option<Duration>, ChaosError> {
    if let (Fault::RedisPromote, Target::Cluster(_)) = (fault, &*target) {
        return Err(ChaosError::Other(
            "redis-promote needs a replica; the --cluster harness has none (choose other --faults)".into(),
        ));
    }
    // The Redis faults hit the server, or on a Cluster one shard after the other.
    let redis = target.node(occurrence);
    match fault {
        Fault::Kill9 => {
            let index = active_index(pg, daemons);
            daemons[index].kill9();
            daemons[index].spawn(bin)?;
            Ok(wait_active(pg, RECOVER, None).await)
        }
        Fault::RedisRestart => {
            blocking(|| redis.restart())?;
            Ok(None)
        }
        Fault::RedisStop => {
            pause_redis(redis, Duration::from_secs(2)).await;
            Ok(None)
        }
        Fault::TerminateWalsender => {
            blocking(|| terminate_walsender(pg))?;
            Ok(wait_active(pg, RECOVER, None).await)
        }
        Fault::PgRestart => {
            blocking(|| pg.restart(true))?;
            Ok(wait_active(pg, RECOVER, None).await)
        }
        Fault::Takeover => take_over(pg, daemons, bin).await,
        Fault::RdbRestore => {
            blocking(|| redis.save())?;
            tokio::time::sleep(Duration::from_secs(1)).await;
            blocking(|| redis.restart_from_snapshot())?;
            Ok(None)
        }
        Fault::AofKill9 => {
            blocking(|| redis.enable_aof())?;
            tokio::time::sleep(Duration::from_secs(1)).await;
            blocking(|| redis.restart_from_aof())?;
            Ok(None)
        }
        Fault::RedisPromote => {
            let Target::Single { redis, replica } = target else {
                unreachable!("refused above")
            };
            blocking(|| replica.detach())?;
            tokio::time::sleep(Duration::from_secs(1)).await;
            blocking(|| redis.fail_over_to(replica))?;
            Ok(None)
        }
        Fault::PgPromote => {
            let mut standby = blocking(|| pg.standby())?;
            tokio::time::sleep(Duration::from_secs(1)).await;
            blocking(|| standby.take_over_as_primary(pg))?;
            std::mem::swap(pg, &mut standby);
            // `standby` is the old primary now, stopped; its directory goes.
            blocking(move || drop(standby));
            Ok(wait_active(pg, RECOVER, None).await)
        }
        Fault::GapKill9 => crash_inside_gap_recovery(GAP_STEPS[occurrence % GAP_STEPS.len()], pg, daemons, bin).await,
    }
}

/// Only the first instance runs, with the failpoint `step`; the slot is dropped under it; it
/// must exit at that step (code 86), and is started again to finish the recovery. Returns how
/// long until it streamed again, counted from the drop.
async fn crash_inside_gap_recovery(
    step: &str,
    pg: &PgInstance,
    daemons: &mut [Daemon],
    bin: &Path,
) -> Result<Option<Duration>, ChaosError> {
    for d in daemons.iter_mut() {
        d.kill9();
    }
    daemons[0].spawn_with_failpoint(bin, Some(step))?;
    if wait_active(pg, RECOVER, None).await.is_none() {
        return Err(ChaosError::Other(format!(
            "walbust did not stream with the failpoint {step}; see {}",
            daemons[0].log.display()
        )));
    }
    let dropped = std::time::Instant::now();
    blocking(|| drop_slot(pg))?;
    let code = daemons[0].wait_exit(RECOVER).await;
    if code != Some(86) {
        daemons[0].kill9();
        return Err(ChaosError::Other(format!(
            "walbust did not stop at the failpoint {step} (exit {code:?}); see {}",
            daemons[0].log.display()
        )));
    }
    daemons[0].spawn(bin)?;
    Ok(wait_active(pg, RECOVER, None).await.map(|_| dropped.elapsed()))
}

/// A standby instance is running (started now if needed); the active one dies. Returns how long
/// until another instance streamed.
async fn take_over(pg: &PgInstance, daemons: &mut [Daemon], bin: &Path) -> Result<Option<Duration>, ChaosError> {
    for d in daemons.iter_mut() {
        if !d.running() {
            d.spawn(bin)?;
        }
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let index = active_index(pg, daemons);
    let killed = daemons[index].name.clone();
    daemons[index].kill9();
    let took = wait_active(pg, RECOVER, Some(&killed)).await;
    // The old active instance comes back as the new standby.
    daemons[index].spawn(bin)?;
    Ok(took)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_names_round_trip_and_unknown_names_list_the_valid_ones() {
        for fault in Fault::ALL {
            assert_eq!(fault.name().parse::<Fault>(), Ok(fault));
        }
        let err = "reboot".parse::<Fault>().unwrap_err();
        assert!(err.contains("kill9") && err.contains("takeover"), "{err}");
    }
}
