//! The write workload against PostgreSQL: paced writer tasks running random transactions
//! (price changes, moves, inserts, deletes, recommendation updates, bulk updates), the
//! truncater, and the probes every write sets in Redis before its COMMIT.

use super::readers::MODES;
use super::shared::{connect_db, Rng, Shared, RECS_PRODUCTS};
use super::target::{run_pipeline, RedisSpec};
use super::{ChaosOptions, WorkloadError};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use walbust_client::RedisConnection;

/// What one write transaction did.
#[derive(Clone, Copy)]
pub(super) enum WriteKind {
    Price,
    Move,
    Insert,
    Delete,
    Recs,
    Bulk,
    Truncate,
}

pub(super) const WRITE_KINDS: [&str; 7] = ["price", "move", "insert", "delete", "recs", "bulk", "truncate"];

pub(super) fn reseed_recs_sql(products: i64) -> String {
    format!(
        "INSERT INTO recommendations (product_id, recommended_id, score) SELECT p, ((p + k) % {products}) + 1, k FROM generate_series(1, {RECS_PRODUCTS}) AS p, generate_series(1, 3) AS k"
    )
}

/// What one write transaction changes, drawn before it begins.
#[derive(Clone, Copy)]
struct Draw {
    kind: WriteKind,
    /// The seeded product a price change or a move touches.
    id: i64,
    category: i64,
}

impl Draw {
    fn new(rng: &mut Rng, products: i64) -> Draw {
        let kind = match rng.below(100) {
            0..=54 => WriteKind::Price,
            55..=64 => WriteKind::Move,
            65..=73 => WriteKind::Insert,
            74..=80 => WriteKind::Delete,
            81..=95 => WriteKind::Recs,
            _ => WriteKind::Bulk,
        };
        let id = 1 + rng.below(products as u64) as i64;
        let category = 1 + rng.below(6) as i64;
        Draw { kind, id, category }
    }
}

/// One write transaction: the change, its probes set in Redis, then COMMIT.
async fn write_once(
    db: &mut tokio_postgres::Client,
    redis: &mut RedisConnection,
    rng: &mut Rng,
    shared: &Shared,
    products: i64,
) -> Result<(), WorkloadError> {
    let draw = Draw::new(rng, products);
    let tx = db.transaction().await?;
    let probes = change(&tx, draw, rng, shared, products).await?;
    let rows = probes.len() as u64;
    commit_with_probes(tx, redis, shared, probes, rows, draw.kind).await
}

/// Makes the drawn change in `tx`. Every changed row returns its new `rev` (its `id` for
/// deletes): one probe per row.
async fn change(
    tx: &tokio_postgres::Transaction<'_>,
    draw: Draw,
    rng: &mut Rng,
    shared: &Shared,
    products: i64,
) -> Result<Vec<String>, tokio_postgres::Error> {
    let Draw { kind, id, category } = draw;
    match kind {
        WriteKind::Price => probes_of(
            tx,
            "p",
            "UPDATE products SET price_cents = price_cents + 1, rev = nextval('chaos_rev') WHERE id = $1 RETURNING rev",
            &[&id],
        )
        .await,
        WriteKind::Move => {
            probes_of(
                tx,
                "p",
                "UPDATE products SET category_id = $2, rev = nextval('chaos_rev') WHERE id = $1 RETURNING rev",
                &[&id, &category],
            )
            .await
        }
        WriteKind::Insert => insert_product(tx, category, shared).await,
        WriteKind::Delete => {
            probes_of(
                tx,
                "d",
                "DELETE FROM products WHERE id = (SELECT min(id) FROM products WHERE id >= 100000) RETURNING id",
                &[],
            )
            .await
        }
        WriteKind::Recs => {
            let product = 1 + rng.below(RECS_PRODUCTS as u64) as i64;
            probes_of(
                tx,
                "r",
                "UPDATE recommendations SET score = score + 1, rev = nextval('chaos_rev') WHERE product_id = $1 RETURNING rev",
                &[&product],
            )
            .await
        }
        // Written by the truncater task, never picked here.
        WriteKind::Truncate => Ok(Vec::new()),
        WriteKind::Bulk => {
            // Half of a category's seeded products: about 17 rows.
            let residue = rng.below(2) as i64;
            probes_of(
                tx,
                "p",
                "UPDATE products SET price_cents = price_cents + 1, rev = nextval('chaos_rev') WHERE category_id = $1 AND id % 2 = $2 AND id <= $3 RETURNING rev",
                &[&category, &residue, &products],
            )
            .await
        }
    }
}

/// Inserts a product (ids from 100000 up) and records it as the highest inserted so far.
async fn insert_product(
    tx: &tokio_postgres::Transaction<'_>,
    category: i64,
    shared: &Shared,
) -> Result<Vec<String>, tokio_postgres::Error> {
    let new_id: i64 = tx.query_one("SELECT nextval('chaos_product_id')", &[]).await?.get(0);
    let probes = probes_of(
        tx,
        "p",
        "INSERT INTO products (id, category_id, sku, name, price_cents) VALUES ($1, $2, 'CH-' || $1::bigint, 'new ' || $1::bigint, 500) RETURNING rev",
        &[&new_id, &category],
    )
    .await?;
    shared.max_inserted.fetch_max(new_id, Ordering::Relaxed);
    Ok(probes)
}

