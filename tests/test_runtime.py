"""lmforge.runtime on a tiny GPT exported to a temp dir: fast-graph parity with torch, batches, streaming, stop
strings, EOS, sliding window, sampling errors, threads, provider."""
import json
import shutil
import threading

import pytest
from conftest import cuda_works, expected_provider, tiny_random_gpt, torch_greedy

from lmforge.data.tokenize import train_char
from lmforge.export.modeldir import export_model_dir
from lmforge.export.fast import build_fast_gpt, fast_parity
from lmforge.models import model_spec
from lmforge.runtime import Generator, ModelDirError, RuntimeInputError

TEXT = "why did the chicken cross the road? to get to the other side! café naïve 😀"
PROMPTS = ["why", "the chicken cross", "t", "to get to the other s"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(model, model dir) — a random 2-layer GPT with a 32-token context; no EOS so lengths are predictable."""
    root = tmp_path_factory.mktemp("runtime")
    tok = train_char([TEXT])
    tok.save(str(root / "tokenizer.json"))
    model = tiny_random_gpt(tok.get_vocab_size())
    manifest = {"name": "tiny", "tokenizer": {"kind": "char", "file": "tokenizer.json"},
                "tokens": {"pad": 0, "unk": 1, "bos": None, "eos": None},
                "generation": {"temperature": 0.0, "max_new_tokens": 20}}
    out, metrics = export_model_dir(model, root / "tokenizer.json", root / "model", manifest)
    assert metrics["onnx_fast_parity_max_abs"] < 1e-4
    return model, out


def test_fast_graph_is_the_documented_nodes(tiny, tmp_path):
    """docs/decode.md: 10 nodes a layer + 5 (the two embedding Gathers, the final Add + LayerNormalization, the
    head), no glue (Identity, Cast, Reshape), the first Add sums the two embeddings; and onnxruntime's optimizer
    fuses only the last Add + LayerNormalization (ln_f, whose sum nothing else reads) into SkipLayerNormalization,
    so a step runs the plain LayerNormalization kernel elsewhere (benchmarks/graph_norms.py)."""
    import onnx
    import onnxruntime as ort

    model, out = tiny
    n_layer = model_spec(model)["n_layer"]
    graph = onnx.load(str(out / "model.fast.onnx")).graph
    ops = [n.op_type for n in graph.node]
    assert len(ops) == 10 * n_layer + 5
    assert not {"Identity", "Cast", "Reshape", "SkipLayerNormalization"} & set(ops)
    assert ops.count("LayerNormalization") == ops.count("Add") == 2 * n_layer + 1
    first = next(n for n in graph.node if n.op_type == "Add")
    assert list(first.input) == ["tok_emb", "pos_emb"]
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(out / "model.fast.onnx"), opts, providers=["CPUExecutionProvider"])
    optimized = [n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node]
    assert optimized.count("SkipLayerNormalization") <= 1
    assert optimized.count("LayerNormalization") >= 2 * n_layer


def test_fast_graph_fused_norms_are_the_same_model(tiny, tmp_path):
    """build_fast_gpt(fused_norm=True), the fp16 graph's form (its default) and the one benchmarks/graph_norms.py
    measures against the default: one SkipLayerNormalization per norm (8 nodes a layer + 4), the same logits as
    torch."""
    import onnx

    model, _ = tiny
    spec = model_spec(model)
    path = build_fast_gpt(model, spec, tmp_path / "fused.onnx", fused_norm=True)
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert len(ops) == 8 * spec["n_layer"] + 4
    assert ops.count("SkipLayerNormalization") == 2 * spec["n_layer"] + 1
    assert not {"Add", "LayerNormalization"} & set(ops)
    err, same = fast_parity(model, spec, path, lengths=(1, 7), steps=10)
    assert err < 1e-4 and same
    fp16 = build_fast_gpt(model, spec, tmp_path / "fp16.onnx", precision="fp16")  # the CUDA graph keeps the fused op
    fp16_ops = [n.op_type for n in onnx.load(str(fp16)).graph.node]
    assert fp16_ops.count("SkipLayerNormalization") == 2 * spec["n_layer"] + 1


@pytest.mark.parametrize("lengths", [(1,), (7,), (1, 7, 4)])
def test_fast_graph_matches_torch(tiny, lengths):
    model, out = tiny
    err, same = fast_parity(model, model_spec(model), out / "model.fast.onnx", lengths=lengths, steps=20)
    assert err < 1e-4 and same


def test_generator_picks_fast_graph_and_matches_torch_and_portable_path(tiny):
    model, out = tiny
    fast, plain = Generator(out), Generator(out, fast=False)
    assert fast.fast and not plain.fast
    assert fast.provider == plain.provider == fast.session.get_providers()[0] == expected_provider()
    ids = fast.encode("why did")
    expected = fast.tokenizer.decode(torch_greedy(model, ids, 20))
    assert fast.generate("why did", max_new_tokens=20, temperature=0) == expected
    assert plain.generate("why did", max_new_tokens=20, temperature=0) == expected


@pytest.mark.parametrize("precision", ["int8", "int4"])
def test_column_graphs_give_the_very_bits_of_one_token_steps(precision, tmp_path):
    """benchmarks/column_graphs.py's exactness (docs/decode.md, "Why batch 8 stays level"): one call of a column
    graph, W tokens for each of 8 rows of unequal lengths, gives the logits and caches of the int8/int4 step graph
    run one token per call, to the bit; with its token dimension left symbolic it does not (the optimizer leaves
    ln_f unfused there)."""
    import sys

    import numpy as np
    import torch
    from conftest import REPO

    from lmforge.models.gpt import GPT, GPTConfig

    sys.path.insert(0, str(REPO / "benchmarks"))
    import column_graphs as cg

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=300, block_size=64, n_layer=2, n_head=2, n_embd=64)).eval()
    spec = model_spec(model)
    fast = build_fast_gpt(model, spec, tmp_path / "fast.onnx", precision=precision)
    step = cg.session(fast, 2)
    rng = np.random.default_rng(0)
    lengths = rng.integers(10, 50, 8)
    kv = cg.prefilled(step, spec, lengths, 64, rng)
    for width, fixed in ((2, True), (3, True), (3, False)):
        column = cg.session(cg.build_column_graph(fast, tmp_path / f"cols{width}{fixed}.onnx", width, fixed), 2)
        gap, equal = cg.column_gap(step, column, spec, kv, lengths, width, rng)
        assert equal == fixed and (gap == 0) == fixed, (width, fixed, gap)
        assert gap < 1e-4  # symbolic: rounding apart, not another model


@pytest.mark.parametrize("precision", ["int8", "int4"])
def test_int_rows_graph_gives_each_row_its_bits_alone_in_even_calls(precision, tmp_path):
    """benchmarks/column_graphs.py's rows contenders (docs/decode.md, "Why batch 8 stays level"): one call of the
    rows graph of an int8/int4 fast graph, W tokens for each of 8 rows of unequal lengths, gives each row the logits
    and cache of its W tokens run alone in one call of an even number of tokens, to the bit. (Against one-token steps
    it rounds apart on the reference model, 2-3e-2; on this small one it may not, so that is the benchmark's.)"""
    import sys

    import numpy as np
    import torch
    from conftest import REPO

    from lmforge.export.fast import build_rows_graph
    from lmforge.models.gpt import GPT, GPTConfig

    sys.path.insert(0, str(REPO / "benchmarks"))
    import column_graphs as cg

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=300, block_size=64, n_layer=2, n_head=2, n_embd=64)).eval()
    spec = model_spec(model)
    fast = build_fast_gpt(model, spec, tmp_path / "fast.onnx", precision=precision)
    with pytest.raises(ValueError, match="fp32"):
        build_rows_graph(fast, tmp_path / "refused.onnx", 8)
    rows = cg.session(build_rows_graph(fast, tmp_path / "rows.onnx", 8, quantized=True), 2)
    step = cg.session(fast, 2)
    rng = np.random.default_rng(0)
    lengths = rng.integers(10, 50, 8)
    kv = cg.prefilled(step, spec, lengths, 64, rng)
    for width in (2, 3, 4):
        gap, equal = cg.alone_gap(step, rows, spec, kv, lengths, width, rng)
        assert equal and gap == 0, (width, gap)
        gap, _equal = cg.column_gap(step, rows, spec, kv, lengths, width, rng)
        assert gap < 0.5, (width, gap)  # the same model


