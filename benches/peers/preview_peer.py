"""Peer side of the audience-preview benchmark: Polars and DuckDB on the same filter.

Xeno's audience preview answers "how many customers match this rule, and show me a
few of them". This script builds the exact customer table that the Rust benchmark
builds, from the same seed, and times the two peer engines on the same query, so
BENCHMARKS.md can put Xeno's figure beside theirs from the same machine and run.

Data generator (the Rust side must reproduce it bit for bit)
-----------------------------------------------------------
All arithmetic is on unsigned 64-bit integers and wraps modulo 2**64.

    GAMMA = 0x9E3779B97F4A7C15

    mix(z):                       # splitmix64 finaliser
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
        z = (z ^ (z >> 27)) * 0x94D049BB133111EB
        return z ^ (z >> 31)

    value(i, k) = mix(seed + (3*i + k + 1) * GAMMA)     for row i in 0..n, k in 0..3

Defaults: seed = 42, n = 10_000_000. Row i is the customer with id i.

Columns of row i:

    total_spend = (value(i, 0) % 1_000_000) / 100.0    float64; the integer
                  numerator is "total_spend_cents", and the division is one IEEE-754
                  float64 division (Rust: `(v % 1_000_000) as f64 / 100.0`)
    visits      = value(i, 1) % 10                      0..=9; held as int64 in
                  Polars (Int64) and DuckDB (BIGINT)
    city        = CITIES[value(i, 2) % 20]              Polars: Categorical;
                  DuckDB: ENUM type `city_t` over CITIES in this order

    CITIES = ["Pune", "Delhi", "Mumbai", "Bengaluru", "Chennai", "Kolkata",
              "Hyderabad", "Ahmedabad", "Jaipur", "Lucknow", "Surat", "Kanpur",
              "Nagpur", "Indore", "Thane", "Bhopal", "Patna", "Vadodara",
              "Ghaziabad", "Ludhiana"]

Filter:  (total_spend > 5000 AND visits < 3) OR city = "Pune"
(`total_spend > 5000.0` is the same predicate as `total_spend_cents > 500_000`, since
cents / 100.0 is correctly rounded and monotone and 5000.0 is exact.)

The query returns the exact number of matching rows and a sample of up to 10
matching row ids. The sample is the 10 smallest matching ids (both engines return
them in row order; the script checks that against a numpy reference, so a
change in engine behaviour fails loudly instead of skewing the comparison).

Output
------
stdout, one JSON object per line:
  1. the data line, for the Rust side to assert it built the same table:
     {"engine": "data", "rows", "seed", "matches", "sum_total_spend_cents",
      "sum_visits", "pune_rows", "sample"}
  2. one line per engine and query ("count", "sample", "count+sample"):
     {"engine", "query", "rows", "matches", "median_ms", "min_ms", "max_ms", "runs",
      "warmup", "threads", "version", "storage", "sample" (sample queries only)}
stderr: progress and a human-readable table.

Timing: each engine's table is built and loaded outside the timing; each query is run
2 times as warm-up, then --runs times with time.perf_counter. Thread pools are left at
their defaults (all cores); the count used is reported.

    py=$(benches/peers/setup-venv)
    "$py" benches/peers/preview_peer.py --rows 10000000 --seed 42 --runs 15
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Callable

import duckdb
import numpy as np
import polars as pl

GAMMA = 0x9E3779B97F4A7C15
MIX_MULTIPLIER_1 = 0xBF58476D1CE4E5B9
MIX_MULTIPLIER_2 = 0x94D049BB133111EB
MASK_64 = (1 << 64) - 1

CITIES = [
    "Pune", "Delhi", "Mumbai", "Bengaluru", "Chennai", "Kolkata", "Hyderabad",
    "Ahmedabad", "Jaipur", "Lucknow", "Surat", "Kanpur", "Nagpur", "Indore", "Thane",
    "Bhopal", "Patna", "Vadodara", "Ghaziabad", "Ludhiana",
]  # fmt: skip
PUNE_CODE = CITIES.index("Pune")

SAMPLE_SIZE = 10
WARMUP_RUNS = 2
# Rows generated per numpy pass: keeps the uint64 temporaries near 8 MB each.
GENERATION_CHUNK_ROWS = 1 << 20


# ---------------------------------------------------------------------------------
# Data generation
# ---------------------------------------------------------------------------------


def mix_scalar(z: int) -> int:
    """splitmix64 finaliser on Python ints; the slow reference for the numpy version."""
    z = ((z ^ (z >> 30)) * MIX_MULTIPLIER_1) & MASK_64
    z = ((z ^ (z >> 27)) * MIX_MULTIPLIER_2) & MASK_64
    return z ^ (z >> 31)


def value_scalar(seed: int, row: int, k: int) -> int:
    return mix_scalar((seed + (3 * row + k + 1) * GAMMA) & MASK_64)


def mix_vectorised(z: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser on a uint64 array; uint64 multiplication wraps like Rust's."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(MIX_MULTIPLIER_1)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(MIX_MULTIPLIER_2)
    return z ^ (z >> np.uint64(31))


def values_vectorised(seed: int, rows: np.ndarray, k: int) -> np.ndarray:
    """value(i, k) for every i in `rows` (a uint64 array)."""
    with np.errstate(over="ignore"):
        counter = rows * np.uint64(3) + np.uint64(k + 1)
        return mix_vectorised(counter * np.uint64(GAMMA) + np.uint64(seed))


class CustomerTable:
    """The generated columns as numpy arrays, plus the reference answer of the filter."""

    def __init__(self, rows: int, seed: int) -> None:
        self.rows = rows
        self.seed = seed
        self.total_spend = np.empty(rows, dtype=np.float64)
        self.visits = np.empty(rows, dtype=np.int64)
        self.city_code = np.empty(rows, dtype=np.uint8)
        self.sum_total_spend_cents = 0
        for start in range(0, rows, GENERATION_CHUNK_ROWS):
            stop = min(start + GENERATION_CHUNK_ROWS, rows)
            row_ids = np.arange(start, stop, dtype=np.uint64)
            cents = values_vectorised(seed, row_ids, 0) % np.uint64(1_000_000)
            # Summing per chunk in uint64 cannot overflow (2**20 * 10**6 < 2**64);
            # the running total is a Python int.
            self.sum_total_spend_cents += int(cents.sum(dtype=np.uint64))
            self.total_spend[start:stop] = cents.astype(np.float64) / 100.0
            self.visits[start:stop] = values_vectorised(seed, row_ids, 1) % np.uint64(10)
            self.city_code[start:stop] = values_vectorised(seed, row_ids, 2) % np.uint64(20)

        matching = ((self.total_spend > 5000.0) & (self.visits < 3)) | (
            self.city_code == PUNE_CODE
        )
        self.matches = int(np.count_nonzero(matching))
        self.first_matching_ids = np.flatnonzero(matching)[:SAMPLE_SIZE].tolist()
        self.sum_visits = int(self.visits.sum())
        self.pune_rows = int(np.count_nonzero(self.city_code == PUNE_CODE))

    def check_against_scalar_reference(self, rows_to_check: int = 5) -> None:
        """Guards the vectorised generator against a numpy dtype or promotion change."""
        for row in range(min(rows_to_check, self.rows)):
            cents = value_scalar(self.seed, row, 0) % 1_000_000
            expected = (cents / 100.0, value_scalar(self.seed, row, 1) % 10,
                        value_scalar(self.seed, row, 2) % 20)  # fmt: skip
            actual = (float(self.total_spend[row]), int(self.visits[row]),
                      int(self.city_code[row]))  # fmt: skip
            if expected != actual:
                raise AssertionError(
                    f"vectorised generator disagrees with scalar reference at row {row}: "
                    f"{actual} != {expected}"
                )

    def data_line(self) -> dict:
        return {
            "engine": "data",
            "rows": self.rows,
            "seed": self.seed,
            "matches": self.matches,
            "sum_total_spend_cents": self.sum_total_spend_cents,
            "sum_visits": self.sum_visits,
            "pune_rows": self.pune_rows,
            "sample": self.first_matching_ids,
        }


# ---------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------


class QueryResult:
    def __init__(self, matches: int | None, sample: list[int] | None) -> None:
        self.matches = matches
        self.sample = sample


def check_result(table: CustomerTable, engine: str, query: str, result: QueryResult) -> None:
    if result.matches is not None and result.matches != table.matches:
        raise AssertionError(
            f"{engine} {query}: count {result.matches} != reference {table.matches}"
        )
    if result.sample is not None and result.sample != table.first_matching_ids:
        raise AssertionError(
            f"{engine} {query}: sample {result.sample} != first matching ids "
            f"{table.first_matching_ids}"
        )


def time_query(run_query: Callable[[], QueryResult], runs: int) -> tuple[QueryResult, list[float]]:
    result = None
    for _ in range(WARMUP_RUNS):
        result = run_query()
    timings_ms = []
    for _ in range(runs):
        started = time.perf_counter()
        result = run_query()
        timings_ms.append((time.perf_counter() - started) * 1000.0)
    return result, timings_ms


def timing_line(table: CustomerTable, engine: str, query: str, result: QueryResult,
                timings_ms: list[float], threads: int, version: str, storage: str) -> dict:  # fmt: skip
    line = {
        "engine": engine,
        "query": query,
        "rows": table.rows,
        "matches": table.matches,
        "median_ms": round(statistics.median(timings_ms), 3),
        "min_ms": round(min(timings_ms), 3),
        "max_ms": round(max(timings_ms), 3),
        "runs": len(timings_ms),
        "warmup": WARMUP_RUNS,
        "threads": threads,
        "version": version,
        "storage": storage,
    }
    if result.sample is not None:
        line["sample"] = result.sample
    return line


def run_polars(table: CustomerTable, runs: int) -> list[dict]:
    frame = pl.DataFrame(
        {
            "total_spend": table.total_spend,
            "visits": table.visits,
            "city": pl.Series(CITIES).gather(table.city_code.astype(np.int64)),
        }
    ).with_columns(pl.col("city").cast(pl.Categorical))
    # Row index materialised once, before timing, like a stored customer id column.
    frame = frame.with_row_index("id").rechunk()
    lazy_frame = frame.lazy()

    predicate = ((pl.col("total_spend") > 5000.0) & (pl.col("visits") < 3)) | (
        pl.col("city") == "Pune"
    )
    count_query = lazy_frame.filter(predicate).select(pl.len())
    sample_query = lazy_frame.filter(predicate).select(pl.col("id")).head(SAMPLE_SIZE)

    def count_only() -> QueryResult:
        return QueryResult(int(count_query.collect().item()), None)

    def sample_only() -> QueryResult:
        return QueryResult(None, sample_query.collect()["id"].to_list())

    def count_and_sample() -> QueryResult:
        # One request, both answers: lets Polars share the filtered scan if it can.
        counted, sampled = pl.collect_all([count_query, sample_query])
        return QueryResult(int(counted.item()), sampled["id"].to_list())

    threads = pl.thread_pool_size()
    storage = "total_spend Float64, visits Int64, city Categorical, id from with_row_index"
    lines = []
    for query, run_query in (("count", count_only), ("sample", sample_only),
                             ("count+sample", count_and_sample)):  # fmt: skip
        result, timings_ms = time_query(run_query, runs)
        check_result(table, "polars", query, result)
        lines.append(timing_line(table, "polars", query, result, timings_ms, threads,
                                 pl.__version__, storage))  # fmt: skip
    return lines


def run_duckdb(table: CustomerTable, runs: int) -> list[dict]:
    connection = duckdb.connect(":memory:")
    city_literals = ", ".join(f"'{city}'" for city in CITIES)
    connection.execute(f"CREATE TYPE city_t AS ENUM ({city_literals})")
    # DuckDB scans a dict of numpy arrays by name without pyarrow; the city code is
    # mapped to the ENUM through a list lookup so the table stores the native type.
    customer_columns = {
        "id": np.arange(table.rows, dtype=np.int64),
        "total_spend": table.total_spend,
        "visits": table.visits,
        "city_code": table.city_code,
    }
    connection.register("customer_columns", customer_columns)
    connection.execute(
        f"""
        CREATE TABLE t AS
        SELECT id, total_spend, visits, ([{city_literals}])[city_code + 1]::city_t AS city
        FROM customer_columns
        """
    )
    connection.unregister("customer_columns")
    del customer_columns
    loaded_rows = connection.execute("SELECT count(*) FROM t").fetchone()[0]
    if loaded_rows != table.rows:
        raise AssertionError(f"duckdb loaded {loaded_rows} rows, expected {table.rows}")

    predicate = "(total_spend > 5000 AND visits < 3) OR city = 'Pune'"
    count_sql = f"SELECT count(*) FROM t WHERE {predicate}"
    sample_sql = f"SELECT id FROM t WHERE {predicate} LIMIT {SAMPLE_SIZE}"
    count_and_sample_sql = (
        f"SELECT ({count_sql}) AS matches, "
        f"(SELECT list(id) FROM ({sample_sql})) AS sample"
    )

    def count_only() -> QueryResult:
        return QueryResult(connection.execute(count_sql).fetchone()[0], None)

    def sample_only() -> QueryResult:
        return QueryResult(None, [row[0] for row in connection.execute(sample_sql).fetchall()])

    def count_and_sample() -> QueryResult:
        matches, sample = connection.execute(count_and_sample_sql).fetchone()
        # list() over zero rows is NULL, not an empty list.
        return QueryResult(matches, list(sample or []))

    threads = int(connection.execute("SELECT current_setting('threads')").fetchone()[0])
    storage = "native table: id BIGINT, total_spend DOUBLE, visits BIGINT, city ENUM"
    lines = []
    for query, run_query in (("count", count_only), ("sample", sample_only),
                             ("count+sample", count_and_sample)):  # fmt: skip
        result, timings_ms = time_query(run_query, runs)
        check_result(table, "duckdb", query, result)
        lines.append(timing_line(table, "duckdb", query, result, timings_ms, threads,
                                 duckdb.__version__, storage))  # fmt: skip
    connection.close()
    return lines


# ---------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------


def print_table(lines: list[dict]) -> None:
    header = f"{'engine':<8} {'query':<13} {'matches':>10} {'median ms':>10} " \
             f"{'min ms':>9} {'max ms':>9} {'runs':>5} {'threads':>7}  version"  # fmt: skip
    print(header, file=sys.stderr)
    print("-" * len(header), file=sys.stderr)
    for line in lines:
        print(
            f"{line['engine']:<8} {line['query']:<13} {line['matches']:>10} "
            f"{line['median_ms']:>10.2f} {line['min_ms']:>9.2f} {line['max_ms']:>9.2f} "
            f"{line['runs']:>5} {line['threads']:>7}  {line['version']}",
            file=sys.stderr,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000, help="customers to generate")
    parser.add_argument("--seed", type=int, default=42, help="generator seed (taken mod 2**64)")
    parser.add_argument("--runs", type=int, default=15, help="timed runs per query")
    arguments = parser.parse_args()
    if arguments.rows < 0 or arguments.runs < 1:
        parser.error("--rows must be >= 0 and --runs >= 1")
    seed = arguments.seed & MASK_64

    started = time.perf_counter()
    table = CustomerTable(arguments.rows, seed)
    table.check_against_scalar_reference()
    print(f"generated {table.rows} rows in {time.perf_counter() - started:.1f} s",
          file=sys.stderr)  # fmt: skip
    print(json.dumps(table.data_line()), flush=True)

    lines = []
    for run_engine in (run_polars, run_duckdb):
        for line in run_engine(table, arguments.runs):
            print(json.dumps(line), flush=True)
            lines.append(line)
    print_table(lines)


if __name__ == "__main__":
    main()
