"""`lmforge run | prepare | generate | presets | runs`. Heavy imports happen inside each command, so
`lmforge generate` never imports torch."""
from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import sys
import textwrap

from lmforge.errors import LmforgeError

EXAMPLES = {
    "run": "lmforge run --preset shakespeare-char --set data.source=../shared/corpora/tinyshakespeare.txt --json",
    "prepare": "lmforge prepare --preset lebanon-gru --set data.source=../shared/corpora/ArSenTD-LEV.tsv",
    "generate": 'lmforge generate --model models:/jokes-char@candidate --prompt "Why" --max-new-tokens 80',
    "presets": "lmforge presets",
    "bench": "lmforge bench decode --quick --json",
    "runs": "lmforge runs --limit 5",
    "report": "lmforge report 3f2a9c1b7d4e --out report.html",
    "promote": "lmforge promote jokes-char --margin 0.01",
}


def _prefect_env() -> None:
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")


def _overrides(pairs: list[str]) -> dict:
    from lmforge.config import _split

    return dict(_split(p) for p in pairs)


def _emit(result: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result, default=str))
        return
    for key, value in result.items():
        if isinstance(value, dict):
            print(f"{key}:")
            for k, v in value.items():
                print(f"  {k}: {v:.4f}" if isinstance(v, float) else f"  {k}: {v}")
        elif isinstance(value, list):
            print(f"{key}:")
            for v in value:
                print("  " + textwrap.shorten(str(v), 160))
        else:
            print(f"{key}: {value}")


DASK_PARTS = 8  # data.parts under --dask unless set


def dask_task_runner(spec: str):
    """--dask local:N (a local cluster of N worker processes) or tcp://HOST:PORT (a running scheduler)."""
    from prefect_dask import DaskTaskRunner

    if spec.startswith("local:") and spec[6:].isdigit() and int(spec[6:]) > 0:
        return DaskTaskRunner(cluster_kwargs={"n_workers": int(spec[6:]), "threads_per_worker": 1,
                                              "processes": True, "dashboard_address": None})
    if spec.startswith(("tcp://", "tls://")):
        return DaskTaskRunner(address=spec)
    raise LmforgeError(f"--dask {spec!r} is neither local:N nor a scheduler address",
                       hint="--dask local:2, or --dask tcp://HOST:8786 for a running `dask scheduler`")


def _flow_call(args, module: str, name: str) -> dict:
    """Validate the config before importing Prefect, then run flow `name` of `module` (on Dask workers with
    --dask)."""
    import importlib

    from lmforge.config import load_config

    overrides = _overrides(args.set)
    if args.dask:
        overrides.setdefault("data.parts", str(DASK_PARTS))
    load_config(args.preset, overrides)
    flow = getattr(importlib.import_module(module), name)
    from prefect.settings import PREFECT_API_URL, temporary_settings

    settings = {}
    if args.dask:
        flow = flow.with_options(task_runner=dask_task_runner(args.dask))
        if not PREFECT_API_URL.value():
            # No server configured: start Prefect's temporary one now and name it in the settings the Dask
            # workers receive, else each worker starts a temporary server of its own and keeps its task runs.
            from prefect.server.api.server import SubprocessASGIServer

            server = SubprocessASGIServer()
            server.start()
            settings[PREFECT_API_URL] = server.api_url
    with temporary_settings(settings):
        return flow(preset=args.preset or "jokes-char", overrides=overrides)


def cmd_run(args) -> int:
    _prefect_env()
    _emit(_flow_call(args, "flows.pipeline", "pipeline"), args.json)
    return 0


def cmd_prepare(args) -> int:
    _prefect_env()
    _emit(_flow_call(args, "flows.prepare", "prepare"), args.json)
    return 0


def cmd_generate(args) -> int:
    from lmforge.runtime import Generator

    model = args.model
    if model.startswith("models:/"):
        from lmforge.tracking import fetch_model_dir

        model = str(fetch_model_dir(model))
    gen = Generator(model, variant=args.variant, device=args.device, threads=args.threads)
    kwargs = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                  top_p=args.top_p, repetition_penalty=args.repetition_penalty, stop=args.stop, seed=args.seed)
    if args.json:
        text = gen.generate(args.prompt, **kwargs)
        print(json.dumps({"prompt": args.prompt, "text": text, "provider": gen.provider, "model": model}))
        return 0
    sys.stdout.write(args.prompt)
    for piece in gen.stream(args.prompt, **kwargs):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    print(f"[{gen.provider}, {gen.variant}]", file=sys.stderr)
    return 0


def cmd_presets(args) -> int:
    from lmforge.config import list_presets

    presets = list_presets()
    width = max(map(len, presets), default=0)
    for name, description in presets.items():
        print(f"{name:<{width}}  {description}")
    return 0


def cmd_runs(args) -> int:
    from lmforge.tracking import recent_runs

    rows = recent_runs(args.limit)
    if args.json:
        print(json.dumps(rows))
        return 0
    for r in rows:
        metrics = "  ".join(f"{k}={v:.4f}" for k, v in sorted(r["metrics"].items()) if k in SHOWN_METRICS)
        print(f"{r['start']}  {r['run_id'][:12]}  {r['name']:<28} {r['status']:<9} {metrics}")
    return 0


