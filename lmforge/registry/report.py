"""`lmforge report RUN_ID`: one self-contained HTML page for an MLflow run: the loss curves (an inline PNG
drawn from the metric history), the final metrics, the samples and the parameters.
`lmforge report --compare CANDIDATE CHAMPION`: two registered versions on one page: both runs' loss curves on one
plot, their scores in bits per byte of the candidate's val text (lmforge.registry.promote.evidence, what promotion
compares), and their continuations of the same prompts side by side."""
from __future__ import annotations

import base64
import datetime
import html
import io
import json
import tempfile
from pathlib import Path

from lmforge.registry import tracking
from lmforge.core.atomic import write_text_atomic
from lmforge.core.errors import LmforgeError
from lmforge.core.redact import redact_text

CURVES = ("train_loss", "val_loss")


def get_run(run_id: str):
    c = tracking.client()
    try:
        return c.get_run(run_id)
    except Exception as exc:  # mlflow raises MlflowException for an unknown id
        raise LmforgeError(f"no MLflow run {run_id!r} at {redact_text(tracking.tracking_uri())}: "
                           f"{str(exc).splitlines()[0][:160]}", hint="`lmforge runs` lists run ids") from None


def loss_history(run_id: str) -> dict[str, list[tuple[int, float]]]:
    c = tracking.client()
    return {k: sorted((m.step, m.value) for m in c.get_metric_history(run_id, k) if m.step) for k in CURVES}


def loss_plot_png(history: dict[str, list[tuple[int, float]]], styles: dict[str, dict] | None = None) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    for name, points in history.items():
        if points:
            ax.plot([s for s, _ in points], [v for _, v in points], marker="o", label=name.replace("_loss", ""),
                    **(styles or {}).get(name, {}))
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.grid(alpha=0.3)
    if any(history.values()):
        ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def run_samples(run_id: str) -> list[dict]:
    """The samples/samples.json artifact the pipeline logs, or [] when the run has none."""
    import mlflow

    mlflow.set_tracking_uri(tracking.tracking_uri())
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="samples/samples.json",
                                                       dst_path=tmp)
            return json.loads(Path(path).read_text(encoding="utf-8"))
        except Exception:  # no such artifact (run failed before sampling) or an unreadable one
            return []


def _table(rows: list[tuple[str, str]], head: tuple[str, str]) -> str:
    cells = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>" for k, v in rows)
    return f"<table><tr><th>{head[0]}</th><th>{head[1]}</th></tr>{cells}</table>"


