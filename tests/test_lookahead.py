"""Prompt-lookup speculation (lmforge.runtime.lookahead, KVBuffers.extend, runtime.batch): a greedy row's tokens,
text, events and finish are exactly those of one graph call per token, with lookahead on or off, through stream(),
generate(), stream_batch() with sampling rows beside, continuous batching, stop strings, max_new_tokens inside an
accepted run and the sliding window; and speculation really happens (fewer graph calls than tokens). On a char GPT
trained to recite a text (its greedy output repeats: the drafts are taken) and on a random one (varied output: drafts
are rejected too): fp32, int8 and int4 fast graphs speculate exactly; fp16 and an int8 graph exported before the
pairs of rows (DynamicQuantizeMatMul) never do."""
import json
import shutil

import numpy as np
import pytest
import torch
from conftest import assert_error_line, tiny_random_gpt

from lmforge.core.config import ExportConfig, TrainConfig
from lmforge.data.tokenize import train_char
from lmforge.export.modeldir import export_model_dir
from lmforge.models.gpt import GPT, GPTConfig
from lmforge.runtime import Generator, ModelDirError, RequestError, RowRequest
from lmforge.runtime.lookahead import BatchEconomy, Lookup
from lmforge.runtime.scoring import greedy_ids
from lmforge.training.train import train

TEXT = "to be or not to be, that is the question: whether "  # shorter than the context: recited, it repeats
MANIFEST = {"name": "recite", "tokenizer": {"kind": "char", "file": "tokenizer.json"},
            "tokens": {"pad": 0, "unk": 1, "bos": None, "eos": None}, "generation": {"temperature": 0.0}}
# prompts of at most 20 characters, from a wider text, for the logits checks (room for 20 + 12 in the cache)
WINDOWS = [(TEXT + "tis nobler in the mind to suffer the slings")[i:i + 20] for i in range(0, 60, 3)]
PROMPTS = ["to be or", "that is the question: whether to be or not to be, that", "whether tis nob", "q"]


@pytest.fixture(scope="module")
def reciter(tmp_path_factory, one_torch_thread):
    """A char GPT (context 64) trained to recite TEXT, exported with every fast variant: its model dir. One thread
    (threads=0 would pick them from the machine's load): the same weights every run, so the same rounding gaps."""
    root = tmp_path_factory.mktemp("lookahead")
    tok = train_char([TEXT])
    tok.save(str(root / "tokenizer.json"))
    ids = np.array(tok.encode(TEXT * 150).ids, np.uint16)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.get_vocab_size(), block_size=64, n_layer=2, n_head=2, n_embd=64))
    train(model, ids, ids, 64, TrainConfig(max_steps=300, batch_size=16, lr=3e-3, warmup_steps=10,
                                          eval_interval=300, eval_iters=1, threads=1), root / "ckpt")
    out, _ = export_model_dir(model.eval(), root / "tokenizer.json", root / "model", MANIFEST,
                              ExportConfig(optimize=False, fp16=True, int4=True, rows_graph=True))
    return out


@pytest.fixture(scope="module")
def varied(tmp_path_factory):
    """A random GPT (context 32) whose greedy output is varied: drafts get rejected as well as taken."""
    root = tmp_path_factory.mktemp("lookahead-random")
    tok = train_char([TEXT])
    tok.save(str(root / "tokenizer.json"))
    out, _ = export_model_dir(tiny_random_gpt(tok.get_vocab_size()), root / "tokenizer.json", root / "model",
                              MANIFEST, ExportConfig(optimize=False, int8=False))
    return out


def pair(model_dir, variant="fp32", k=4):
    return Generator(model_dir, variant=variant, lookahead=k), Generator(model_dir, variant=variant, lookahead=0)


def last_events(gen, requests):
    """The finishing event of each row."""
    return [ev for ev in gen.stream_batch(requests) if ev.finish_reason]


def events(gen, requests):
    """Per row: (its events' texts joined, its token ids in order, its finish reason, its completion_tokens)."""
    rows = {}
    for ev in gen.stream_batch(requests):
        text, ids, _, _ = rows.get(ev.row, ("", [], None, 0))
        rows[ev.row] = (text + ev.text, ids + list(ev.token_ids), ev.finish_reason, ev.completion_tokens)
    return [rows[i] for i in range(len(requests))]


