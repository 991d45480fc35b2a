#!/usr/bin/env python3
"""COMMIT -> applied for one large UPDATE, paired with pg_recvlogical in the same run (issue: speed,
streaming).

One transaction updates ROWS rows. Both consumers decode it from their own slot of the same server,
with the same `logical_decoding_work_mem` (set server-wide for the run, so both walsenders stream —
or spill — at the same size) and the same streaming choice:
  t_commit  COMMIT returned to the writer,
  t_recv    pg_recvlogical (test_decoding; `stream-changes` when streaming) printed the COMMIT
            (`COMMIT` or `committing streamed transaction`) -> the floor,
  t_done    walbust applied the transaction's fallback bump (its keys pass the fan-out limit).

Usage: bench/streamed_commit_paired.py target/release/walbust on|off ROWS [WORK_MEM=1MB] [RUNS=3]
Needs the PostgreSQL of ../shared/bench/pglab.sh (127.0.0.1:5499), redis-server, psycopg, redis-py.
"""
import os, re, subprocess, sys, tempfile, threading, time

import psycopg
from psycopg import sql
import redis

walbust, mode, rows = sys.argv[1], sys.argv[2], int(sys.argv[3])
work_mem = sys.argv[4] if len(sys.argv) > 4 else "1MB"
runs = int(sys.argv[5]) if len(sys.argv) > 5 else 3
streaming = mode == "on"
admin = "postgresql://postgres@127.0.0.1:5499/postgres"
dsn = "postgresql://postgres@127.0.0.1:5499/bigpair"

with psycopg.connect(admin, autocommit=True) as c:
    for (s,) in c.execute("SELECT slot_name FROM pg_replication_slots WHERE database = 'bigpair'").fetchall():
        c.execute("SELECT pg_drop_replication_slot(%s)", (s,))
    c.execute("DROP DATABASE IF EXISTS bigpair")
    c.execute("CREATE DATABASE bigpair")
    c.execute("ALTER SYSTEM SET logical_decoding_work_mem = %s" % sql.quote(work_mem))
    c.execute("SELECT pg_reload_conf()")
c = psycopg.connect(dsn, autocommit=True)
c.execute("CREATE TABLE items (id int PRIMARY KEY, price int)")
c.execute("INSERT INTO items SELECT g, 0 FROM generate_series(0, %s) g", (rows,))
c.execute("CREATE PUBLICATION pub_pair FOR TABLE items")
c.execute("SELECT pg_create_logical_replication_slot('wb_pair', 'pgoutput')")
c.execute("SELECT pg_create_logical_replication_slot('td_pair', 'test_decoding')")

work = tempfile.mkdtemp()
rp = subprocess.Popen(["redis-server", "--port", "6433", "--save", "", "--appendonly", "no", "--dir", work],
                      stdout=subprocess.DEVNULL)
r = redis.Redis(port=6433)
for _ in range(50):
    try:
        r.ping(); break
    except Exception:
        time.sleep(0.1)
open(f"{work}/rules.yaml", "w").write(
    'version: 1\nprefix: "d:"\nrules:\n  - name: item\n    table: items\n    delete: ["item:{id}"]\n'
    '    bump: ["ver:item:{id}"]\n    fallback:\n      bump: ["ver:items"]\n')
open(f"{work}/w.toml", "w").write(
    f'[postgres]\nurl = "{dsn}"\nslot = "wb_pair"\npublication = "pub_pair"\nstreaming = {str(streaming).lower()}\n'
    f'decoding_work_mem = ""\n[rules]\npath = "{work}/rules.yaml"\n[[redis]]\nurl = "redis://127.0.0.1:6433"\n'
    f'[http]\nlisten = ""\n')
wb = subprocess.Popen([walbust, "run", "--config", f"{work}/w.toml"], stderr=open(f"{work}/wb.log", "w"))
cmd = ["pg_recvlogical", "-h", "127.0.0.1", "-p", "5499", "-U", "postgres", "-d", "bigpair", "--slot", "td_pair",
       "--start", "-f", "-"]
if streaming:
    cmd += ["-o", "stream-changes=1"]
recv = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, bufsize=0)
commits = {}  # xid -> when pg_recvlogical printed its COMMIT line
XID = re.compile(rb"(?:COMMIT|committing streamed transaction TXN) (\d+)")


def read_recv():
    buf = b""
    while True:
        chunk = os.read(recv.stdout.fileno(), 1 << 20)
        if not chunk:
            return
        t = time.monotonic()
        buf += chunk
        *lines, buf = buf.split(b"\n")
        for ln in lines:
            m = XID.match(ln)
            if m:
                commits.setdefault(int(m.group(1)), t)


threading.Thread(target=read_recv, daemon=True).start()
time.sleep(2)
try:
    for run in range(runs):
        r.delete("d:ver:items")
        t = time.monotonic()
        with c.transaction():
            xid = int(c.execute("SELECT pg_current_xact_id()::text").fetchone()[0])
            c.execute("UPDATE items SET price = price + 1")
        committed = time.monotonic()
        while r.get("d:ver:items") is None:
            time.sleep(0.0005)
            if time.monotonic() - committed > 300:
                print("timeout waiting for walbust"); break
        done = time.monotonic()
        while xid not in commits and time.monotonic() - committed < 300:
            time.sleep(0.0005)
        got = commits.get(xid, float("nan"))
        print(f"streaming={mode} rows={rows} work_mem={work_mem} run {run + 1}: UPDATE took {committed - t:.2f} s; "
              f"after COMMIT returned: pg_recvlogical {1000 * (got - committed):.0f} ms, "
              f"walbust applied {1000 * (done - committed):.0f} ms, excess {1000 * (done - got):.0f} ms")
        time.sleep(1)
finally:
    wb.terminate(); wb.wait()
    recv.terminate(); recv.wait()
    rp.terminate()
    with psycopg.connect(admin, autocommit=True) as a:
        a.execute("ALTER SYSTEM RESET logical_decoding_work_mem")
        a.execute("SELECT pg_reload_conf()")
        for _ in range(20):
            try:
                for (s,) in a.execute("SELECT slot_name FROM pg_replication_slots WHERE database = 'bigpair'").fetchall():
                    a.execute("SELECT pg_drop_replication_slot(%s)", (s,))
                break
            except Exception:
                time.sleep(0.3)
