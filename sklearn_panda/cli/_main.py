"""``main``: parse, run the command, and turn bad input into one line on stderr and status 2."""

import sys
import warnings

from ._commands import fit_command, score_command, update_command
from ._parser import PROG, build_parser

COMMANDS = {"fit": fit_command, "score": score_command, "update": update_command}

def _show_warning(message, category, filename, lineno, file=None, line=None):
    print(f"{PROG}: warning: {message}", file=sys.stderr if file is None else file)


def main(argv=None):
    """Run the ``sklearn-panda`` command line.

    Parameters
    ----------
    argv : list of str, default=None
        The arguments after the program name; ``None`` reads ``sys.argv``.

    Returns
    -------
    status : int
        0 on success; 2 for bad usage or bad input (missing paths, unreadable
        images, a file that is not a compatible model), after a one-line
        ``sklearn-panda: error: ...`` on stderr; 130 when interrupted (Ctrl-C),
        after one line, every earlier output left as it was.

    Examples
    --------
    Fit on a folder of normal images, then score new ones with a report::

        sklearn-panda fit data/good --model model.pt
        sklearn-panda score data/new --model model.pt --output scores.csv --report report.html

    Add newly approved normal images to a local model (``fit --local``)::

        sklearn-panda update data/approved --model model.pt
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:
        return stop.code
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        try:
            COMMANDS[args.command](args)
        # Out of memory (torch's is a RuntimeError), a wrong type in a model file or option: one line too.
        except (OSError, ValueError, ImportError, TypeError, RuntimeError, MemoryError) as error:
            message = " ".join(str(error).split()) or type(error).__name__
            print(f"{PROG}: error: {message}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            # Every output is written whole or not at all: an interruption leaves the earlier files.
            print(f"{PROG}: interrupted; no output was written or replaced.", file=sys.stderr)
            return 130
    return 0
