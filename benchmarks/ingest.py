"""Ingestion benchmark: a synthetic registrar feed through `timeline.ingest.ingest_file`.

    .venv/bin/python -m benchmarks.ingest [--events N] [--students M] [--dir PATH]

It writes a feed of N events over M students as JSON Lines (streaming, chunks of students
in student order, each chunk's events interleaved by `occurred_on` the way a registrar
export of a batch of students comes out), then measures, each phase in its own spawned
child process so that the peak RSS is that phase's alone (not the generator's):

1. `atomic`: the file into a fresh SQLite store (dry validation pass, then write pass);
2. `re-ingest`: the same file again into that store, every record a duplicate;
3. `partial`: the file into another fresh store in the one-pass mode;
4. `bare`: the rows the store wrote to `stored_events` (the same number, the library's
   table shape, the library's JSON state layout and size) inserted with plain `sqlite3`
   `executemany` in one transaction into a fresh file: the floor any store pays;
5. with a PostgreSQL server (`--postgres URL`, else `TIMELINE_BENCH_POSTGRES_URL` or
   `TIMELINE_TEST_POSTGRES_URL`): `pg atomic`, the file into a fresh schema, and
   `pg bare`, the same rows with psycopg `COPY` in one transaction into the library's
   table shape (its primary key and notification-id index included) in another fresh
   schema. Both schemas are dropped afterwards.

With `--baseline-ref REF`, the atomic ingest of git revision REF (exported to a temporary
folder) runs right before this one's, into a fresh SQLite store (and a fresh schema):
before and after in the same run, each against the same bare insert (and `COPY`).

`--skip-sqlite` leaves out phases 1-4 (the PostgreSQL figures alone).

Targets: atomic rate / bare rate ≥ 0.2 (SQLite) and ≥ 0.25 (PostgreSQL, against `COPY`),
re-ingest ≥ 3x the atomic rate, peak RSS of an ingest well under 300 MB.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import multiprocessing
import os
import random
import resource
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

CHUNK_STUDENTS = 250  # students per export chunk (their events interleaved by date)
BARE_CHUNK_ROWS = 50_000
TARGET_BARE_RATIO = 0.2
TARGET_COPY_RATIO = 0.25
TARGET_REINGEST_SPEEDUP = 3.0
TARGET_RSS_MB = 300

STREETS = (
    "Sec. 4, Roosevelt Rd., Da'an Dist., Taipei City",
    "Sec. 1, Daxue Rd., East Dist., Hsinchu City",
    "Zhongshan S. Rd., Zhongzheng Dist., Taipei City",
    "Sec. 3, Taiwan Blvd., Xitun Dist., Taichung City",
    "Shengli Rd., East Dist., Tainan City",
    "Lianhai Rd., Gushan Dist., Kaohsiung City",
    "Sec. 2, Zhongyang Rd., Banqiao Dist., New Taipei City",
)
NOTES = (
    "imported from SIS nightly export",
    "confirmed by the international office",
    "entered by counter staff",
)


# -- the feed ------------------------------------------------------------------------------
def semester(day: date) -> str:
    """The ROC academic semester of a day, e.g. 2024-09-15 -> `113-1`."""
    year = day.year if day.month >= 8 else day.year - 1
    term = 1 if day.month >= 8 or day.month == 1 else 2
    return f"{year - 1911}-{term}"


def lifecycle(rng: random.Random) -> Iterator[tuple[str, str, date, dict[str, Any]]]:
    """A plausible, valid, endless life of one student: (source, type, day, fields)."""
    start_year = rng.randint(2018, 2024)
    term_start = date(start_year, 9, 1) if rng.random() < 0.7 else date(start_year, 2, 17)
    day = term_start - timedelta(days=rng.randint(3, 25))
    reg = "registrar"

    def later(low: int, high: int) -> date:
        nonlocal day
        day += timedelta(days=rng.randint(low, high))
        return day

    if rng.random() < 0.08:
        yield (
            reg,
            "entered",
            day,
            {"visa": "visitor", "visa_code": "FS", "stay_until": day + timedelta(days=90)},
        )
        yield reg, "visa_changed", later(5, 30), {"to": "resident"}
    else:
        fields: dict[str, Any] = {"visa": "resident"}
        if rng.random() < 0.6:
            fields["visa_code"] = "FS"
        yield reg, "entered", day, fields
    day = max(day, term_start)
    yield reg, "registered", later(0, 10), {"semester": semester(day)}
    admission = rng.random() < 0.05
    applied: dict[str, Any] = {"application": "initial"}
    if admission:
        applied["basis"] = "admission_notice"
    if rng.random() < 0.1:
        applied["by_agent"] = True
    yield reg, "arc_applied", later(1, 20), applied
    issued = later(7, 20)
    valid_until = issued + timedelta(days=180 if admission else 365)
    yield (
        reg,
        "arc_issued",
        issued,
        {
            "valid_until": valid_until,
            "arc_number": f"A{rng.randint(800_000_000, 899_999_999)}",
        },
    )
    yield "housing", "address_changed", later(1, 60), {"address": address(rng)}
    yield reg, "details_updated", later(3, 45), {"fields": ["address"]}
    while True:
        roll = rng.random()
        if roll < 0.03:
            yield (
                "housing",
                "retracted",
                later(0, 3),
                {"retracts": None, "reason": "wrong unit number"},
            )
            yield "housing", "address_changed", later(0, 3), {"address": address(rng)}
            yield reg, "details_updated", later(1, 30), {"fields": ["address"]}
        elif roll < 0.15:
            yield "housing", "address_changed", later(20, 120), {"address": address(rng)}
            yield reg, "details_updated", later(3, 40), {"fields": ["address"]}
        elif roll < 0.18:
            yield reg, "passport_lost", later(10, 90), {}
            yield (
                reg,
                "passport_replaced",
                later(7, 30),
                {"passport_number": f"P{rng.randint(10**7, 10**8 - 1)}"},
            )
            yield reg, "details_updated", later(1, 20), {"fields": ["passport"]}
        elif roll < 0.20:
            yield (
                reg,
                "fine_imposed",
                later(10, 60),
                {"fine": "late_details_update", "amount_ntd": 2000},
            )
            yield (
                reg,
                "fine_paid",
                later(3, 30),
                {"amount_ntd": 2000, "fine": "late_details_update"},
            )
        elif roll < 0.22:
            yield reg, "arc_lost", later(10, 90), {}
            yield reg, "arc_applied", later(1, 7), {"application": "replacement"}
            yield (
                reg,
                "arc_issued",
                later(7, 14),
                {"valid_until": max(valid_until, day), "application": "replacement"},
            )
        elif roll < 0.35:
            yield reg, "departed", later(30, 120), {}
            yield reg, "entered", later(7, 40), {"visa": "arc"}
        yield reg, "registered", later(60, 150), {"semester": semester(day)}
        if (valid_until - day).days < 90:
            yield reg, "arc_applied", later(1, 30), {"application": "extension"}
            issued = later(5, 14)
            valid_until = max(valid_until, issued) + timedelta(days=365)
            yield (
                reg,
                "arc_issued",
                issued,
                {"valid_until": valid_until, "application": "extension"},
            )


def address(rng: random.Random) -> str:
    """A plausible Taiwanese address in English."""
    return f"{rng.randint(1, 12)}F., No. {rng.randint(1, 300)}, {rng.choice(STREETS)}"


def student_events(
    rng: random.Random, student_id: str, count: int
) -> list[tuple[date, dict[str, Any]]]:
    """The first `count` feed events of one student, as (occurred_on, JSON object)."""
    events: list[tuple[date, dict[str, Any]]] = []
    last_housing: str | None = None
    for seq, (source, kind, day, fields) in enumerate(itertools.islice(lifecycle(rng), count), 1):
        prefix = "HSG" if source == "housing" else "REG"
        event_id = f"{prefix}-{student_id}-{seq:03d}"
        obj: dict[str, Any] = {
            "event_id": event_id,
            "source": source,
            "student_id": student_id,
            "type": kind,
            "occurred_on": day.isoformat(),
        }
        for name, value in fields.items():
            obj[name] = value.isoformat() if isinstance(value, date) else value
        if kind == "retracted":
            if last_housing is None:  # nothing to retract (cut short): a plain move instead
                obj = {**obj, "type": "address_changed", "address": address(rng)}
                del obj["retracts"], obj["reason"]
            else:
                obj["retracts"] = last_housing
        if obj["type"] == "address_changed":
            last_housing = event_id
        if rng.random() < 0.08:
            obj["note"] = rng.choice(NOTES)
        events.append((day, obj))
    return events


def write_feed(path: Path, events: int, students: int, seed: int, prefix: str = "S") -> int:
    """Write the feed, streaming; returns its size in bytes (student ids `prefix` + digits)."""
    rng = random.Random(seed)
    base, extra = divmod(events, students)
    with path.open("w", encoding="utf-8") as out:
        for first in range(0, students, CHUNK_STUDENTS):
            numbers = range(first, min(first + CHUNK_STUDENTS, students))
            counts = [base + (1 if n < extra else 0) for n in numbers]
            for i in range(0, len(counts) - 1, 2):  # vary the length, keep the total
                swing = rng.randint(0, min(4, base - 1)) if base > 1 else 0
                counts[i] += swing
                counts[i + 1] -= swing
            chunk: list[tuple[date, int, int, dict[str, Any]]] = []
            for position, (number, count) in enumerate(zip(numbers, counts, strict=True)):
                for seq, (day, obj) in enumerate(
                    student_events(rng, f"{prefix}{number:07d}", count)
                ):
                    chunk.append((day, position, seq, obj))
            chunk.sort(key=lambda row: row[:3])
            out.writelines(json.dumps(row[3], ensure_ascii=False) + "\n" for row in chunk)
    return path.stat().st_size


# -- the phases (each runs in a fresh child process) -------------------------------------
def rss_mb() -> float:
    """This process's peak resident set size so far, in MB (Linux reports KiB)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 if sys.platform != "darwin" else peak / 2**20


