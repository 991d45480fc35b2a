#!/usr/bin/env python3
"""Commit -> invalidated latency and drain rate per target (issue: beyond one Redis), paired with
pg_recvlogical in the same run, as ../shared/bench/latency.py does for Redis.

Per write (a distinct row, paced single-row commits), on one clock (CLOCK_MONOTONIC):
  t_commit  the UPDATE returned,
  t_recv    pg_recvlogical (test_decoding, its own slot) printed the change,
  t_done    the target got the invalidation of the row's key:
              redis      Redis emitted the keyspace `del`/`unlink` event,
              feed       a follower's XREAD returned the feed entry naming the key,
              memcached  the `md` command for the key reached memcached (through a forwarding
                         proxy that timestamps each command line),
              purge      an HTTP purge request (Fastly shape) naming the key arrived (the listener
                         answers 200 at once).
Then a drain: --drain-rows rows in 10-row transactions committed while walbust is stopped; the
rate is keys observed / (last - first observation) once walbust starts.

Usage: bench/targets.py --walbust target/release/walbust --target redis|feed|memcached|purge
       [--rate 1000] [--seconds 10] [--drain-rows 100000]
Needs the PostgreSQL of ../shared/bench/pglab.sh (127.0.0.1:5499), redis-server, memcached,
psycopg, redis-py.
"""
import argparse, http.server, json, multiprocessing as mp, os, re, select, signal, socket, subprocess, sys, tempfile
import threading, time

import psycopg
import redis

PREFIX = "lat:"


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100.0 * len(xs)))] if xs else float("nan")


def summary(name, xs, expected):
    ms = [x * 1000 for x in xs]
    return (f"{name:<28} n={len(ms):>6}/{expected:<6} p50={pct(ms,50):7.2f} p90={pct(ms,90):7.2f} "
            f"p99={pct(ms,99):7.2f} p99.9={pct(ms,99.9):7.2f} max={max(ms) if ms else float('nan'):8.2f} ms")


class Seen:
    """Key id -> first time the target got its invalidation (thread-safe enough: setdefault)."""

    def __init__(self):
        self.at = {}

    def saw(self, ident, t):
        self.at.setdefault(ident, t)


ITEM = re.compile(rb"lat:item:(\d+)")


def observe_redis(port, seen, stop):
    ps = redis.Redis(port=port).pubsub()
    ps.psubscribe(f"__keyspace@0__:{PREFIX}item:*")
    while not stop.is_set():
        m = ps.get_message(timeout=0.05)
        if m and m["type"] == "pmessage" and m["data"] in (b"del", b"unlink"):
            seen.saw(int(m["channel"].rsplit(b":", 1)[1]), time.monotonic())


def observe_feed(port, seen, stop):
    r = redis.Redis(port=port)
    last = "$"
    while not stop.is_set():
        reply = r.xread({"walbust:feed": last}, count=512, block=200)
        t = time.monotonic()
        for _, entries in reply or []:
            for ident, fields in entries:
                last = ident
                for m in ITEM.finditer(fields.get(b"d", b"")):
                    seen.saw(int(m.group(1)), t)


def observe_memcached(listen_port, memcached_port, seen, stop):
    """A forwarding proxy: timestamps every `md` line on its way to memcached."""
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", listen_port))
    server.listen(8)

    def pump(src, dst, parse):
        buf = b""
        try:
            while True:
                chunk = src.recv(65536)
                if not chunk:
                    break
                if parse:
                    t = time.monotonic()
                    buf += chunk
                    *lines, buf = buf.split(b"\r\n")
                    for ln in lines:
                        if ln.startswith(b"md "):
                            m = ITEM.search(ln)
                            if m:
                                seen.saw(int(m.group(1)), t)
                dst.sendall(chunk)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.close()
            except OSError:
                pass

    server.settimeout(0.2)
    while not stop.is_set():
        try:
            client, _ = server.accept()
        except socket.timeout:
            continue
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        upstream = socket.create_connection(("127.0.0.1", memcached_port))
        upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=pump, args=(client, upstream, True), daemon=True).start()
        threading.Thread(target=pump, args=(upstream, client, False), daemon=True).start()


