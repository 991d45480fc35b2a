//! The `walbust` binary as users meet it: the README's first command, rule errors with
//! file:line:column, exit codes, JSON output and --keep-going.

use std::path::Path;
use std::process::{Command, Output};

fn walbust(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_walbust"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run walbust")
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn dry_run_without_arguments_uses_the_bundled_rules_and_sample() {
    let out = walbust(&["dry-run"], repo());
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("shop:product:1"), "{stdout}");
    assert!(stdout.contains("FALLBACK"), "the review delete falls back: {stdout}");
    assert!(stdout.lines().last().unwrap().starts_with("summary: "), "{stdout}");

    // Anywhere else, the copies built into the binary are used.
    let elsewhere = tempfile::tempdir().unwrap();
    let out = walbust(&["dry-run", "--format", "json"], elsewhere.path());
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("bundled"), "{stderr}");
    let last: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert!(last["summary"]["transactions"].as_u64().unwrap() > 10, "{last}");
    for line in stdout.lines().take(3) {
        let txn: serde_json::Value = serde_json::from_str(line).unwrap();
        for field in [
            "xid",
            "lsn",
            "commit_time",
            "changes",
            "delete",
            "bump",
            "tags",
            "delete_matching",
            "publish",
            "fallbacks",
            "unrenderable",
        ] {
            assert!(txn.get(field).is_some(), "{field} missing in {line}");
        }
        let delete: Vec<String> = serde_json::from_value(txn["delete"].clone()).unwrap();
        let mut sorted = delete.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(delete, sorted, "sorted and deduplicated");
    }
}

#[test]
fn both_bundled_samples_give_the_same_summary() {
    let a = walbust(
        &["dry-run", "--format", "json", "--wal", "samples/catalog.wal2json.jsonl"],
        repo(),
    );
    let b = walbust(
        &[
            "dry-run",
            "--format",
            "json",
            "--wal",
            "samples/catalog.test_decoding.txt",
        ],
        repo(),
    );
    let last = |o: &Output| -> serde_json::Value {
        serde_json::from_str(String::from_utf8_lossy(&o.stdout).lines().last().unwrap()).unwrap()
    };
    assert_eq!(last(&a), last(&b));
}

#[test]
fn check_reports_rule_errors_with_positions_and_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("a.yaml"),
        "version: 1\nrules:\n  - name: p\n    tabel: products\n    delete: [\"p:{id}\"]\n",
    )
    .unwrap();
    let out = walbust(&["check", "--rules", "."], dir.path());
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        stderr.contains("a.yaml:4:5: error:") && stderr.contains("did you mean `table`"),
        "{stderr}"
    );

    // Warnings only: 0, or 2 with --strict.
    std::fs::write(
        dir.path().join("a.yaml"),
        "version: 1\nrules:\n  - name: p\n    table: products\n    delete_matching: [\"s:{id}:*\"]\n",
    )
    .unwrap();
    let out = walbust(&["check", "--rules", "a.yaml"], dir.path());
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
    let out = walbust(&["check", "--rules", "a.yaml", "--strict"], dir.path());
    assert_eq!(out.status.code(), Some(2), "{:?}", text(&out));

    // The bundled rules are clean.
    let out = walbust(&["check", "--rules", "rules", "--strict"], repo());
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
}

#[test]
fn bad_samples_name_the_line_and_keep_going_skips() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("s.txt"),
        "BEGIN 1\ntable public.products: INSERT: id[bigint]:1 category_id[bigint]:2 sku[text]:'a'\ngarbage here\nCOMMIT 1\n",
    )
    .unwrap();
    let rules = repo().join("rules");
    let rules = rules.to_str().unwrap();
    let out = walbust(&["dry-run", "--rules", rules, "--wal", "s.txt"], dir.path());
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("s.txt:3: expected `BEGIN`"), "{stderr}");
    let out = walbust(
        &["dry-run", "--rules", rules, "--wal", "s.txt", "--keep-going"],
        dir.path(),
    );
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("skipped: s.txt:3:"), "{stderr}");
    assert!(
        stdout.contains("shop:product:1") && stdout.contains("skipped 1 bad sample line"),
        "{stdout}"
    );

    // A rule that cannot render without a fallback is reported, and --strict fails on it.
    std::fs::write(
        dir.path().join("r.yaml"),
        "version: 1\nrules:\n  - name: r\n    table: products\n    delete: [\"x:{nope}\"]\n",
    )
    .unwrap();
    let out = walbust(
        &[
            "dry-run",
            "--rules",
            "r.yaml",
            "--wal",
            "s.txt",
            "--keep-going",
            "--strict",
        ],
        dir.path(),
    );
    let (stdout, _) = text(&out);
    assert_eq!(out.status.code(), Some(2));
    assert!(stdout.contains("UNRENDERABLE"), "{stdout}");
}

#[test]
fn key_catalogue_is_current_and_explain_finds_rules() {
    // docs/keys.md is generated from rules/: CI fails when they drift apart.
    let out = walbust(
        &["docs", "--rules", "rules", "--out", "docs/keys.md", "--check"],
        repo(),
    );
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
    let out = walbust(
        &[
            "explain",
            "--rules",
            "rules",
            "shop:product:42:json",
            "--format",
            "json",
        ],
        repo(),
    );
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let items: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let items = items.as_array().unwrap();
    assert!(
        items
            .iter()
            .any(|i| i["rule"] == "product-detail" && i["values"][0]["value"] == "42"),
        "{items:?}"
    );
    let out = walbust(&["explain", "--rules", "rules", "nobody:makes:this"], repo());
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).0.contains("no rule produces"));
}

#[test]
fn completions_and_man_page() {
    let out = walbust(&["completions", "bash"], repo());
    assert!(out.status.success());
    assert!(
        text(&out).0.contains("dry-run"),
        "bash completion knows the subcommands"
    );
    let out = walbust(&["man"], repo());
    assert!(out.status.success());
    assert!(text(&out).0.contains(".TH walbust"), "{}", text(&out).0);
}

/// Regression (issue: inputs, finding 14): dry-run ignored the daemon's settings and always
/// planned with a fan-out limit of 10,000. With `--config` it plans as the daemon will: here a
/// limit of 1 key per rule and transaction escalates every multi-key rule to its fallback.
#[test]
fn dry_run_with_the_daemons_config_plans_as_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("walbust.toml");
    std::fs::write(
        &config,
        format!(
            "[postgres]\nurl = \"postgres://x@localhost/db\"\n[rules]\npath = \"{}\"\nmax_keys_per_transaction = 1\n[[redis]]\nurl = \"redis://localhost\"\n",
            repo().join("rules").display()
        ),
    )
    .unwrap();
    let sample = repo().join("samples/catalog.wal2json.jsonl");
    let plain = walbust(&["dry-run", "--wal", sample.to_str().unwrap()], repo());
    let (plain_out, _) = text(&plain);
    let configured = walbust(
        &[
            "dry-run",
            "--wal",
            sample.to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
        ],
        dir.path(),
    );
    let (configured_out, stderr) = text(&configured);
    assert!(configured.status.success(), "{stderr}");
    let fallbacks = |s: &str| s.matches("fan-out").count();
    assert!(
        fallbacks(&configured_out) > fallbacks(&plain_out),
        "with a limit of 1 the fan-out fallback applies:\n{configured_out}"
    );
}
