"""Promotion on real parts: TINY runs registered in an MLflow SQLite registry, compared through onnxruntime in bits
per byte of the candidate's val text (each version in its own tokenization); `champion` moves only when the
candidate wins (or with --force); a version with another tokenizer is compared by bits per byte and the decision
says so; the side-by-side table holds both versions' text for every prompt; the [promote] section a version was
trained with (or a preset's) sets the margin; a scheduled run that registered nothing new moves nothing."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO, TINY

from lmforge.core.config import ExportConfig

PROMPTS = '["Why", "A programmer"]'
# barely trained: clearly worse; trained with its own [promote] margin (what `lmforge promote` then reads)
WEAK = {**TINY, "train.max_steps": 4, "train.eval_interval": 4, "promote.margin": 0.02, "eval.prompts": PROMPTS}
STRONG = {**TINY, "train.max_steps": 200, "train.eval_interval": 100, "train.lr": 3e-3,
          "eval.prompts": PROMPTS}  # ~0.4 nats/token below unigram
# the same corpus and split, another tokenizer: byte-level BPE (its val loss is in other units than the char model's)
BPE = {**STRONG, "tokenizer.kind": "bpe", "tokenizer.vocab_size": 320, "train.max_steps": 120}


@pytest.fixture(scope="module")
def registry(prefect_server, tmp_path_factory):
    """An MLflow registry of its own, so other modules' jokes-char versions do not interfere."""
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path_factory.mktemp('promote') / 'mlflow.db'}")
    yield
    mp.undo()


def run(overrides: dict) -> dict:
    from lmforge.flows.pipeline import pipeline

    return pipeline(preset="jokes-char", overrides=overrides)


def aliases() -> dict:
    from lmforge.registry.tracking import client

    return {k: str(v) for k, v in client().get_registered_model("jokes-char").aliases.items()}


def facts(version: str) -> dict:
    from lmforge.registry.review import facts as read
    from lmforge.registry.tracking import client

    return read(client().get_model_version("jokes-char", version))


def cli(*args: str) -> subprocess.CompletedProcess:
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}  # the session's server, not a temporary one
    return subprocess.run([sys.executable, "-m", "lmforge.cli", *args], capture_output=True, text=True, cwd=REPO,
                          timeout=300, env=env)


@pytest.fixture(scope="module")
def versions(registry):
    """A well trained run, then a barely trained one (the README's order once: a full run, then a smoke run)."""
    return {"strong": run(STRONG), "weak": run(WEAK)}


@pytest.fixture(scope="module")
def story(versions):
    """The promotion story, in order, once per module: a smoke run kept, a chosen first champion, a lost
    comparison, --force by a person, a scheduled unchanged run and an automatic promotion to an older version
    (both moving nothing), a rollback, and a second rollback with nothing earlier. Each step's result and the
    aliases after it are recorded, so that each test reads the step it checks, in any order, alone or not."""
    from lmforge.flows.promote import promote
    from lmforge.registry.promote import promote as library_promote

    strong, weak = versions["strong"]["model_version"], versions["weak"]["model_version"]
    out: dict = {"start": aliases()}
    out["first"] = promote(name="jokes-char")
    out["after_first"], out["weak_tags_first"] = aliases(), facts(weak)
    out["chosen"] = promote(name="jokes-char", version=strong, gate=0.2)
    out["after_chosen"] = aliases()
    out["lost"] = promote(name="jokes-char")  # candidate is the weak run
    out["after_lost"] = aliases()
    out["forced"] = cli("promote", "jokes-char", "--force", "--by", "alice", "--json")
    out["after_forced"], out["weak_tags_forced"] = aliases(), facts(weak)
    out["nightly"] = run({**STRONG, "promote.auto": True})  # unchanged data: registers nothing new
    out["after_nightly"] = aliases()
    out["older"] = library_promote("jokes-char", version=strong, automatic=True)  # never to an older version
    out["after_older"] = aliases()
    out["back"] = cli("rollback", "jokes-char", "--by", "bob", "--json")
    out["after_back"], out["strong_tags_back"], out["weak_tags_back"] = aliases(), facts(strong), facts(weak)
    out["again"] = cli("rollback", "jokes-char")  # strong was the first champion: nothing earlier to put back
    out["after_again"] = aliases()
    return out


