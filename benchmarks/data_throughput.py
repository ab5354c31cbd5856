"""Data-layer throughput: MB/s of read + clean + tokenize + shard (lmforge.data.prepare.prepare_corpus) for the
char, word and BPE tokenizers, beside a bare Hugging Face `tokenizers` encode_batch baseline, with each
contender's peak RSS. Every contender runs in its own subprocess (peak RSS: its own VmHWM).

The corpus is tinyshakespeare and the TinyStories sample repeated to --mb megabytes, written into a temporary
directory (never committed). Repeats would all be dropped by dedupe, so the runs use clean.dedupe=false.

    .venv/bin/python benchmarks/data_throughput.py                # 25 MB and 100 MB
    .venv/bin/python benchmarks/data_throughput.py --mb 5         # a quick run
    .venv/bin/python benchmarks/data_throughput.py --mb 25 --formats text parquet jsonl --kinds char

--formats parquet / jsonl write the same paragraphs as a parquet file (one `text` column) and as JSON lines
({"text": ...}) and time the char preparation of each (format detected from the file), beside pyarrow's bare
read of the same file in the same run (pq.ParquetFile.iter_batches / pyarrow.json.read_json, every value made a
Python string): what reading the container costs before lmforge does anything with the text.

Writes benchmarks/results/data_throughput.{json,md}."""
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
CORPORA = Path(os.environ.get("LMFORGE_CORPORA") or REPO.parent / "shared" / "corpora")
SOURCES = ("tinyshakespeare.txt", "tinystories-sample.txt")
KINDS = ("char", "word", "bpe")
FORMATS = ("text", "parquet", "jsonl")


def convert(corpus: Path, fmt: str) -> Path:
    """The corpus's paragraphs as a parquet file (one `text` column) or JSON lines ({"text": ...})."""
    docs = [d.strip() for d in corpus.read_text(encoding="utf-8").split("\n\n") if d.strip()]
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = corpus.with_suffix(".parquet")
        pq.write_table(pa.table({"text": docs}), path)
    else:
        path = corpus.with_suffix(".jsonl")
        with open(path, "w", encoding="utf-8") as f:
            f.writelines(json.dumps({"text": d}) + "\n" for d in docs)
    return path


def build_corpus(path: Path, mb: float) -> int:
    """Repeat the two sources, blank-line separated, until the file holds `mb` megabytes; returns its size."""
    pieces = [(CORPORA / name).read_text(encoding="utf-8").strip() + "\n\n" for name in SOURCES]
    target = int(mb * 1e6)
    size = 0
    with open(path, "w", encoding="utf-8") as f:
        while size < target:
            for piece in pieces:
                f.write(piece)
                size += len(piece.encode("utf-8"))
    return path.stat().st_size


def worker(kind: str, corpus: Path, out_dir: Path, tokenizer: str) -> dict:
    """One contender, in this (sub)process. Prints nothing; returns seconds and counts."""
    if kind == "baseline":
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(tokenizer)
        start = time.perf_counter()
        docs = [d for d in corpus.read_text(encoding="utf-8").split("\n\n") if d.strip()]
        tokens = 0
        for i in range(0, len(docs), 8192):
            tokens += sum(len(e.ids) for e in tok.encode_batch(docs[i:i + 8192], add_special_tokens=False))
        return {"seconds": time.perf_counter() - start, "tokens": tokens, "documents": len(docs)}
    if kind.startswith("convert-"):  # here, not in the parent: a parent's peak RSS is inherited across exec
        return {"seconds": 0.0, "tokens": 0, "documents": 0, "path": str(convert(corpus, kind.split("-", 1)[1]))}
    if kind == "pyarrow":  # the bare read of the same container, every value made a Python string
        start = time.perf_counter()
        if corpus.suffix == ".parquet":
            import pyarrow.parquet as pq

            docs = sum(len(b.column(0).to_pylist()) for b in pq.ParquetFile(corpus).iter_batches(columns=["text"]))
        else:
            import pyarrow.json as pj

            docs = len(pj.read_json(corpus).column("text").to_pylist())
        return {"seconds": time.perf_counter() - start, "tokens": 0, "documents": docs}
    from lmforge.core.config import load_config
    from lmforge.data.prepare import prepare_corpus

    cfg = load_config("jokes-char", {"data.source": str(corpus), "data.format": "text" if corpus.suffix == ".txt"
                                     else "auto", "tokenizer.kind": kind, "clean.dedupe": "false"})
    timings: dict = {}
    start = time.perf_counter()
    meta = prepare_corpus(corpus, cfg, out_dir, timings)
    return {"seconds": time.perf_counter() - start, **timings, "tokens": meta["train"]["tokens"] + meta["val"]["tokens"],
            "documents": meta["documents"], "vocab_size": meta["vocab_size"]}


