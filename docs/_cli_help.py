"""Write the ``--help`` of ``sklearn-panda`` and of each of its commands for cli.rst.

Generated at each build from the parser itself, so the page cannot drift from the options.
"""

import argparse
import os
from pathlib import Path
from unittest import mock

from sklearn_panda.cli import build_parser


def write_cli_help(folder):
    """Write ``sklearn-panda.txt`` and ``<command>.txt`` (its ``--help``) into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    # argparse wraps to the terminal's width; a fixed one gives the same page everywhere.
    with mock.patch.dict(os.environ, {"COLUMNS": "88"}):
        parser = build_parser()
        helps = {"sklearn-panda": parser.format_help()}
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, subparser in action.choices.items():
                    helps[name] = subparser.format_help()
    for name, text in helps.items():
        path = folder / f"{name}.txt"
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
