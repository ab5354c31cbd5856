"""The checkpoint store of a run: ckpt/last (everything needed to resume exactly: weights, optimizer, GradScaler,
RNG streams, step and history) and ckpt/best (the weights of the best evaluation). Each is a directory
(model.safetensors, optimizer.pt, state.json) replaced atomically, so the previous good one stays until the new
one is complete. state.json records the run's identity (the weights hash and the data fingerprint): a
checkpoint is resumed only by a run with the same identity."""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from lmforge.core.errors import LmforgeError

_TMP = re.compile(r"^\.(?P<name>\w+)\.(?P<pid>\d+)\.tmp$")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


class Checkpoints:
    def __init__(self, ckpt_dir: Path):
        self.dir = Path(ckpt_dir)

    def save(self, name: str, model, optimizer, state: dict, scaler=None) -> None:
        """Write checkpoint `name`. With an optimizer, also what resuming needs: its state, the scaler's, and the
        RNG streams (state["data_rng"] is popped into optimizer.pt)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / f".{name}.{os.getpid()}.tmp"
        self.remove_dead_writers(name)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
            (tmp / "model.safetensors").write_bytes(save(_untie(tensors)))  # an OSError (not a Rust one) on a full disk
            if optimizer is not None:
                rng = {"torch": torch.get_rng_state(), "data": state.pop("data_rng")}
                if torch.cuda.is_available():
                    rng["cuda"] = torch.cuda.get_rng_state_all()
                blob = {"optimizer": optimizer.state_dict(), "rng": rng}
                if scaler is not None:
                    blob["scaler"] = scaler.state_dict()
                torch.save(blob, tmp / "optimizer.pt")
            (tmp / "state.json").write_text(json.dumps(state))
            for f in tmp.iterdir():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        except BaseException:  # e.g. a full disk: leave no half-written directory, keep the previous one
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        target, old = self.dir / name, self.dir / f".{name}.old"
        shutil.rmtree(old, ignore_errors=True)
        if target.exists():
            target.rename(old)
        tmp.rename(target)
        shutil.rmtree(old, ignore_errors=True)

    def remove_dead_writers(self, name: str) -> None:
        """Delete temp directories left by writers that are gone (killed mid-write); a live one's stay."""
        for stale in self.dir.glob(f".{name}.*.tmp"):
            m = _TMP.match(stale.name)
            if m and int(m["pid"]) != os.getpid() and not _alive(int(m["pid"])):
                shutil.rmtree(stale, ignore_errors=True)

    def path(self, name: str) -> Path | None:
        for candidate in (self.dir / name, self.dir / f".{name}.old"):
            if (candidate / "state.json").is_file():
                return candidate
        return None

    def state(self, name: str) -> dict | None:
        path = self.path(name)
        try:
            return json.loads((path / "state.json").read_text()) if path else None
        except (OSError, ValueError):
            return None

    def load_model(self, name: str, model) -> dict:
        path = self.path(name)
        if path is None:
            raise LmforgeError(f"no {name} checkpoint in {self.dir}", hint="train first")
        try:
            tensors = load_file(str(path / "model.safetensors"))
            model.load_state_dict(_retie(tensors, model), strict=True)
            return json.loads((path / "state.json").read_text())
        except (OSError, RuntimeError, ValueError, SafetensorError, json.JSONDecodeError) as exc:
            raise LmforgeError(f"checkpoint {path} is corrupted: {str(exc).splitlines()[0][:200]}",
                               hint=f"delete {path} to start over") from None

    def load_training(self, name: str, model, optimizer, scaler=None) -> tuple[dict, torch.Tensor]:
        state = self.load_model(name, model)
        path = self.path(name)
        try:
            blob = torch.load(path / "optimizer.pt", weights_only=True, map_location="cpu")
        except Exception as exc:  # a truncated zip raises several types
            raise LmforgeError(f"checkpoint {path}/optimizer.pt is corrupted: {str(exc)[:200]}",
                               hint=f"delete {path} to start over") from None
        optimizer.load_state_dict(blob["optimizer"])
        if scaler is not None and "scaler" in blob:
            scaler.load_state_dict(blob["scaler"])
        torch.set_rng_state(blob["rng"]["torch"])
        if "cuda" in blob["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(blob["rng"]["cuda"])
        return state, blob["rng"]["data"]

    def adopt(self, parent: Path, state_update: dict) -> None:
        """Copy another run's last/ and best/ here, their state.json updated (this run's identity): a continued
        run starts as that run ended. Each lands whole or not at all, as save() writes."""
        self.dir.mkdir(parents=True, exist_ok=True)
        for name in ("best", "last"):  # last/ last: its presence is what a resume reads
            src = Checkpoints(parent).path(name)
            if src is None:
                continue
            tmp = self.dir / f".{name}.{os.getpid()}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(src, tmp)
            state = json.loads((tmp / "state.json").read_text())
            (tmp / "state.json").write_text(json.dumps({**state, **state_update}))
            shutil.rmtree(self.dir / name, ignore_errors=True)
            tmp.rename(self.dir / name)

    def set_aside(self) -> Path:
        """Move last/ and best/ out of the way (a checkpoint of another identity); returns where they went."""
        aside = self.dir / f".set-aside-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
        aside.mkdir(parents=True)
        for name in ("last", "best", ".last.old", ".best.old"):
            if (self.dir / name).exists():
                (self.dir / name).rename(aside / name)
        return aside


@dataclass(frozen=True)
class Identity:
    """What a run's weights depend on: the weights hash of its config (lmforge.core.layout.weights_hash) and the
    fingerprint of its data. `earlier` names the last run of the same config on other data (for the note
    saying why this one starts from step 0); it is not part of the identity."""
    weights: str
    data: str
    earlier: str = ""
    family: str = ""  # the weights hash but max_steps (RunLayout.family): what --continue looks for

    def key(self) -> dict:
        return {"weights": self.weights, "data": self.data}


def resume_point(ckpts: Checkpoints, identity: Identity | None, max_steps: int) -> tuple[int, str]:
    """(step to resume from, one line saying what happens) for a run about to train. A checkpoint of another
    identity (other data or config) is set aside and the run starts from step 0."""
    state = ckpts.state("last")
    where = ckpts.dir.parent
    if state is None:
        if identity is not None and identity.earlier:
            return 0, (f"the data changed since the last run of this config ({Path(identity.earlier).name}): "
                       f"training from step 0 in {where}")
        return 0, f"training from step 0 in {where}"
    if identity is not None and state.get("identity") != identity.key():
        aside = ckpts.set_aside()
        return 0, (f"the checkpoint in {ckpts.dir} was trained on other data or another config, so it is not "
                   f"resumed (moved to {aside.name}): training from step 0")
    step = int(state["step"])
    if step >= max_steps:
        return step, f"already trained to step {step} in {where} on the same data and config: re-using its weights"
    return step, f"resuming from step {step} of {max_steps} in {where} (same data, same config)"


def weights_sha256(ckpt_dir: Path, name: str | None = None) -> str:
    """sha256 of the weights a run exports (best/, else last/; or checkpoint `name`): equal for identical models."""
    ckpts = Checkpoints(ckpt_dir)
    path = ckpts.path(name) if name else ckpts.path("best") or ckpts.path("last")
    if path is None:
        raise LmforgeError(f"no checkpoint in {ckpt_dir}", hint="train first")
    digest = hashlib.sha256()
    with open(path / "model.safetensors", "rb") as f:
        while block := f.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def load_best(model_cfg, vocab_size: int, ckpt_dir: Path):
    """The run's model with its best checkpoint's weights, in eval mode: what evaluation and export use."""
    from lmforge.models import build_model

    model = build_model(model_cfg, vocab_size)
    Checkpoints(ckpt_dir).load_model("best", model)
    return model.eval()


def _untie(tensors: dict) -> dict:
    """safetensors refuses shared storage: store tied weights once."""
    seen, out = {}, {}
    for k, v in tensors.items():
        key = (v.data_ptr(), v.shape)
        if key in seen:
            continue
        seen[key] = k
        out[k] = v
    return out


def _retie(tensors: dict, model) -> dict:
    expected = model.state_dict()
    for k in expected:
        if k not in tensors:
            for other, value in expected.items():
                if other in tensors and value.data_ptr() == expected[k].data_ptr():
                    tensors[k] = tensors[other]
    return tensors
