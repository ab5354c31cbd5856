"""Extract a .tar/.tar.gz/.tgz/.zip safely: refuse members that would land outside the destination, and archives
that would expand past their limits (total uncompressed bytes, member count, compression ratio: zip and tar
bombs); all-or-nothing."""

from __future__ import annotations

import os
import posixpath
import shutil
import stat
import tarfile
import tempfile
import zipfile
import zlib
from pathlib import Path

from lmforge.core.limits import ArchiveLimits
from lmforge.core.errors import LmforgeError

MARKER = ".lmforge-extracted"
_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")
CHUNK = 1 << 20


def is_archive(path: Path) -> bool:
    """True when `path` names an archive this module extracts (judged by its name)."""
    return Path(path).name.lower().endswith(_SUFFIXES)


def extract(archive: Path, dest: Path, limits: ArchiveLimits = ArchiveLimits()) -> Path:
    """Extract `archive` into `dest` and return `dest`; a no-op when `dest` already holds this archive.

    The limits are checked twice: from the archive's headers before anything is written, and again while
    extracting, on the bytes actually written (zip: its headers can lie; tar: tarfile writes exactly the size
    its header gives). Everything is extracted into a temporary directory beside `dest` and renamed into place,
    so a refused or failed archive leaves nothing behind.
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
            _extract_zip(archive, tmp, limits)
        else:
            _extract_tar(archive, tmp, limits)
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
    if len(posix.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES or \
            any(len(part.encode("utf-8", "surrogateescape")) > MAX_PART_BYTES for part in posix.split("/")):
        raise _refuse(archive, name[:200] + "...", f"has a name longer than a file system takes ({MAX_NAME_BYTES} "
                      f"bytes, {MAX_PART_BYTES} per component)")
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


class _Budget:
    """Counts members and uncompressed bytes against ArchiveLimits; the first excess is a one-line error."""

    def __init__(self, archive: Path, limits: ArchiveLimits):
        self.archive, self.limits = archive, limits
        self.size = archive.stat().st_size  # compressed bytes
        self.members = self.bytes = 0

    def member(self) -> None:
        self.members += 1
        if self.limits.max_members and self.members > self.limits.max_members:
            raise _over(self.archive, f"it has more than {self.limits.max_members} members",
                        "data.archive_max_members", self.limits.max_members)

    def add(self, n: int) -> None:
        """n more uncompressed bytes: checked against the total and against the whole archive's ratio."""
        self.bytes += n
        if self.limits.max_bytes and self.bytes > self.limits.max_bytes:
            raise _over(self.archive, f"its members hold more than {self.limits.max_bytes} bytes uncompressed",
                        "data.archive_max_bytes", self.limits.max_bytes)
        if self.limits.max_ratio and self.bytes > self.limits.max_ratio * max(self.size, 1):
            raise _over(self.archive, f"it expands more than {self.limits.max_ratio:g}:1 ({self.bytes} bytes "
                        f"from {self.size})", "data.archive_max_ratio", self.limits.max_ratio)

    def member_ratio(self, name: str, uncompressed: int, compressed: int) -> None:
        """One zip member's own ratio (its data is compressed on its own, so a bomb member shows here)."""
        if self.limits.max_ratio and uncompressed > self.limits.max_ratio * max(compressed, 1):
            raise _over(self.archive, f"member {name!r} expands more than {self.limits.max_ratio:g}:1 "
                        f"({uncompressed} bytes from {compressed})", "data.archive_max_ratio", self.limits.max_ratio)


def _over(archive: Path, what: str, key: str, value: float) -> LmforgeError:
    return LmforgeError(f"refusing to extract {archive.name}: {what}, over the limit {key}={value:g}",
                        hint=f"an archive bomb looks like this; if the archive is expected, raise the limit "
                             f"(--set {key}=N; 0 = no limit)")


# Headers that only carry data for the member after them (GNU long name / long link, PAX extended headers):
# tarfile reads each one whole into memory, so its size is checked first, and how many come in a row.
_META_TYPES = (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE, tarfile.XGLTYPE,
               tarfile.SOLARIS_XHDTYPE)
MAX_META_BYTES = 1 << 20  # a path is at most 4096 bytes; PAX records of a corpus file are a few hundred
MAX_META_RUN = 8
MAX_NAME_BYTES, MAX_PART_BYTES = 4096, 255  # PATH_MAX and NAME_MAX on Linux


class _HeaderRefused(Exception):
    def __init__(self, name: str, why: str):
        super().__init__(why)
        self.name, self.why = name, why


class _BoundedTarInfo(tarfile.TarInfo):
    """A TarInfo whose extended headers are checked before tarfile reads them: at most MAX_META_BYTES each and
    MAX_META_RUN in a row (tarfile follows a run of them by recursion, holding each one)."""

    def _proc_member(self, tf: tarfile.TarFile):
        run = getattr(tf, "_lmforge_meta_run", 0) + 1 if self.type in _META_TYPES else 0
        tf._lmforge_meta_run = run  # type: ignore[attr-defined]
        if run and self.size > MAX_META_BYTES:
            raise _HeaderRefused(self.name, f"has an extended header of {self.size} bytes (at most "
                                            f"{MAX_META_BYTES} are read)")
        if run > MAX_META_RUN:
            raise _HeaderRefused(self.name, f"follows more than {MAX_META_RUN} extended headers in a row")
        return super()._proc_member(tf)