def phase_ingest(
    db: str, feed: str, partial: bool, batch_size: int | None, code: str | None = None
) -> dict[str, Any]:
    """Ingest the feed into the store at `db`; time it and report its peak RSS.

    `code`: a folder holding another revision's `timeline` package, imported instead.
    """
    if code is not None:
        sys.path.insert(0, code)  # a fresh process: nothing of `timeline` is imported yet
    from timeline.ingest import BATCH_SIZE, ingest_file
    from timeline.store import TimelineStore

    store = TimelineStore.open(db)
    baseline = rss_mb()
    started = time.perf_counter()
    report = ingest_file(store, Path(feed), partial=partial, batch_size=batch_size or BATCH_SIZE)
    seconds = time.perf_counter() - started
    store.close()
    return {
        "seconds": seconds,
        "accepted": report.accepted,
        "duplicates": report.duplicates,
        "rejected": len(report.rejected),
        "first_rejections": [(r.position, r.error) for r in report.rejected[:3]],
        "rss_before_mb": baseline,
        "rss_peak_mb": rss_mb(),
    }


def state_json(payload: dict[str, Any]) -> bytes:
    """The library's JSON layout for an event state (dates as `date_iso` objects)."""

    def encode(value: Any) -> Any:
        if isinstance(value, str) and len(value) == 10 and value[4] == "-" and value[7] == "-":
            return {"_type_": "date_iso", "_data_": value}
        return value

    return json.dumps(
        {k: encode(v) for k, v in payload.items()}, separators=(",", ":"), ensure_ascii=False
    ).encode()


