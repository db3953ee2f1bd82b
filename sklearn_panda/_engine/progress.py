"""Progress bars for long loops: tqdm behind the small interface the loops use."""

import sys

from tqdm import tqdm


class ProgressBar:
    """A tqdm bar on stderr, ``label: 40%|####      | 2/5 [00:01<00:01, ...] loss=0.5``.

    The loops report how far they are (``done``) rather than a step, so a
    loop that retries a batch after running out of memory cannot count it
    twice. The bar closes itself, leaving its last line, once ``done``
    reaches ``total``.

    Parameters
    ----------
    total : int
    label : str
    enabled : bool
        When False (``verbose=0``) nothing is ever printed.

    Examples
    --------
    >>> from sklearn_panda._engine.progress import ProgressBar
    >>> progress = ProgressBar(3, "features", enabled=False)
    >>> for done in (1, 2, 3):
    ...     progress.update(done, loss=0.5)
    """

    def __init__(self, total, label, enabled):
        self._bar = tqdm(
            total=total,
            desc=label,
            disable=not enabled or total <= 0,
            file=sys.stderr,
            leave=True,
            # Where stderr goes to a log file, every refresh is a line of it.
            mininterval=0.5,
        )

    def update(self, done, **values):
        """Report ``done`` of ``total`` steps, with optional numbers to show."""
        if self._bar.disable:
            return
        if values:
            self._bar.set_postfix(values, refresh=False)
        self._bar.update(done - self._bar.n)
        if done >= self._bar.total:
            self._bar.close()