def run_contender(kind: str, corpus: Path, out_dir: Path, tokenizer: str = "") -> dict:
    cmd = [sys.executable, __file__, "--worker", kind, "--corpus", str(corpus), "--out-dir", str(out_dir),
           "--tokenizer", tokenizer]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, cwd=REPO)
    out = proc.stdout.read()  # type: ignore[union-attr]
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise SystemExit(f"{kind} worker failed with status {status}")
    result = json.loads(out)
    # the worker's own VmHWM: rusage's ru_maxrss keeps the parent's peak at fork across exec (Linux)
    return {**result, "peak_rss_mb": result.pop("vmhwm_kb", usage.ru_maxrss) / 1024}


def markdown(rows: list[dict], command: str, machine: str) -> str:
    lines = [f"`{command}`  ", f"{machine}", "",
             "| corpus MB | contender | seconds | MB/s | read+clean s | train tokenizer s | encode+shard s "
             "| tokens | peak RSS MB |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        def fmt(key: str) -> str:
            return f"{r[key]:.2f}" if key in r else "-"
        lines.append(f"| {r['corpus_mb']:.0f} | {r['contender']} | {r['seconds']:.2f} | {r['mb_per_s']:.1f} | "
                     f"{fmt('read_clean_s')} | {fmt('train_tokenizer_s')} | {fmt('encode_shard_s')} | "
                     f"{r['tokens']:,} | {r['peak_rss_mb']:.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mb", type=float, nargs="+", default=[25, 100], help="corpus sizes in MB (default 25 100)")
    p.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    p.add_argument("--formats", nargs="+", default=["text"], choices=FORMATS,
                   help="containers of the same paragraphs (default text; parquet and jsonl add pyarrow's bare read)")
    p.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--corpus", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--out-dir", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--tokenizer", default="", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        result = worker(args.worker, args.corpus, args.out_dir, args.tokenizer)
        status = Path("/proc/self/status")
        if status.is_file():
            result["vmhwm_kb"] = next(int(l.split()[1]) for l in status.read_text().splitlines()
                                      if l.startswith("VmHWM"))
        print(json.dumps(result))
        return

    command = "python benchmarks/data_throughput.py " + " ".join(sys.argv[1:]) + \
        f"  (load {open('/proc/loadavg').read().split()[0]} at start)"
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    rows = []
    with tempfile.TemporaryDirectory(prefix="lmforge-bench-") as tmp:
        for mb in args.mb:
            corpus = Path(tmp) / f"corpus-{mb:g}mb.txt"
            size = build_corpus(corpus, mb)
            for fmt in args.formats:
                source = corpus if fmt == "text" else Path(run_contender(f"convert-{fmt}", corpus, Path(tmp))["path"])
                label = "" if fmt == "text" else f" ({fmt}, {source.stat().st_size / 1e6:.0f} MB file)"
                for kind in args.kinds:
                    out_dir = Path(tmp) / f"{kind}-{fmt}-{mb:g}"
                    r = run_contender(kind, source, out_dir)
                    rows.append({"corpus_mb": size / 1e6, "contender": kind + label, **r})
                    if kind == "bpe" and fmt == "text":  # bare encode_batch with the very tokenizer prepare trained
                        r = run_contender("baseline", corpus, out_dir, str(out_dir / "tokenizer.json"))
                        rows.append({"corpus_mb": size / 1e6, "contender": "bare tokenizers encode_batch (bpe)", **r})
                    print(f"{size / 1e6:.0f} MB {rows[-1]['contender']}: {rows[-1]['seconds']:.2f}s", file=sys.stderr)
                if fmt != "text":
                    r = run_contender("pyarrow", source, Path(tmp))
                    rows.append({"corpus_mb": size / 1e6, "contender": f"pyarrow bare read{label}", **r})
                    print(f"{size / 1e6:.0f} MB {rows[-1]['contender']}: {rows[-1]['seconds']:.2f}s", file=sys.stderr)
                    source.unlink()
            corpus.unlink()
    for r in rows:
        r["mb_per_s"] = r["corpus_mb"] / r["seconds"]
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "data_throughput.json").write_text(json.dumps(
        {"command": command, "machine": machine, "rows": rows}, indent=2) + "\n")
    table = markdown(rows, command, machine)
    (args.results / "data_throughput.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
