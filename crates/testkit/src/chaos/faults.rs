//! The faults the harness injects ([`Fault`]): their `--faults` names and labels, and
//! injecting one into the running system.

use super::processes::{active_index, pause_redis, terminate_walsender, wait_active, Daemon};
use super::shared::blocking;
use super::ChaosError;
use crate::harness::{PgInstance, RedisInstance};
use std::path::Path;
use std::time::Duration;

/// The faults the harness injects, one per cycle, round robin over
/// [`ChaosOptions::faults`](super::ChaosOptions::faults).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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
}

impl Fault {
    pub const ALL: [Fault; 8] = [
        Fault::Kill9,
        Fault::RedisRestart,
        Fault::RedisStop,
        Fault::TerminateWalsender,
        Fault::PgRestart,
        Fault::Takeover,
        Fault::RdbRestore,
        Fault::AofKill9,
    ];

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

/// Injects one fault; returns how long until walbust streamed again, where that applies.
pub(super) async fn inject(
    fault: Fault,
    pg: &mut PgInstance,
    redis: &mut RedisInstance,
    daemons: &mut [Daemon],
    bin: &Path,
) -> Result<Option<Duration>, ChaosError> {
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
    }
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
