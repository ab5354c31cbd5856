"""prefect.yaml read as data: each deployment's flow, work pool, parameters, tags, schedules and concurrency
limit, for the commands that check and operate the deployments (`lmforge doctor`, `lmforge schedule`,
`lmforge serve`), so they follow the same file `prefect deploy --all` reads. YAML anchors are resolved by the
parser; the flow's name is read from its source with `ast`, so neither Prefect nor the flow (torch) is imported."""
from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

from lmforge.core.config import REPO_ROOT
from lmforge.core.errors import LmforgeError

GPU_TAG = "gpu"  # prefect.yaml tags the deployments that train on a GPU pool with it


@dataclass(frozen=True)
class Schedule:
    cron: str
    timezone: str
    active: bool


@dataclass(frozen=True)
class Deployment:
    name: str
    flow_name: str
    entrypoint: str
    description: str
    pool: str
    parameters: dict
    tags: tuple[str, ...]
    schedules: tuple[Schedule, ...]
    concurrency_limit: int | None
    collision_strategy: str | None

    @property
    def full_name(self) -> str:
        """What `prefect deployment run` takes: FLOW/DEPLOYMENT."""
        return f"{self.flow_name}/{self.name}"

    @property
    def gpu(self) -> bool:
        return GPU_TAG in self.tags


def default_path() -> Path:
    return REPO_ROOT / "prefect.yaml"


def load_deployments(path: Path | None = None) -> list[Deployment]:
    import yaml

    path = Path(path or default_path())
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise LmforgeError(f"no deployment file at {path}",
                           hint="run from the repository root of a source checkout, or pass --file PATH") from None
    except yaml.YAMLError as exc:
        raise LmforgeError(f"{path} is not valid YAML: {exc}", hint="fix the file's syntax") from None
    out = []
    for spec in raw.get("deployments") or []:
        pool = spec.get("work_pool") or {}
        concurrency = spec.get("concurrency_limit")
        if isinstance(concurrency, dict):
            limit, strategy = concurrency.get("limit"), concurrency.get("collision_strategy")
        else:
            limit, strategy = concurrency, None
        schedules = tuple(Schedule(s["cron"], s.get("timezone", "UTC"), bool(s.get("active", True)))
                          for s in spec.get("schedules") or [] if "cron" in s)
        entrypoint = spec["entrypoint"]
        out.append(Deployment(name=spec["name"], flow_name=flow_name(entrypoint, path.parent), entrypoint=entrypoint,
                              description=spec.get("description", ""), pool=pool.get("name", ""),
                              parameters=dict(spec.get("parameters") or {}), tags=tuple(spec.get("tags") or ()),
                              schedules=schedules, concurrency_limit=limit, collision_strategy=strategy))
    return out


def select(deployments: list[Deployment], names: list[str]) -> list[Deployment]:
    """The deployments called `names` (deployment names, or FLOW/DEPLOYMENT), in the file's order."""
    known = {d.name: d for d in deployments} | {d.full_name: d for d in deployments}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise LmforgeError(f"no deployment named {', '.join(map(repr, unknown))} in prefect.yaml",
                           hint="deployments: " + ", ".join(d.name for d in deployments))
    wanted = {known[n].name for n in names}
    return [d for d in deployments if d.name in wanted]


def pools(deployments: list[Deployment]) -> list[str]:
    """The work pools named, in order of first mention."""
    return list(dict.fromkeys(d.pool for d in deployments if d.pool))


def gpu_pools(deployments: list[Deployment]) -> list[str]:
    return list(dict.fromkeys(d.pool for d in deployments if d.pool and d.gpu))


def entrypoint_module(entrypoint: str) -> tuple[str, str]:
    """flows/pipeline.py:pipeline -> ("lmforge.flows.pipeline", "pipeline")."""
    path, _, func = entrypoint.partition(":")
    return "lmforge." + path.removesuffix(".py").replace("/", "."), func


def flow_name(entrypoint: str, root: Path) -> str:
    """The `name=` of the @flow decorating the entrypoint's function (Prefect's default: the function's name with
    underscores as dashes)."""
    path, _, func = entrypoint.partition(":")
    try:
        tree = ast.parse((root / path).read_text(encoding="utf-8"))
    except (OSError, SyntaxError) as exc:
        raise LmforgeError(f"entrypoint {entrypoint} cannot be read: {exc}",
                           hint="the entrypoint is relative to prefect.yaml's directory") from None
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == func:
            for deco in node.decorator_list:
                if isinstance(deco, ast.Call) and getattr(deco.func, "id", getattr(deco.func, "attr", "")) == "flow":
                    for kw in deco.keywords:
                        if kw.arg == "name" and isinstance(kw.value, ast.Constant):
                            return str(kw.value.value)
            return func.replace("_", "-")
    raise LmforgeError(f"entrypoint {entrypoint}: no function {func!r} in {path}", hint="fix prefect.yaml")
