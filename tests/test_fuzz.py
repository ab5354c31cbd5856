"""Property tests (hypothesis): config overrides, the CSV/TSV reader and the runtime's sampling parameters.
(Tokenizer round trips are fuzzed in the tokenizer tests.)"""
from __future__ import annotations

import csv
import math
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from lmforge.core.config import load_config, valid_keys
from lmforge.core.errors import LmforgeError

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

values = st.one_of(st.text(max_size=12), st.integers(-5, 10**6).map(str), st.floats(allow_nan=True).map(str),
                   st.sampled_from(["true", "no", "[1,2]", "[", "[\"a\"]", "0", "-1", "1e400", "nan", "", "auto",
                                    "char", "cuda", "[0.5, 1.0]"]))
keys = st.one_of(st.sampled_from(valid_keys() + ["name", "description"]), st.text(max_size=20))
overrides = st.lists(st.one_of(st.tuples(keys, values).map("=".join), st.text(max_size=20)), max_size=4)


@FAST
@given(overrides)
@example(["model.n_head=0"])  # once a ZeroDivisionError in the n_embd % n_head check
@example(["train.lr=nan"])  # once accepted, then trained to NaN
@example(["eval.prompts=[[[[", "train.max_steps=-1"])
def test_config_overrides_only_ever_raise_lmforge_error(pairs):
    try:
        cfg = load_config("jokes-char", pairs)
    except LmforgeError as exc:
        assert str(exc) and "\n" not in exc.message
    else:
        assert cfg.model.n_embd % cfg.model.n_head == 0 and cfg.train.max_steps > 0


cell = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=15)


@FAST
@given(st.lists(st.tuples(cell, cell), min_size=1, max_size=12), st.sampled_from(["csv", "tsv"]))
def test_table_reader_returns_the_non_empty_stripped_cells(rows, fmt):
    from lmforge.data.formats import read_documents

    expected = [text.strip() for text, _ in rows if text.strip()]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"t.{fmt}"
        with open(path, "w", encoding="utf-8", newline="") as f:
            w = csv.writer(f, delimiter="," if fmt == "csv" else "\t", quoting=csv.QUOTE_NONNUMERIC)
            w.writerow(["text", "label"])
            w.writerows(rows)
        if not expected:
            with pytest.raises(LmforgeError):
                read_documents(path, fmt, "text")
            return
        assert read_documents(path, fmt, "text") == expected


@pytest.fixture(scope="module")
def generator(tmp_path_factory):
    from lmforge.runtime import Generator
    from test_bad_input import tiny_model_dir

    return Generator(tiny_model_dir(tmp_path_factory.mktemp("fuzz") / "model"))


numbers = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-3, 100))


@FAST
@example(temperature=3.4028235677973366e38, top_k=0, top_p=0.5, repetition_penalty=1.0, max_new_tokens=1, seed=0)
@example(temperature=1.0, top_k=0, top_p=1.0, repetition_penalty=1e-50, max_new_tokens=1, seed=0)  # 0 in float32
@given(temperature=numbers, top_k=st.integers(-2, 60), top_p=numbers, repetition_penalty=numbers,
       max_new_tokens=st.integers(-1, 24), seed=st.integers(0, 2**32 - 1))
def test_sampling_params_raise_value_error_or_generate(generator, temperature, top_k, top_p, repetition_penalty,
                                                       max_new_tokens, seed):
    def finite(x):  # the runtime scales logits in float32
        return math.isfinite(x) and abs(x) <= float(np.finfo(np.float32).max)

    valid = (finite(temperature) and temperature >= 0 and top_k >= 0 and finite(top_p) and 0 < top_p <= 1
             and finite(repetition_penalty) and np.float32(repetition_penalty) > 0 and max_new_tokens >= 1)
    kwargs = dict(temperature=temperature, top_k=top_k, top_p=top_p, repetition_penalty=repetition_penalty,
                  max_new_tokens=max_new_tokens, seed=seed)
    if not valid:
        with pytest.raises(ValueError):
            generator.generate("why", **kwargs)
        return
    text = generator.generate("why", **kwargs)
    assert isinstance(text, str) and len(text) <= max_new_tokens
    assert generator.generate("why", **kwargs) == text  # same seed, same text
