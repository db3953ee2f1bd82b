"""Defects found by the second review (issue 33), each with the test that failed before its fix.

Items elsewhere: 1 (save/load of GoogLeNet-like networks) in test_save_architecture.py;
2 and 11 (16-bit images, file permissions) in test_image_io.py; the networks of one's own
in test_own_networks.py.
"""

import sys
import types
import warnings

import numpy as np
import pytest
import torch

from conftest import TINY_IMAGES, tiny_mlp

from sklearn_panda import PandaDetector, PandaFeatures, PandaOE, PandaPatchDetector, PandaSES, save
from sklearn_panda.cli import main as cli_main


@pytest.fixture
def images():
    return (np.random.default_rng(0).random((12, 20, 20, 3)) * 255).astype(np.uint8)


# 4: nothing global is seeded, the accelerators' generators included.
def test_fits_never_reseed_the_accelerators_generators(images, monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda seed: calls.append(seed))
    monkeypatch.setattr(torch.cuda, "manual_seed", lambda seed: calls.append(seed))
    state = torch.random.get_rng_state()
    PandaDetector(**TINY_IMAGES, n_steps=1, random_state=0).fit(images)
    PandaDetector(**TINY_IMAGES, n_steps=1, loss="mean_shifted", random_state=0).fit(images)
    PandaOE(**TINY_IMAGES, n_steps=1, random_state=0).fit(images, np.r_[np.ones(8), -np.ones(4)])
    PandaPatchDetector(backbone="resnet18", weights=None, resize=None, random_state=0).fit(images[:4])
    assert calls == []
    assert torch.equal(state, torch.random.get_rng_state())


# 6: export_onnx(PandaSES) says it is not exportable.
def test_export_onnx_refuses_ses_with_a_type_error():
    pytest.importorskip("onnx")
    from sklearn_panda.deploy import export_onnx

    X = np.random.default_rng(0).normal(size=(20, 4))
    ses = PandaSES(backbone=tiny_mlp, weights=None, n_steps=2, checkpoint_every=1, random_state=0).fit(X)
    with pytest.raises(TypeError, match="PandaSES and PandaOE are not exportable"):
        export_onnx(ses, "never-written.onnx", image_size=(8, 8))


# 8: PandaSES keeps no checkpoint when n_steps < checkpoint_every: an error, not a silent unadapted model.
def test_ses_refuses_fewer_steps_than_one_checkpoint():
    X = np.random.default_rng(0).normal(size=(20, 4))
    with pytest.raises(ValueError, match="n_steps=5 is smaller than checkpoint_every=10"):
        PandaSES(backbone=tiny_mlp, weights=None, n_steps=5, checkpoint_every=10).fit(X)


# 12: boolean images are binary images; 0/1 integers get a warning.
def test_boolean_images_are_black_and_white_and_zero_one_integers_warn():
    from sklearn_panda._estimators.validation import check_input

    binary = np.zeros((2, 4, 4), dtype=bool)
    binary[:, :2] = True
    assert check_input(binary).data.max() == 255
    with pytest.warns(UserWarning, match="only 0 and 1"):
        check_input(binary.astype(np.uint8))


# 13: an array of paths is a list of paths; a missing weights file is named as a file.
def test_an_array_of_paths_is_read_as_paths(tmp_path):
    from PIL import Image

    from sklearn_panda._estimators.validation import check_input

    paths = []
    for i in range(2):
        Image.new("RGB", (8, 8)).save(tmp_path / f"{i}.png")
        paths.append(str(tmp_path / f"{i}.png"))
    assert check_input(np.array(paths)).spec.kind == "file_images"
    assert check_input(np.array(paths, dtype=object)).data == paths


def test_a_missing_weights_file_is_reported_as_a_missing_file():
    with pytest.raises(FileNotFoundError, match="Weights file not found: x.bin"):
        PandaDetector(backbone="resnet18", weights="x.bin", n_steps=0).fit(np.zeros((4, 8, 8), np.uint8))


