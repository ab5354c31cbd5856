"""Extract a .tar/.tar.gz/.tgz/.zip safely: refuse members that would land outside the destination, all-or-nothing."""

from __future__ import annotations

import os
import posixpath
import shutil
import stat
import tarfile
import tempfile
import zipfile
from pathlib import Path

from lmforge.errors import LmforgeError

MARKER = ".lmforge-extracted"
_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")


def is_archive(path: Path) -> bool:
    """True when `path` names an archive this module extracts (judged by its name)."""
    return Path(path).name.lower().endswith(_SUFFIXES)


def extract(archive: Path, dest: Path) -> Path:
    """Extract `archive` into `dest` and return `dest`; a no-op when `dest` already holds this archive.

    Everything is extracted into a temporary directory beside `dest` and renamed into place, so a
    refused or failed archive leaves nothing behind.
    """
    archive, dest = Path(archive), Path(dest)
    st = archive.stat()
    stamp = f"{archive.name} {st.st_size} {st.st_mtime_ns}\n"
    marker = dest / MARKER
    if marker.is_file() and marker.read_text() == stamp:
        return dest
    if dest.exists() and not marker.is_file() and any(dest.iterdir()):
        raise LmforgeError(f"cannot extract {archive.name} into {dest}: the directory exists and was not made by lmforge",
                           hint="remove it or choose another destination")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    try:
        if archive.name.lower().endswith(".zip"):
            _extract_zip(archive, tmp)
        else:
            _extract_tar(archive, tmp)
        _check_links(archive, tmp)
        (tmp / MARKER).write_text(stamp)
        if dest.exists():  # an empty dir, or an extraction of a different archive: swap it out
            old = dest.parent / f"{tmp.name}.old"
            os.replace(dest, old)
            os.replace(tmp, dest)
            shutil.rmtree(old)
        else:
            os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def _refuse(archive: Path, member: str, why: str) -> LmforgeError:
    return LmforgeError(f"refusing to extract {archive.name}: member {member!r} {why}",
                        hint="the archive is malformed or malicious; get it from a trusted source")


def _check_name(archive: Path, name: str) -> str:
    """The member's normalised relative path, or an error if it is absolute or climbs out with '..'."""
    posix = name.replace("\\", "/")
    if posix.startswith("/") or (posix[1:2] == ":" and posix[0].isalpha()):
        raise _refuse(archive, name, "has an absolute path")
    if ".." in posix.split("/"):
        raise _refuse(archive, name, "climbs out of the destination with '..'")
    return posixpath.normpath(posix)


def _check_link_target(archive: Path, name: str, base: str, target: str) -> None:
    """Refuse a link whose target (relative to `base` inside the archive) is absolute or leaves it."""
    resolved = posixpath.normpath(posixpath.join(base, target.replace("\\", "/")))
    if target.startswith(("/", "\\")) or resolved == ".." or resolved.startswith("../"):
        raise _refuse(archive, name, f"links to {target!r}, outside the destination")


def _extract_tar(archive: Path, dest: Path) -> None:
    with tarfile.open(archive, "r:*") as tf:
        members = tf.getmembers()
        links: set[str] = set()
        for m in members:
            name = _check_name(archive, m.name)
            parents = Path(name).parents
            if any(p.as_posix() in links for p in parents):
                raise _refuse(archive, m.name, "lies beneath a symlink in the archive")
            if m.issym():
                _check_link_target(archive, m.name, posixpath.dirname(name), m.linkname)
                links.add(name)
            elif m.islnk():
                _check_link_target(archive, m.name, "", m.linkname)
            elif m.ischr() or m.isblk() or m.isfifo():
                raise _refuse(archive, m.name, "is a device file or FIFO")
            elif not (m.isfile() or m.isdir()):
                raise _refuse(archive, m.name, "has an unsupported type")
        try:
            if hasattr(tarfile, "data_filter"):
                tf.extractall(dest, members=members, filter="data")
            else:  # Python without extraction filters: the checks above stand alone
                tf.extractall(dest, members=members)
        except tarfile.TarError as e:  # includes the data filter's refusals
            raise LmforgeError(f"cannot extract {archive.name}: {e}",
                               hint="the archive is malformed or malicious; get it from a trusted source") from None


def _extract_zip(archive: Path, dest: Path) -> None:
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            name = _check_name(archive, info.filename)
            kind = stat.S_IFMT(info.external_attr >> 16)  # 0 when the zip was not made on Unix
            if kind == stat.S_IFLNK:
                target = zf.read(info).decode("utf-8", "replace")
                _check_link_target(archive, info.filename, posixpath.dirname(name), target)
            elif kind not in (0, stat.S_IFREG, stat.S_IFDIR):
                raise _refuse(archive, info.filename, "is a device file or FIFO")
        zf.extractall(dest)  # zipfile writes symlink entries as small regular files, never as links


def _check_links(archive: Path, root: Path) -> None:
    """Last line of defence: no symlink in the extracted tree may resolve outside it (catches link chains)."""
    real_root = os.path.realpath(root)
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            if os.path.islink(p) and os.path.commonpath([real_root, os.path.realpath(p)]) != real_root:
                raise _refuse(archive, os.path.relpath(p, root), "resolves outside the destination")
