"""Config keys that whoever triggers a run controls (`--set`, a deployment's `overrides`), checked when the config
is loaded, so a hostile or mistaken value fails in one line before Prefect starts (docs/security.md)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from lmforge.data.rowfilter import parse as parse_filter
from lmforge.safepath import check_slug

if TYPE_CHECKING:
    from lmforge.config import Config


def check_untrusted_keys(cfg: "Config") -> None:
    flat = cfg.flat()
    check_slug(cfg.name, "name")  # a directory under artifacts/, an MLflow experiment, a registered model
    for key in ("data.filter", "data.val_filter"):
        if flat[key]:
            parse_filter(flat[key], key)  # syntax and allow-list now; column names when the table is read