def bare_rows(feed: Path) -> Iterator[tuple[str, int, str, bytes]]:
    """The `stored_events` rows the store writes for this feed, built the way it builds them."""
    from timeline.aggregate import student_uuid
    from timeline.contract import MODELS

    envelope = {"event_id", "source", "student_id", "occurred_on", "note", "type"}
    bodies = {
        kind: [
            (name, info.default)
            for name, info in model.model_fields.items()
            if name not in envelope
        ]
        for kind, model in MODELS.items()
    }
    stamp = {"_type_": "datetime_iso", "_data_": datetime.now(UTC).isoformat()}
    versions: dict[str, int] = {}
    with feed.open("rb") as lines:
        for line in lines:
            obj = json.loads(line)
            sid = obj["student_id"]
            uid = student_uuid(sid).hex
            version = versions.get(sid, 0)
            if version == 0:
                version = 1
                yield (
                    uid,
                    1,
                    "timeline.aggregate:Student.Registered",
                    json.dumps(
                        {
                            "timestamp": stamp,
                            "originator_topic": "timeline.aggregate:Student",
                            "student_id": sid,
                        },
                        separators=(",", ":"),
                    ).encode(),
                )
            version += 1
            versions[sid] = version
            data = {name: obj.get(name, default) for name, default in bodies[obj["type"]]}
            state = (
                b'{"timestamp":'
                + json.dumps(stamp, separators=(",", ":")).encode()
                + b","
                + state_json(
                    {
                        "source": obj.get("source", "manual"),
                        "event_id": obj["event_id"],
                        "type": obj["type"],
                        "occurred_on": obj["occurred_on"],
                    }
                )[1:-1]
                + b',"data":'
                + state_json(data)
                + b',"note":'
                + json.dumps(obj.get("note")).encode()
                + b',"digest":"'
                + hashlib.blake2b(line, digest_size=16).hexdigest().encode()
                + b'"}'
            )
            yield (uid, version, "timeline.aggregate:Student.FactRecorded", state)


