"""Stop strings: the text a choice shows is cut at the first one, none of it ever shown."""

from __future__ import annotations


class StopStrings:
    """Cut text at the first stop string, holding back what might be the start of one.

    Text is pushed as it is decoded; `push` returns the part that can be shown
    now. A suffix of the pending text that is a prefix of some stop string is
    held back, so an occurrence of a stop string always starts inside the held
    text and can be cut before anything of it was shown. Example, stop "\\n\\n":
    push("Hi\\n") -> "Hi" (holds "\\n"); push("\\nBye") -> "" and stopped.

    Each stop string is matched by its Knuth-Morris-Pratt automaton (Knuth, Morris &
    Pratt 1977): `matched[k]` is the length of the longest prefix of stop k that ends
    the text so far, advanced one character at a time through the stop's failure
    table, so a push costs O(characters pushed x stops), however long the stops are.
    """

    def __init__(self, stops: tuple[str, ...]):
        self.stops = stops
        self.failure = [_failure_table(s) for s in stops]
        self.matched = [0] * len(stops)
        self.pending = ""
        self.stopped = False

    def push(self, text: str) -> str:
        new = len(self.pending)  # where the pushed text starts in `pending`
        self.pending += text
        cut = None  # the earliest start of a stop string completed by this push
        for k, (stop, failure) in enumerate(zip(self.stops, self.failure)):
            m = self.matched[k]
            for i in range(new, len(self.pending)):
                c = self.pending[i]
                while m and stop[m] != c:
                    m = failure[m - 1]
                m += stop[m] == c
                if m == len(stop):
                    cut = min(cut if cut is not None else i, i + 1 - m)
                    break
            self.matched[k] = m
        if cut is not None:
            shown, self.pending, self.stopped = self.pending[:cut], "", True
            return shown
        keep = len(self.pending) - max(self.matched, default=0)  # every partial match lies in the held text
        shown, self.pending = self.pending[:keep], self.pending[keep:]
        return shown

    def flush(self) -> str:
        shown, self.pending = self.pending, ""
        return shown


def _failure_table(s: str) -> list[int]:
    """KMP's prefix function: f[i] = the length of the longest proper prefix of s[:i + 1]
    that is also its suffix (where matching resumes after a mismatch)."""
    f, m = [0] * len(s), 0
    for i in range(1, len(s)):
        while m and s[i] != s[m]:
            m = f[m - 1]
        m += s[i] == s[m]
        f[i] = m
    return f
