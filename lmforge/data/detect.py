"""Which reader reads each file of a source: the format of a file from its name, else its first bytes (parquet's
PAR1, an Arrow stream, JSON, gzip/bzip2/xz/zstd magic), and the files of a directory or glob in a stable order.

The preset's data.format is a default, not a command: a `.csv`/`.tsv`/`.jsonl`/`.json`/`.parquet`/`.arrow` file
(compressed or not), a file whose first bytes say parquet or Arrow, and a Hugging Face `save_to_disk` folder are
read as what they are, with a warning when that overrides the preset's format. A format the user set
(`--set data.format=...`, a deployment's overrides: DataConfig.user_set) is honoured as written. A text file
(`.txt`, or bytes nothing recognises) is read with the configured text format (text/lines, or the preset's table
format when it names one)."""
from __future__ import annotations

import glob
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from lmforge.core.errors import LmforgeError

log = logging.getLogger("lmforge.data")

TEXT_FORMATS = ("text", "lines")
TABLE_FORMATS = ("csv", "tsv", "jsonl", "json", "parquet", "hf")
COMPRESSIONS = {".gz": "gzip", ".bz2": "bz2", ".xz": "xz", ".zst": "zstd", ".zstd": "zstd"}
_MAGIC = ((b"\x1f\x8b", "gzip"), (b"BZh", "bz2"), (b"\xfd7zXZ\x00", "xz"), (b"\x28\xb5\x2f\xfd", "zstd"))
_BY_SUFFIX = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json",
              ".parquet": "parquet", ".pq": "parquet", ".arrow": "hf", ".txt": "text", ".text": "text"}
ARROW_STREAM = b"\xff\xff\xff\xff"  # an Arrow IPC stream's first message (what save_to_disk writes)
ARROW_FILE = b"ARROW1"
GLOB_CHARS = "*?["


@dataclass(frozen=True)
class Member:
    """One file of a corpus: where it is, the format it is read as, and the compression it is read through
    ("" = none). name: its path relative to the source (what messages and the fingerprint name)."""
    path: Path
    fmt: str
    compression: str = ""
    name: str = ""


def is_glob(source: str | Path) -> bool:
    return any(c in str(source) for c in GLOB_CHARS) and not Path(source).exists()


def compression_of(path: Path, head: bytes | None = None) -> str:
    """The compression of a file, by its suffix, else by its first bytes; "" when none."""
    by_name = COMPRESSIONS.get(Path(path).suffix.lower(), "")
    if by_name:
        return by_name
    head = _head(path) if head is None else head
    return next((name for magic, name in _MAGIC if head.startswith(magic)), "")


def format_by_name(path: Path) -> str:
    """The format a file's name says (the suffix under any compression suffix), or "" when it says none."""
    suffixes = [s.lower() for s in Path(path).suffixes]
    if suffixes and suffixes[-1] in COMPRESSIONS:
        suffixes.pop()
    return _BY_SUFFIX.get(suffixes[-1], "") if suffixes else ""


def format_by_content(head: bytes) -> str:
    """The format the first bytes (decompressed) say: parquet, an Arrow stream/file, JSON; "" for anything else."""
    if head.startswith(b"PAR1"):
        return "parquet"
    if head.startswith(ARROW_FILE) or head.startswith(ARROW_STREAM):
        return "hf"
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if text.startswith(b"{"):
        line = text.split(b"\n", 1)[0]
        try:
            return "jsonl" if isinstance(json.loads(line), dict) else ""
        except ValueError:
            return "jsonl" if b"\n" not in text else ""  # one object longer than the head: still JSON
    if text.startswith(b"[{") or text.startswith(b"[\n") or text.startswith(b"[ "):
        return "json"
    return ""


def _head(path: Path, n: int = 4096) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(n)
    except OSError:
        return b""


def _decompressed_head(path: Path, compression: str, n: int = 4096) -> bytes:
    from lmforge.data.compressed import open_decompressed

    try:
        with open_decompressed(path, compression) as f:
            return f.read(n)
    except (OSError, EOFError, LmforgeError, ValueError):
        return b""


def detected_format(path: Path) -> tuple[str, str]:
    """(format, compression) of one file from its name, else its content; format "" when neither says."""
    head = _head(path)
    compression = compression_of(path, head)
    fmt = format_by_name(path)
    if not fmt:  # a name that says nothing (no suffix, .gz alone, .dat): the bytes decide; `.txt` is trusted
        by_content = format_by_content(_decompressed_head(path, compression) if compression else head)
        fmt = by_content or fmt
    return fmt, compression


def is_hf_folder(path: Path) -> bool:
    """A folder written by `datasets`' save_to_disk: a Dataset (state.json + dataset_info.json + .arrow files)
    or a DatasetDict (dataset_dict.json naming one such folder per split)."""
    path = Path(path)
    return path.is_dir() and ((path / "state.json").is_file() or (path / "dataset_dict.json").is_file())


def is_imdb(path: Path) -> bool:
    return Path(path).is_dir() and (any(Path(path).glob("**/pos")) or any(Path(path).glob("**/neg")))