def stepped_and_extended(gen, prompt: str, width: int):
    """The logits of `width` greedy tokens after `prompt`, one call per token and in one extend() call, and the
    logits of the same call with other tokens after the first `width` (one slot, the fast graph)."""
    ids = gen.encode(prompt)
    dec = gen.decoder(1, 64)
    tokens, stepped = [int(dec.prefill_slot(0, ids).argmax())], []
    for _ in range(width - 1):
        stepped.append(dec.step(np.array([tokens[-1]]))[0].copy())
        tokens.append(int(stepped[-1].argmax()))
    stepped.append(dec.step(np.array([tokens[-1]]))[0].copy())
    dec = gen.decoder(1, 64)
    dec.prefill_slot(0, ids)
    extended = dec.extend(0, tokens).copy()
    assert dec.lengths[0] == len(ids) + width
    dec.truncate(0, len(ids))  # rollback, then the same call with junk after: the first rows must not see it
    junk = dec.extend(0, tokens + [3, 5, 7]).copy()[:width]
    return np.array(stepped), extended, junk


def test_a_verifying_call_gives_each_position_the_logits_of_one_call_per_token(reciter):
    """What makes speculation exact (docs/decode.md): on the fp32 graph each position's logits in one extend() call
    equal those of a call per token to float32 rounding, and the tokens after it in the call do not change them;
    so greedy tokens cannot differ but on an exact tie."""
    gen = Generator(reciter, lookahead=8)
    assert gen.lookahead == 8 and gen.max_width == 9 and gen.speculates
    for prompt in WINDOWS[::4]:
        stepped, extended, junk = stepped_and_extended(gen, prompt, gen.max_width)
        assert np.abs(extended - stepped).max() < 1e-5
        assert np.abs(junk - extended).max() < 1e-5


def test_int8_and_int4_speculate_exactly_since_every_call_runs_pairs_of_rows(reciter):
    """int8 and int4 (MatMulNBits) speculate: a speculating row's one-slot decoder runs every call with an even number
    of tokens, two or more (KVBuffers.pairs), so a verifying call gives each position the very bits of its steps,
    whatever follows it; the greedy text is that of a (pair) call per token, and drafts are really checked."""
    text = (TEXT + "tis nobler in the mind to suffer the slings and arrows of outrageous fortune, or to take arms ") * 2
    for variant in ("int8", "int4"):
        gen, off = pair(reciter, variant, k=8)
        assert gen.rows_in_pairs and gen.speculates and gen.lookahead == 8
        runs = [stepped_and_extended(gen, text[i:i + 20], 9) for i in range(0, 140, 5)]
        assert max(np.abs(e - s).max() for s, e, _ in runs) == 0.0
        assert max(np.abs(j - e).max() for _, e, j in runs) == 0.0
        verified = 0
        for p in PROMPTS:  # the tokens of a (pair) call per token, through stream_batch and generate
            (said, ids, _, _), = events(gen, [RowRequest(p, max_new_tokens=40, temperature=0)])
            verified += gen.last_stats["verify_calls"]
            if len(p) + 40 <= 64:  # (greedy_ids has no sliding window)
                assert ids == greedy_ids(gen, gen.encode(p), 40)
            assert gen.generate(p, max_new_tokens=40) == said
            assert off.generate(p, max_new_tokens=40) == said  # (no near tie in this model's choices)
            assert off.last_stats["verify_calls"] == 0
        assert verified > 0