def test_a_smoke_run_is_not_made_the_first_champion(versions, story):
    assert story["start"] == {"candidate": versions["weak"]["model_version"]}
    assert "promotion" not in versions["weak"]  # a run outside the deployments: promote.auto is off
    first = story["first"]
    assert first["decision"] == "kept" and first["champion_version"] is None
    assert first["candidate_bpb"] > first["unigram_bpb"] - first["gate"]  # it does not clear the gate
    assert first["margin"] == 0.02 and "trained with" in first["settings_from"]  # WEAK's own [promote] section
    assert "gate" in first["reason"] and "champion" not in story["after_first"]
    assert story["weak_tags_first"]["promotion_decision"] == "kept"
    chosen = story["chosen"]
    assert chosen["decision"] == "promoted", (chosen["candidate_bpb"], chosen["unigram_bpb"], chosen["reason"])
    assert chosen["candidate_bpb"] < chosen["unigram_bpb"] - 0.2
    assert chosen["margin"] == 0.01  # STRONG's config: PromoteConfig's default
    assert story["after_chosen"]["champion"] == versions["strong"]["model_version"]


def test_champion_moves_only_when_the_candidate_wins_and_every_move_is_recorded(versions, story):
    strong, weak = versions["strong"]["model_version"], versions["weak"]["model_version"]
    lost = story["lost"]
    assert lost["decision"] == "kept" and lost["candidate_bpb"] > lost["champion_bpb"]
    assert lost["candidate_loss"] > lost["champion_loss"]  # the same tokenizer: val loss shown for both
    assert lost["tokenizers"] == "same" and "same data" in lost["scored_on"]
    assert lost["reason"].startswith("candidate does not beat champion by more than 0.02 bits per byte")
    assert story["after_lost"] == {"candidate": weak, "champion": strong}

    forced = story["forced"]
    assert forced.returncode == 0, forced.stderr[-2000:]
    assert json.loads(forced.stdout.strip().splitlines()[-1])["decision"] == "promoted"
    assert story["after_forced"]["champion"] == weak
    tags = story["weak_tags_forced"]
    assert tags["promotion_by"] == "alice" and tags["promotion_previous_champion"] == strong
    assert float(tags["promotion_champion_bpb"]) < float(tags["promotion_candidate_bpb"])
    assert tags["promotion_at"][:4].isdigit() and tags["promotion"] == "promoted (forced)"

    # a scheduled run on unchanged data registers nothing new: the person's promotion stands
    nightly = story["nightly"]
    assert nightly["reused"] and nightly["model_version"] == strong
    assert nightly["promotion"]["decision"] == "unchanged" and "registered nothing new" in nightly["promotion"]["reason"]
    assert story["after_nightly"]["champion"] == weak
    older = story["older"]  # and never to an older version
    assert older["decision"] == "unchanged" and "a person's promotion or rollback stands" in older["reason"]
    assert story["after_older"]["champion"] == weak

    back = story["back"]
    assert back.returncode == 0, back.stderr[-2000:]
    assert story["after_back"]["champion"] == strong
    assert story["strong_tags_back"]["rollback_from"] == weak and story["weak_tags_back"]["rolled_back_to"] == strong
    again = story["again"]
    assert again.returncode == 2 and again.stderr.count("\n") == 1 and "first champion" in again.stderr
    assert story["after_again"]["champion"] == strong


@pytest.fixture(scope="module")
def other_tokenizer(versions, story):
    """A version of the same corpus and split with a BPE tokenizer, compared with the (char) champion (the strong
    run, after the story's rollback); the aliases after the comparison are recorded."""
    from lmforge.flows.promote import promote

    bpe = run(BPE)
    assert aliases()["champion"] == versions["strong"]["model_version"]  # after the story's rollback
    result = promote(name="jokes-char", version=bpe["model_version"], margin=0.0)
    return {"run": bpe, "result": result, "aliases": aliases()}