def build_report(run_id: str) -> str:
    run = get_run(run_id)
    png = base64.b64encode(loss_plot_png(loss_history(run_id))).decode()
    metrics = [(k, f"{v:.6g}") for k, v in sorted(run.data.metrics.items())]
    params = [(k, v) for k, v in sorted(run.data.params.items())]
    samples = run_samples(run_id)
    sample_html = "".join(f"<li><b>T={html.escape(str(s.get('temperature')))}</b> "
                          f"<pre>{html.escape(str(s.get('text', '')))}</pre></li>" for s in samples) or "<li>none</li>"
    started = datetime.datetime.fromtimestamp(run.info.start_time / 1000).strftime("%Y-%m-%d %H:%M")
    title = html.escape(f"lmforge run {run.info.run_name or run_id}")
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:2px 8px;text-align:left}}pre{{white-space:pre-wrap;margin:0}}</style></head>
<body><h1>{title}</h1>
<p>run id <code>{html.escape(run_id)}</code>, status {html.escape(run.info.status)}, started {started}</p>
<h2>Loss</h2><img alt="loss curves" src="data:image/png;base64,{png}">
<h2>Metrics</h2>{_table(metrics, ("metric", "value"))}
<h2>Samples</h2><ul>{sample_html}</ul>
<h2>Parameters</h2>{_table(params, ("key", "value"))}
</body></html>
"""


def write_report(run_id: str, out: Path | None = None) -> Path:
    """Write the report atomically to `out` (default report-<run id>.html in the current directory)."""
    out = Path(out or f"report-{run_id[:12]}.html")
    return write_text_atomic(out, build_report(run_id))


def resolve_version(ref: str):
    """NAME@ALIAS, NAME/VERSION, or models:/ of either -> the registered model version."""
    from lmforge.registry.promote import _version

    text = ref.removeprefix("models:/")
    if "@" in text:
        name, _, alias = text.partition("@")
        return _version(name, None, alias)
    name, sep, version = text.rpartition("/")
    if not sep or not name or not version.isdigit():
        raise LmforgeError(f"{ref!r} names no registered version",
                           hint="NAME@ALIAS (jokes-char@champion), NAME/VERSION (jokes-char/3), or models:/...")
    return _version(name, version)


def _cells(rows: list[list[str]], head: list[str]) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{th}</tr>{body}</table>"


def build_comparison(candidate: str, champion: str, preset: str | None = None) -> str:
    """The --compare page (both versions scored and decoded now, through onnxruntime, as promotion does)."""
    from lmforge.registry.promote import evidence, settings
    from lmforge.registry.review import facts

    cand, champ = resolve_version(candidate), resolve_version(champion)
    s = settings(cand, preset)
    ev = evidence(cand, champ, s, force=True)
    a, b = f"v{cand.version}", f"v{champ.version}"
    history, styles = {}, {}
    for label, version, color in ((a, cand, "tab:blue"), (b, champ, "tab:orange")):
        for curve, points in loss_history(version.run_id).items():
            key = f"{label} {curve}"
            history[key] = points
            styles[key] = {"color": color, "linestyle": "-" if curve == "val_loss" else ":"}
    png = base64.b64encode(loss_plot_png(history, styles)).decode()

    def fmt(x):
        return "n/a" if x is None else f"{x:.4f}"

    scores = [[f"{a} ({cand.name})", "candidate", fmt(ev["candidate_bpb"]), fmt(ev["candidate_bpc"]),
               fmt(ev["candidate_loss"])],
              [f"{b} ({champ.name})", "champion", fmt(ev["champion_bpb"]), fmt(ev["champion_bpc"]),
               fmt(ev["champion_loss"])],
              ["-", "unigram model of the candidate's tokens", fmt(ev["unigram_bpb"]), "", ""]]
    keys = ("preset", "data_source", "tokenizer", "split", "train_steps", "val_loss", "val_bpb", "promotion")
    fa, fb = facts(cand), facts(champ)
    side = [[x["prompt"] or "(empty)", x["decoding"], x["candidate"], x["champion"]] for x in ev["side_by_side"]]
    title = html.escape(f"lmforge: {cand.name} {a} vs {champ.name} {b}")
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:sans-serif;max-width:70em;margin:2em auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:2px 8px;text-align:left;vertical-align:top}}</style></head>
<body><h1>{title}</h1>
<p>Scored on {html.escape(str(ev["scored_on"]))}: {ev.get("text_bytes", 0):,} bytes of
{html.escape(str(ev.get("text_from", "")))}, each version in its own tokenization (tokenizers
{html.escape(str(ev["tokenizers"]))}); val loss in nats/token on the candidate's val shard where the tokenizers are the
same. Prompts and sampling from {html.escape(s.source)}.</p>
<h2>Scores</h2>{_cells(scores, ["version", "role", "bits per byte", "bits per char", "val loss"])}
<h2>Loss</h2><img alt="loss curves of {a} (blue) and {b} (orange): train dotted, val solid"
src="data:image/png;base64,{png}">
<h2>Side by side</h2>{_cells(side, ["prompt", "decoding", f"{a} (candidate)", f"{b} (champion)"])}
<h2>Versions</h2>{_cells([[k, fa.get(k, ""), fb.get(k, "")] for k in keys], ["", a, b])}
</body></html>
"""


def write_comparison(candidate: str, champion: str, out: Path | None = None, preset: str | None = None) -> Path:
    page = build_comparison(candidate, champion, preset)
    safe = "".join(c if c.isalnum() or c in "-." else "-" for c in f"{candidate}-vs-{champion}")
    return write_text_atomic(Path(out or f"report-compare-{safe}.html"), page)