def test_why_pairs_calls_of_an_odd_width_round_apart(tmp_path):
    """The kernel fact the pairs work around (lmforge.export.fast.ROWS_IN_PAIRS), on a random GPT of the decode
    benchmark's shape as int8 and int4 graphs: 32 tokens after a prompt, run in calls of w tokens each. Calls of 1 or
    3 tokens give other logits (~1e-2) than calls of 2; calls of 4 and 6 give the very same bits as calls of 2."""
    import onnxruntime as ort

    from lmforge.export.fast import build_fast_gpt
    from lmforge.models import model_spec
    from lmforge.runtime.names import kv_names

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=8192, block_size=64, n_layer=6, n_head=6, n_embd=384)).eval()
    past, _ = kv_names(6)
    ids = np.random.default_rng(0).integers(0, 8192, 64).tolist()
    for precision in ("int8", "int4"):
        path = build_fast_gpt(model, model_spec(model), tmp_path / f"{precision}.onnx", precision=precision)
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

        def call(run, start, kv):
            S = len(run)
            return sess.run(None, {"input_ids": np.array([run]), "position_ids": np.arange(start, start + S)[None],
                                   "seqlens_k": np.array([start + S - 1], np.int32),
                                   "total_sequence_length": np.array(start + S, np.int32), **dict(zip(past, kv))})
        prompt_kv = call(ids[:32], 0, [np.zeros((1, 6, 64, 64), np.float32) for _ in past])[1:]

        def logits(width):  # tokens 32..63 in calls of `width`, from the prompt's caches (written in place)
            kv, out = [a.copy() for a in prompt_kv], []
            for t in range(32, 64, width):
                run = ids[t:min(t + width, 64)]
                res = call(run, t, kv)
                kv = res[1:]
                out.append(res[0][0])
            return np.concatenate(out)
        two = logits(2)
        assert np.abs(logits(1) - two).max() > 1e-3, precision
        assert np.abs(logits(3) - two).max() > 1e-3, precision
        assert np.abs(logits(4) - two).max() == 0.0 and np.abs(logits(6) - two).max() == 0.0, precision


def test_fp16_and_an_int8_graph_exported_before_never_speculate(reciter, tmp_path):
    """fp16: the other tokens of a call change nothing, but a call of several tokens rounds otherwise than a call
    per token, past float32's rounding. An int8 directory exported before the pairs (DynamicQuantizeMatMul, one
    activation scale for a whole call: the other tokens move a position's logits; no io.fast.rows_in_pairs) does
    not either. Neither speculates, and each gives the text of lookahead 0."""
    from lmforge.export.variants import quantize_int8

    old = shutil.copytree(reciter, tmp_path / "old")
    quantize_int8(old / "model.fast.onnx", old / "model.fast.int8.onnx")
    manifest = json.loads((old / "lmforge.json").read_text())
    del manifest["io"]["fast"]["rows_in_pairs"]
    (old / "lmforge.json").write_text(json.dumps(manifest))
    gens = {"fp16": Generator(reciter, variant="fp16", lookahead=8),
            "int8": Generator(old, variant="int8", lookahead=8)}
    assert all(g.lookahead == 0 and not g.speculates and not g.rows_in_pairs for g in gens.values())
    _, extended, junk = stepped_and_extended(gens["int8"], WINDOWS[0], 4)
    assert np.abs(junk - extended).max() > 1e-3
    runs = [stepped_and_extended(gens["fp16"], p, 8) for p in WINDOWS[::2]]
    assert max(np.abs(j - e).max() for _, e, j in runs) < 1e-5  # row-independent ...
    assert max(np.abs(e - s).max() for s, e, _ in runs) > 1e-4  # ... but not the logits of a call per token
    for variant, gen in gens.items():
        off = Generator(old if variant == "int8" else reciter, variant=variant, lookahead=0)
        for p in PROMPTS:
            assert gen.generate(p, max_new_tokens=40) == off.generate(p, max_new_tokens=40)
            assert gen.last_stats["verify_calls"] == 0 and gen.last_stats["calls"] + gen.last_stats["prefills"] == 40


def test_lookup_drafts_what_followed_the_latest_earlier_ngram_and_backs_off_after_misses():
    look = Lookup(4)
    assert look.draft([1, 2, 3, 4, 1, 2, 3], room=10) == [4, 1, 2, 3]  # (1, 2, 3) was followed by 4, 1, 2, 3
    assert look.draft([1, 2, 3, 4, 1, 2, 3, 9, 2, 3], room=10) == [9, 2, 3, 9]  # the latest (2, 3): a period of 3
    assert Lookup(4).draft([5, 5, 5], room=2) == [5, 5]  # a repeated token continues; room caps the draft
    assert Lookup(4).draft([1, 2, 3, 4], room=10) == []  # no bigram seen twice: no draft
    assert Lookup(4).draft([1, 2, 3, 1], room=10) == []  # a single token is not enough
    look.checked(4, 4)
    assert look.k == 4  # (at most k_max)
    look.checked(4, 1)
    look.checked(3, 1)
    assert look.k == 2
    look.checked(2, 2)
    assert look.k == 4
    look.checked(4, 0)
    assert look.k == 1 and look.misses == 1
    for misses, wait in ((2, 1), (3, 3), (4, 7), (5, 15), (6, 16)):
        look.checked(1, 0)
        assert (look.misses, look.wait) == (misses, wait)
    more = [1, 2, 3, 4, 1, 2, 3, 9, 2, 3, 9]  # the row's context, grown by a token
    assert [look.draft(more, 4) for _ in range(16)] == [[]] * 16 and look.draft(more, 4) == [2]  # k is 1 now