def test_int8_variant_runs_fast_graph(tiny):
    _, out = tiny
    gen = Generator(out, variant="int8")
    assert gen.fast and len(gen.generate("why", max_new_tokens=10, temperature=0)) > 0


def test_decode_step_reads_the_logits_where_the_graph_wrote_them(tiny):
    """On the CPU a decode step returns `dec.out`, the very memory bound as the graph's logits output (one buffer
    for every step: nothing copies the [slots, V] logits in Python), and the graph writes into it each step."""
    import numpy as np

    gen = Generator(tiny[1])
    dec = gen.decoder(2, 16)
    logits = dec.prefill([gen.encode("why"), gen.encode("the chicken")])
    for _ in range(3):
        dec.out[:] = np.nan
        out = dec.step(logits.argmax(-1))
        assert out is dec.out and np.isfinite(out).all()
        assert out.__array_interface__["data"][0] == dec.values["logits"].data_ptr()
        logits = out


def test_one_slot_step_writes_what_the_batched_step_writes(tiny):
    """The one-slot step (Python ints through memoryviews) feeds the graph exactly the inputs of the numpy path
    for any number of slots (the same call with every slot active), so its logits are bit for bit the same."""
    import numpy as np

    gen = Generator(tiny[1])
    one, ref = gen.decoder(1, 32), gen.decoder(1, 32)
    ids = gen.encode("to get to the")
    a, b = one.prefill([ids]).copy(), ref.prefill([ids]).copy()
    for _ in range(10):
        token = a.argmax(-1)
        a = one.step(token).copy()
        b = ref.step(token, np.ones(1, bool)).copy()
        for name in ("ids", "pos", "seqlens", "total", "lengths"):
            assert np.array_equal(getattr(one, name), getattr(ref, name)), name
        assert np.array_equal(a, b)


