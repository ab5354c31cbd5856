"""Export-time verification of every graph the runtime can choose, run THROUGH the runtime (lmforge.runtime.
Generator and its decoding state: the fast graph's one in-place KV buffer bound as past and present, the portable
graph's growing cache), not through a separate re-implementation of the feeds:

- fp32 graphs (model.onnx, model.opt.onnx, model.fast.onnx) against torch: a batch of prompts of unequal lengths,
  prefill + 20 cached steps fed torch's own greedy tokens, each row compared with torch running it alone; the
  largest |logit difference| is bounded by export.max_abs_logit_diff.
- quantised graphs (int8, int4, fp16; portable and fast) against the fp32 graph of the same kind on real val
  windows (lmforge.runtime.scoring.val_rows: a short prefill, then one cached step per token): mean loss delta
  (nats/token) and top-1 agreement (the share of positions where both pick the same next token), bounded by
  export.max_<kind>_loss_delta and export.min_<kind>_agreement.
- the rows graph (model.fast.rows.onnx) against the fast graph: one call of 5 tokens for each of its rows, of
  unequal lengths, as a speculating batch runs it, against one step per token; bounded by export.max_abs_logit_diff.

Metrics (lmforge.json `metrics`, MLflow, model-version tags): verify_<graph>_logit_max_abs,
verify_<graph>_loss_delta, verify_<graph>_agreement, verify_<ref>_loss; <graph> is the lmforge.json `files` key
with '-' as '_' (fp32, optimized, fast, fast_rows, int8, fp16, fast_int8, fast_int4, fast_fp16)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lmforge.core.errors import LmforgeError

# files key -> (Generator variant, fast)
FP32_GRAPHS = {"fp32": ("fp32", False), "optimized": ("optimized", False), "fast": ("fp32", True)}
# files key -> (Generator variant, fast, kind of bounds, reference files key)
QUANT_GRAPHS = {"int8": ("int8", False, "int8", "fp32"), "fp16": ("fp16", False, "fp16", "fp32"),
                "fast-int8": ("int8", True, "int8", "fast"), "fast-int4": ("int4", True, "int4", "fast"),
                "fast-fp16": ("fp16", True, "fp16", "fast")}


@dataclass(frozen=True)
class Bounds:
    max_abs_logit_diff: float = 1e-3
    max_loss_delta: dict | None = None  # kind -> nats/token
    min_agreement: dict | None = None   # kind -> share of positions
    positions: int = 256

    @classmethod
    def from_config(cls, e) -> Bounds:
        """From an lmforge.core.config.ExportConfig."""
        return cls(e.max_abs_logit_diff,
                   {"int8": e.max_int8_loss_delta, "int4": e.max_int4_loss_delta, "fp16": e.max_fp16_loss_delta},
                   {"int8": e.min_int8_agreement, "int4": e.min_int4_agreement, "fp16": e.min_fp16_agreement},
                   e.check_positions)

    def loss(self, kind: str) -> float:
        return (self.max_loss_delta or {}).get(kind, {"int8": 0.05, "int4": 0.15, "fp16": 0.01}[kind])

    def agreement(self, kind: str) -> float:
        return (self.min_agreement or {}).get(kind, {"int8": 0.9, "int4": 0.8, "fp16": 0.97}[kind])


def metric_name(files_key: str) -> str:
    return files_key.replace("-", "_")


def torch_rows(model, prompts: list[list[int]], steps: int) -> tuple[np.ndarray, np.ndarray]:
    """(logits [B, steps+1, V], greedy tokens [B, steps]) of torch running each prompt alone with its cache."""
    import torch

    model = model.to("cpu").eval()
    logits, tokens = [], []
    with torch.no_grad():
        for p in prompts:
            x, state, row, toks = torch.tensor([p]), None, [], []
            for _ in range(steps + 1):
                out, state = model(x, state)
                row.append(out[0, -1].float().numpy())
                toks.append(int(out[0, -1].argmax()))
                x = torch.tensor([[toks[-1]]])
            logits.append(np.stack(row))
            tokens.append(toks[:steps])
    return np.stack(logits), np.array(tokens, np.int64)


def check_prompts(spec: dict, val: np.ndarray | None, lengths=(7, 1, 4), steps: int = 20,
                  seed: int = 0) -> tuple[list[list[int]], int]:
    """Prompts of unequal lengths (from val when given, else seeded random ids) and the steps that fit."""
    block = int(spec.get("block_size") or 2**31)
    lengths = [max(1, min(n, block - 2)) for n in lengths]
    steps = max(1, min(steps, block - max(lengths)))
    rng = np.random.default_rng(seed)
    if val is not None and len(val) > max(lengths) * len(lengths):
        starts = np.linspace(0, len(val) - max(lengths) - 1, len(lengths)).astype(int)
        return [list(np.asarray(val[s:s + n], np.int64)) for s, n in zip(starts, lengths)], steps
    return [list(rng.integers(0, spec["vocab_size"], n)) for n in lengths], steps


def val_block(spec: dict, val: np.ndarray, bounds: Bounds) -> np.ndarray:
    """The val rows the quantised graphs are scored on (runtime.scoring.val_rows), or one line if too few."""
    from lmforge.runtime.scoring import val_rows

    try:
        return val_rows(val, int(spec.get("block_size") or 128), bounds.positions)
    except ValueError as exc:
        raise LmforgeError(f"cannot check the quantised graphs: {exc}",
                           hint="prepare more data or lower model.block_size") from None


def check_quantised(load, files: dict, quant: list[str], rows: np.ndarray, bounds: Bounds) -> dict:
    """Score each quantised graph in `quant` and its fp32 reference on `rows`: its loss delta and top-1 agreement,
    as metrics; raise LmforgeError past a bound. `load(key, variant, fast)` opens a graph's Generator."""
    from lmforge.runtime.scoring import stepped_score

    metrics, scores = {}, {}
    for key in quant:
        variant, fast, kind, ref_key = QUANT_GRAPHS[key]
        if ref_key not in scores:
            scores[ref_key] = stepped_score(load(ref_key, *FP32_GRAPHS[ref_key]), rows, bounds.positions)
            metrics[f"verify_{metric_name(ref_key)}_loss"] = scores[ref_key][0]
        loss, top = stepped_score(load(key, variant, fast), rows, bounds.positions)
        delta, agree = loss - scores[ref_key][0], float((top == scores[ref_key][1]).mean())
        name = metric_name(key)
        metrics[f"verify_{name}_loss_delta"], metrics[f"verify_{name}_agreement"] = delta, agree
        if not (delta <= bounds.loss(kind) and agree >= bounds.agreement(kind)):
            raise LmforgeError(
                f"{files[key]} run through lmforge.runtime costs {delta:+.4f} nats/token and agrees with "
                f"{files[ref_key]} on {agree:.1%} of {len(top)} val positions (bounds: export.max_{kind}_loss_delta "
                f"{bounds.loss(kind):g}, export.min_{kind}_agreement {bounds.agreement(kind):g})",
                hint=f"--set export.{kind}=false to skip this variant, or relax the bound to inspect")
    return metrics