def phase_bare(db: str, feed: str) -> dict[str, Any]:
    """Insert the same rows with plain sqlite3 `executemany`, one transaction; time the SQL."""
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute(
        "CREATE TABLE stored_events (originator_id TEXT, originator_version INTEGER, "
        "topic TEXT, state BLOB, PRIMARY KEY (originator_id, originator_version))"
    )
    rows = bare_rows(Path(feed))
    total, seconds, state_bytes = 0, 0.0, 0
    conn.execute("BEGIN")
    while chunk := list(itertools.islice(rows, BARE_CHUNK_ROWS)):  # built outside the clock
        total += len(chunk)
        state_bytes += sum(len(r[3]) for r in chunk)
        started = time.perf_counter()
        conn.executemany("INSERT INTO stored_events VALUES (?,?,?,?)", chunk)
        seconds += time.perf_counter() - started
    started = time.perf_counter()
    conn.execute("COMMIT")
    seconds += time.perf_counter() - started
    conn.close()
    return {"seconds": seconds, "rows": total, "avg_state_bytes": state_bytes / max(total, 1)}


def phase_copy(url: str, schema: str, feed: str) -> dict[str, Any]:
    """The same rows with psycopg `COPY` into the library's PostgreSQL table; time the SQL."""
    import psycopg

    with psycopg.connect(url) as conn:
        conn.execute(
            f'CREATE TABLE "{schema}".stored_events (originator_id uuid NOT NULL, '
            "originator_version bigint NOT NULL, topic text, state bytea, "
            "notification_id bigserial, PRIMARY KEY (originator_id, originator_version))"
        )
        conn.execute(f'CREATE UNIQUE INDEX ON "{schema}".stored_events (notification_id ASC)')
        conn.commit()
        rows = bare_rows(Path(feed))
        total, seconds = 0, 0.0
        with conn.cursor() as cursor:
            while chunk := list(itertools.islice(rows, BARE_CHUNK_ROWS)):  # built outside the clock
                total += len(chunk)
                started = time.perf_counter()
                with cursor.copy(
                    f'COPY "{schema}".stored_events '
                    "(originator_id, originator_version, topic, state) FROM STDIN"
                ) as copy:
                    for row in chunk:
                        copy.write_row(row)
                seconds += time.perf_counter() - started
        started = time.perf_counter()
        conn.commit()
        seconds += time.perf_counter() - started
    return {"seconds": seconds, "rows": total}


