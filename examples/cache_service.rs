//! A cache-aside HTTP service over the catalog schema, using `walbust::client`:
//!
//! ```text
//! cargo run --example cache_service -- postgres://postgres@127.0.0.1/catalog redis://127.0.0.1:6379 127.0.0.1:8080
//! curl localhost:8080/product/1          # product JSON, versioned by shop:ver:product:1
//! curl localhost:8080/category/2         # product list of a category, filed under tag shop:tag:category:2
//! curl localhost:8080/metrics            # the client's counters (hits, misses, loads, lease waits …)
//! ```
//!
//! Reads use `walbust::client`'s defaults: a lease per missing key (one load however many
//! requests miss it at once), single-flight, a timeout on every Redis command with the database
//! as the fallback (at most 32 loads at a time), and a circuit that skips a failing Redis.
//!
//! With `walbust run` streaming the same database, an UPDATE of product 1 bumps its version key
//! and the next request loads the new row; a product moved between categories invalidates both
//! category lists through their tags.

use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use walbust::client::{CacheClient, Entry};

async fn handle(path: &str, cache: &mut CacheClient, db: &tokio_postgres::Client) -> Result<String, String> {
    let mut parts = path.trim_matches('/').split('/');
    let (kind, id) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if kind == "metrics" {
        return Ok(cache.stats().to_prometheus("cache_service"));
    }
    let id: i64 = id.parse().map_err(|_| format!("bad id `{id}`"))?;
    match kind {
        "product" => {
            let key = format!("product:{id}:json");
            let version = format!("ver:product:{id}");
            let entry = Entry {
                key: &key,
                versions: &[&version],
                tags: &[],
            };
            let (json, source) = cache
                .get_or_load(&entry, || async {
                    let row = db
                        .query_opt("SELECT row_to_json(p)::text FROM products p WHERE id = $1", &[&id])
                        .await
                        .map_err(|e| e.to_string())?;
                    Ok::<_, String>(row.map(|r| r.get::<_, String>(0)).unwrap_or_else(|| "null".into()))
                })
                .await
                .map_err(|e| e.to_string())?;
            Ok(format!("{{\"source\":\"{source:?}\",\"product\":{json}}}"))
        }
        "category" => {
            let key = format!("category:{id}:list");
            let tag = format!("category:{id}");
            let entry = Entry {
                key: &key,
                versions: &[],
                tags: &[&tag],
            };
            let (json, source) = cache
                .get_or_load(&entry, || async {
                    let row = db
                        .query_one(
                            "SELECT coalesce(json_agg(json_build_object('id', id, 'name', name, 'price_cents', price_cents) ORDER BY id), '[]')::text FROM products WHERE category_id = $1",
                            &[&id],
                        )
                        .await
                        .map_err(|e| e.to_string())?;
                    Ok::<_, String>(row.get::<_, String>(0))
                })
                .await
                .map_err(|e| e.to_string())?;
            Ok(format!("{{\"source\":\"{source:?}\",\"products\":{json}}}"))
        }
        _ => Err("try /product/<id>, /category/<id> or /metrics".into()),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let db_url = args
        .next()
        .ok_or("usage: cache_service <postgres url> <redis url> [listen]")?;
    let redis_url = args
        .next()
        .ok_or("usage: cache_service <postgres url> <redis url> [listen]")?;
    let listen = args.next().unwrap_or_else(|| "127.0.0.1:8080".into());
    let (db, connection) = tokio_postgres::connect(&db_url, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    let db = Arc::new(db);
    let cache = CacheClient::connect(&redis_url, "shop:").await?;
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    eprintln!("serving on http://{listen}/product/<id> and /category/<id>");
    loop {
        let (mut socket, _) = listener.accept().await?;
        let (db, mut cache) = (db.clone(), cache.clone());
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            let n = socket.read(&mut buf).await.unwrap_or(0);
            let head = String::from_utf8_lossy(&buf[..n]);
            let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
            let (status, body) = match handle(&path, &mut cache, &db).await {
                Ok(body) => ("200 OK", body),
                Err(e) => ("400 Bad Request", format!("{{\"error\":{}}}", serde_json::json!(e))),
            };
            let response = format!(
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = socket.write_all(response.as_bytes()).await;
        });
    }
}