def rows_graph_gap(gen, prompts: list[list[int]], width: int = 5) -> float:
    """The rows graph (model.fast.rows.onnx) as a batch that speculates runs it: the worst |logit| gap between one
    KVBuffers.extend_rows call of `width` tokens per row, over rows of unequal lengths (the prompts, cycled and
    cut to different lengths), and the fast graph stepping the same tokens one call per token."""
    rows, block = gen.rows_graph, gen.block_size
    width = max(1, min(width, block - 1))
    rng = np.random.default_rng(0)
    starts = [(prompts[i % len(prompts)] * block)[:max(1, min(1 + 3 * i, block - width))] for i in range(rows)]
    tokens = rng.integers(0, gen.vocab_size, (rows, width))
    worst = 0.0
    batch, stepped = gen.decoder(rows, block), gen.decoder(rows, block)
    for dec in (batch, stepped):
        for slot, ids in enumerate(starts):
            dec.prefill_slot(slot, ids)
    got = batch.extend_rows(tokens).copy()
    for j in range(width):
        worst = max(worst, float(np.abs(stepped.step(tokens[:, j]) - got[:, j]).max()))
    return worst


def check_rows_graph(md, prompts: list[list[int]], bounds: Bounds) -> float:
    """rows_graph_gap through a Generator that runs the rows graph; LmforgeError past export.max_abs_logit_diff."""
    from lmforge.runtime import Generator

    err = rows_graph_gap(Generator(md.path, device="cpu", fast=True, lookahead=1, batch_lookahead=True), prompts)
    if not err <= bounds.max_abs_logit_diff:
        files = md.manifest["files"]
        raise LmforgeError(f"{files['fast-rows']} run through lmforge.runtime differs from {files['fast']} stepped "
                           f"one token per call by {err:.2e} (> export.max_abs_logit_diff "
                           f"{bounds.max_abs_logit_diff:g})",
                           hint="report this model configuration; --set export.rows_graph=false to skip the rows graph")
    return err