def test_a_version_with_another_tokenizer_is_compared_by_bits_per_byte(other_tokenizer, versions):
    r = other_tokenizer["result"]
    assert r["tokenizers"] == "different" and "depends only on its text" in r["scored_on"]
    assert r["candidate_bpb"] > 0 and r["champion_bpb"] > 0 and r["champion_loss"] is None  # nats/token: n/a
    assert "compared by bits per byte of the same text because" in r["reason"]
    assert "use different tokenizers" in r["reason"]
    expected = "promoted" if r["champion_bpb"] - r["candidate_bpb"] > 0 else "kept"
    assert r["decision"] == expected
    champion = other_tokenizer["run"]["model_version"] if expected == "promoted" else versions["strong"]["model_version"]
    assert other_tokenizer["aliases"]["champion"] == champion


def test_the_side_by_side_table_holds_both_versions_text_for_every_prompt(other_tokenizer, versions, tmp_path):
    from lmforge.registry.tracking import client

    r, bpe = other_tokenizer["result"], other_tokenizer["run"]
    c = client()
    path = c.download_artifacts(bpe["run_id"], r["table"], str(tmp_path))
    table = json.loads(open(path).read())  # MLflow's table format: columns and rows
    cand, champ = f"v{bpe['model_version']} (candidate)", f"v{versions['strong']['model_version']} (champion)"
    assert table["columns"] == ["prompt", "decoding", cand, champ]
    rows = [dict(zip(table["columns"], row)) for row in table["data"]]
    assert sorted((x["prompt"], x["decoding"] == "greedy") for x in rows) == \
        sorted((p, g) for p in ("Why", "A programmer") for g in (True, False))
    assert all(isinstance(x[cand], str) and isinstance(x[champ], str) for x in rows)
    assert all(x[cand] == y["candidate"] and x[champ] == y["champion"] for x, y in zip(rows, r["side_by_side"]))
    sampled = {x["decoding"] for x in rows} - {"greedy"}
    assert sampled == {"T=0.7, top_k=20, top_p=1, seed 0"}  # jokes-char's [export] sampling settings
    description = c.get_model_version("jokes-char", bpe["model_version"]).description
    assert description.count("## Promotion of jokes-char") == 1 and "### Side by side" in description
    assert f"| {cand} | v{versions['strong']['model_version']} (champion) |" in description
    assert len(description) <= 5000


def test_lmforge_promote_reads_the_margin_of_a_presets_promote_section(versions, story, tmp_path):
    weak = versions["weak"]["model_version"]
    preset = tmp_path / "jokes-strict.toml"
    preset.write_text((REPO / "configs" / "jokes-char.toml").read_text() + "\n[promote]\nmargin = 0.37\n")
    out = cli("promote", "jokes-char", "--version", weak, "--preset", str(preset), "--json")
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["margin"] == 0.37 and result["settings_from"] == f"preset {preset}"
    assert "by more than 0.37 bits per byte" in result["reason"]
    flag = cli("promote", "jokes-char", "--version", weak, "--margin", "0.5", "--json")  # a flag wins over both
    assert json.loads(flag.stdout.strip().splitlines()[-1])["margin"] == 0.5


def test_a_champion_that_moved_meanwhile_is_not_overwritten(versions, story):
    from lmforge.core.errors import LmforgeError
    from lmforge.registry.promote import move_champion

    champion = aliases()["champion"]
    other = versions["weak"]["model_version"]
    with pytest.raises(LmforgeError, match=f"champion moved to v{champion}"):
        move_champion("jokes-char", expected=other, to=other)  # compared against weak, but another is champion
    assert aliases()["champion"] == champion


