//! The test harness itself: real PostgreSQL with wal_level=logical and a real redis-server on
//! free ports, gone after drop.

use std::io::{Read, Write};
use walbust_testkit::harness::{PgInstance, RedisInstance};

#[test]
fn postgres_and_redis_start_and_stop() {
    let pg = PgInstance::start().expect("start PostgreSQL");
    assert_eq!(pg.psql("postgres", "SHOW wal_level").unwrap().trim(), "logical");
    pg.create_database("smoke").unwrap();
    assert_eq!(pg.psql("smoke", "SELECT 40 + 2").unwrap().trim(), "42");
    let err = pg.psql("smoke", "SELECT nope").unwrap_err().to_string();
    assert!(err.contains("nope"), "{err}");

    let redis = RedisInstance::start().expect("start redis-server");
    let mut s = std::net::TcpStream::connect(("127.0.0.1", redis.port())).unwrap();
    s.write_all(b"PING\r\n").unwrap();
    let mut buf = [0u8; 7];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"+PONG\r\n");

    let (data, port) = (pg.data_dir().to_path_buf(), pg.port());
    drop(pg);
    assert!(!data.exists(), "data directory removed");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "server stopped"
    );
    let redis_port = redis.port();
    drop(redis);
    assert!(std::net::TcpStream::connect(("127.0.0.1", redis_port)).is_err());
}
