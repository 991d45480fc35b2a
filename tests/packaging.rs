//! No Docker engine runs here, so the packaging is checked for consistency with the repository:
//! files the compose file mounts and the Dockerfile copies exist, PostgreSQL gets
//! wal_level=logical, the mounted walbust config is valid, and the systemd unit runs `walbust run`.

use std::path::Path;
use walbust::rules::yaml::{self, Node, NodeKind};

fn repo(p: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

fn get<'a>(node: &'a Node, key: &str) -> Option<&'a Node> {
    match &node.kind {
        NodeKind::Map(entries) => entries.iter().find(|(k, _)| k.as_str() == Some(key)).map(|(_, v)| v),
        _ => None,
    }
}

fn strings(node: &Node) -> Vec<String> {
    match &node.kind {
        NodeKind::Seq(items) => items.iter().filter_map(|i| i.as_str().map(str::to_string)).collect(),
        NodeKind::Scalar { text, .. } => vec![text.clone()],
        _ => vec![],
    }
}

#[test]
fn compose_file_is_consistent_with_the_repository() {
    let text = std::fs::read_to_string(repo("docker-compose.yml")).unwrap();
    let doc = yaml::parse(&text).unwrap();
    let services = get(&doc, "services").expect("services");
    let postgres = get(services, "postgres").expect("postgres service");
    let command = strings(get(postgres, "command").unwrap()).join(" ");
    assert!(command.contains("wal_level=logical"), "{command}");
    let walbust = get(services, "walbust").expect("walbust service");
    assert_eq!(get(walbust, "build").and_then(|b| b.as_str()), Some("."));
    assert!(repo("Dockerfile").is_file());
    let mut config_file = None;
    for service in [postgres, walbust] {
        for volume in strings(get(service, "volumes").unwrap()) {
            let (host, rest) = volume.split_once(':').unwrap();
            let path = repo(host.trim_start_matches("./"));
            assert!(path.exists(), "compose mounts {host}, which does not exist");
            if rest.starts_with("/etc/walbust/walbust.toml") {
                config_file = Some(path);
            }
        }
    }
    // The mounted config is valid for `walbust run` (its rules path is the mounted rules/).
    let config_file = config_file.expect("a mounted walbust.toml");
    let config = walbust::config::Config::load(&config_file).unwrap();
    assert_eq!(config.rules.path, Path::new("/etc/walbust/rules"));
    assert_eq!(config.postgres.publication, "walbust_catalog");
    config.validate().unwrap();
    let migrations = std::fs::read_to_string(repo("migrations/001_catalog.sql")).unwrap();
    assert!(migrations.contains("CREATE PUBLICATION walbust_catalog"));
}

#[test]
fn dockerfile_and_unit_reference_what_exists() {
    let dockerfile = std::fs::read_to_string(repo("Dockerfile")).unwrap();
    for line in dockerfile
        .lines()
        .filter(|l| l.starts_with("COPY ") && !l.contains("--from"))
    {
        let parts: Vec<&str> = line.split_whitespace().collect();
        for source in &parts[1..parts.len() - 1] {
            assert!(
                repo(source).exists(),
                "Dockerfile copies {source}, which does not exist"
            );
        }
    }
    assert!(dockerfile.contains("USER walbust"), "non-root runtime");
    let unit = std::fs::read_to_string(repo("deploy/walbust.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/local/bin/walbust run --config"));
    assert!(unit.contains("KillSignal=SIGTERM"));
    walbust::config::Config::load(&repo("walbust.toml"))
        .unwrap()
        .validate()
        .unwrap();
}