def test_held_out_split_rules():
    from mlflow.entities.model_registry import ModelVersion, ModelVersionTag

    from lmforge.registry.promote import held_out_for_both

    def version(v: int, **tags) -> ModelVersion:
        base = {"data_fingerprint": f"fp{v}", "corpus_sha256": f"corpus{v}", "split": "documents",
                "split_seed": "1337", "split_val_fraction": "0.1", "split_val_filter": "none"}
        return ModelVersion("m", str(v), 0, tags=[ModelVersionTag(k, v) for k, v in {**base, **tags}.items()])

    assert held_out_for_both(version(2, data_fingerprint="same"), version(1, data_fingerprint="same"))[0]
    fair, why = held_out_for_both(version(2), version(1))  # new corpus, the same document split rule
    assert fair and "depends only on its text" in why
    assert not held_out_for_both(version(2, split_seed="7"), version(1))[0]
    assert not held_out_for_both(version(2, split="contiguous"), version(1, split="contiguous"))[0]
    same_cut = held_out_for_both(version(2, split="contiguous", corpus_sha256="c"),
                                 version(1, split="contiguous", corpus_sha256="c"))  # another tokenizer, same text
    assert same_cut[0] and "cut at the same place" in same_cut[1]
    assert not held_out_for_both(version(2), ModelVersion("m", "1", 0, tags={}))[0]  # registered before fingerprints


def test_an_unchanged_rerun_registers_no_new_version(versions, other_tokenizer):
    from lmforge.registry.tracking import client

    again = run(STRONG)
    assert again["reused"] is True and again["model_version"] == versions["strong"]["model_version"]
    assert again["metrics"]["resumed_from"] == STRONG["train.max_steps"]  # nothing retrained
    assert len(client().search_model_versions("name='jokes-char'")) == 3  # strong, weak, bpe
    assert aliases()["candidate"] == versions["strong"]["model_version"]


def test_registered_version_is_reviewable(versions, story):
    """Tags a reviewer needs (a few flat, the rest grouped), and the generate model logged with a signature and
    an input example."""
    import mlflow

    from lmforge.registry.review import facts as read
    from lmforge.registry.tracking import client

    mv = client().get_model_version("jokes-char", versions["strong"]["model_version"])
    assert set(mv.tags) == {"preset", "data_source", "data_fingerprint", "val_loss", "val_bpb", "promotion",
                            "lmforge.data", "lmforge.model", "lmforge.promotion", "lmforge.rollback"}
    known = read(mv)
    for tag in ("data_source", "corpus_sha256", "data_fingerprint", "tokenizer_sha256", "split", "val_sha256",
                "weights_sha256", "preset", "git_commit", "val_loss", "val_bpb", "onnx_parity_max_abs",
                "onnx_fp32_bytes", "int8_val_loss_delta", "data_dir"):
        assert known.get(tag), tag
    e = ExportConfig()  # the bounds the export enforced, through the runtime, on the graph int8 runs by default
    assert abs(float(known["int8_val_loss_delta"])) <= e.max_int8_loss_delta
    assert float(known["verify_fast_int8_loss_delta"]) <= e.max_int8_loss_delta
    assert float(known["verify_fast_int8_agreement"]) >= e.min_int8_agreement
    assert float(known["verify_fast_logit_max_abs"]) <= e.max_abs_logit_diff
    run = client().get_run(mv.run_id)
    assert run.data.metrics["val_bits_per_byte"] == pytest.approx(float(mv.tags["val_bpb"]), abs=1e-4)
    info = mlflow.models.get_model_info(f"models:/jokes-char/{mv.version}")  # the generate model (lmforge.registry.pyfunc)
    assert [s.name for s in info.signature.inputs.inputs] == ["prompt"]
    assert "max_new_tokens" in {p.name for p in info.signature.params.params}
    assert info.saved_input_example_info is not None


def test_runs_and_promotions_publish_prefect_artifacts(versions, story):
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    def artifact(key: str):
        with get_client(sync_client=True) as prefect:
            return prefect.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))[0]

    summary = artifact("run-jokes-char")
    assert summary.type == "markdown" and "MLflow run" in summary.data and "val_loss" in summary.data
    comparison = artifact("promotion-jokes-char")
    assert comparison.type == "markdown" and "| candidate |" in comparison.data


