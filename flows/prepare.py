"""`lmforge prepare`: acquire -> clean -> tokenize + shard only. With data.parts > 1 cleaning and encoding
fan out as mapped tasks over the flow's task runner (a DaskTaskRunner from `--dask`, else threads)."""
from __future__ import annotations

from prefect import flow, get_run_logger, unmapped

from lmforge.core.config import DEFAULT_PRESET, Config
from lmforge.core.layout import RunLayout
from lmforge.core.locks import hold
from lmforge.core.policy import Policy
from lmforge.tasks import parsed_config, run_policy
from lmforge.core.records import PreparedData
from lmforge.tasks.data import (acquire_data, clean_data, clean_data_part, encode_data_part, join_data_shards,
                        merge_cleaned_parts, plan_data_parts, tokenize_data, train_data_tokenizer)


def prepare_data(cfg: Config, layout: RunLayout, run_id: str | None = None,
                 policy: Policy | None = None) -> PreparedData:
    """The data tasks of a flow, in parts when data.parts > 1. The caller holds the prepared directory's lock."""
    out = layout.prepared
    corpus = acquire_data(cfg, layout.cache, policy)
    if cfg.data.parts == 1:
        return tokenize_data(clean_data(corpus, cfg, out, run_id), cfg, out, run_id)
    plan = plan_data_parts(corpus, cfg, out, run_id)
    if isinstance(plan, PreparedData):  # this very source is prepared already
        return tokenize_data(plan, cfg, out, run_id)
    parts = clean_data_part.map(unmapped(corpus), unmapped(cfg), unmapped(out), plan.parts, range(len(plan.parts)))
    cleaned = merge_cleaned_parts(parts, cfg, out, corpus, plan.fingerprint, run_id)
    split, runs = train_data_tokenizer(cleaned, cfg, out)
    encoded = encode_data_part.map(unmapped(cleaned), unmapped(split), unmapped(out), runs, range(len(runs)))
    return join_data_shards(cleaned, cfg, out, split, encoded, run_id)


@flow(name="lmforge-prepare")
def prepare(preset: str = DEFAULT_PRESET, overrides: dict | None = None, wait: bool = True,
            config: Config | None = None) -> dict:
    """As pipeline's parameters; the data steps only."""
    policy = run_policy()  # the operator's: a deployment run gets the deployment defaults
    cfg = parsed_config(preset, overrides, config, policy)
    layout = RunLayout.for_config(cfg)
    with hold(layout.prepared_lock, f"the prepared data of {cfg.name} ({layout.prepared})", wait,
              get_run_logger()):
        data = prepare_data(cfg, layout, policy=policy)
    return {"documents": data.documents, "chars": data.chars, "vocab_size": data.vocab_size,
            "train_tokens": data.train_tokens, "val_tokens": data.val_tokens, "split": data.split["method"],
            "fingerprint": data.fingerprint, "shards": [f"{data.dir}/train.bin", f"{data.dir}/val.bin"],
            "dir": str(data.dir), "cached": data.cached, "ran_on": data.ran_on}
