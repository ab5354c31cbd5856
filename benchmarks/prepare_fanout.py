"""Data preparation in one pass vs fanned out in parts: `lmforge prepare` (the real CLI, Prefect flow and all)
on a directory of --files text files, run three ways in one go:
  one-pass        data.parts=1
  parts-threads   data.parts=P on Prefect's default thread-pool task runner
  parts-dask      data.parts=P with --dask local:W (a local Dask cluster of W worker processes)
Each contender runs in its own subprocess with its own artifacts directory; the table gives wall seconds,
MB/s and the ratio to one-pass, and the run fails unless all three wrote byte-identical shards and tokenizer.

The corpus is tinyshakespeare and the TinyStories sample repeated to --mb megabytes over --files files in a
temporary directory (never committed); repeats would all be dropped by dedupe, so the runs use
clean.dedupe=false.

    .venv/bin/python benchmarks/prepare_fanout.py                     # 25 MB, char and bpe
    .venv/bin/python benchmarks/prepare_fanout.py --mb 5 --kinds char # a quick run

Writes benchmarks/results/prepare_fanout.{json,md}."""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CORPORA = REPO.parent / "shared" / "corpora"
SOURCES = ("tinyshakespeare.txt", "tinystories-sample.txt")
PREPARED = ("tokenizer.json", "train.bin", "val.bin")


def build_corpus(root: Path, mb: float, files: int) -> int:
    """`files` files of about mb/files megabytes each, the two sources repeated; returns the total bytes."""
    pieces = [(CORPORA / name).read_text(encoding="utf-8").strip() + "\n\n" for name in SOURCES]
    per_file = int(mb * 1e6 / files)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        size = 0
        with open(root / f"part-{i:03d}.txt", "w", encoding="utf-8") as f:
            while size < per_file:
                piece = pieces[(i + size) % 2]
                f.write(piece)
                size += len(piece.encode("utf-8"))
    return sum(p.stat().st_size for p in root.iterdir())


def run_contender(name: str, corpus: Path, kind: str, parts: int, workers: int, artifacts: Path) -> dict:
    args = [sys.executable, "-m", "lmforge.cli", "prepare", "--preset", "jokes-char", "--json",
            "--set", f"data.source={corpus}", "--set", "data.format=text", "--set", f"tokenizer.kind={kind}",
            "--set", "clean.dedupe=false", "--set", f"data.parts={parts}"]
    if name == "parts-dask":
        args += ["--dask", f"local:{workers}"]
    env = {**os.environ, "LMFORGE_ARTIFACTS": str(artifacts), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    start = time.perf_counter()
    proc = subprocess.run(args, capture_output=True, text=True, env=env, cwd=REPO)
    seconds = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"{name} failed:\n{proc.stderr[-3000:]}")
    result = json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("{")][-1])
    return {"contender": name, "kind": kind, "parts": parts, "seconds": seconds, "dir": result["dir"],
            "workers": len(result["ran_on"]) or 1, "train_tokens": result["train_tokens"]}


def markdown(rows: list[dict], command: str, machine: str, mb: float) -> str:
    lines = [f"`{command}` ({machine}; corpus {mb:.1f} MB)", "",
             "| tokenizer | contender | parts | processes | wall (s) | MB/s | vs one-pass |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['kind']} | {r['contender']} | {r['parts']} | {r['workers']} | {r['seconds']:.1f} | "
                     f"{mb / r['seconds']:.2f} | {r['speedup']:.2f}x |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mb", type=float, default=25.0, help="corpus size in MB (default 25)")
    p.add_argument("--files", type=int, default=16, help="files in the corpus directory (default 16)")
    p.add_argument("--parts", type=int, default=8, help="data.parts of the fanned-out contenders (default 8)")
    p.add_argument("--workers", type=int, default=2, help="Dask worker processes (default 2)")
    p.add_argument("--kinds", nargs="+", default=["char", "bpe"], choices=["char", "word", "bpe"])
    p.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results")
    args = p.parse_args()
    if not CORPORA.is_dir():
        raise SystemExit(f"error: {CORPORA} not found (hint: the benchmark needs ../shared/corpora)")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus"
        size = build_corpus(corpus, args.mb, args.files)
        for kind in args.kinds:
            group = []
            for name, parts in (("one-pass", 1), ("parts-threads", args.parts), ("parts-dask", args.parts)):
                row = run_contender(name, corpus, kind, parts, args.workers, Path(tmp) / f"artifacts-{kind}-{name}")
                print(f"{kind:5s} {name:14s} {row['seconds']:7.1f} s", flush=True)
                group.append(row)
            first = {f: (Path(group[0]["dir"]) / f).read_bytes() for f in PREPARED}
            for row in group:
                if {f: (Path(row["dir"]) / f).read_bytes() for f in PREPARED} != first:
                    raise SystemExit(f"{kind}: {row['contender']} wrote different shards than one-pass")
                row["speedup"] = group[0]["seconds"] / row["seconds"]
                row["identical_to_one_pass"] = True
                del row["dir"]
            rows += group
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f} at the end"
    command = "python benchmarks/prepare_fanout.py " + " ".join(sys.argv[1:])
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "prepare_fanout.json").write_text(json.dumps(
        {"command": command.strip(), "machine": machine, "mb": size / 1e6, "files": args.files, "rows": rows},
        indent=2))
    table = markdown(rows, command.strip(), machine, size / 1e6)
    (args.results / "prepare_fanout.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
