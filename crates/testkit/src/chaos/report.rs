//! The outcome of a run: the report types (serialized to JSON with serde), their Markdown
//! rendering, the rules that fail a run ([`ChaosReport::failures`]), and walbust's own latency
//! histogram scraped from `/metrics` ([`DaemonLatency`]).

use super::readers::Mode;

/// One fault injected, and how long the system took to have walbust streaming again.
#[derive(Clone, Debug, serde::Serialize)]
pub struct FaultRecord {
    pub cycle: usize,
    pub fault: &'static str,
    pub at_seconds: f64,
    /// Until the slot was active again (walbust streaming), when that applies.
    pub recovered_after_ms: Option<u64>,
    /// For a fault that is a gap: whether the epoch moved (it must).
    pub epoch_moved: Option<bool>,
}

/// Figures for one reader protocol.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ModeReport {
    pub mode: &'static str,
    /// Entries a reader would be served at the end, compared with the database.
    pub entries_checked: u64,
    pub stale_entries: u64,
    pub stale_examples: Vec<String>,
    /// Committed changes whose invalidation was checked (probes).
    pub invalidations_checked: u64,
    /// Probes still present after quiescing: invalidations that never happened.
    pub lost: u64,
    pub lost_examples: Vec<String>,
    /// Probes still present whose change was committed inside a gap (PostgreSQL failover, slot
    /// dropped): walbust never saw the change; the gap is said at ERROR and the epoch moves,
    /// which covers version-keyed entries, not plain ones.
    pub lost_in_gap: u64,
    /// Probes whose deletion event was seen (the rest were wiped by a Redis cold restart
    /// before walbust got to them, or deleted while the listener was reconnecting).
    pub measured: u64,
    pub within_100ms: u64,
    pub within_1s: u64,
    pub within_10s: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// The same for commits outside fault windows (from a fault's start until 3 s after
    /// it was injected): walbust between faults.
    pub steady_measured: u64,
    pub steady_within_100ms: u64,
    pub steady_p99_ms: f64,
    /// What else the mode's readers counted (the local caches' flushes and refused inserts).
    pub notes: Vec<String>,
}

/// The outcome of a run.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ChaosReport {
    pub seconds: f64,
    /// The writers' pace (transactions/s; 0 = unthrottled).
    pub rate: u64,
    pub writes: u64,
    pub row_changes: u64,
    pub reads: u64,
    pub write_errors: u64,
    pub read_errors: u64,
    pub ambiguous_commits: u64,
    /// Committed transactions per kind of write (price, move, insert, …).
    pub committed_by_kind: Vec<(String, u64)>,
    pub quiesce_ms: u64,
    pub faults: Vec<FaultRecord>,
    pub modes: Vec<ModeReport>,
    /// walbust's own commit-to-applied histogram over every process of the run.
    pub walbust_latency: DaemonLatency,
}

impl ChaosReport {
    /// What fails the run: any lost invalidation, any stale entry with version keys.
    pub fn failures(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (kind, n) in &self.committed_by_kind {
            if *n == 0 {
                out.push(format!(
                    "no `{kind}` write committed: the workload did not run as designed"
                ));
            }
        }
        for f in &self.faults {
            if f.epoch_moved == Some(false) {
                out.push(format!(
                    "cycle {} ({}): a gap, and the epoch did not move",
                    f.cycle, f.fault
                ));
            }
        }
        for m in &self.modes {
            if m.mode == Mode::Control.label() {
                // Probes set before a Redis cold restart are wiped by it, so not all of them stay.
                if m.lost == 0 || m.stale_entries == 0 {
                    out.push(format!(
                        "the control (no rules) should lose invalidations and go stale, but lost {} of {} and has {} stale entries: the checker is blind",
                        m.lost, m.invalidations_checked, m.stale_entries
                    ));
                }
                continue;
            }
            if m.lost > 0 {
                out.push(format!(
                    "{}: {} lost invalidations (e.g. {:?})",
                    m.mode, m.lost, m.lost_examples
                ));
            }
            if m.mode == super::readers::LOCAL_MODE {
                // No probes here (they are Redis keys): what counts is what the nodes serve.
                if m.stale_entries > 0 {
                    out.push(format!(
                        "{}: {} stale entries (e.g. {:?})",
                        m.mode, m.stale_entries, m.stale_examples
                    ));
                }
                continue;
            }
            if m.mode == Mode::Version.label() && m.stale_entries > 0 {
                // Also after a gap: the epoch moved, so no version-keyed entry from before it
                // is read again.
                out.push(format!(
                    "{}: {} stale entries (e.g. {:?})",
                    m.mode, m.stale_entries, m.stale_examples
                ));
            }
            if m.invalidations_checked == 0 {
                out.push(format!("{}: no invalidation was checked", m.mode));
            }
        }
        out
    }