def verify_model_dir(model, model_dir: Path, val: np.ndarray | None = None, bounds: Bounds = Bounds(),
                     device: str = "auto") -> tuple[dict, dict]:
    """Check every graph in `model_dir` (see the module docstring); raise LmforgeError past a bound. Returns
    (metrics, record): numbers for lmforge.json/MLflow, and what was checked and where (provider, bounds). The
    quantised checks need real text: without `val` they are skipped (lmforge.export.modeldir.export_run always passes
    the run's val split)."""
    from lmforge.models import model_spec
    from lmforge.runtime import Generator
    from lmforge.runtime.modeldir import read_model_dir
    from lmforge.runtime.scoring import stepped_logits

    md = read_model_dir(model_dir)
    present = set(md.variants())
    spec = model_spec(model)
    metrics, providers = {}, {}

    def load(key: str, variant: str, fast: bool):
        gen = Generator(model_dir, variant=variant, device=device, fast=fast)
        providers[key] = gen.provider
        return gen

    prompts, steps = check_prompts(spec, val)
    ref, forced = torch_rows(model, prompts, steps)
    for key, (variant, fast) in FP32_GRAPHS.items():
        if key not in present:
            continue
        got = stepped_logits(load(key, variant, fast), prompts, forced)
        err = float(np.abs(got - ref).max())
        metrics[f"verify_{metric_name(key)}_logit_max_abs"] = err
        if not err <= bounds.max_abs_logit_diff:
            raise LmforgeError(f"{md.manifest['files'][key]} run through lmforge.runtime differs from torch by "
                               f"{err:.2e} (> export.max_abs_logit_diff {bounds.max_abs_logit_diff:g})",
                               hint="report this model configuration; raise export.max_abs_logit_diff to inspect")
    if "fast-rows" in present:
        metrics["verify_fast_rows_logit_max_abs"] = check_rows_graph(md, prompts, bounds)
        providers["fast-rows"] = "CPUExecutionProvider"
    quant = [k for k in QUANT_GRAPHS if k in present]
    if val is not None and quant:
        metrics.update(check_quantised(load, md.manifest["files"], quant, val_block(spec, val, bounds), bounds))
    record = {"providers": providers, "positions": bounds.positions if val is not None and quant else 0,
              "torch_prompt_lengths": [len(p) for p in prompts], "torch_steps": steps,
              "bounds": {"max_abs_logit_diff": bounds.max_abs_logit_diff,
                         **{f"max_{k}_loss_delta": bounds.loss(k) for k in ("int8", "int4", "fp16")},
                         **{f"min_{k}_agreement": bounds.agreement(k) for k in ("int8", "int4", "fp16")}}}
    return metrics, record
