"""gzip, bzip2, xz and zstd files read as streams, never unpacked to disk, with a ceiling on what they may expand
to: data.archive_max_bytes in all, and data.archive_max_ratio times the compressed size (a bomb of zeros expands
~1000 times; text 3-10 times). Decompression runs a chunk at a time, so memory is one read buffer."""
from __future__ import annotations

import bz2
import gzip
import io
import lzma
from pathlib import Path
from typing import BinaryIO

from lmforge.core.errors import LmforgeError
from lmforge.core.limits import ArchiveLimits

ZSTD_FEED = 2048
_HINT = ("raise data.archive_max_bytes / data.archive_max_ratio (0 = no limit) if this file is expected to "
         "expand this much")


def _zstd_error() -> type:
    try:
        import zstandard

        return zstandard.ZstdError
    except ImportError:
        return ValueError


class BoundedReader(io.RawIOBase):
    """A readable binary stream over a decompressor that raises LmforgeError once more than `max_bytes` (or
    `max_ratio` x the compressed size) came out; a corrupt stream is an LmforgeError naming the file."""

    def __init__(self, inner: BinaryIO, where: str, compressed_size: int, limits: ArchiveLimits):
        super().__init__()
        self.inner, self.where, self.out = inner, where, 0
        caps = [c for c in (limits.max_bytes, int(limits.max_ratio * max(compressed_size, 1 << 20))
                            if limits.max_ratio else 0) if c]
        self.cap = min(caps) if caps else 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        try:
            n = self.inner.readinto(buffer)
        except (OSError, EOFError, lzma.LZMAError, ValueError, _zstd_error()) as exc:
            raise LmforgeError(f"{self.where} is not a valid compressed file: {exc}",
                               hint="check the file is complete (download it again) and its suffix matches "
                                    "its compression") from None
        self.out += n or 0
        if self.cap and self.out > self.cap:
            raise LmforgeError(f"{self.where} expands past {self.cap} bytes (data.archive_max_bytes / "
                               "data.archive_max_ratio)", hint=_HINT)
        return n

    def close(self) -> None:
        try:
            self.inner.close()
        finally:
            super().close()


class _ZstdReader(io.RawIOBase):
    """zstd frames, one after another, decompressed a chunk at a time; a stream that ends inside a frame is an
    error (zstandard's stream_reader would end quietly)."""

    def __init__(self, path: Path):
        super().__init__()
        try:
            import zstandard
        except ImportError:
            raise LmforgeError(f"{path} is zstd-compressed, and the zstandard package is not installed",
                               hint='pip install "lmforge[pipeline]" (or zstandard)') from None
        # max_window_size bounds the decoder's memory whatever a frame header asks for (a hostile header can ask
        # for 2 GiB); 128 MiB covers `zstd --long=27`, the largest window the standard CLI writes without --long=31
        self.new = lambda: zstandard.ZstdDecompressor(max_window_size=1 << 27).decompressobj()
        self.raw, self.obj, self.pending, self.input, self.in_frame = open(path, "rb"), self.new(), b"", b"", False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self.pending:
            if not self.input:
                self.input = self.raw.read(1 << 20)
                if not self.input:
                    if self.in_frame:
                        raise EOFError("the zstd stream ends inside a frame (truncated)")
                    return 0
            # a few KiB of input per call: zstd's RLE blocks expand up to ~32768 times, so one call's output
            # stays under ZSTD_FEED x 32768 = 64 MiB however hostile the input
            data, self.input = self.input[:ZSTD_FEED], self.input[ZSTD_FEED:]
            self.in_frame = True
            self.pending = self.obj.decompress(data)
            if self.obj.eof:
                self.input = self.obj.unused_data + self.input
                self.obj, self.in_frame = self.new(), False
        n = min(len(buffer), len(self.pending))
        buffer[:n] = self.pending[:n]
        self.pending = self.pending[n:]
        return n

    def close(self) -> None:
        self.raw.close()
        super().close()


def open_decompressed(path: Path, compression: str, limits: ArchiveLimits | None = None) -> BinaryIO:
    """The decompressed bytes of `path` as a buffered binary stream, bounded by `limits` (default ArchiveLimits())."""
    path = Path(path)
    opener = {"gzip": lambda: gzip.open(path, "rb"), "bz2": lambda: bz2.open(path, "rb"),
              "xz": lambda: lzma.open(path, "rb"), "zstd": lambda: _ZstdReader(path)}.get(compression)
    if opener is None:
        raise LmforgeError(f"unknown compression {compression!r} for {path}", hint="use .gz, .bz2, .xz or .zst")
    raw = BoundedReader(opener(), str(path), path.stat().st_size, limits or ArchiveLimits())
    return io.BufferedReader(raw, 1 << 20)


def open_member(path: Path, compression: str = "", limits: ArchiveLimits | None = None) -> BinaryIO:
    """A binary stream of a corpus file: decompressed when `compression` names one, else the file itself."""
    return open_decompressed(path, compression, limits) if compression else open(path, "rb")