    pub fn to_markdown(&self) -> String {
        let mut s = format!(
            "{} transactions (paced at {}/s; {} row changes) and {} cache reads per mode in {:.0} s, {} faults; quiesced in {} ms; {} commits with unknown outcome excluded\n\n",
            self.writes,
            self.rate,
            self.row_changes,
            self.reads,
            self.seconds,
            self.faults.len(),
            self.quiesce_ms,
            self.ambiguous_commits
        );
        let kinds: Vec<String> = self.committed_by_kind.iter().map(|(k, n)| format!("{k} {n}")).collect();
        s.push_str(&format!(
            "transactions by kind: {}; failed attempts (rolled back, retried): {} writes, {} reads\n\n",
            kinds.join(", "),
            self.write_errors,
            self.read_errors
        ));
        s.push_str("| mode | stale entries at the end | entries checked | invalidations checked | lost | in a gap (epoch moved) | measured | ≤ 100 ms | ≤ 1 s | ≤ 10 s | p50 | p99 | max | between faults: ≤ 100 ms | between faults: p99 |\n");
        s.push_str("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
        for m in &self.modes {
            let pct = |n: u64| pct_of(n, m.measured);
            if m.mode == Mode::Control.label() || m.mode == super::readers::LOCAL_MODE {
                s.push_str(&format!(
                    "| {} | {} | {} | {} | {} | {} | - | - | - | - | - | - | - | - | - |\n",
                    m.mode, m.stale_entries, m.entries_checked, m.invalidations_checked, m.lost, m.lost_in_gap
                ));
                continue;
            }
            s.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.1} ms | {:.1} ms | {:.0} ms | {} of {} | {:.1} ms |\n",
                m.mode,
                m.stale_entries,
                m.entries_checked,
                m.invalidations_checked,
                m.lost,
                m.lost_in_gap,
                m.measured,
                pct(m.within_100ms),
                pct(m.within_1s),
                pct(m.within_10s),
                m.p50_ms,
                m.p99_ms,
                m.max_ms,
                pct_of(m.steady_within_100ms, m.steady_measured),
                m.steady_measured,
                m.steady_p99_ms
            ));
        }
        for m in self.modes.iter().filter(|m| !m.notes.is_empty()) {
            s.push_str(&format!("\n{}: {}\n", m.mode, m.notes.join("; ")));
        }
        let l = &self.walbust_latency;
        s.push_str(&format!(
            "\nwalbust's own histogram (`walbust_commit_to_applied_seconds`, commit timestamp to every target's acknowledgement, all processes): {} transactions applied (replays included), ≤ 10 ms {}, ≤ 100 ms {}, ≤ 1 s {}\n",
            l.transactions,
            pct_of(l.within_10ms, l.transactions),
            pct_of(l.within_100ms, l.transactions),
            pct_of(l.within_1s, l.transactions)
        ));
        s.push_str("\n| cycle | fault | at | walbust streaming again after | epoch moved |\n|---|---|---|---|---|\n");
        for f in &self.faults {
            s.push_str(&format!(
                "| {} | {} | {:.1} s | {} | {} |\n",
                f.cycle,
                f.fault,
                f.at_seconds,
                f.recovered_after_ms
                    .map(|ms| format!("{ms} ms"))
                    .unwrap_or_else(|| "-".into()),
                match f.epoch_moved {
                    Some(true) => "yes",
                    Some(false) => "NO",
                    None => "-",
                }
            ));
        }
        s
    }
}

fn pct_of(n: u64, of: u64) -> String {
    if of == 0 {
        "-".to_string()
    } else {
        format!("{:.3} %", 100.0 * n as f64 / of as f64)
    }
}

/// walbust's own view of latency (`walbust_commit_to_applied_seconds`: PostgreSQL's commit
/// timestamp to every target's acknowledgement), scraped from `/metrics` before each kill.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct DaemonLatency {
    pub transactions: u64,
    pub within_10ms: u64,
    pub within_100ms: u64,
    pub within_1s: u64,
}