@pytest.mark.parametrize("fast", [True, False])
def test_batch_of_different_lengths_equals_each_alone(tiny, fast):
    gen = Generator(tiny[1], fast=fast)
    alone = [gen.generate(p, max_new_tokens=12, temperature=0) for p in PROMPTS]
    assert gen.generate(PROMPTS, max_new_tokens=12, temperature=0) == alone


def test_stream_concatenates_to_generate(tiny):
    gen = Generator(tiny[1])
    for kw in ({"temperature": 0}, {"temperature": 1.0, "top_k": 5, "seed": 3}):
        pieces = list(gen.stream("café", max_new_tokens=25, **kw))
        assert len(pieces) > 1 and "".join(pieces) == gen.generate("café", max_new_tokens=25, **kw)


def test_stop_string_cuts_output(tiny):
    gen = Generator(tiny[1])
    full = gen.generate("why", max_new_tokens=20, temperature=0)
    stop = full[5:7]
    cut = gen.generate("why", max_new_tokens=20, temperature=0, stop=[stop])
    assert cut == full[:full.find(stop)] and stop not in cut
    assert "".join(gen.stream("why", max_new_tokens=20, temperature=0, stop=[stop])) == cut


def test_eos_ends_generation(tiny, tmp_path):
    model, out = tiny
    ids = torch_greedy(model, Generator(out).encode("why"), 20)
    eos = ids[4]
    d = tmp_path / "m"
    shutil.copytree(out, d)
    manifest = json.loads((d / "lmforge.json").read_text())
    manifest["tokens"]["eos"] = eos
    (d / "lmforge.json").write_text(json.dumps(manifest))
    for fast in (True, False):
        gen = Generator(d, fast=fast)
        assert gen.generate("why", max_new_tokens=20, temperature=0) == gen.tokenizer.decode(ids[:ids.index(eos)])


