"""The export's quantised-graph checks (lmforge.export.verify), re-run on an exported model directory at any number of
val positions, through the runtime (Generator.decoder) only: each quantised graph's loss delta and top-1
agreement against the fp32 graph of the same kind.

    python benchmarks/verify.py RUN_DIR/model RUN_DIR/data --positions 2048
"""
from __future__ import annotations

import argparse
import json

from lmforge.data.shards import open_shard
from lmforge.runtime import Generator, read_model_dir
from lmforge.runtime.scoring import stepped_score, val_rows
from lmforge.export.verify import FP32_GRAPHS, QUANT_GRAPHS


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model_dir")
    ap.add_argument("data_dir", help="the prepared data directory holding the val shard")
    ap.add_argument("--positions", type=int, default=2048)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    md = read_model_dir(args.model_dir)
    rows = val_rows(open_shard(args.data_dir, "val"), int(md.model.get("block_size") or 128), args.positions)
    refs, out = {}, {"positions": args.positions}
    for key in (k for k in QUANT_GRAPHS if k in md.variants()):
        variant, fast, _, ref = QUANT_GRAPHS[key]
        if ref not in refs:
            refs[ref] = stepped_score(Generator(md.path, *FP32_GRAPHS[ref][:1], device=args.device,
                                                fast=FP32_GRAPHS[ref][1]), rows, args.positions)
            out[f"{ref}_loss"] = round(refs[ref][0], 4)
        loss, top = stepped_score(Generator(md.path, variant=variant, device=args.device, fast=fast), rows,
                                  args.positions)
        out[f"{key}_loss_delta"] = round(loss - refs[ref][0], 5)
        out[f"{key}_agreement"] = round(float((top == refs[ref][1]).mean()), 4)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