impl DaemonLatency {
    pub(super) fn add_scrape(&mut self, metrics: &str) {
        // The bucket bound may be written `1` or `1.0` (OpenMetrics): compare it as a number.
        let value = |name: &str| -> u64 {
            let (head, bound) = match name.split_once("le=\"") {
                Some((head, rest)) => (head, rest.split('"').next().and_then(|b| b.parse::<f64>().ok())),
                None => (name, None),
            };
            metrics
                .lines()
                .find_map(|l| {
                    let rest = l.strip_prefix(head)?;
                    match bound {
                        None => Some(rest),
                        Some(want) => {
                            let (le, rest) = rest.strip_prefix("le=\"")?.split_once("\"}")?;
                            (le.parse::<f64>().ok()? == want).then_some(rest)
                        }
                    }
                })
                .and_then(|rest| rest.trim().parse::<f64>().ok())
                .map(|v| v as u64)
                .unwrap_or(0)
        };
        self.transactions += value("walbust_commit_to_applied_seconds_count ");
        self.within_10ms += value("walbust_commit_to_applied_seconds_bucket{le=\"0.01\"} ");
        self.within_100ms += value("walbust_commit_to_applied_seconds_bucket{le=\"0.1\"} ");
        self.within_1s += value("walbust_commit_to_applied_seconds_bucket{le=\"1\"} ");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrapes_walbusts_latency_histogram() {
        let metrics = "walbust_commit_to_applied_seconds_bucket{le=\"0.01\"} 90\n\
                       walbust_commit_to_applied_seconds_bucket{le=\"0.1\"} 99\n\
                       walbust_commit_to_applied_seconds_bucket{le=\"1\"} 100\n\
                       walbust_commit_to_applied_seconds_count 100\n";
        let mut latency = DaemonLatency::default();
        latency.add_scrape(metrics);
        // OpenMetrics writes the bounds as floats.
        latency.add_scrape(&metrics.replace("le=\"1\"", "le=\"1.0\""));
        assert_eq!(
            (
                latency.transactions,
                latency.within_10ms,
                latency.within_100ms,
                latency.within_1s
            ),
            (200, 180, 198, 200)
        );
    }

    fn mode(mode: Mode, stale: u64, lost: u64) -> ModeReport {
        ModeReport {
            mode: mode.label(),
            stale_entries: stale,
            invalidations_checked: 10,
            lost,
            ..ModeReport::default()
        }
    }

    #[test]
    fn fails_on_loss_on_stale_version_entries_and_on_a_blind_control() {
        let report = |modes| ChaosReport {
            committed_by_kind: vec![("price".into(), 1)],
            modes,
            ..ChaosReport::default()
        };
        let healthy = report(vec![
            mode(Mode::Plain, 2, 0),
            mode(Mode::Redelete, 1, 0),
            mode(Mode::Version, 0, 0),
            mode(Mode::Control, 5, 7),
        ]);
        // Stale plain entries are reported, not failed: that race is the plain protocol's.
        assert!(healthy.failures().is_empty(), "{:?}", healthy.failures());
        let lost = report(vec![mode(Mode::Plain, 0, 1), mode(Mode::Control, 5, 7)]);
        assert!(lost.failures()[0].contains("lost"));
        let stale = report(vec![mode(Mode::Version, 1, 0), mode(Mode::Control, 5, 7)]);
        assert!(stale.failures()[0].contains("stale"));
        let blind = report(vec![mode(Mode::Version, 0, 0), mode(Mode::Control, 0, 0)]);
        assert!(blind.failures()[0].contains("blind"));
        // Local caches have no probes; a stale entry there fails the run.
        let local = |stale| ModeReport {
            mode: crate::chaos::readers::LOCAL_MODE,
            stale_entries: stale,
            ..ModeReport::default()
        };
        let fine = report(vec![local(0), mode(Mode::Control, 5, 7)]);
        assert!(fine.failures().is_empty(), "{:?}", fine.failures());
        let drifted = report(vec![local(1), mode(Mode::Control, 5, 7)]);
        assert!(
            drifted.failures()[0].contains("local caches"),
            "{:?}",
            drifted.failures()
        );
        let mut idle = healthy.clone();
        idle.committed_by_kind.push(("truncate".into(), 0));
        assert!(idle.failures()[0].contains("truncate"));
    }
}