def test_an_empty_prompt_never_gets_an_empty_text(tiny, tmp_path):
    """The token the model picks first after nothing made its EOS: a non-empty prompt may still end at once, an
    empty one never does (its first token is drawn without EOS, as the training samples are), greedy or sampled,
    on both graphs."""
    model, out = tiny
    gen = Generator(out)
    first = torch_greedy(model, gen.prompt_ids(""), 2)
    d = tmp_path / "m"
    shutil.copytree(out, d)
    manifest = json.loads((d / "lmforge.json").read_text())
    manifest["tokens"]["eos"] = first[0]
    (d / "lmforge.json").write_text(json.dumps(manifest))
    prompt = next(p for p in TEXT.split() if torch_greedy(model, gen.encode(p), 1) == first[:1])
    for fast in (True, False):
        gen = Generator(d, fast=fast)
        assert gen.generate(prompt, max_new_tokens=10, temperature=0) == ""  # EOS first: the model's own choice
        text = gen.generate("", max_new_tokens=10, temperature=0)
        assert text and not text.startswith(gen.tokenizer.decode(first[:1]))
        assert all(gen.generate(["", "why"], max_new_tokens=3, temperature=1.5, seed=s)[0] for s in range(20))


def test_sliding_window_past_context(tiny):
    """Both paths keep going past the 32-token context and agree; the first tokens match torch."""
    model, out = tiny
    fast, plain = Generator(out), Generator(out, fast=False)
    a = fast.generate("why did the", max_new_tokens=70, temperature=0)
    assert a == plain.generate("why did the", max_new_tokens=70, temperature=0)
    ids = fast.encode("why did the")
    assert a.startswith(fast.tokenizer.decode(torch_greedy(model, ids, 32 - len(ids))))
    seeded = [fast.generate("why", max_new_tokens=70, temperature=1.0, seed=7) for _ in range(2)]
    assert seeded[0] == seeded[1]


@pytest.mark.parametrize("kw,name", [({"temperature": -1}, "temperature"), ({"top_p": 0.0}, "top_p"),
                                     ({"top_k": -2}, "top_k"), ({"max_new_tokens": 0}, "max_new_tokens"),
                                     ({"repetition_penalty": 0}, "repetition_penalty")])
def test_invalid_sampling_params_raise_clear_errors(tiny, kw, name):
    with pytest.raises(RuntimeInputError, match=name):  # the runtime's one error type (a ValueError too)
        Generator(tiny[1]).generate("why", **kw)


def test_runtime_input_errors_share_one_type(tiny, tmp_path):
    for bad in (lambda: Generator(tmp_path), lambda: Generator(tiny[1], device="tpu"),
                lambda: Generator(tiny[1], variant="int4", fast=False)):
        with pytest.raises(RuntimeInputError):
            bad()


def test_threads_share_one_generator(tiny):
    gen = Generator(tiny[1], threads=1)
    jobs = [(PROMPTS[i % len(PROMPTS)], {"max_new_tokens": 15, "temperature": 0.9, "top_k": 8, "seed": i})
            for i in range(8)]
    expected = [gen.generate(p, **kw) for p, kw in jobs]
    got = [None] * len(jobs)

    def work(i):
        got[i] = gen.generate(jobs[i][0], **jobs[i][1])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == expected


def test_device_cuda_reports_the_provider_that_runs(tiny):
    """CUDA where it really loads, else a reported fallback to the CPU; device="cpu" is always the CPU."""
    gen = Generator(tiny[1], device="cuda")
    assert gen.provider == gen.session.get_providers()[0]
    assert gen.provider == ("CUDAExecutionProvider" if cuda_works() else "CPUExecutionProvider")
    assert Generator(tiny[1], device="cpu").provider == "CPUExecutionProvider"


def test_fast_requested_without_fast_graph_is_a_clear_error(tiny, tmp_path):
    d = tmp_path / "m"
    shutil.copytree(tiny[1], d)
    (d / "model.fast.onnx").unlink()
    assert not Generator(d).fast  # falls back to the portable graph
    with pytest.raises(ModelDirError, match="fast"):
        Generator(d, fast=True)
