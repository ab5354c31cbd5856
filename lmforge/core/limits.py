"""Ceilings on what one input may cost: the defaults every reader and the config share."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ArchiveLimits:
    """What one archive may expand to. The config keys data.archive_max_* set them, each > 0 and at most the
    operator's ceiling (lmforge/core/policy.py); 0 lifts a limit only for a library caller that builds these itself.

    The defaults accept IMDB's aclImdb_v1.tar.gz, the largest archive a preset uses (84 MB compressed, about
    100,000 members, about 480 MB uncompressed: a ratio near 6) with a wide margin, and refuse what a bomb needs:
    8 GiB uncompressed, one million members, and a ratio of 100 (gzip/deflate shrink text 3-10 times; a run of
    zeros shrinks about 1000 times)."""
    max_bytes: int = 8 << 30
    max_members: int = 1_000_000
    max_ratio: float = 100.0
