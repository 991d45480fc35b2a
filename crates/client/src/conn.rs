//! One connection type for standalone Redis and Redis Cluster, so the read paths share code
//! (and tools that write next to readers, like walbust's chaos harness, can use either).

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

/// A standalone Redis connection (multiplexed) or a Redis Cluster connection; both run any
/// command (`redis::AsyncCommands`), the cluster one routing it by key.
#[derive(Clone)]
pub enum RedisConnection {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl RedisConnection {
    /// `redis://…` (one server).
    pub async fn single(url: &str) -> redis::RedisResult<RedisConnection> {
        let conn = redis::Client::open(url)?.get_multiplexed_async_connection().await?;
        Ok(RedisConnection::Single(conn))
    }

    /// A Redis Cluster from its seed nodes' URLs.
    pub async fn cluster(seeds: &[&str]) -> redis::RedisResult<RedisConnection> {
        let conn = redis::cluster::ClusterClient::new(seeds.to_vec())?
            .get_async_connection()
            .await?;
        Ok(RedisConnection::Cluster(conn))
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self, RedisConnection::Cluster(_))
    }
}

impl ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConnection::Single(c) => c.req_packed_command(cmd),
            RedisConnection::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConnection::Single(c) => c.req_packed_commands(pipeline, offset, count),
            RedisConnection::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConnection::Single(c) => c.get_db(),
            RedisConnection::Cluster(c) => c.get_db(),
        }
    }
}