def resolve(detected: str, configured: str, explicit: bool) -> str:
    """The format one file is read as (the module's rule): a format the user set is honoured; a table or binary
    format the file's name or bytes show wins over the preset's; otherwise the configured format."""
    if configured != "auto" and explicit:
        return configured
    if detected in TABLE_FORMATS:
        return detected
    return "text" if configured == "auto" else configured


def override_note(found: list[Member], configured: str, explicit: bool) -> str:
    """The warning to give when files are read in another format than the preset's data.format ("" if none)."""
    if configured == "auto" or explicit:
        return ""
    other = [m for m in found if m.fmt != configured and not (configured == "json" and m.fmt == "jsonl")]
    if not other:
        return ""
    fmts = sorted({m.fmt for m in other})
    what = other[0].name if len(other) == 1 else f"{len(other)} of its files"
    return (f"{what} {'is' if len(other) == 1 else 'are'} read as {'/'.join(fmts)} (by name or content), not as "
            f"the preset's data.format={configured} (hint: --set data.format={configured} to read "
            f"{'it' if len(other) == 1 else 'them'} that way)")


def _known(path: Path) -> bool:
    name = path.name
    return not name.startswith((".", "_")) and bool(format_by_name(path))


def listing(root: Path, pattern: str | None = None) -> list[Path]:
    """The files of a directory (recursively) or a glob that have a format suffix, hidden and `_`-prefixed names
    (`_SUCCESS`, `.crc`) left out, sorted as paths (part by part): the same order everywhere."""
    if pattern is not None:
        found = [Path(p) for p in glob.glob(pattern, recursive=True)]
        return sorted(p for p in found if p.is_file() and _known(p))
    found = [p for p in root.rglob("*") if p.is_file() and _known(p)
             and not any(part.startswith((".", "_")) for part in p.relative_to(root).parts[:-1])]
    return sorted(found)


def hf_files(path: Path) -> list[Path]:
    """The .arrow files of a save_to_disk folder, in the order state.json lists them (a DatasetDict: each split's,
    in the order dataset_dict.json lists the splits)."""
    path = Path(path)
    if (path / "dataset_dict.json").is_file():
        splits = _json(path / "dataset_dict.json").get("splits", [])
        if not isinstance(splits, list) or not splits:
            raise LmforgeError(f"{path}/dataset_dict.json names no splits", hint="save the dataset again with "
                               "save_to_disk, or point data.source at one split's folder")
        return [f for s in splits for f in hf_files(_inside(path, str(s)))]
    files = _json(path / "state.json").get("_data_files", [])
    names = [f.get("filename", "") for f in files if isinstance(f, dict)] if isinstance(files, list) else []
    if not names:
        raise LmforgeError(f"{path}/state.json lists no data files", hint="save the dataset again with save_to_disk")
    return [_inside(path, n) for n in names]


def _inside(root: Path, name: str) -> Path:
    """root/name, refusing names that climb out of root (a hostile state.json)."""
    from lmforge.core.safepath import confined

    target = confined(root, root / name, "a data file named in", hint="the folder's JSON names files outside it")
    if not target.exists():
        raise LmforgeError(f"{target} is listed by {root} but missing", hint="save the dataset again with save_to_disk")
    return target


def _json(path: Path) -> dict:
    try:
        if path.stat().st_size > 16 << 20:
            raise ValueError("over 16 MiB")
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise LmforgeError(f"cannot read {path}: {exc}", hint="save the dataset again with save_to_disk") from None
    return data if isinstance(data, dict) else {}


def members(source: Path, configured: str = "auto", explicit: bool = False) -> list[Member]:
    """The files of a source (a file, a directory, a save_to_disk folder or a glob), each with the format it is
    read as, in reading order. IMDB trees are not listed here (formats.py reads them)."""
    source = Path(source)
    if is_glob(source):
        files = listing(Path("."), str(source))
        if not files:
            raise LmforgeError(f"no file matches {source}", hint="check the pattern; files need a format suffix "
                               "(.txt .csv .tsv .jsonl .json .parquet .arrow, compressed or not)")
        return [_member(p, configured, explicit, p.name) for p in files]
    if is_hf_folder(source):
        return [Member(p, "hf", "", p.relative_to(source).as_posix()) for p in hf_files(source)]
    if source.is_dir():
        return [_member(p, configured, explicit, p.relative_to(source).as_posix()) for p in listing(source)]
    return [_member(source, configured, explicit, source.name)]


def _member(path: Path, configured: str, explicit: bool, name: str) -> Member:
    detected, compression = detected_format(path)
    return Member(path, resolve(detected, configured, explicit), compression, name)


def source_format(source: Path, configured: str = "auto", explicit: bool = False) -> str:
    """The format a source is read as: imdb for an IMDB tree, else its first file's ("" for an empty directory):
    what data.val_filter and the contiguous split's joiner need to know."""
    if configured == "imdb" or (configured == "auto" and is_imdb(source)):
        return "imdb"
    found = members(source, configured, explicit)
    return found[0].fmt if found else ""