def test_promote_without_candidate_is_a_clear_error(registry):
    out = subprocess.run([sys.executable, "-m", "lmforge.cli", "promote", "no-such-model"], capture_output=True,
                         text=True, cwd=REPO, timeout=120)
    assert out.returncode == 2
    assert "no `candidate` version" in out.stderr and "hint:" in out.stderr


def test_report_compare_shows_both_versions_curves_scores_and_continuations(other_tokenizer, versions, tmp_path):
    import base64
    import html
    import re

    bpe, strong = other_tokenizer["run"]["model_version"], versions["strong"]["model_version"]
    out = tmp_path / "compare.html"
    done = cli("report", "--compare", f"jokes-char/{bpe}", f"models:/jokes-char/{strong}", "--out", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    page = out.read_text()
    assert f"jokes-char v{bpe} vs jokes-char v{strong}" in page and "tokenizers\ndifferent" in page
    png = re.search(r'alt="loss curves of v\d+ \(blue\) and v\d+ \(orange\)[^"]*"\nsrc="data:image/png;base64,([^"]+)"',
                    page)
    assert png and base64.b64decode(png.group(1)).startswith(b"\x89PNG")
    side = page.split("<h2>Side by side</h2>", 1)[1].split("</table>", 1)[0]
    for row in other_tokenizer["result"]["side_by_side"]:
        if row["decoding"] == "greedy":  # greedy continuations are the same whenever they are decoded
            assert html.escape(row["candidate"]) in side and html.escape(row["champion"]) in side
    assert side.count("<tr>") == 1 + 4  # header, 2 prompts x (greedy, sampled)
    bad = cli("report", "--compare", "jokes-char", "jokes-char@champion")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "names no registered version" in bad.stderr


def test_promotion_defaults_have_one_source():
    """docs/scheduling.md: margin and gate are written once, in PromoteConfig; every path reads them from a
    config (CLI, flow, task and library take None to mean that)."""
    import inspect
    import re

    from lmforge.cli import build_parser
    from lmforge.core.config import PromoteConfig
    from lmforge.flows.promote import promote as flow
    from lmforge.registry import promote as library
    from lmforge.tasks.promote import promote_candidate

    doc = (REPO / "docs" / "scheduling.md").read_text()
    margin, gate = re.search(r"`PromoteConfig`\): margin ([\d.]+) and gate ([\d.]+), in bits per byte", doc).groups()
    assert (PromoteConfig().margin, PromoteConfig().gate) == (float(margin), float(gate))
    for fn in (flow.fn, promote_candidate.fn, library.promote, library.promote_after_run):
        params = inspect.signature(fn).parameters
        assert params["margin"].default is None and params["gate"].default is None, fn
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices["promote"]
    assert {a.dest: a.default for a in sub._actions if a.dest in ("margin", "gate")} == {"margin": None, "gate": None}
    for path in ("lmforge/cli.py", "flows/promote.py", "tasks/promote.py", "lmforge/registry/promote.py"):
        assert not re.search(rf"\b({re.escape(margin)}|{re.escape(gate)})\b", (REPO / path).read_text()), path


def test_a_warm_started_version_names_its_parent():
    """A Trained whose lineage (lmforge.core.records.Lineage) is a warm start gives the version a `parent` tag and
    an `lmforge.lineage` group (read back flat by facts); a fresh start gives none."""
    from types import SimpleNamespace

    from lmforge.core.records import Lineage
    from lmforge.registry.review import facts as read
    from lmforge.registry.review import lineage_tags

    assert lineage_tags(SimpleNamespace(lineage=Lineage())) == {}
    tags = lineage_tags(SimpleNamespace(lineage=Lineage("warm-start", parent_name="jokes-char", parent_version="3",
                                                        parent_data_fingerprint="f" * 64)))
    assert tags["parent"] == "jokes-char v3"
    assert read(tags)["lineage_parent_data_fingerprint"] == "f" * 64 and read(tags)["lineage_kind"] == "warm-start"
