"""A minimal progress bar on stderr for long loops (no dependency)."""

import sys
import time


class ProgressBar:
    """Prints ``label: step/total [elapsed, eta] key=value`` in place, at most every 0.5 s.

    Parameters
    ----------
    total : int
    label : str
    enabled : bool
        When False (``verbose=0``) nothing is ever printed.
    stream : file, default=sys.stderr
    """

    def __init__(self, total, label, enabled, stream=None):
        self.total = total
        self.label = label
        self.enabled = enabled and total > 0
        self.stream = stream if stream is not None else sys.stderr
        self._start = time.perf_counter()
        self._last = -1.0

    def update(self, done, **values):
        """Report ``done`` of ``total`` steps, with optional numbers to show."""
        if not self.enabled:
            return
        now = time.perf_counter()
        if done < self.total and now - self._last < 0.5:
            return
        self._last = now
        elapsed = now - self._start
        eta = elapsed / done * (self.total - done) if done else float("nan")
        shown = " ".join(f"{key}={value:.4g}" for key, value in values.items())
        end = "\n" if done >= self.total else ""
        self.stream.write(
            f"\r{self.label}: {done}/{self.total} [{elapsed:.0f}s, eta {eta:.0f}s] {shown}{end}"
        )
        self.stream.flush()