def check_same(on, off, prompts, **kwargs) -> tuple[dict, dict]:
    """stream() and generate() with lookahead on and off give the same pieces joined and the same text; the
    graph calls and drafts of on's and off's generate() calls, summed over the prompts."""
    stats = ({}, {})
    for p in prompts:
        assert "".join(on.stream(p, **kwargs)) == "".join(off.stream(p, **kwargs))
        assert on.generate(p, **kwargs) == off.generate(p, **kwargs)
        for gen, total in zip((on, off), stats):
            for k, v in gen.last_stats.items():
                total[k] = total.get(k, 0) + v
    return stats


def test_stream_and_generate_are_the_same_with_lookahead_and_take_fewer_calls(reciter):
    """150 tokens on a context of 64: through the sliding window too. The reciter repeats: drafts are taken."""
    on, off = pair(reciter)
    stats, plain = check_same(on, off, PROMPTS, max_new_tokens=150)
    assert stats["tokens"] == plain["tokens"] == 600 and plain["calls"] + plain["prefills"] >= 600
    assert stats["calls"] + stats["prefills"] < 0.85 * 600 and stats["accepted"] > 100
    assert plain["verify_calls"] == 0


def test_varied_output_rejects_drafts_and_still_gives_the_same_text(varied):
    on, off = pair(varied, k=8)
    stats, _ = check_same(on, off, PROMPTS, max_new_tokens=100)
    assert 0 < stats["accepted"] < stats["drafted"]  # some drafts taken, some rejected


def test_events_carry_every_token_of_a_run_and_max_new_tokens_ends_inside_one(reciter):
    on, off = pair(reciter, k=8)
    runs = 0
    for n in range(1, 14):
        for p in PROMPTS[:2]:
            (text, ids, finish, count), = events(on, [RowRequest(p, max_new_tokens=n)])
            assert (text, ids, finish, count) == events(off, [RowRequest(p, max_new_tokens=n)])[0]
            assert len(ids) == count == n and finish == "length"
            runs += on.last_stats["accepted"] > 0
    assert runs > 12
    ends = [last_events(on, [RowRequest(PROMPTS[1], max_new_tokens=n)])[0] for n in range(20, 40)]
    assert any(len(e.token_ids) > 1 for e in ends)  # max_new_tokens reached inside a verified run
    evs = list(on.stream_batch([RowRequest(PROMPTS[1], max_new_tokens=150)]))
    assert max(len(e.token_ids) for e in evs) > 4 and len(evs) < 100
    on.last_stats, got = None, ""  # a caller that stops reading at its last token still gets the stats
    for piece in on.stream(PROMPTS[1], max_new_tokens=150):
        got += piece
        if len(got) == 150:
            break
    assert on.last_stats["tokens"] == 150 and on.last_stats["accepted"] > 0


def test_stop_strings_and_eos_inside_an_accepted_run(reciter, tmp_path):
    on, off = pair(reciter, k=8)
    for stop in (["question"], ["to be, th"], [", "], ["at", "is"], ["nothing like it"]):
        for p in PROMPTS:
            req = [RowRequest(p, max_new_tokens=150, stop=stop)]
            assert events(on, req) == events(off, req)
    assert on.last_stats["accepted"] > 0
    ends = [last_events(on, [RowRequest(PROMPTS[1], max_new_tokens=150, stop=[stop])])[0]
            for stop in ("question", "be, t", "or not", "whether")]
    assert any(e.finish_reason == "stop" and len(e.token_ids) > 1 for e in ends)  # a stop string inside a run
    eos_dir = tmp_path / "eos"
    shutil.copytree(reciter, eos_dir)
    manifest = json.loads((eos_dir / "lmforge.json").read_text())
    manifest["tokens"]["eos"] = on.tokenizer.token_to_id("q")  # greedy recitation ends before "question"
    (eos_dir / "lmforge.json").write_text(json.dumps(manifest))
    on, off = pair(eos_dir, k=8)
    finishes = []
    for p in PROMPTS:
        got = events(on, [RowRequest(p, max_new_tokens=150)])
        assert got == events(off, [RowRequest(p, max_new_tokens=150)])
        assert "q" not in got[0][0] and len(got[0][1]) == got[0][3]
        finishes.append(got[0][2])
    assert "stop" in finishes and on.last_stats["accepted"] > 0
    ends = last_events(on, [RowRequest(PROMPTS[1], max_new_tokens=150)])  # EOS after tokens of the same run
    assert ends[0].finish_reason == "stop" and len(ends[0].token_ids) > 0