class PostgresSchemas:
    """Fresh schemas on a PostgreSQL server for the benchmark, dropped at the end."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.made: list[str] = []

    def new(self) -> str:
        """Create an empty schema; its name."""
        import psycopg

        name = f"bench_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA "{name}"')
        self.made.append(name)
        return name

    def drop_all(self) -> None:
        """Drop the schemas this run made (and nothing else)."""
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            for name in self.made:
                conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
        self.made.clear()


def export_revision(ref: str, into: Path) -> str:
    """Export git revision `ref` of this repository into a new folder under `into`."""
    folder = into / f"rev-{ref}"
    folder.mkdir(parents=True, exist_ok=True)
    root = Path(__file__).resolve().parent.parent
    archive = subprocess.run(
        ["git", "archive", "--format=tar", ref], cwd=root, capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return str(folder)


def stored_shape(db: str) -> dict[str, Any]:
    """Row counts and the average state size of a store's tables."""
    conn = sqlite3.connect(db)
    rows, avg = conn.execute("SELECT count(*), avg(length(state)) FROM stored_events").fetchone()
    keys = conn.execute("SELECT count(*) FROM feed_keys").fetchone()[0]
    conn.close()
    return {"rows": rows, "avg_state_bytes": avg or 0.0, "feed_keys": keys}


