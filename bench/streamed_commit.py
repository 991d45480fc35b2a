#!/usr/bin/env python3
"""COMMIT -> applied for one large UPDATE (issue: speed, streaming).

Usage: bench/streamed_commit.py target/release/walbust true|false ROWS [DECODING_WORK_MEM]
Needs the PostgreSQL of ../shared/bench/pglab.sh (127.0.0.1:5499), redis-server, psycopg, redis-py.
"""
import psycopg, redis, subprocess, time, sys, os, tempfile
walbust, streaming, rows = sys.argv[1], sys.argv[2], int(sys.argv[3])
work_mem = sys.argv[4] if len(sys.argv) > 4 else "1MB"
dsn = "postgresql://postgres@127.0.0.1:5499/postgres"
with psycopg.connect(dsn, autocommit=True) as c:
    c.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name='big'")
    c.execute("DROP DATABASE IF EXISTS bigtxn")
    c.execute("CREATE DATABASE bigtxn")
c = psycopg.connect("postgresql://postgres@127.0.0.1:5499/bigtxn", autocommit=True)
c.execute("CREATE TABLE items (id int PRIMARY KEY, price int)")
c.execute("INSERT INTO items SELECT g, 0 FROM generate_series(1, %s) g", (rows,))
c.execute("CREATE PUBLICATION pub_big FOR TABLE items")
c.execute("SELECT pg_create_logical_replication_slot('big', 'pgoutput')")
work = tempfile.mkdtemp()
rp = subprocess.Popen(["redis-server", "--port", "6431", "--save", "", "--appendonly", "no", "--dir", work], stdout=subprocess.DEVNULL)
r = redis.Redis(port=6431)
for _ in range(50):
    try: r.ping(); break
    except Exception: time.sleep(0.1)
open(f"{work}/rules.yaml", "w").write('version: 1\nprefix: "d:"\nrules:\n  - name: item\n    table: items\n    delete: ["item:{id}"]\n    bump: ["ver:item:{id}"]\n    fallback:\n      bump: ["ver:items"]\n')
open(f"{work}/w.toml", "w").write(f'[postgres]\nurl = "postgres://postgres@127.0.0.1:5499/bigtxn"\nslot = "big"\npublication = "pub_big"\nstreaming = {streaming}\ndecoding_work_mem = \"{work_mem}\"\n[rules]\npath = "{work}/rules.yaml"\n[[redis]]\nurl = "redis://127.0.0.1:6431"\n[http]\nlisten = ""\n')
wb = subprocess.Popen([walbust, "run", "--config", f"{work}/w.toml"], stderr=open(f"{work}/wb.log", "w"))
time.sleep(2)
c.execute("INSERT INTO items VALUES (0, 0)")
while r.get("d:ver:item:0") is None: time.sleep(0.01)
t = time.monotonic()
c.execute("BEGIN"); c.execute("UPDATE items SET price = price + 1"); c.execute("COMMIT")
committed = time.monotonic()
while r.get("d:ver:items") is None:
    time.sleep(0.001)
    if time.monotonic() - committed > 120: print("timeout"); break
done = time.monotonic()
print(f"streaming={streaming} rows={rows}: transaction took {committed - t:.2f}s; fallback applied {1000*(done - committed):.0f} ms after COMMIT returned")
wb.terminate(); wb.wait(); rp.terminate()