def test_mixed_batches_and_continuous_batching_are_the_same(reciter):
    """Sampling rows keep their seeded draws; a greedy row speculates once it runs alone."""
    on, off = pair(reciter, k=8)
    reqs = [RowRequest(PROMPTS[0], max_new_tokens=120), RowRequest(PROMPTS[1], temperature=0.9, seed=1),
            RowRequest(PROMPTS[2], max_new_tokens=10), RowRequest(PROMPTS[3], temperature=0.8, top_k=5, seed=2,
                                                                  max_new_tokens=30, stop=["e"])]
    assert events(on, reqs) == events(off, reqs)
    assert on.last_stats["verify_calls"] > 0
    logs = []
    for gen in (on, off):
        session, log = gen.batch_session(slots=2), []
        session.add(RowRequest(PROMPTS[0], max_new_tokens=90))
        for i in range(200):
            if i in (20, 45):
                session.add(RowRequest(PROMPTS[i % 4], temperature=0.7, seed=i, max_new_tokens=15))
            if i == 60:
                session.add(RowRequest(PROMPTS[2], max_new_tokens=40))
            log += [(ev.row, ev.text, ev.token_ids, ev.finish_reason) for ev in session.step()]
        logs.append(["".join(t for r, t, _, _ in log if r == row) for row in range(4)] +
                    [[i for r, _, ids, _ in log if r == row for i in ids] for row in range(4)])
        assert not session.busy
    assert logs[0] == logs[1] and session.stats["verify_calls"] == 0
    both = [RowRequest(PROMPTS[0], max_new_tokens=45), RowRequest(PROMPTS[2], max_new_tokens=45)]  # no slide
    assert events(on, both) == events(off, both) and on.last_stats["verify_calls"] == 0  # never alone: no drafts
    assert events(on, both[:1]) == events(off, both[:1]) and on.last_stats["verify_calls"] > 0
    assert on.batch_session().stats == dict.fromkeys(session.stats, 0)


def test_a_batch_of_eight_checks_every_rows_draft_in_one_call_of_the_rows_graph(reciter):
    """batch_lookahead, fp32, 8 slots (the rows graph's rows): each position's logits in one extend_rows() call of
    rows of unequal lengths equal those of the fast graph stepped one token per call, to float32 rounding, and a
    batch of 8 rows (greedy rows beside seeded sampling ones, stop strings, max_new_tokens, the sliding window)
    decodes the very events of lookahead 0 in fewer calls, whether or not its economy lets every call run; int8,
    another batch size, lookahead 0 and a generator that did not ask never load it."""
    on = Generator(reciter, lookahead=4, batch_lookahead=True)
    off = Generator(reciter, lookahead=0)
    assert on.rows_graph == 8 and off.rows_graph == 0 and Generator(reciter, lookahead=4).rows_graph == 0
    assert Generator(reciter, variant="int8", batch_lookahead=True).rows_graph == 0
    assert Generator(reciter, lookahead=0, batch_lookahead=True).rows_graph == 0
    prompts = [on.encode(p) for p in PROMPTS * 2]
    batch, stepped = on.decoder(8, 64), on.decoder(8, 64)
    assert batch.rows_graph and not on.decoder(4, 64).rows_graph and not off.decoder(8, 64).rows_graph
    for dec in (batch, stepped):
        for slot, ids in enumerate(prompts):
            dec.prefill_slot(slot, ids[:20 + slot])
    tokens = np.random.default_rng(0).integers(0, on.vocab_size, (8, 5))
    got = batch.extend_rows(tokens).copy()
    assert (batch.lengths == stepped.lengths + 5).all()
    for j in range(5):
        np.testing.assert_allclose(got[:, j], stepped.step(tokens[:, j]), atol=2e-5)
    reqs = [RowRequest(PROMPTS[i % 4], max_new_tokens=150) for i in range(5)]  # (the rows that sample or stop
    reqs += [RowRequest(PROMPTS[1], temperature=0.9, seed=1, max_new_tokens=30),  # end first: the rest speculate
             RowRequest(PROMPTS[2], max_new_tokens=150, stop=["question"]),  # on, slots left empty)
             RowRequest(PROMPTS[3], temperature=0.8, top_k=5, seed=2, max_new_tokens=40)]
    want = events(off, reqs)
    assert events(on, reqs) == want  # the measured economy: however many calls it let run
    on.economy = BatchEconomy(measure=False)  # every call a row drafts for runs
    assert events(on, reqs) == want
    stats, plain = on.last_stats, off.last_stats
    assert stats["verify_calls"] > 10 and stats["accepted"] > 100 and plain["verify_calls"] == 0
    assert stats["calls"] < 0.8 * plain["calls"]


