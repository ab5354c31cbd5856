"""The plain-text reader is linear: seconds to read a file into documents (lmforge.data.formats.iter_batches) at
8 MB and 64 MB, for text with blank lines (many documents) and text without any (one document, the case that
used to be quadratic), beside the splitter it replaced (each 1 MB read joined to the unsplit remainder and split
again, kept here as `rescanning_split`). Linear means the 64 MB time is about 8 times the 8 MB time.

The text without blank lines is one document, so the runs raise data.max_record_chars past 64 MB for it (the
default, 16 Mi characters, refuses it after 16 MB). Every contender runs in its own subprocess, which reports its
own peak RSS (VmHWM). The old splitter is run at 8 MB and 16 MB only (at 64 MB it takes minutes).

    .venv/bin/python benchmarks/text_reader.py            # 8 and 64 MB, 3 runs each (the best kept)
    .venv/bin/python benchmarks/text_reader.py --runs 1

Writes benchmarks/results/text_reader.{json,md}."""
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
LINE = "the quick brown fox jumps over the lazy dog, and then it reads another line of text\n"


def build(path: Path, mb: int, blank_lines: bool) -> None:
    para = LINE * 5 + ("\n" if blank_lines else "")
    block = para * ((1 << 20) // len(para))
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(mb):
            f.write(block)


def rescanning_split(chunks, sep):
    """The splitter before this change (lmforge/data/formats.py): quadratic when `sep` never comes."""
    carry = ""
    for chunk in chunks:
        parts = (carry + chunk).replace("\r\n", "\n").split(sep)
        carry = parts.pop()
        docs = [s for s in (p.strip() for p in parts) if s]
        if docs:
            yield docs
    if carry.strip():
        yield [carry.strip()]


def worker(contender: str, path: Path) -> dict:
    from lmforge.data.formats import iter_batches, iter_text_chunks

    start = time.perf_counter()
    if contender == "linear":
        batches = iter_batches(path, "text", max_chars=1 << 30)
    else:
        batches = rescanning_split(iter_text_chunks(path), "\n\n")
    docs = chars = 0
    for batch in batches:
        docs += len(batch)
        chars += sum(map(len, batch))
    status = Path("/proc/self/status").read_text()  # this process's own peak (rusage carries the parent's)
    hwm = int(status.split("VmHWM:")[1].split()[0]) // 1024
    return {"seconds": time.perf_counter() - start, "documents": docs, "chars": chars, "peak_rss_mb": hwm}


def run(contender: str, path: Path) -> dict:
    out = subprocess.run([sys.executable, __file__, "--worker", contender, str(path)], capture_output=True,
                         text=True, cwd=REPO, check=True).stdout
    return json.loads(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--worker", nargs=2)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], Path(args.worker[1]))))
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for blank in (True, False):
            for mb in (8, 16, 64):
                path = Path(tmp) / f"{mb}-{blank}.txt"
                build(path, mb, blank)
                for contender in ("linear", "rescanning"):
                    if contender == "rescanning" and mb > 16:
                        continue
                    best = min((run(contender, path) for _ in range(args.runs)), key=lambda r: r["seconds"])
                    rows.append({"text": "blank lines" if blank else "no blank line", "mb": mb,
                                 "contender": contender, **best})
                    print(rows[-1], flush=True)
                path.unlink()
    ratios = {}
    for text in ("blank lines", "no blank line"):
        t = {(r["contender"], r["mb"]): r["seconds"] for r in rows if r["text"] == text}
        ratios[text] = {"linear 64/8": round(t["linear", 64] / t["linear", 8], 2),
                        "rescanning 16/8": round(t["rescanning", 16] / t["rescanning", 8], 2)}
    result = {"load": open("/proc/loadavg").read().split()[:3], "cpus": os.cpu_count(), "runs": args.runs,
              "python": platform.python_version(), "rows": rows, "ratios": ratios}
    out = REPO / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "text_reader.json").write_text(json.dumps(result, indent=2))
    lines = ["| text | MB | contender | seconds | documents | peak RSS MB |", "| --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {r['text']} | {r['mb']} | {r['contender']} | {r['seconds']:.2f} | {r['documents']} | "
              f"{r['peak_rss_mb']} |" for r in rows]
    lines += ["", f"ratios (linear: 64 MB / 8 MB, ideal 8; rescanning: 16 MB / 8 MB, linear would be 2): {ratios}",
              f"load {' '.join(result['load'])}, {result['cpus']} CPUs, best of {args.runs} runs"]
    (out / "text_reader.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
