"""The CSV import bench's data and its peer.

  import_peer.py generate --rows N --out FILE   writes a CRM-like customer CSV
  import_peer.py duckdb --file FILE --runs N    times DuckDB reading it into a
                                                table; prints one JSON line

The file has 10 columns (id, email, first_name, last_name, city, country,
plan, age, lifetime_spend, signed_up), deterministic for a given row count.
The duckdb line also carries the member counts of the bench's segments, so
the bench checks that Xeno's segments hold exactly those customers.
"""

import argparse
import json
import random
import statistics
import sys
import time

CITIES = ["Paris", "London", "Berlin", "Madrid", "Rome", "Oslo", "Lisbon", "Vienna"]
COUNTRIES = ["FR", "GB", "DE", "ES", "IT", "NO", "PT", "AT"]
PLANS = ["free", "basic", "pro", "enterprise"]
FIRST = ["Ada", "Bo", "Cy", "Di", "Ed", "Fa", "Gus", "Hal", "Ivy", "Jo"]
LAST = ["Smith", "Lovelace", "Stone", "Young", "Arbor", "Diddley", "Nash", "Oakes"]

# The bench's segments, in the rule DSL and in SQL.
SEGMENTS = [
    ("big spenders", "lifetime_spend > 5000", "lifetime_spend > 5000"),
    ("paris pro", 'plan = "pro" and city = "Paris"', "plan = 'pro' AND city = 'Paris'"),
    ("young", "age < 30", "age < 30"),
]


def generate(rows, out):
    rng = random.Random(42)
    with open(out, "w", newline="") as f:
        f.write("id,email,first_name,last_name,city,country,plan,age,lifetime_spend,signed_up\n")
        for i in range(rows):
            c = rng.randrange(len(CITIES))
            f.write(
                f"cust-{i},user{i}@example.com,{FIRST[i % 10]},{LAST[i % 8]},{CITIES[c]},"
                f"{COUNTRIES[c]},{PLANS[rng.randrange(4)]},{rng.randrange(18, 80)},"
                f"{rng.randrange(0, 1000000) / 100:.2f},"
                f"20{rng.randrange(15, 25)}-{rng.randrange(1, 13):02d}-{rng.randrange(1, 29):02d}\n"
            )


def duckdb_peer(path, runs):
    import duckdb

    times = []
    counts = None
    for _ in range(runs):
        con = duckdb.connect()
        started = time.perf_counter()
        con.execute(f"CREATE TABLE customers AS SELECT * FROM read_csv('{path}')")
        times.append(time.perf_counter() - started)
        rows = con.execute("SELECT count(*) FROM customers").fetchone()[0]
        counts = {
            name: con.execute(f"SELECT count(*) FROM customers WHERE {sql}").fetchone()[0]
            for name, _, sql in SEGMENTS
        }
        con.close()
    print(json.dumps({
        "engine": f"duckdb {duckdb.__version__}",
        "rows": rows,
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "counts": counts,
        "segments": [{"name": n, "rule": r} for n, r, _ in SEGMENTS],
    }))


def main():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate")
    g.add_argument("--rows", type=int, required=True)
    g.add_argument("--out", required=True)
    d = sub.add_parser("duckdb")
    d.add_argument("--file", required=True)
    d.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    if args.command == "generate":
        generate(args.rows, args.out)
    else:
        duckdb_peer(args.file, args.runs)


if __name__ == "__main__":
    sys.exit(main())