def test_the_batch_economy_verifies_only_where_the_measured_costs_say_it_pays():
    e = BatchEconomy()
    assert not e.pays(5, 40, 8)  # no plain step timed yet
    e.stepped(0.004)
    assert e.hopeful(8, 4) and e.pays(5, 9, 8)  # a width not timed yet: tried
    for _ in range(e.TRIES):
        e.verified(5, 0.009, drafted=32, taken=30)
    assert e.pays(5, 30, 8) and not e.pays(5, 16, 8)  # 30 tokens in 9 ms beat 8 in 4 ms; 16 do not
    assert not e.pays(5, 19, 8) and e.pays(5, 21, 8)  # 19 beat them by 6%, short of MARGIN (15%); 21 by 17%
    for _ in range(20):
        e.verified(5, 0.009, drafted=32, taken=2)  # drafts rejected: the rate falls
    assert e.rate < 0.2 and not e.hopeful(8, 4)  # not even every row's whole draft at that rate pays
    for _ in range(e.REFRESH - 1):
        assert not e.hopeful(8, 4)
    assert e.hopeful(8, 4) and e.pays(5, 9, 8)  # after REFRESH steps without a call: tried again


def test_lookahead_options(reciter, tmp_path):
    from lmforge.runtime.lookahead import DEFAULT_LOOKAHEAD

    assert Generator(reciter).lookahead == DEFAULT_LOOKAHEAD == 4  # docs/decode.md
    assert Generator(reciter, variant="int8").lookahead == 4 and Generator(reciter, variant="int4").lookahead == 0
    assert Generator(reciter, variant="int4", lookahead=4).lookahead == 4  # int4: only when asked
    assert Generator(reciter, fast=False, lookahead=4).lookahead == 0  # the portable graph steps singly
    for bad in (-1, 17, True, "4", 2.0):
        with pytest.raises(RequestError, match="lookahead"):
            Generator(reciter, lookahead=bad)
    own = tmp_path / "own"
    shutil.copytree(reciter, own)
    manifest = json.loads((own / "lmforge.json").read_text())
    for value, expected in ((0, 0), (7, 7)):
        manifest["generation"]["lookahead"] = value
        (own / "lmforge.json").write_text(json.dumps(manifest))
        assert Generator(own).lookahead == expected and Generator(own, lookahead=2).lookahead == 2
        text = Generator(own).generate(PROMPTS[0], max_new_tokens=30)
        assert text == Generator(reciter).generate(PROMPTS[0], max_new_tokens=30)
    manifest["generation"]["lookahead"] = 99
    (own / "lmforge.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelDirError, match="generation.lookahead"):
        Generator(own)


def test_cli_generate_takes_lookahead(reciter, capsys):
    from lmforge.cli import main

    texts = []
    for k in ("0", "8"):
        assert main(["generate", "--model", str(reciter), "--prompt", PROMPTS[1], "--max-new-tokens", "80",
                     "--temperature", "0", "--lookahead", k, "--json"]) == 0
        texts.append(json.loads(capsys.readouterr().out)["text"])
    assert texts[0] == texts[1] and len(texts[0]) == 80
    assert main(["generate", "--model", str(reciter), "--prompt", "a", "--lookahead", "99"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: lookahead must be an integer") and assert_error_line(err) and "0 to turn" in err