def _extract_tar(archive: Path, dest: Path, limits: ArchiveLimits) -> None:
    try:
        tf = tarfile.open(archive, "r:*", tarinfo=_BoundedTarInfo)
        with tf:
            members = _scan_tar(archive, tf, _Budget(archive, limits))
            _write_tar(archive, tf, members, dest, _Budget(archive, limits))
    except _HeaderRefused as e:
        raise _refuse(archive, e.name[:200], e.why) from None
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:  # the data filter's refusals too
        raise _unreadable(archive, e) from None


def _scan_tar(archive: Path, tf: tarfile.TarFile, budget: _Budget) -> list[tarfile.TarInfo]:
    """Every member's header, one by one: the limits stop the walk before a bomb's data is decompressed."""
    members: list[tarfile.TarInfo] = []
    links: set[str] = set()
    for m in tf:
        budget.member()
        budget.add(m.size)
        members.append(m)
        _check_tar_member(archive, m, _check_name(archive, m.name), links)
    return members


def _check_tar_member(archive: Path, m: tarfile.TarInfo, name: str, links: set[str]) -> None:
    """Refuse a member beneath a symlink of the archive, a link out of it, a device, a FIFO, or another type."""
    if any(p.as_posix() in links for p in Path(name).parents):
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


def _write_tar(archive: Path, tf: tarfile.TarFile, members: list[tarfile.TarInfo], dest: Path,
               budget: _Budget) -> None:
    """Extract the scanned members, each through tarfile's data filter and counted against the limits again."""
    def counted(member: tarfile.TarInfo, path: str) -> tarfile.TarInfo:
        if hasattr(tarfile, "data_filter"):
            member = tarfile.data_filter(member, path)
        budget.member()
        budget.add(member.size)
        return member

    if hasattr(tarfile, "data_filter"):
        tf.extractall(dest, members=members, filter=counted)
    else:  # Python without extraction filters: the checks above stand alone, counted per member
        for m in members:
            tf.extract(counted(m, str(dest)), dest)


def _unreadable(archive: Path, e: Exception) -> LmforgeError:
    return LmforgeError(f"cannot extract {archive.name}: {e}",
                        hint="the archive is malformed or malicious; get it from a trusted source")


def _extract_zip(archive: Path, dest: Path, limits: ArchiveLimits) -> None:
    budget = _Budget(archive, limits)
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise _unreadable(archive, e) from None
    with zf:
        infos = zf.infolist()
        names = []
        for info in infos:  # the central directory's word, before anything is written
            budget.member()
            budget.member_ratio(info.filename, info.file_size, info.compress_size)
            budget.add(info.file_size)
            name = _check_name(archive, info.filename)
            kind = stat.S_IFMT(info.external_attr >> 16)  # 0 when the zip was not made on Unix
            if kind == stat.S_IFLNK:
                with zf.open(info) as link:
                    target = link.read(4096).decode("utf-8", "replace")  # a link target, not a member's worth
                _check_link_target(archive, info.filename, posixpath.dirname(name), target)
            elif kind not in (0, stat.S_IFREG, stat.S_IFDIR):
                raise _refuse(archive, info.filename, "is a device file or FIFO")
            names.append(name)
        written = _Budget(archive, limits)
        try:
            for info, name in zip(infos, names):
                written.member()
                _write_zip_member(zf, info, dest / name, written)
        except (zipfile.BadZipFile, RuntimeError, NotImplementedError, EOFError, zlib.error) as e:
            raise _unreadable(archive, e) from None  # bad CRC (a header that lied), encrypted, unknown method
        except (NotADirectoryError, IsADirectoryError, FileExistsError):
            raise _refuse(archive, info.filename, "collides with another member") from None


def _write_zip_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, budget: _Budget) -> None:
    """One member, counting the bytes as they are decompressed and checking them before each write. Symlink
    entries become small regular files, as zipfile.extractall writes them."""
    if info.is_dir():
        target.mkdir(parents=True, exist_ok=True)
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    done = 0
    with zf.open(info) as src, open(target, "wb") as out:
        while chunk := src.read(CHUNK):
            done += len(chunk)
            budget.member_ratio(info.filename, done, info.compress_size)
            budget.add(len(chunk))
            out.write(chunk)


def _check_links(archive: Path, root: Path) -> None:
    """Last line of defence: no symlink in the extracted tree may resolve outside it (catches link chains)."""
    real_root = os.path.realpath(root)
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            if os.path.islink(p) and os.path.commonpath([real_root, os.path.realpath(p)]) != real_root:
                raise _refuse(archive, os.path.relpath(p, root), "resolves outside the destination")