/// Runs a statement that returns one bigint per changed row (a `rev` or an `id`) and names the
/// probe of each: `probe:<kind>:<value>`.
async fn probes_of(
    tx: &tokio_postgres::Transaction<'_>,
    kind: &str,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<Vec<String>, tokio_postgres::Error> {
    let rows = tx.query(sql, params).await?;
    Ok(rows
        .iter()
        .map(|r| format!("probe:{kind}:{}", r.get::<_, i64>(0)))
        .collect())
}

/// Sets the probes of every mode, then commits; registers the probes with the COMMIT time.
async fn commit_with_probes(
    tx: tokio_postgres::Transaction<'_>,
    redis: &mut RedisConnection,
    shared: &Shared,
    probes: Vec<String>,
    rows: u64,
    kind: WriteKind,
) -> Result<(), WorkloadError> {
    if !probes.is_empty() {
        let mut pipe = redis::pipe();
        for probe in &probes {
            for mode in MODES {
                let key = format!("{}{probe}", mode.prefix());
                pipe.set(&key, 1).ignore();
                if probe.starts_with("probe:t:") {
                    // The TRUNCATE fallback invalidates this tag. Probe and tag set share a hash
                    // tag (`{pt}`): on a Cluster a shard that loses the set loses the probes with
                    // it (see docs/consistency.md, tag memberships).
                    pipe.sadd(format!("{}tag:{{pt}}", mode.prefix()), &key).ignore();
                }
            }
        }
        // Redis unavailable: the transaction rolls back (dropped), nothing unprobed commits.
        run_pipeline(redis, &pipe).await?;
    }
    let sent = Instant::now();
    match tx.commit().await {
        Ok(()) => {
            let mut registered = shared.probes.lock().unwrap_or_else(|p| p.into_inner());
            for probe in probes {
                registered.insert(probe, sent);
            }
            shared.writes.fetch_add(1, Ordering::Relaxed);
            shared.row_changes.fetch_add(rows, Ordering::Relaxed);
            shared.committed_by_kind[kind as usize].fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
        Err(err) => {
            shared
                .ambiguous
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(probes);
            Err(err.into())
        }
    }
}

pub(super) async fn writer(
    index: usize,
    shared: Arc<Shared>,
    db_url: String,
    redis_spec: RedisSpec,
    options: ChaosOptions,
) {
    let mut rng = Rng::new(options.seed.wrapping_add(index as u64 * 7919));
    let mut db: Option<tokio_postgres::Client> = None;
    let mut redis: Option<RedisConnection> = None;
    let interval = (options.rate > 0).then(|| Duration::from_secs_f64(options.writers as f64 / options.rate as f64));
    let mut next = Instant::now();
    while !shared.stop_writers.load(Ordering::Relaxed) {
        if let Some(interval) = interval {
            // Paced; a writer that fell behind (an outage) does not burst to catch up.
            next = (next + interval).max(Instant::now() - Duration::from_millis(100));
            tokio::time::sleep_until(next.into()).await;
        }
        if db.as_ref().is_none_or(|c| c.is_closed()) {
            db = connect_db(&db_url).await.ok();
        }
        if redis.is_none() {
            redis = redis_spec.connect().await.ok();
        }
        let (Some(d), Some(r)) = (db.as_mut(), redis.as_mut()) else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        if let Err(e) = write_once(d, r, &mut rng, &shared, options.products).await {
            tracing::debug!(writer = index, error = %e, "write failed");
            shared.write_errors.fetch_add(1, Ordering::Relaxed);
            redis = None;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Every few seconds: TRUNCATE recommendations and rebuild them, in one transaction.
pub(super) async fn truncater(shared: Arc<Shared>, db_url: String, redis_spec: RedisSpec, products: i64) {
    let mut db: Option<tokio_postgres::Client> = None;
    let mut n = 0u64;
    while !shared.stop_writers.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_secs(3)).await;
        if db.as_ref().is_none_or(|c| c.is_closed()) {
            db = connect_db(&db_url).await.ok();
        }
        let Some(d) = db.as_mut() else { continue };
        let Ok(mut redis) = redis_spec.connect().await else {
            continue;
        };
        n += 1;
        if let Err(e) = truncate_once(d, &mut redis, &shared, n, products).await {
            tracing::debug!(error = %e, "truncate failed");
            shared.write_errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The truncater's `n`th transaction: TRUNCATE and reseed, with one probe (`probe:t:{pt}:<n>`).
async fn truncate_once(
    db: &mut tokio_postgres::Client,
    redis: &mut RedisConnection,
    shared: &Shared,
    n: u64,
    products: i64,
) -> Result<(), WorkloadError> {
    let tx = db.transaction().await?;
    tx.batch_execute(&format!("TRUNCATE recommendations; {}", reseed_recs_sql(products)))
        .await?;
    commit_with_probes(
        tx,
        redis,
        shared,
        vec![format!("probe:t:{{pt}}:{n}")],
        3 * RECS_PRODUCTS as u64,
        WriteKind::Truncate,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_kinds_are_named_in_declaration_order() {
        let kinds = [
            WriteKind::Price,
            WriteKind::Move,
            WriteKind::Insert,
            WriteKind::Delete,
            WriteKind::Recs,
            WriteKind::Bulk,
            WriteKind::Truncate,
        ];
        // `Shared::committed_by_kind` is indexed by `kind as usize` and reported under these names.
        let names: Vec<&str> = kinds.iter().map(|k| WRITE_KINDS[*k as usize]).collect();
        assert_eq!(names, WRITE_KINDS);
    }

    #[test]
    fn a_draw_takes_three_numbers_whatever_the_kind() {
        // Three numbers (kind, product, category) before any kind-specific one (recommendations'
        // product, bulk residue): a seed always gives the same workload.
        for seed in 0..50 {
            let mut a = Rng::new(seed);
            let mut b = Rng::new(seed);
            let draw = Draw::new(&mut a, 200);
            for _ in 0..3 {
                b.below(1);
            }
            assert_eq!(a.below(1_000_000), b.below(1_000_000));
            assert!((1..=200).contains(&draw.id) && (1..=6).contains(&draw.category));
        }
    }
}