# 17: score_dask's one torch thread per task is put back afterwards.
def test_dask_tasks_give_the_workers_thread_setting_back(monkeypatch):
    from sklearn_panda import distributed as panda_distributed

    fake = types.ModuleType("distributed")
    fake.get_worker = lambda: types.SimpleNamespace(state=types.SimpleNamespace(nthreads=4))
    monkeypatch.setitem(sys.modules, "distributed", fake)
    previous = torch.get_num_threads()
    torch.set_num_threads(2)  # a worker's own setting (under pytest-xdist each worker has one thread)
    try:
        seen = []
        estimator = types.SimpleNamespace(score_samples=lambda samples: seen.append(torch.get_num_threads()) or samples)
        panda_distributed._apply(np.ones(3), estimator, "score_samples")
        assert seen == [1] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(previous)


# 14: the command line's other error paths (``main`` in this process: ``python -m sklearn_panda``
# runs the same function, tested in test_cli.py).
def _cli(*args, cwd, monkeypatch, capsys):
    monkeypatch.chdir(cwd)
    with warnings.catch_warnings():
        # As in a process of its own, where Python hides them (pytest shows them).
        warnings.simplefilter("ignore", DeprecationWarning)
        status = cli_main([str(arg) for arg in args])
    out, err = capsys.readouterr()
    return status, out, err


