"""Stop strings over a growing text in linear time: one Knuth-Morris-Pratt automaton per stop string, fed each new
character once. It says where the first stop string ends the text, and how many trailing characters may still
be the start of one (what a stream must hold back). The cost per character is O(number of stop strings),
amortised, whatever their length: a 200,000-character stop string costs no more per token than a short one."""
from __future__ import annotations


def _failure(s: str) -> list[int]:
    """fail[i]: the length of the longest proper prefix of s[:i + 1] that is also its suffix."""
    fail, k = [0] * len(s), 0
    for i in range(1, len(s)):
        while k and s[i] != s[k]:
            k = fail[k - 1]
        if s[i] == s[k]:
            k += 1
        fail[i] = k
    return fail


class StopStrings:
    """feed(piece) -> the index in `piece` where the earliest stop string found in it starts (negative when it
    began in text fed before, which held() kept back), or None; held() -> how many characters at the end of the
    text fed so far are a prefix of some stop string (never a whole one)."""

    def __init__(self, stops: tuple[str, ...]):
        self.stops = tuple(s for s in stops if s)
        self.fail = [_failure(s) for s in self.stops]
        self.state = [0] * len(self.stops)  # matched prefix length per stop string

    def feed(self, piece: str) -> int | None:
        best = None
        for n, (s, fail) in enumerate(zip(self.stops, self.fail)):
            k = self.state[n]
            if not k and s[0] not in piece:  # the usual case: nothing of s here, the automaton stays at 0
                continue
            for i, c in enumerate(piece):
                while k and c != s[k]:
                    k = fail[k - 1]
                if c == s[k]:
                    k += 1
                if k == len(s):  # the first (so the leftmost) occurrence of s ending in this piece
                    start = i + 1 - len(s)
                    best = start if best is None else min(best, start)
                    k = fail[k - 1]
                    break
            self.state[n] = k
        return best

    def held(self) -> int:
        return max(self.state, default=0)
