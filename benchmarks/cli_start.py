"""How fast the `timeline` command starts: `--help`, `--version` and `show` on the demo store.

    python -m benchmarks.cli_start [--runs 9] [--db PATH]

Runs the real entry point (`timeline.cli:run`) in a new process each time and prints the
median wall-clock time and the median CPU time (user + system) of each command. CPU time
is the steadier figure on a shared machine: wall-clock time includes waiting for a CPU.
Targets (issue 12): `--help` ≤ 0.3 s, `show` ≤ 0.6 s. Without `--db`, the demo feed is
ingested into a temporary store first.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ENTRY = "import sys; from timeline.cli import run; sys.argv[0] = 'timeline'; run()"
TARGETS = {"--help": 0.3, "show": 0.6}


def measure(args: list[str], runs: int) -> tuple[float, float] | None:
    """Median wall-clock and CPU seconds of `timeline ARGS` over `runs` new processes.

    None when the command fails (an older version without it, say).
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIMELINE_")}
    walls, cpus = [], []
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-c", ENTRY, *args], capture_output=True, env=env, check=False
        )
        walls.append(time.perf_counter() - started)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
        if done.returncode != 0:
            return None
    return statistics.median(walls), statistics.median(cpus)


def demo_store(folder: Path) -> str:
    """A store holding the demo feed."""
    from examples.demo import FEED
    from timeline.ingest import ingest_file
    from timeline.store import TimelineStore

    path = str(folder / "demo.db")
    with TimelineStore.open(path) as store:
        ingest_file(store, FEED)
    return path


def main(argv: list[str] | None = None) -> None:
    """Measure and print one line per command."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cli_start")
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--db", default=None, help="a store holding student S1001")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        db = args.db or demo_store(Path(folder))
        commands = {
            "--help": ["--help"],
            "--version": ["--version"],
            "show": ["--db", db, "show", "S1001", "--as-of", "2025-06-30"],
        }
        print(f"{'command':<10} {'wall (median)':>14} {'cpu (median)':>13}  target")
        for name, command in commands.items():
            measured = measure(command, args.runs)
            if measured is None:
                print(f"{name:<10} {'failed':>14}")
                continue
            wall, cpu = measured
            target = TARGETS.get(name)
            mark = f"≤ {target:.1f} s" if target else ""
            print(f"{name:<10} {wall:>12.3f} s {cpu:>11.3f} s  {mark}")


if __name__ == "__main__":
    main()