SHOWN_METRICS = ("val_loss", "val_perplexity", "val_accuracy", "val_bpc")


def cmd_promote(args) -> int:
    _prefect_env()
    from lmforge.promote import candidate_version

    candidate_version(args.name)  # a missing model fails before Prefect starts
    from flows.promote import promote

    _emit(promote(name=args.name, margin=args.margin, force=args.force), args.json)
    return 0


def cmd_report(args) -> int:
    from lmforge.report import write_report

    print(write_report(args.run_id, args.out))
    return 0


def cmd_bench(args) -> int:
    """Run benchmarks/<what>.py's main from the source tree (benchmarks are not installed)."""
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / f"{args.what}.py"
    if not script.is_file():
        raise LmforgeError(f"benchmark script {script} not found",
                           hint="run `lmforge bench` from a source checkout (pip install -e .)")
    spec = importlib.util.spec_from_file_location(f"lmforge_bench_{args.what}", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(args.args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lmforge", description="Train, export and run small language models.")
    sub = p.add_subparsers(dest="command", required=True)

    def add(name: str, help_: str, fn) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_, description=help_, epilog=f"example:\n  {EXAMPLES[name]}",
                            formatter_class=argparse.RawDescriptionHelpFormatter)
        sp.set_defaults(fn=fn)
        return sp

    for name, help_, fn in (("run", "Run the whole pipeline once (Prefect flow).", cmd_run),
                            ("prepare", "Acquire, clean, tokenize and shard a corpus only.", cmd_prepare)):
        sp = add(name, help_, fn)
        sp.add_argument("--preset", help="preset name (`lmforge presets`) or a .toml path; default jokes-char")
        sp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
        sp.add_argument("--json", action="store_true", help="print the result as one JSON line")
        sp.add_argument("--dask", metavar="local:N|tcp://HOST:PORT",
                        help=f"clean and encode data in parts on Dask workers (data.parts defaults to {DASK_PARTS})")

    g = add("generate", "Generate text with onnxruntime from a model directory or models:/NAME@ALIAS.", cmd_generate)
    g.add_argument("--model", required=True, help="exported model directory or models:/NAME@ALIAS")
    g.add_argument("--prompt", default="")
    g.add_argument("--max-new-tokens", type=int)
    g.add_argument("--temperature", type=float)
    g.add_argument("--top-k", type=int)
    g.add_argument("--top-p", type=float)
    g.add_argument("--repetition-penalty", type=float, default=1.0)
    g.add_argument("--stop", action="append", help="stop when this string appears (repeatable)")
    g.add_argument("--seed", type=int)
    g.add_argument("--variant", default="fp32", help="fp32 | int8 | fp16 | optimized (as exported)")
    g.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    g.add_argument("--threads", type=int)
    g.add_argument("--json", action="store_true")

    b = add("bench", "Run a benchmark side by side and write benchmarks/results/ (JSON + markdown).", cmd_bench)
    b.add_argument("what", choices=["decode"], help="decode: torch vs transformers vs onnxruntime decoding speed")
    b.add_argument("args", nargs=argparse.REMAINDER, help="passed to the benchmark: --quick, --new-tokens N, --json")
    add("presets", "List the presets, one line each.", cmd_presets)
    r = add("runs", "List recent runs with their metrics.", cmd_runs)
    r.add_argument("--limit", type=int, default=10)
    r.add_argument("--json", action="store_true")
    rep = add("report", "Write a self-contained HTML report of one run (loss plot, metrics, samples).", cmd_report)
    rep.add_argument("run_id", metavar="RUN_ID", help="MLflow run id (`lmforge runs`)")
    rep.add_argument("--out", help="output file; default report-<run id>.html")
    pro = add("promote", "Move alias `champion` to `candidate` when it wins on the same held-out data.", cmd_promote)
    pro.add_argument("name", metavar="NAME", help="registered model name (the preset's name)")
    pro.add_argument("--margin", type=float, default=0.01, help="nats/token the candidate must win by")
    pro.add_argument("--force", action="store_true", help="promote whatever the comparison says")
    pro.add_argument("--json", action="store_true", help="print the result as one JSON line")
    return p


PIPELINE_MODULES = {"torch", "prefect", "prefect_dask", "distributed", "mlflow", "onnx", "pandas", "pyjokes",
                    "safetensors", "rich", "matplotlib"}


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("lmforge").setLevel(logging.INFO)  # progress lines, downloads, <unk> notices
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except LmforgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:  # a runtime-only install (`pip install lmforge`) asked for pipeline work
        if exc.name not in PIPELINE_MODULES:
            raise
        print(f"error: `lmforge {args.command}` needs {exc.name}, which the runtime-only install leaves out "
              '(hint: pip install "lmforge[pipeline]")', file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            if args.command == "generate" and isinstance(exc, FileNotFoundError):
                print(f"error: {exc}", file=sys.stderr)
                return 2
            raise
        print(f"error: disk full writing {exc.filename or 'a file'} (hint: free some space, or point "
              "LMFORGE_ARTIFACTS at a larger disk)", file=sys.stderr)
        return 2
    except ValueError as exc:
        if args.command != "generate":
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
