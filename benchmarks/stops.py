"""The stop-string check per generated piece: lmforge.runtime.stops (a KMP automaton per stop string, each new
character fed once) beside the check it replaced (search the new tail, then hold back the longest suffix that is
a prefix of a stop string by testing every prefix: quadratic in the stop string's length), in one run.

Workload: 300 one-character pieces of text that keep matching the start of one long stop string (the worst case
for hold-back: "aaaa..." against "aaaa...b"), for stop strings of 10 to 200,000 characters.

    python benchmarks/stops.py [--pieces 300]
Writes benchmarks/results/stops-<time>.json and .md and prints the table."""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from lmforge.runtime.stops import StopStrings

RESULTS = Path(__file__).resolve().parent / "results"


def before(pieces: list[str], stops: tuple[str, ...]) -> None:
    """The replaced check (lmforge.runtime.generator before the batch loop): text grows, each piece searched in
    the tail, then every prefix of every stop string tested against the text's end."""
    text, emitted = "", 0
    longest = max(map(len, stops))
    for piece in pieces:
        start = max(0, len(text) - longest + 1)
        text += piece
        if any(text.find(s, start) >= 0 for s in stops):
            return
        hold = max((k for s in stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
        emitted = max(emitted, len(text) - hold)


def after(pieces: list[str], s: StopStrings) -> None:
    for piece in pieces:
        if s.feed(piece) is not None:
            return
        s.held()


def timed(fn, pieces, stops) -> float:
    start = time.perf_counter()
    fn(pieces, stops)
    return (time.perf_counter() - start) / len(pieces) * 1e6  # microseconds per piece


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pieces", type=int, default=300)
    args = ap.parse_args()
    pieces = ["a"] * args.pieces
    after(pieces, StopStrings(("ab",)))  # warm up
    rows = []
    for n in (10, 1_000, 10_000, 100_000, 200_000):
        stops = ("a" * (n - 1) + "b",)
        old = timed(before, pieces, stops) if n <= 10_000 else None  # 100k: hours at this rate
        start = time.perf_counter()
        automaton = StopStrings(stops)  # once per request: O(length of the stop strings)
        setup = (time.perf_counter() - start) * 1e3
        new = timed(after, pieces, automaton)
        rows.append({"stop_chars": n, "before_us_per_piece": None if old is None else round(old, 1),
                     "after_us_per_piece": round(new, 2), "after_setup_ms": round(setup, 2),
                     "speedup": None if old is None else round(old / new, 1)})
    report = {"results": rows, "pieces": args.pieces, "load_average": [round(x, 2) for x in os.getloadavg()]}
    table = ["| stop string chars | before µs/piece | after µs/piece | after: setup once per request, ms | "
             "before / after |", "| --- | --- | --- | --- | --- |"]
    table += [f"| {r['stop_chars']:,} | {r['before_us_per_piece'] or 'not run (quadratic)'} | "
              f"{r['after_us_per_piece']} | {r['after_setup_ms']} | {r['speedup'] or '-'} |" for r in rows]
    md = "\n".join(table) + f"\n\n{args.pieces} pieces, load average {report['load_average']}"
    RESULTS.mkdir(exist_ok=True)
    stem = RESULTS / f"stops-{time.strftime('%Y%m%d-%H%M%S')}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2))
    stem.with_suffix(".md").write_text(md + "\n")
    print(md)


if __name__ == "__main__":
    main()
