//! The Redis the harness runs walbust against: one server with a replica (the default), or a
//! three-node Redis Cluster (`--cluster`). How the harness's tasks reach it ([`RedisSpec`]) and
//! which node a Redis fault hits ([`Target::node`]: the server, or the shards in turn).

use crate::harness::{HarnessError, RedisCluster, RedisInstance};
use walbust_client::{CacheClient, RedisConnection};

/// Keyspace notifications for `del` events: the listener timestamps probe deletions.
const NOTIFY: [&str; 2] = ["--notify-keyspace-events", "Eg"];

pub(super) enum Target {
    Single {
        redis: RedisInstance,
        /// For [`super::Fault::RedisPromote`].
        replica: RedisInstance,
    },
    Cluster(RedisCluster),
}

/// How to connect: the node URLs, and whether they are a Cluster's seeds.
#[derive(Clone, Debug)]
pub(super) struct RedisSpec {
    pub(super) nodes: Vec<String>,
    pub(super) cluster: bool,
}

impl RedisSpec {
    pub(super) async fn connect(&self) -> redis::RedisResult<RedisConnection> {
        match self.cluster {
            true => RedisConnection::cluster(&self.nodes.iter().map(String::as_str).collect::<Vec<_>>()).await,
            false => RedisConnection::single(&self.nodes[0]).await,
        }
    }

    pub(super) async fn cache_client(&self, prefix: &str) -> redis::RedisResult<CacheClient> {
        Ok(CacheClient::with_connection(self.connect().await?, prefix))
    }

    /// The `[[redis]] url` of walbust's config (seeds comma-separated for a Cluster).
    pub(super) fn daemon_url(&self) -> String {
        self.nodes.join(",")
    }
}

/// Runs every command of `pipe`: in one round trip on a single server; one by one on a Cluster,
/// where a pipeline may not cross slots.
pub(super) async fn run_pipeline(conn: &mut RedisConnection, pipe: &redis::Pipeline) -> redis::RedisResult<()> {
    if !conn.is_cluster() {
        return pipe.query_async::<()>(conn).await;
    }
    for cmd in pipe.cmd_iter() {
        cmd.query_async::<()>(conn).await?;
    }
    Ok(())
}

impl Target {
    pub(super) fn start(cluster: bool) -> Result<Target, HarnessError> {
        if cluster {
            return Ok(Target::Cluster(RedisCluster::start_with_args(3, &NOTIFY)?));
        }
        let redis = RedisInstance::start_with_args(&NOTIFY)?;
        let replica = redis.start_replica()?;
        Ok(Target::Single { redis, replica })
    }

    pub(super) fn spec(&self) -> RedisSpec {
        match self {
            Target::Single { redis, .. } => RedisSpec {
                nodes: vec![redis.url()],
                cluster: false,
            },
            Target::Cluster(cluster) => RedisSpec {
                nodes: cluster.nodes.iter().map(RedisInstance::url).collect(),
                cluster: true,
            },
        }
    }

    /// The node the `occurrence`th Redis fault hits: the server, or the next shard.
    pub(super) fn node(&mut self, occurrence: usize) -> &mut RedisInstance {
        match self {
            Target::Single { redis, .. } => redis,
            Target::Cluster(cluster) => {
                let n = cluster.nodes.len();
                &mut cluster.nodes[occurrence % n]
            }
        }
    }

    pub(super) fn describe(&self) -> String {
        match self {
            Target::Single { redis, .. } => format!("Redis :{}", redis.port()),
            Target::Cluster(cluster) => {
                let ports: Vec<String> = cluster.nodes.iter().map(|n| format!(":{}", n.port())).collect();
                format!("Redis Cluster {}", ports.join(" "))
            }
        }
    }
}
