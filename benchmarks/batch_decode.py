"""Batching requests through lmforge.runtime's batch API, beside one request at a time, on the same directory and
graph in the same run. N requests with different prompt lengths, max_new_tokens and sampling settings, decoded

  sequential   one after another, each alone (Generator.stream_batch([request]))
  batch        all at once (Generator.stream_batch(requests): --slots rows at a time, the rest join as rows end)
  arrivals     a BatchSession of --slots rows, one request arriving every --every steps (continuous batching)

and every request's token ids compared across the three (they must be equal: a row decodes exactly as alone).
Reported: generated tokens per second over the whole run, wall time, and the median time to a request's first
token from its arrival. Default model: the reference shape of benchmarks/decode.py (random-init lmforge gpt,
6 layers x 6 heads x 384 wide, vocab 8192, context 512), or --model DIR.

    python benchmarks/batch_decode.py [--model DIR] [--requests 16] [--slots 8] [--new-tokens 64] [--portable]
Writes benchmarks/results/batch-decode-<time>.json and .md and prints the table."""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from web_decode import reference_dir  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def requests(n: int, new_tokens: int):
    from lmforge.runtime import RowRequest

    letters = "abcdefghijklmnopqrstuvwxyz"
    out = []
    for i in range(n):
        prompt = (letters * 8)[i % 7: i % 7 + 4 + 9 * (i % 5)]  # 4 to 40 characters
        kw = {"temperature": 0} if i % 2 == 0 else {"temperature": 0.9, "top_k": 40, "seed": i}
        out.append(RowRequest(prompt, max_new_tokens=new_tokens // 2 + (i * 7) % new_tokens, **kw))
    return out


def drain(events, n: int, arrived: list[float]) -> tuple[list[list[int]], list[float]]:
    ids, first = [[] for _ in range(n)], [None] * n
    for ev in events:
        if ev.token_ids and first[ev.row] is None:
            first[ev.row] = time.perf_counter() - arrived[ev.row]
        ids[ev.row] += ev.token_ids
    return ids, first


def run_sequential(gen, reqs) -> dict:
    ids, firsts = [], []
    start = time.perf_counter()
    for r in reqs:
        got, first = drain(gen.stream_batch([r]), 1, [time.perf_counter()])
        ids += got
        firsts += first
    return {"ids": ids, "seconds": time.perf_counter() - start, "first": firsts}


def run_batch(gen, reqs) -> dict:
    start = time.perf_counter()
    ids, first = drain(gen.stream_batch(reqs), len(reqs), [start] * len(reqs))
    return {"ids": ids, "seconds": time.perf_counter() - start, "first": first}


def run_arrivals(gen, reqs, slots: int, every: int) -> dict:
    from lmforge.runtime import BatchSession

    session = BatchSession(gen, slots=slots)
    ids, first, arrived, index = [[] for _ in reqs], [None] * len(reqs), [0.0] * len(reqs), {}
    pending, step = list(range(len(reqs))), 0
    start = time.perf_counter()
    while pending or session.busy:
        if pending and step % every == 0:
            i = pending.pop(0)
            arrived[i] = time.perf_counter()
            index[session.add(reqs[i])] = i
        for ev in session.step():
            i = index[ev.row]
            if ev.token_ids and first[i] is None:
                first[i] = time.perf_counter() - arrived[i]
            ids[i] += ev.token_ids
        step += 1
    return {"ids": ids, "seconds": time.perf_counter() - start, "first": first}


def markdown(report: dict) -> str:
    rows = ["| contender | tokens/s | wall s | first token p50 ms | same ids as alone |",
            "| --- | --- | --- | --- | --- |"]
    rows += [f"| {r['name']} | {r['tokens_per_s']} | {r['seconds']} | {r['first_token_p50_ms']} | {r['same_ids']} |"
             for r in report["results"]]
    return "\n".join(rows) + f"\n\nload average {report['load_average']}, {report['setup']}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="an exported model directory (default: the reference shape, random weights)")
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--slots", type=int, default=8)
    ap.add_argument("--every", type=int, default=4, help="arrivals: steps between two requests")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--portable", action="store_true", help="the portable graph instead of the fast one")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    from lmforge.runtime import Generator

    model = Path(args.model) if args.model else reference_dir(Path(tempfile.mkdtemp(prefix="lmforge-bench-")))
    gen = Generator(model, threads=args.threads, fast=False if args.portable else None)
    reqs = requests(args.requests, args.new_tokens)
    gen.generate("warm up", max_new_tokens=8, temperature=0)
    runs = {"sequential": run_sequential(gen, reqs), "batch": run_batch(gen, reqs),
            "arrivals": run_arrivals(gen, reqs, args.slots, args.every)}
    alone = runs["sequential"]["ids"]
    results = []
    for name, r in runs.items():
        tokens = sum(map(len, r["ids"]))
        results.append({"name": name, "tokens": tokens, "seconds": round(r["seconds"], 3),
                        "tokens_per_s": round(tokens / r["seconds"], 1),
                        "first_token_p50_ms": round(statistics.median(f for f in r["first"] if f is not None) * 1e3, 1),
                        "same_ids": r["ids"] == alone})
    report = {"results": results, "load_average": [round(x, 2) for x in os.getloadavg()],
              "setup": f"{args.requests} requests, {args.slots} slots, {'portable' if args.portable else 'fast'} "
                       f"graph ({gen.fast=}), provider {gen.provider}, model {model}"}
    RESULTS.mkdir(exist_ok=True)
    stem = RESULTS / f"batch-decode-{time.strftime('%Y%m%d-%H%M%S')}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2))
    stem.with_suffix(".md").write_text(markdown(report) + "\n")
    print(markdown(report))
    if not all(r["same_ids"] for r in results):
        sys.exit("a batched request decoded differently from alone")


if __name__ == "__main__":
    main()
