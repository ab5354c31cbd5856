"""Soak the torch-free runtime: generate for N minutes (single prompts, batches, streams, past the context) and
report resident memory at the start, every minute and at the end, as JSON + markdown.

    .venv/bin/python benchmarks/soak.py --minutes 2 --out artifacts/soak

Without --model it exports a jokes-char-sized GPT (3 layers, 128 wide, context 128; random weights: memory does
not depend on them) in a subprocess, so torch never enters the measured process."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXPORT = """
import sys, torch
from pathlib import Path
from lmforge.core.config import ModelConfig
from lmforge.data.tokenize import special_ids, train_char
from lmforge.export.modeldir import export_model_dir
from lmforge.models import build_model, model_spec
torch.manual_seed(0)
out = Path(sys.argv[1])
tok = train_char(["abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789 .,;:!?'-"])
tok.save(str(out.parent / "tokenizer.json"))
model = build_model(ModelConfig(n_layer=3, n_head=4, n_embd=128, block_size=128), tok.get_vocab_size())
manifest = {"name": "soak", "tokenizer": {"kind": "char", "file": "tokenizer.json"}, "tokens": special_ids(tok),
            "generation": {"temperature": 0.8, "top_k": 20, "max_new_tokens": 100}}
export_model_dir(model, out.parent / "tokenizer.json", out, manifest)
"""


def rss_mib() -> tuple[float, float]:
    """(current, peak) resident set size of this process in MiB, from /proc/self/status."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024
    return fields["VmRSS"], fields["VmHWM"]


def export_small_model(directory: Path) -> Path:
    out = directory / "model"
    subprocess.run([sys.executable, "-c", EXPORT, str(out)], check=True, cwd=REPO)
    return out


def soak(model_dir: Path, minutes: float, variant: str = "fp32") -> dict:
    from lmforge.runtime import Generator

    gen = Generator(model_dir, variant=variant)
    prompts = ["Why", "A programmer walks into", "", "Q: what is", "0123456789 " * 20]  # the last passes the context
    loaded_rss, _ = rss_mib()
    for warm in ("Why", ["Why", ""]):  # onnxruntime grows its arenas on the first calls; measure after them
        gen.generate(warm, max_new_tokens=300, seed=0)
    start_rss, _ = rss_mib()
    t0, calls, tokens, minute = time.monotonic(), 0, 0, 1
    samples = [{"minute": 0, "rss_mib": round(start_rss, 1), "calls": 0}]
    while time.monotonic() - t0 < minutes * 60:
        i = calls
        kind = i % 4
        kw = dict(max_new_tokens=50 + (i * 37) % 250, temperature=(0.0, 0.7, 1.0, 1.3)[i % 4], top_k=(0, 20)[i % 2],
                  top_p=(1.0, 0.9)[(i // 2) % 2], repetition_penalty=(1.0, 1.2)[(i // 3) % 2], seed=i)
        if kind == 0:
            text = gen.generate(prompts[i % len(prompts)], **kw)
        elif kind == 1:
            text = "".join(gen.generate([prompts[(i + j) % len(prompts)] for j in range(4)], **kw))
        else:
            text = "".join(gen.stream(prompts[i % len(prompts)], **kw))
        calls += 1
        tokens += len(text)
        if time.monotonic() - t0 >= minute * 60:
            rss, _ = rss_mib()
            samples.append({"minute": minute, "rss_mib": round(rss, 1), "calls": calls})
            print(f"minute {minute}: rss {rss:.1f} MiB after {calls} calls", file=sys.stderr)
            minute += 1
    end_rss, peak = rss_mib()
    return {"model_dir": str(model_dir), "variant": gen.variant, "fast_graph": getattr(gen, "fast", False),
            "provider": gen.provider, "minutes": minutes,
            "calls": calls, "chars_generated": tokens, "rss_loaded_mib": round(loaded_rss, 1),
            "rss_start_mib": round(start_rss, 1),
            "rss_end_mib": round(end_rss, 1), "rss_max_mib": round(peak, 1),
            "rss_growth_mib": round(end_rss - start_rss, 1), "per_minute": samples}


def markdown(r: dict) -> str:
    lines = [f"Soak: {r['minutes']} min, {r['calls']} calls, {r['chars_generated']} characters generated "
             f"({r['provider']}, {r['variant']})", "",
             "| RSS loaded (MiB) | RSS start, after warm-up (MiB) | RSS end (MiB) | RSS max (MiB) | growth (MiB) |",
             "| --- | --- | --- | --- | --- |",
             f"| {r['rss_loaded_mib']} | {r['rss_start_mib']} | {r['rss_end_mib']} | {r['rss_max_mib']} "
             f"| {r['rss_growth_mib']} |", "",
             "| minute | RSS (MiB) | calls so far |", "| --- | --- | --- |"]
    lines += [f"| {s['minute']} | {s['rss_mib']} | {s['calls']} |" for s in r["per_minute"]]
    return "\n".join(lines) + "\n"


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--model", help="exported model directory; default: export a small one to a temp dir")
    ap.add_argument("--variant", default="fp32")
    ap.add_argument("--out", help="directory for soak.json and soak.md")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="lmforge-soak-") as tmp:
        model_dir = Path(args.model) if args.model else export_small_model(Path(tmp))
        result = soak(model_dir, args.minutes, args.variant)
    assert "torch" not in sys.modules, "the runtime imported torch"
    md = markdown(result)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        write_atomic(out / "soak.json", json.dumps(result, indent=2))
        write_atomic(out / "soak.md", md)
    print(json.dumps(result))
    print(md)


if __name__ == "__main__":
    main()