@pytest.fixture(scope="module")
def cli_files(tmp_path_factory):
    from PIL import Image

    root = tmp_path_factory.mktemp("cli14")
    rng = np.random.default_rng(0)
    (root / "images").mkdir()
    for i in range(4):
        Image.fromarray((rng.random((16, 16, 3)) * 255).astype(np.uint8)).save(root / "images" / f"{i}.png")
    (root / "images" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    features = PandaFeatures(backbone="resnet18", weights=None, n_steps=0, resize=32, crop_size=32)
    features.fit(np.asarray([np.asarray(Image.open(root / "images" / f"{i}.png")) for i in range(4)]))
    save(features, root / "features.pt")
    return root


@pytest.mark.parametrize(
    "case, args, words",
    [
        ("features file", ["images/0.png", "--model", "features.pt", "--output", "s.csv"], ["PandaFeatures", "not scores"]),
        ("same output and report", ["images/0.png", "--model", "features.pt", "--output", "s.csv", "--report", "s.csv"],
         ["--report and --output name the same file"]),
        ("unreadable image", ["images", "--model", "features.pt", "--output", "s.csv"], ["broken.png"]),
    ],
)
def test_cli_errors_are_one_line_with_status_2(case, args, words, cli_files, monkeypatch, capsys):
    status, _, err = _cli("score", *args, cwd=cli_files, monkeypatch=monkeypatch, capsys=capsys)
    assert status == 2, err
    assert err.startswith("sklearn-panda: error: ") and len(err.strip().splitlines()) == 1
    assert "Traceback" not in err
    for word in words:
        assert word in err
    assert not (cli_files / "s.csv").exists()


# 9: fitted state never reads a parameter that can change after fit.
def test_set_params_after_fit_leaves_the_scores_as_they_were(images):
    detector = PandaDetector(**TINY_IMAGES, n_steps=1, random_state=0).fit(images)
    expected = detector.score_samples(images)
    detector.set_params(normalize_features=False)
    np.testing.assert_array_equal(detector.score_samples(images), expected)
    # A new fit takes the new value.
    assert not np.array_equal(detector.fit(images).score_samples(images), expected)
    assert detector.normalize_features_ is False


# 7: collapsed (constant) features are an error that names collapse, not NaN scores.
def test_mahalanobis_refuses_features_that_do_not_vary():
    from sklearn_panda import MahalanobisScorer

    with pytest.raises(ValueError, match="do not vary.*collapse"):
        MahalanobisScorer().fit(np.ones((10, 4)))
    # Features that vary in one direction only are fine (the shrinkage fills the others).
    X = np.zeros((10, 4))
    X[:, 0] = np.arange(10)
    assert np.isfinite(MahalanobisScorer().fit(X).score_samples(X)).all()


# 3: one colour image without its batch axis is an error, not many grayscale images.
def test_one_image_without_a_batch_axis_is_refused(tmp_path):
    from PIL import Image

    images = [Image.fromarray((np.random.default_rng(i).random((20, 20, 3)) * 255).astype(np.uint8)) for i in range(6)]
    detector = PandaDetector(**TINY_IMAGES, n_steps=0, random_state=0).fit(images)
    one = np.asarray(images[0])
    with pytest.raises(ValueError, match=r"reads as 20 grayscale images of 20 x 3 pixels.*X\[None\]"):
        detector.score_samples(one)
    assert detector.score_samples(one[None]).shape == (1,)
    patch = PandaPatchDetector(backbone="resnet18", weights=None, resize=None, random_state=0).fit(images)
    with pytest.raises(ValueError, match="add the batch axis"):
        patch.anomaly_maps(one)


# 15: a seed makes the HNSW index reproducible (one thread builds it), and the detector's seed reaches its scorer.
def test_a_seeded_hnsw_index_is_built_on_one_thread(monkeypatch):
    faiss = pytest.importorskip("faiss")
    from sklearn_panda import KNNScorer

    threads = []
    original = faiss.omp_set_num_threads
    monkeypatch.setattr(faiss, "omp_set_num_threads", lambda n: threads.append(n) or original(n))
    X = np.random.default_rng(0).normal(size=(200, 8)).astype(np.float32)
    first = KNNScorer(algorithm="faiss", faiss_index="HNSW8", random_state=0).fit(X).kneighbors(X[:20])
    assert threads[0] == 1
    second = KNNScorer(algorithm="faiss", faiss_index="HNSW8", random_state=0).fit(X).kneighbors(X[:20])
    np.testing.assert_array_equal(first[1], second[1])


def test_the_detectors_seed_reaches_its_knn_scorer(images):
    detector = PandaDetector(**TINY_IMAGES, n_steps=0, random_state=3).fit(images)
    assert detector.scorer_.random_state is not None


# 16: PandaSES scores its checkpoints without changing the shared network.
def test_ses_scoring_never_runs_checkpoints_in_the_shared_network():
    X = np.random.default_rng(0).normal(size=(30, 6))
    ses = PandaSES(backbone=tiny_mlp, weights=None, n_steps=4, checkpoint_every=2, random_state=0).fit(X)
    shared = ses.net_.stages
    before = {name: value.clone() for name, value in shared.state_dict().items()}
    swapped = []

    def check(module, args):
        # Whenever the shared stages run, they hold their own fitted parameters, not a checkpoint's.
        swapped.append(not all(torch.equal(before[name], value) for name, value in module.state_dict().items()))

    for module in shared.modules():
        module.register_forward_pre_hook(lambda module, args, shared=shared: check(shared, args))
    ses.score_samples(X[:5])
    assert not any(swapped)
    assert all(torch.equal(before[name], value) for name, value in shared.state_dict().items())


# 18: the ONNX file's preprocessing is bit-exact for uint8 images on the CPU only (measured and documented).
def test_onnx_scores_match_uint8_exactly_and_float_images_to_a_grey_level():
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    import tempfile

    from conftest import tiny_resnet

    from sklearn_panda.deploy import OnnxDetector, export_onnx

    rng = np.random.default_rng(0)
    X = (rng.random((20, 28, 28)) * 255).astype(np.uint8)
    detector = PandaDetector(backbone=tiny_resnet, weights=None, resize=64, crop_size=56, n_steps=0, random_state=0)
    detector.fit(X)
    path = tempfile.mkdtemp() + "/d.onnx"
    export_onnx(detector, path, image_size=(28, 28))
    exported = OnnxDetector(path).score_samples(X[:8])
    np.testing.assert_allclose(detector.score_samples(X[:8]), exported, rtol=1e-5)
    float_scores = detector.score_samples(X[:8] / 255.0)
    # docs/deployment.rst: float images resize in float, within 0.4% here, not exactly.
    assert not np.allclose(float_scores, exported, rtol=1e-5)
    np.testing.assert_allclose(float_scores, exported, rtol=1e-2)