def observe_purge(port, seen, stop):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            t = time.monotonic()
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            for m in ITEM.finditer((self.headers.get("Surrogate-Key") or "").encode() + b" " + body):
                seen.saw(int(m.group(1)), t)
            # One write, no Nagle: a status line and a body in two segments would wait for a
            # delayed ACK and measure the loopback, not walbust.
            self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")

        def setup(self):
            super().setup()
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        do_PURGE = do_POST

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    stop.wait()
    httpd.shutdown()


OBSERVERS = {"redis": observe_redis, "feed": observe_feed, "memcached": observe_memcached, "purge": observe_purge}

LINE = re.compile(rb"table public\.items: UPDATE: id\[integer\]:(\d+)")


def recv_listener(cmd, seen, stop):
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, bufsize=0)
    buf = b""
    while not stop.is_set():
        if not select.select([p.stdout], [], [], 0.1)[0]:
            continue
        chunk = os.read(p.stdout.fileno(), 65536)
        if not chunk:
            break
        t = time.monotonic()
        buf += chunk
        *lines, buf = buf.split(b"\n")
        for ln in lines:
            m = LINE.search(ln)
            if m:
                seen.saw(int(m.group(1)), t)
    p.send_signal(signal.SIGINT)
    try:
        p.wait(5)
    except subprocess.TimeoutExpired:
        p.kill()


def observer_process(kind, args, out_path, stop, expect):
    """Runs one observer in its own process (no GIL shared with the others); writes what it saw
    to `out_path` when stopped or once it saw `expect` keys."""
    seen, inner = Seen(), threading.Event()
    fn = recv_listener if kind == "recv" else OBSERVERS[kind]
    thread = threading.Thread(target=fn, args=(*args, seen, inner), daemon=True)
    thread.start()
    while not stop.is_set() and (expect is None or len(seen.at) < expect):
        time.sleep(0.01)
    inner.set()
    thread.join(6)
    json.dump(seen.at, open(out_path, "w"))


def start_observer(kind, args, out_path, expect=None):
    stop = mp.Event()
    p = mp.Process(target=observer_process, args=(kind, args, out_path, stop, expect))
    p.start()
    return p, stop


def load(path):
    return {int(k): t for k, t in json.load(open(path)).items()}


