"""Archive bombs (lmforge/data/archive.py ArchiveLimits): generated zip and tar bombs are refused within their
limits, from the headers and again on the bytes actually written, and nothing is left half-extracted. The bombs
here are small (a few MB of zeros at ~1000:1) and the tests lower the limits to meet them: no test writes
gigabytes."""
from __future__ import annotations

import io
import os
import struct
import tarfile
import zipfile
from pathlib import Path

import pytest

from conftest import corpus
from lmforge.core.config import load_config
from lmforge.core.limits import ArchiveLimits
from lmforge.data.archive import extract
from lmforge.data.sources import acquire_for
from lmforge.core.errors import LmforgeError

ZEROS = 4 << 20  # a 4 MiB member of zeros: ~4 KiB deflated, a ratio of ~1000


def zip_of(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def tar_of(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz" if path.name.endswith("gz") else "w") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def assert_nothing_extracted(tmp_path: Path, archive: Path) -> None:
    assert sorted(p.name for p in tmp_path.iterdir()) == [archive.name]  # no dest, no temp dir


def test_zip_bomb_member_is_caught_by_the_ratio_far_under_the_size_limit(tmp_path):
    bomb = zip_of(tmp_path / "bomb.zip", {"readme.txt": b"a corpus\n", "zeros.txt": b"\0" * ZEROS})
    assert bomb.stat().st_size * 100 < ZEROS < ArchiveLimits().max_bytes  # high ratio, tiny against the size cap
    with pytest.raises(LmforgeError) as info:
        extract(bomb, tmp_path / "out")  # the default limits
    assert info.value.message.startswith("refusing to extract bomb.zip: member 'zeros.txt' expands more than 100:1")
    assert "data.archive_max_ratio=100" in info.value.message and "--set data.archive_max_ratio=" in info.value.hint
    assert_nothing_extracted(tmp_path, bomb)


def test_tar_bomb_is_caught_by_the_ratio(tmp_path):
    bomb = tar_of(tmp_path / "bomb.tar.gz", {"zeros.txt": b"\0" * ZEROS})
    with pytest.raises(LmforgeError, match=r"refusing to extract bomb.tar.gz: it expands more than 100:1 "
                                           rf"\({ZEROS} bytes from \d+\), over the limit data.archive_max_ratio=100"):
        extract(bomb, tmp_path / "out")
    assert_nothing_extracted(tmp_path, bomb)


@pytest.mark.parametrize("kind", ["zip", "tar.gz", "tar"])
def test_total_size_limit(tmp_path, kind):
    """Incompressible members (ratio ~1) that together pass data.archive_max_bytes."""
    members = {f"part{i}.bin": os.urandom(100_000) for i in range(3)}
    archive = (zip_of if kind == "zip" else tar_of)(tmp_path / f"big.{kind}", members)
    with pytest.raises(LmforgeError) as info:
        extract(archive, tmp_path / "out", ArchiveLimits(max_bytes=250_000))
    assert (f"refusing to extract big.{kind}: its members hold more than 250000 bytes uncompressed, over the limit "
            "data.archive_max_bytes=250000") == info.value.message
    assert_nothing_extracted(tmp_path, archive)
    assert extract(archive, tmp_path / "out", ArchiveLimits(max_bytes=300_000)) == tmp_path / "out"  # at the limit


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_member_count_limit(tmp_path, kind):
    archive = (zip_of if kind == "zip" else tar_of)(tmp_path / f"many.{kind}",
                                                      {f"d/{i}.txt": b"x" for i in range(50)})
    with pytest.raises(LmforgeError, match="it has more than 20 members, over the limit data.archive_max_members=20"):
        extract(archive, tmp_path / "out", ArchiveLimits(max_members=20))
    assert_nothing_extracted(tmp_path, archive)


def lie_about_size(path: Path, name: str, claimed: int) -> None:
    """Rewrite the local header and the central directory record of `name` to claim `claimed` uncompressed bytes
    (APPNOTE 4.3.7 / 4.3.12: the size fields at offsets 22 and 24)."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        struct.pack_into("<I", data, zf.getinfo(name).header_offset + 22, claimed)
    record = data.find(b"PK\x01\x02")
    while record >= 0:
        (length,) = struct.unpack_from("<H", data, record + 28)
        if data[record + 46:record + 46 + length] == name.encode():
            struct.pack_into("<I", data, record + 24, claimed)
        record = data.find(b"PK\x01\x02", record + 4)
    path.write_bytes(bytes(data))


def test_zip_whose_headers_understate_a_bomb_is_refused_while_extracting(tmp_path):
    """The headers claim 1000 bytes, well inside every limit; the data inflates to 4 MiB. Extraction stops at the
    claimed size (the bytes written are counted, never more than the header allows) and the CRC check refuses
    the member: the archive is rejected and nothing stays on disk."""
    bomb = zip_of(tmp_path / "liar.zip", {"zeros.txt": b"\0" * ZEROS})
    lie_about_size(bomb, "zeros.txt", 1000)
    with zipfile.ZipFile(bomb) as zf:
        assert zf.getinfo("zeros.txt").file_size == 1000  # what the header check sees
    with pytest.raises(LmforgeError, match="cannot extract liar.zip: Bad CRC-32 for file 'zeros.txt'"):
        extract(bomb, tmp_path / "out", ArchiveLimits(max_bytes=10_000, max_ratio=0))
    assert_nothing_extracted(tmp_path, bomb)


def test_archive_limits_come_from_the_config(tmp_path, monkeypatch):
    bomb = zip_of(tmp_path / "bomb.zip", {"zeros.txt": b"\0" * ZEROS})
    cfg = load_config("jokes-char", {"data.source": str(bomb)})
    with pytest.raises(LmforgeError, match="data.archive_max_ratio=100"):
        acquire_for(cfg.data, tmp_path / "cache")
    with pytest.raises(LmforgeError, match="must be > 0, got 0 \\(0 no longer lifts a limit\\)"):
        load_config("jokes-char", {"data.source": str(bomb), "data.archive_max_ratio": "0"})
    with pytest.raises(LmforgeError, match="data.archive_max_ratio=5000 is over the operator's ceiling 100"):
        load_config("jokes-char", {"data.source": str(bomb), "data.archive_max_ratio": "5000"})
    monkeypatch.setenv("LMFORGE_CEILINGS", "data.archive_max_ratio=5000")  # the operator raises the ceiling
    lifted = load_config("jokes-char", {"data.source": str(bomb), "data.archive_max_ratio": "5000",
                                        "data.archive_max_bytes": str(ZEROS)})
    out = acquire_for(lifted.data, tmp_path / "cache")
    assert (out / "zeros.txt").stat().st_size == ZEROS  # raised on purpose, by the operator, it extracts
    with pytest.raises(LmforgeError, match="must be > 0"):
        load_config("jokes-char", {"data.archive_max_members": "-1"})


def test_real_text_archive_extracts_with_the_defaults(tmp_path):
    """A real corpus (tinyshakespeare, read in place) gzipped in a tar is well inside every default limit."""
    text = corpus("tinyshakespeare.txt").read_bytes()
    archive = tar_of(tmp_path / "shakespeare.tar.gz", {f"plays/{i}.txt": text[i::8] for i in range(8)})
    out = extract(archive, tmp_path / "out")
    assert sum((out / "plays" / f"{i}.txt").stat().st_size for i in range(8)) == len(text)


def test_defaults_admit_the_imdb_archive():
    """docs/security.md promises the defaults accept aclImdb_v1.tar.gz (84,125,825 bytes; 100,000 reviews plus
    a few dozen other members; ~480 MB uncompressed): keep the defaults above those figures."""
    limits = ArchiveLimits()
    assert limits.max_bytes > 480e6 and limits.max_members > 100_100 and limits.max_ratio > 480e6 / 84_125_825
    assert load_config("imdb-gpt").data.archive_max_bytes == limits.max_bytes