def in_child(func: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    """Run one phase in a fresh (spawned) process, so its peak RSS is its own."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(func, *args).result()


def run_sqlite(
    args: argparse.Namespace,
    work: Path,
    feed: Path,
    n: int,
    rows: list[tuple[str, str, str, str, str]],
    verdicts: dict[str, bool],
    say: Callable[[str], None],
) -> float:
    """The SQLite phases: summary rows and verdicts added; returns their peak RSS."""
    results: dict[str, dict[str, Any]] = {}
    plan: list[tuple[str, str, bool, str | None]] = []
    if args.baseline_ref:
        code = export_revision(args.baseline_ref, work)
        plan.append((f"atomic ({args.baseline_ref})", "baseline.db", False, code))
    plan += [("atomic", "atomic.db", False, None), ("re-ingest", "atomic.db", False, None)]
    if not args.skip_partial:
        plan.append(("partial", "partial.db", True, None))
    for label, db, partial, code in plan:
        say(f"{label}: ingesting into {work / db} ...")
        result = in_child(phase_ingest, str(work / db), str(feed), partial, args.batch_size, code)
        results[label] = result
        say(
            f"  {n / result['seconds']:,.0f} events/s ({result['seconds']:.1f}s); accepted "
            f"{result['accepted']:,}, duplicates {result['duplicates']:,}, rejected "
            f"{result['rejected']:,}; peak RSS {result['rss_peak_mb']:.0f} MB "
            f"(store open: {result['rss_before_mb']:.0f} MB)"
        )
        if result["rejected"]:
            say(f"  first rejections: {result['first_rejections']}")
    shape = stored_shape(str(work / "atomic.db"))
    say(
        f"store: {shape['rows']:,} stored_events rows "
        f"(avg state {shape['avg_state_bytes']:.0f} B), "
        f"{shape['feed_keys']:,} feed_keys rows"
    )

    say(f"bare: sqlite3 executemany into {work / 'bare.db'} ...")
    bare = in_child(phase_bare, str(work / "bare.db"), str(feed))
    say(
        f"  {bare['rows'] / bare['seconds']:,.0f} rows/s ({bare['seconds']:.1f}s for "
        f"{bare['rows']:,} rows, avg state {bare['avg_state_bytes']:.0f} B)"
    )
    atomic, again = results["atomic"], results["re-ingest"]
    # Same workload on both sides (the rows N feed events produce): compare per feed event.
    bare_rate = n / bare["seconds"]
    atomic_rate = n / atomic["seconds"]
    again_rate = n / again["seconds"]
    ratio = atomic_rate / bare_rate
    speedup = again_rate / atomic_rate
    if args.baseline_ref:
        before = results[f"atomic ({args.baseline_ref})"]
        before_rate = n / before["seconds"]
        rows.append(
            (
                f"atomic ({args.baseline_ref})",
                f"{before_rate:,.0f}",
                f"{before['seconds']:.1f}",
                f"{before['rss_peak_mb']:.0f}",
                f"{before_rate / bare_rate:.3f} of bare; now {atomic_rate / before_rate:.2f}x",
            )
        )
    rows += [
        (
            "atomic ingest",
            f"{atomic_rate:,.0f}",
            f"{atomic['seconds']:.1f}",
            f"{atomic['rss_peak_mb']:.0f}",
            "",
        ),
        (
            "re-ingest (all dup.)",
            f"{again_rate:,.0f}",
            f"{again['seconds']:.1f}",
            f"{again['rss_peak_mb']:.0f}",
            f"{speedup:.2f}x atomic (target ≥ {TARGET_REINGEST_SPEEDUP:g}x)",
        ),
    ]
    if "partial" in results:
        part = results["partial"]
        rows.append(
            (
                "partial ingest",
                f"{n / part['seconds']:,.0f}",
                f"{part['seconds']:.1f}",
                f"{part['rss_peak_mb']:.0f}",
                f"{(n / part['seconds']) / bare_rate:.3f} of bare",
            )
        )
    rows.append(
        (
            "bare executemany",
            f"{bare_rate:,.0f}",
            f"{bare['seconds']:.1f}",
            "-",
            f"{bare['rows'] / bare['seconds']:,.0f} rows/s",
        )
    )
    rows.append(("atomic / bare", f"{ratio:.3f}", "", "", f"target ≥ {TARGET_BARE_RATIO:g}"))
    verdicts["atomic/bare ≥ 0.2"] = ratio >= TARGET_BARE_RATIO
    verdicts["re-ingest ≥ 3x"] = speedup >= TARGET_REINGEST_SPEEDUP
    verdicts["counts as expected"] = (
        atomic["accepted"] == n
        and again["duplicates"] == n
        and all(r["rejected"] == 0 for r in results.values())
    )
    return max(r["rss_peak_mb"] for r in results.values())


def run_postgres(
    args: argparse.Namespace,
    work: Path,
    feed: Path,
    postgres: str,
    schemas: PostgresSchemas,
    say: Callable[[str], None],
) -> dict[str, Any]:
    """The PostgreSQL phases: the baseline revision's ingest (if any), this one's, `COPY`."""
    plan: list[tuple[str, str | None]] = []
    if args.baseline_ref:
        plan.append((f"pg atomic ({args.baseline_ref})", export_revision(args.baseline_ref, work)))
    plan.append(("pg atomic ingest", None))
    ingests: dict[str, dict[str, Any]] = {}
    for label, code in plan:
        location = f"{postgres}?schema={schemas.new()}"
        say(f"{label}: ingesting into {location} ...")
        result = in_child(phase_ingest, location, str(feed), False, args.batch_size, code)
        ingests[label] = result
        say(
            f"  {args.events / result['seconds']:,.0f} events/s ({result['seconds']:.1f}s); "
            f"accepted {result['accepted']:,}, rejected {result['rejected']:,}; "
            f"peak RSS {result['rss_peak_mb']:.0f} MB"
        )
        schemas.drop_all()
    say("pg bare: psycopg COPY ...")
    copy = in_child(phase_copy, postgres, schemas.new(), str(feed))
    say(
        f"  {copy['rows'] / copy['seconds']:,.0f} rows/s "
        f"({copy['seconds']:.1f}s for {copy['rows']:,} rows)"
    )
    schemas.drop_all()
    return {"ingests": ingests, "copy": copy}


# -- the run -------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    """Generate the feed, run the phases, print the numbers and a summary table."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.ingest", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--events", type=int, default=1_000_000, help="feed events (default 1,000,000)"
    )
    parser.add_argument("--students", type=int, default=100_000, help="students (default 100,000)")
    parser.add_argument(
        "--dir", type=Path, default=None, help="work folder, kept (default: a temp dir, removed)"
    )
    parser.add_argument("--seed", type=int, default=20240316)
    parser.add_argument(
        "--batch-size", type=int, default=None, help="ingest batch size (default: the library's)"
    )
    parser.add_argument(
        "--skip-partial", action="store_true", help="leave out the partial-mode phase"
    )
    parser.add_argument(
        "--postgres",
        default=os.environ.get("TIMELINE_BENCH_POSTGRES_URL")
        or os.environ.get("TIMELINE_TEST_POSTGRES_URL"),
        help="PostgreSQL server URL for the PostgreSQL phases (default: "
        "TIMELINE_BENCH_POSTGRES_URL or TIMELINE_TEST_POSTGRES_URL; none: skipped)",
    )
    parser.add_argument(
        "--skip-postgres", action="store_true", help="leave out the PostgreSQL phases"
    )
    parser.add_argument("--skip-sqlite", action="store_true", help="leave out the SQLite phases")
    parser.add_argument(
        "--baseline-ref",
        default=None,
        help="git revision whose atomic ingest runs before this one's (SQLite and "
        "PostgreSQL), in the same run",
    )
    args = parser.parse_args(argv)
    if args.events < 1 or args.students < 1:
        parser.error("--events and --students must be positive")
    students = min(args.students, args.events)

    work = args.dir or Path(tempfile.mkdtemp(prefix="timeline-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    feed = work / "feed.jsonl"
    for name in ("atomic.db", "partial.db", "bare.db", "baseline.db"):
        for suffix in ("", "-wal", "-shm", "-journal"):
            (work / f"{name}{suffix}").unlink(missing_ok=True)

    def say(text: str) -> None:
        print(text, flush=True)

    postgres = None if args.skip_postgres or not args.postgres else args.postgres.split("?")[0]
    schemas = PostgresSchemas(postgres) if postgres else None
    try:
        say(f"feed: {args.events:,} events over {students:,} students -> {feed}")
        started = time.perf_counter()
        size = write_feed(feed, args.events, students, args.seed)
        say(
            f"  written in {time.perf_counter() - started:.1f}s, {size / 2**20:.1f} MiB "
            f"(generator peak RSS {rss_mb():.0f} MB)"
        )

        n = args.events
        rows: list[tuple[str, str, str, str, str]] = []
        verdicts: dict[str, bool] = {}
        peak = 0.0
        if not args.skip_sqlite:
            peak = run_sqlite(args, work, feed, n, rows, verdicts, say)

        if schemas is not None and postgres is not None:
            pg = run_postgres(args, work, feed, postgres, schemas, say)
            ok = all(r["accepted"] == n and r["rejected"] == 0 for r in pg["ingests"].values())
            copy_rate = n / pg["copy"]["seconds"]
            for label, result in pg["ingests"].items():
                rate = n / result["seconds"]
                peak = max(peak, result["rss_peak_mb"])
                rows.append(
                    (
                        label,
                        f"{rate:,.0f}",
                        f"{result['seconds']:.1f}",
                        f"{result['rss_peak_mb']:.0f}",
                        f"{rate / copy_rate:.3f} of COPY (target ≥ {TARGET_COPY_RATIO:g})",
                    )
                )
            rows.append(
                (
                    "pg bare COPY",
                    f"{copy_rate:,.0f}",
                    f"{pg['copy']['seconds']:.1f}",
                    "-",
                    f"{pg['copy']['rows'] / pg['copy']['seconds']:,.0f} rows/s",
                )
            )
            copy_ratio = (n / pg["ingests"]["pg atomic ingest"]["seconds"]) / copy_rate
            verdicts[f"pg atomic/COPY ≥ {TARGET_COPY_RATIO:g}"] = copy_ratio >= TARGET_COPY_RATIO
            verdicts["pg counts as expected"] = ok
        else:
            say("PostgreSQL phases skipped (no --postgres URL)")
        if rows:
            verdicts[f"peak RSS < {TARGET_RSS_MB} MB"] = peak < TARGET_RSS_MB

        header = ("phase", "events/s", "seconds", "peak RSS MB", "note")
        widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
        say("")
        say(f"summary: {n:,} events, {students:,} students, {os.cpu_count()} CPUs")
        for row in [header, tuple("-" * w for w in widths), *rows]:
            say(
                "  ".join(
                    str(cell).ljust(w) if i in (0, 4) else str(cell).rjust(w)
                    for i, (cell, w) in enumerate(zip(row, widths, strict=True))
                ).rstrip()
            )
        say(
            "targets: " + ", ".join(f"{k}: {'met' if v else 'MISSED'}" for k, v in verdicts.items())
        )
        return 0 if all(verdicts.values()) else 1
    finally:
        if schemas is not None:
            schemas.drop_all()
        if args.dir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