def writer(dsn, ids, rate, out_path, start_at):
    conn = psycopg.connect(dsn, autocommit=True)
    cur = conn.cursor()
    got = {}
    interval = 1.0 / rate
    while time.monotonic() < start_at:
        time.sleep(0.001)
    nxt = time.monotonic()
    for i in ids:
        now = time.monotonic()
        if now < nxt:
            time.sleep(nxt - now)
        nxt += interval
        cur.execute("UPDATE items SET price = price + 1 WHERE id = %s", (i,))
        got[i] = time.monotonic()
    json.dump(got, open(out_path, "w"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--walbust", required=True)
    ap.add_argument("--target", choices=["redis", "feed", "memcached", "purge"], required=True)
    ap.add_argument("--rate", type=int, default=1000)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--writers", type=int, default=2)
    ap.add_argument("--drain-rows", type=int, default=100_000)
    ap.add_argument("--port-base", type=int, default=6440)
    ap.add_argument("--purge-rate-limit", type=float, default=0,
                    help="the purge target's rate_limit (requests/s; 0 = unlimited, the default here: "
                         "Fastly's default of 50/s measures the limit, not walbust)")
    a = ap.parse_args()

    n = a.rate * a.seconds
    rows = max(n, a.drain_rows) + 10
    admin = "host=127.0.0.1 port=5499 user=postgres dbname=postgres"
    dsn = "host=127.0.0.1 port=5499 user=postgres dbname=benchtgt"
    work = tempfile.mkdtemp(prefix="tgt-")
    redis_port, mc_port, proxy_port, http_port = a.port_base, a.port_base + 1, a.port_base + 2, a.port_base + 3
    procs = []
    with psycopg.connect(admin, autocommit=True) as c:
        for (s,) in c.execute("SELECT slot_name FROM pg_replication_slots WHERE database='benchtgt'").fetchall():
            c.execute("SELECT pg_drop_replication_slot(%s)", (s,))
        c.execute("DROP DATABASE IF EXISTS benchtgt")
        c.execute("CREATE DATABASE benchtgt")
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("CREATE TABLE items (id int PRIMARY KEY, price int)")
        c.execute("INSERT INTO items SELECT g, 0 FROM generate_series(1, %s) g", (rows,))
        c.execute("CREATE PUBLICATION pub_tgt FOR TABLE items")
        c.execute("SELECT pg_create_logical_replication_slot('wb_tgt', 'pgoutput')")
        c.execute("SELECT pg_create_logical_replication_slot('td_tgt', 'test_decoding')")
    observers = []
    try:
        procs.append(subprocess.Popen(["redis-server", "--port", str(redis_port), "--save", "", "--appendonly", "no",
                                       "--notify-keyspace-events", "Kg", "--dir", work], stdout=subprocess.DEVNULL))
        r = redis.Redis(port=redis_port)
        for _ in range(50):
            try:
                r.ping(); break
            except Exception:
                time.sleep(0.1)
        target_toml = f'[[redis]]\nurl = "redis://127.0.0.1:{redis_port}"\n'
        if a.target == "redis":
            # UNLINK of a missing key emits no keyspace event: every key exists before.
            pipe = r.pipeline(transaction=False)
            for i in range(1, rows + 1):
                pipe.set(f"{PREFIX}item:{i}", "cached")
                if i % 10000 == 0:
                    pipe.execute()
            pipe.execute()
            observer_args = (redis_port,)
        elif a.target == "feed":
            target_toml += 'feed = "walbust:feed"\n'
            observer_args = (redis_port,)
        elif a.target == "memcached":
            procs.append(subprocess.Popen(["memcached", "-l", "127.0.0.1", "-U", "0", "-p", str(mc_port), "-u", "root"]))
            time.sleep(0.3)
            target_toml = f'[[memcached]]\naddr = "127.0.0.1:{proxy_port}"\n'
            observer_args = (proxy_port, mc_port)
        else:
            target_toml = (f'[[purge]]\nkind = "fastly"\nurl = "http://127.0.0.1:{http_port}/service/bench/purge"\n'
                           f'token_env = "BENCH_PURGE_TOKEN"\nsurrogate_keys = ["keys"]\nrate_limit = {a.purge_rate_limit}\n')
            os.environ["BENCH_PURGE_TOKEN"] = "bench"
            observer_args = (http_port,)
        observers.append(start_observer(a.target, observer_args, f"{work}/done.json"))
        time.sleep(0.5)
        open(f"{work}/rules.yaml", "w").write(
            f'version: 1\nprefix: "{PREFIX}"\nrules:\n  - name: item\n    table: public.items\n    delete: ["item:{{id}}"]\n')
        open(f"{work}/walbust.toml", "w").write(
            f'[postgres]\nurl = "postgres://postgres@127.0.0.1:5499/benchtgt"\nslot = "wb_tgt"\npublication = "pub_tgt"\n'
            f'[rules]\npath = "{work}/rules.yaml"\n[http]\nlisten = "127.0.0.1:{http_port + 1}"\n' + target_toml)

        def start_walbust():
            p = subprocess.Popen([a.walbust, "run", "--config", f"{work}/walbust.toml"],
                                 stdout=open(f"{work}/walbust.log", "a"), stderr=subprocess.STDOUT)
            with psycopg.connect(dsn, autocommit=True) as c:
                for _ in range(300):
                    if c.execute("SELECT active FROM pg_replication_slots WHERE slot_name='wb_tgt'").fetchone()[0]:
                        return p
                    time.sleep(0.05)
            print("walbust never took the slot; log:", open(f"{work}/walbust.log").read()[-2000:])
            sys.exit(1)

        wb = start_walbust()
        procs.append(wb)
        recv_cmd = ["pg_recvlogical", "-h", "127.0.0.1", "-p", "5499", "-U", "postgres", "-d", "benchtgt",
                    "--slot", "td_tgt", "--start", "-f", "-"]
        observers.append(start_observer("recv", (recv_cmd,), f"{work}/recv.json"))
        time.sleep(1.5)
        ids = list(range(1, n + 1))
        start_at = time.monotonic() + 0.5
        ws = [mp.Process(target=writer, args=(dsn, ids[k::a.writers], a.rate / a.writers, f"{work}/w{k}.json", start_at))
              for k in range(a.writers)]
        t0 = time.monotonic()
        for w in ws:
            w.start()
        for w in ws:
            w.join()
        elapsed = time.monotonic() - t0 - 0.5
        time.sleep(2.0)
        commit = {}
        for k in range(a.writers):
            commit.update({int(x): t for x, t in json.load(open(f"{work}/w{k}.json")).items()})
        for p, stop in observers:
            stop.set()
            p.join(20)
        observers.clear()
        done, rc = load(f"{work}/done.json"), load(f"{work}/recv.json")
        print(f"target {a.target}: rate asked {a.rate}/s, achieved {len(commit)/elapsed:.0f}/s over {elapsed:.1f}s")
        print(summary("pg_recvlogical - commit", [rc[i] - commit[i] for i in commit if i in rc], len(commit)))
        print(summary(f"{a.target} - commit", [done[i] - commit[i] for i in commit if i in done], len(commit)))
        print(summary(f"{a.target} - pg_recvlogical", [done[i] - rc[i] for i in commit if i in done and i in rc],
                      len(commit)))
        print(f"invalidations never seen: {sum(1 for i in commit if i not in done)}")
        # walbust's own view: commit timestamp (server clock) to every target applied.
        try:
            import urllib.request
            text = urllib.request.urlopen(f"http://127.0.0.1:{http_port + 1}/metrics", timeout=2).read().decode()
            buckets = [ln for ln in text.splitlines() if ln.startswith("walbust_commit_to_applied_seconds_bucket")]
            le = re.compile(r'le="([^"]+)"')
            print("walbust_commit_to_applied_seconds:",
                  ", ".join("<= %s: %s" % (le.search(b).group(1), b.rsplit(" ", 1)[1]) for b in buckets))
        except Exception as e:
            print("metrics unavailable:", e)

        if a.drain_rows:
            wb.send_signal(signal.SIGTERM)
            wb.wait(20)
            with psycopg.connect(dsn, autocommit=True) as c:
                for start in range(1, a.drain_rows + 1, 10):
                    c.execute("UPDATE items SET price = price + 1 WHERE id BETWEEN %s AND %s",
                              (start, min(start + 9, a.drain_rows)))
            if a.target == "redis":
                pipe = r.pipeline(transaction=False)
                for i in range(1, a.drain_rows + 1):
                    pipe.set(f"{PREFIX}item:{i}", "cached")
                    if i % 10000 == 0:
                        pipe.execute()
                pipe.execute()
            proc, stop = start_observer(a.target, observer_args, f"{work}/drain.json", expect=a.drain_rows)
            time.sleep(0.5)
            procs.append(start_walbust())
            proc.join(300)
            if proc.is_alive():
                stop.set()
                proc.join(20)
            times = sorted(load(f"{work}/drain.json").values())
            if len(times) > 1:
                span = times[-1] - times[0]
                print(f"drain: {len(times)}/{a.drain_rows} keys in {span:.2f}s = {len(times)/span:,.0f} invalidations/s "
                      f"(10-row transactions)")
        return 0
    finally:
        for p, stop in observers:
            stop.set()
        for p in reversed(procs):
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        with psycopg.connect(admin, autocommit=True) as c:
            for (s,) in c.execute("SELECT slot_name FROM pg_replication_slots WHERE database='benchtgt'").fetchall():
                for _ in range(20):
                    try:
                        c.execute("SELECT pg_drop_replication_slot(%s)", (s,)); break
                    except Exception:
                        time.sleep(0.3)


if __name__ == "__main__":
    sys.exit(main())
