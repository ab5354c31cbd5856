"""Config keys that whoever triggers a run controls (`--set`, a deployment's `overrides`), checked when the config
is loaded, so a hostile or mistaken value fails in one line before Prefect starts (docs/security.md)."""
from __future__ import annotations

import re
from typing import TYPE_CHECKING

from lmforge.core.rowfilter import parse as parse_filter
from lmforge.core.errors import LmforgeError
from lmforge.core.safepath import check_slug

if TYPE_CHECKING:
    from lmforge.core.config import Config

LIMIT_KEYS = ("data.max_bytes", "data.archive_max_bytes", "data.archive_max_members", "data.archive_max_ratio")


def check_untrusted_keys(cfg: "Config") -> None:
    flat = cfg.flat()
    check_slug(cfg.name, "name")  # a directory under artifacts/, an MLflow experiment, a registered model
    for key in ("data.filter", "data.val_filter"):
        if flat[key]:
            parse_filter(flat[key], key)  # syntax and allow-list now; column names when the table is read
    for key in LIMIT_KEYS:
        if flat[key] < 0:  # type: ignore[operator]
            raise LmforgeError(f"config key {key} must be >= 0 (0 = no limit), got {flat[key]}",
                               hint=f"--set {key}=0 to lift it")
    if cfg.data.sha256 and not re.fullmatch(r"[0-9a-fA-F]{64}", cfg.data.sha256):
        raise LmforgeError(f"data.sha256 must be 64 hex digits, got {cfg.data.sha256!r}",
                           hint="`sha256sum FILE` prints it")
