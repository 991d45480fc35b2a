//! One connection type for standalone Redis and Redis Cluster, so the read paths share code
//! (and tools that write next to readers, like walbust's chaos harness, can use either).

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::io::tcp::TcpSettings;
use redis::{Cmd, ConnectionInfo, IntoConnectionInfo, Pipeline, RedisFuture, Value};

/// TCP settings for every Redis connection walbust and its client make: `TCP_NODELAY`, as most
/// Redis clients set it (redis-rs leaves it off). A pipeline written in more than one segment
/// would otherwise wait for the server's delayed ACK of the first before the rest goes out.
pub fn tcp_settings() -> TcpSettings {
    TcpSettings::default().set_nodelay(true)
}

/// `redis://…` parsed, with [`tcp_settings`].
pub fn connection_info(url: &str) -> redis::RedisResult<ConnectionInfo> {
    Ok(url.into_connection_info()?.set_tcp_settings(tcp_settings()))
}

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
        let conn = redis::Client::open(connection_info(url)?)?
            .get_multiplexed_async_connection()
            .await?;
        Ok(RedisConnection::Single(conn))
    }

    /// A Redis Cluster from its seed nodes' URLs.
    pub async fn cluster(seeds: &[&str]) -> redis::RedisResult<RedisConnection> {
        let conn = redis::cluster::ClusterClient::builder(seeds.to_vec())
            .tcp_settings(tcp_settings())
            .build()?
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
