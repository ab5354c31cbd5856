"""The names of an exported graph's cache inputs and outputs: one definition that the export (both graphs) and
any reader of a model directory share. Standard library only."""
from __future__ import annotations


def kv_names(n_layer: int) -> tuple[list[str], list[str]]:
    """GPT key/value cache: (past inputs, present outputs), layer by layer, key before value."""
    past = [f"past_key_values.{i}.{kv}" for i in range(n_layer) for kv in ("key", "value")]
    present = [f"present.{i}.{kv}" for i in range(n_layer) for kv in ("key", "value")]
    return past, present


def row_name(name: str, row: int) -> str:
    """The rows graph's (lmforge.export.fast.build_rows_graph) cache input or output of `row` for the fast graph's
    cache input or output `name`: one [1, H, M, D] tensor per row and cache."""
    return f"{name}.row{row}"


def rnn_names(spec: dict) -> tuple[list[str], list[str]]:
    """Recurrent state: (state inputs, new-state outputs), one per entry of spec["state"] (h, or h and c)."""
    return [f"state.{n}" for n in spec["state"]], [f"new_state.{n}" for n in spec["state"]]
