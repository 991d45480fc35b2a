//! The read protocol against a real redis-server and a real daemon: a cached entry is served
//! until walbust bumps its version, a tag invalidation or an epoch bump.

use std::time::Duration;
use walbust::client::{CacheClient, Entry, Source};
use walbust_testkit::harness::RedisInstance;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_aside_with_versions_tags_and_epoch() {
    let redis = RedisInstance::start().unwrap();
    let mut client = CacheClient::connect(&redis.url(), "shop:").await.unwrap();
    client.ttl = Duration::from_secs(60);
    let entry = Entry {
        key: "product:42",
        versions: &["ver:product:42"],
        tags: &["category:5"],
    };
    let load = |v: &'static str| move || async move { Ok::<_, String>(v.to_string()) };
    assert_eq!(
        client.get_or_load(&entry, load("v1")).await.unwrap(),
        ("v1".into(), Source::Loaded)
    );
    assert_eq!(
        client.get_or_load(&entry, load("unused")).await.unwrap(),
        ("v1".into(), Source::Cache)
    );

    let mut raw = redis::Client::open(redis.url()).unwrap().get_connection().unwrap();
    let key: String = redis::cmd("SMEMBERS")
        .arg("shop:tag:category:5")
        .query::<Vec<String>>(&mut raw)
        .unwrap()[0]
        .clone();
    assert_eq!(key, "shop:product:42:e0:v0");
    let ttl: i64 = redis::cmd("TTL").arg(&key).query(&mut raw).unwrap();
    assert!((60..=66).contains(&ttl), "ttl with jitter: {ttl}");

    // walbust bumps the version at a commit: the next read misses and loads the new row.
    let _: () = redis::cmd("SET")
        .arg("shop:ver:product:42")
        .arg("23455432")
        .query(&mut raw)
        .unwrap();
    assert_eq!(
        client.get_or_load(&entry, load("v2")).await.unwrap(),
        ("v2".into(), Source::Loaded)
    );
    // A stale fill under the old version is never read again.
    let _: () = redis::cmd("SET")
        .arg("shop:product:42:e0:v0")
        .arg("stale")
        .query(&mut raw)
        .unwrap();
    assert_eq!(
        client.get_or_load(&entry, load("x")).await.unwrap(),
        ("v2".into(), Source::Cache)
    );
    // The epoch forgets everything.
    let _: i64 = redis::cmd("INCR").arg("walbust:epoch").query(&mut raw).unwrap();
    assert_eq!(
        client.get_or_load(&entry, load("v3")).await.unwrap(),
        ("v3".into(), Source::Loaded)
    );
    // A load error is reported, nothing is cached.
    let _: () = redis::cmd("SET")
        .arg("shop:ver:product:42")
        .arg("99999999")
        .query(&mut raw)
        .unwrap();
    let err = client
        .get_or_load(&entry, || async { Err::<String, _>("db down".to_string()) })
        .await
        .unwrap_err();
    assert!(err.to_string().contains("db down"));
}

/// Regression: an entry without version keys used to be stored as `<key>:e0`, a name no
/// `delete` rule renders, so walbust's deletes never reached it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_entries_live_under_the_exact_key_a_delete_rule_names() {
    let redis = RedisInstance::start().unwrap();
    let mut client = CacheClient::connect(&redis.url(), "shop:").await.unwrap();
    let entry = Entry {
        key: "product:42",
        versions: &[],
        tags: &["category:5"],
    };
    let load = |v: &'static str| move || async move { Ok::<_, String>(v.to_string()) };
    client.get_or_load(&entry, load("v1")).await.unwrap();
    let mut raw = redis::Client::open(redis.url()).unwrap().get_connection().unwrap();
    let value: Option<String> = redis::cmd("GET").arg("shop:product:42").query(&mut raw).unwrap();
    assert_eq!(value.as_deref(), Some("v1"));
    let members: Vec<String> = redis::cmd("SMEMBERS")
        .arg("shop:tag:category:5")
        .query(&mut raw)
        .unwrap();
    assert_eq!(members, vec!["shop:product:42".to_string()]);
    // What the daemon does for `delete: ["product:{id}"]`.
    let _: i64 = redis::cmd("UNLINK").arg("shop:product:42").query(&mut raw).unwrap();
    assert_eq!(
        client.get_or_load(&entry, load("v2")).await.unwrap(),
        ("v2".into(), Source::Loaded)
    );
}
