"""Reliability: safe persistence, interrupted and failing fits, GPU memory, threads."""

import contextlib
import copy
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from conftest import TINY_IMAGES, tiny_mlp, tiny_resnet
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.utils.validation import check_is_fitted
from torch import nn

import sklearn_panda._estimators.base as base_module
from sklearn_panda import CenterScorer, KMeansScorer, KNNScorer, PandaDetector, PandaOE, PandaSES
from sklearn_panda._io import persistence as _persistence
from sklearn_panda._engine.inference import cache_trunk_outputs, extract_features
from sklearn_panda._io.persistence import load, save


def image_detector(**params):
    return PandaDetector(**{**TINY_IMAGES, "n_steps": 2, "random_state": 0, **params})


def vector_detector(**params):
    return PandaDetector(**{"backbone": tiny_mlp, "weights": None, "n_steps": 3, "random_state": 0, **params})


def vector_ses(**params):
    defaults = {"backbone": tiny_mlp, "weights": None, "n_steps": 4, "checkpoint_every": 2, "random_state": 0}
    return PandaSES(**{**defaults, **params})


def _small_images():
    rng = np.random.default_rng(0)
    return (rng.random((8, 20, 20, 3)) * 255).astype(np.uint8)


@pytest.fixture
def small_images():
    return _small_images()


@pytest.fixture(scope="module")
def fitted_image_detector():
    """Shared by tests that only read it: fitting takes a few seconds on a busy CPU."""
    return image_detector(n_steps=2).fit(_small_images())


@pytest.fixture
def vectors():
    return np.random.default_rng(1).normal(size=(30, 6))


def fitted_state(estimator):
    """Every fitted attribute, with the network as a copied state dict."""
    state = {key: value for key, value in vars(estimator).items() if key not in estimator.get_params(deep=False)}
    if "net_" in state:
        state["net_"] = {key: value.clone() for key, value in state["net_"].state_dict().items()}
    if "features_" in state:
        state["features_"] = fitted_state(state["features_"])
    return state


def assert_same_state(before, after):
    assert before.keys() == after.keys()
    for key in before:
        if key == "net_":
            assert before[key].keys() == after[key].keys()
            for name in before[key]:
                assert torch.equal(before[key][name], after[key][name]), name
        else:
            a, b = before[key], after[key]
            if key == "features_":
                assert_same_state(a, b)
            elif isinstance(a, np.ndarray):
                np.testing.assert_array_equal(a, b, err_msg=key)
            elif key not in ("scorer_", "scorers_", "checkpoints_", "fisher_"):
                assert a == b, key


# ------------------------------------------------------------- persistence


def test_detector_round_trip_gives_identical_scores(fitted_image_detector, small_images, tmp_path):
    det = fitted_image_detector
    path = tmp_path / "detector.pt"
    save(det, path)
    restored = load(path, backbone=tiny_resnet)
    assert type(restored) is PandaDetector
    np.testing.assert_array_equal(restored.score_samples(small_images), det.score_samples(small_images))
    np.testing.assert_array_equal(restored.predict(small_images), det.predict(small_images))
    assert restored.get_params() == det.get_params()
    assert_same_state(fitted_state(det), fitted_state(restored))
    # The trunk stays frozen, the trained stages stay switched off, as after fit.
    flags = [(name, p.requires_grad) for name, p in det.net_.named_parameters()]
    assert [(name, p.requires_grad) for name, p in restored.net_.named_parameters()] == flags


def test_ses_round_trip_gives_identical_scores(vectors, tmp_path):
    ses = vector_ses().fit(vectors)
    save(ses, tmp_path / "ses.pt")
    restored = load(tmp_path / "ses.pt", backbone=tiny_mlp)
    assert type(restored) is PandaSES
    np.testing.assert_array_equal(restored.checkpoint_distances(vectors), ses.checkpoint_distances(vectors))
    np.testing.assert_array_equal(restored.score_samples(vectors), ses.score_samples(vectors))
    assert restored.n_features_in_ == 6
    assert len(restored.checkpoints_) == len(ses.checkpoints_) == 3
    for saved, loaded in zip(ses.checkpoints_, restored.checkpoints_):
        assert all(torch.equal(saved[name], loaded[name]) for name in saved)


def test_oe_round_trip_gives_identical_scores(vectors, tmp_path):
    y = np.r_[np.ones(20, dtype=int), -np.ones(10, dtype=int)]
    oe = PandaOE(backbone=tiny_mlp, weights=None, n_steps=3, random_state=0).fit(vectors, y)
    save(oe, tmp_path / "oe.pt")
    restored = load(tmp_path / "oe.pt", backbone=tiny_mlp)
    assert type(restored) is PandaOE and type(restored.head_) is nn.Linear
    np.testing.assert_array_equal(restored.score_samples(vectors), oe.score_samples(vectors))
    assert restored.offset_ == oe.offset_
    assert not any(p.requires_grad for p in restored.head_.parameters())


@pytest.mark.parametrize(
    "scorer",
    ["knn", "kmeans", "center", KNNScorer(n_neighbors=3, metric="cosine", algorithm="brute"),
     KNNScorer(algorithm="faiss"), KMeansScorer(n_clusters=3), CenterScorer(metric="euclidean")],
    ids=["knn", "kmeans", "center", "knn-cosine-brute", "knn-faiss", "kmeans3", "center-euclidean"],
)
def test_every_scorer_round_trips(vectors, tmp_path, scorer):
    if isinstance(scorer, KNNScorer) and scorer.algorithm == "faiss":
        pytest.importorskip("faiss")
    det = vector_detector(scorer=scorer, contamination=0.1).fit(vectors)
    save(det, tmp_path / "det.pt")
    restored = load(tmp_path / "det.pt", backbone=tiny_mlp)
    queries = np.random.default_rng(5).normal(size=(7, 6))
    np.testing.assert_array_equal(restored.score_samples(queries), det.score_samples(queries))
    assert restored.offset_ == det.offset_
    assert type(restored.scorer_) is type(det.scorer_)


def test_faiss_index_falls_back_to_brute_force_where_faiss_is_missing(vectors, tmp_path, monkeypatch):
    pytest.importorskip("faiss")
    det = vector_detector(scorer=KNNScorer(algorithm="faiss")).fit(vectors)
    save(det, tmp_path / "det.pt")
    monkeypatch.setattr("sklearn_panda.scorers._knn._faiss_available", lambda: False)
    with pytest.warns(UserWarning, match="brute-force"):
        restored = load(tmp_path / "det.pt", backbone=tiny_mlp)
    assert restored.scorer_._neighbors.algorithm == "brute"
    queries = np.random.default_rng(5).normal(size=(7, 6))
    np.testing.assert_allclose(restored.score_samples(queries), det.score_samples(queries), rtol=1e-6)


def test_a_file_cannot_set_parameters_or_dunders(vectors, tmp_path):
    save(vector_detector(n_steps=0).fit(vectors), tmp_path / "det.pt")
    payload = torch.load(tmp_path / "det.pt", weights_only=True)
    for name in ("__class__", "n_steps", "score_samples"):
        torch.save({**payload, "attributes": {**payload["attributes"], name: "x"}}, tmp_path / "bad.pt")
        with pytest.raises(ValueError, match="which no fitted estimator has"):
            load(tmp_path / "bad.pt", backbone=tiny_mlp)


def test_loading_reads_with_weights_only(vectors, tmp_path, monkeypatch):
    det = vector_detector().fit(vectors)
    save(det, tmp_path / "det.pt")
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    load(tmp_path / "det.pt", backbone=tiny_mlp)
    assert calls and all(kwargs.get("weights_only") is True for kwargs in calls)


class _RunsCodeWhenUnpickled:
    def __reduce__(self):
        return (os.getcwd, ())


def test_a_file_that_asks_to_run_code_is_refused(tmp_path):
    torch.save({"format": "sklearn-panda", "payload": _RunsCodeWhenUnpickled()}, tmp_path / "evil.pt")
    # Refused by torch's weights-only unpickler, said as a file that is not a model (torch's own
    # message would advise weights_only=False, which would run the code).
    with pytest.raises(ValueError, match="not a weights-only file"):
        load(tmp_path / "evil.pt")


@pytest.mark.parametrize(
    "change, message",
    [
        ({"package_version": "0.99.0"}, "sklearn-panda 0.99.0"),
        ({"package_version": "7.0.0"}, "sklearn-panda 7.0.0"),
        ({"format_version": 99}, "file format 99"),
        ({"format": "something-else"}, "not a file written by sklearn_panda"),
    ],
)
def test_incompatible_files_are_refused(vectors, tmp_path, change, message):
    save(vector_detector(n_steps=0).fit(vectors), tmp_path / "det.pt")
    payload = torch.load(tmp_path / "det.pt", weights_only=True)
    torch.save({**payload, **change}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match=message):
        load(tmp_path / "other.pt", backbone=tiny_mlp)


def test_compatible_versions():
    assert _persistence._compatible("0.1.0", "0.1.3")
    assert _persistence._compatible("1.2.0", "1.9.1")
    assert not _persistence._compatible("0.1.0", "0.2.0")
    assert not _persistence._compatible("1.0.0", "2.0.0")


def test_lambda_and_local_backbones_are_refused_at_save(vectors, tmp_path):
    def local_mlp():
        return tiny_mlp()

    for factory, message in ((lambda: tiny_mlp(), "lambda"), (local_mlp, "inside another function")):
        det = vector_detector(backbone=factory, n_steps=0).fit(vectors)
        with pytest.raises(ValueError, match=message):
            save(det, tmp_path / "det.pt")
    assert not list(tmp_path.iterdir())


def test_a_factory_backbone_must_be_passed_to_load(vectors, tmp_path):
    save(vector_detector(n_steps=0).fit(vectors), tmp_path / "det.pt")
    with pytest.raises(ValueError, match=r"conftest\.tiny_mlp.*load\(path, backbone=tiny_mlp\)"):
        load(tmp_path / "det.pt")
    with pytest.warns(UserWarning, match="instead"):
        load(tmp_path / "det.pt", backbone=lambda: tiny_mlp())


def test_named_backbone_is_rebuilt_without_weights(tmp_path, monkeypatch, small_images):
    import sklearn_panda._engine.backbones as backbones

    det = image_detector(backbone="mobilenet_v3_small", n_steps=0, resize=None, crop_size=None).fit(small_images[:4])
    save(det, tmp_path / "det.pt")
    monkeypatch.setattr(backbones, "_download_torchvision_weights", pytest.fail)
    restored = load(tmp_path / "det.pt")
    np.testing.assert_array_equal(restored.score_samples(small_images[:3]), det.score_samples(small_images[:3]))


def test_estimator_fitted_on_cuda_loads_on_the_cpu(vectors, tmp_path, monkeypatch):
    det = vector_detector().fit(vectors)
    expected = det.score_samples(vectors)
    det.features_.device_ = torch.device("cuda")  # as if fitted on a GPU
    save(det, tmp_path / "det.pt")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.warns(UserWarning, match="CUDA"):
        restored = load(tmp_path / "det.pt", backbone=tiny_mlp)
    assert restored.device_.type == "cpu"
    np.testing.assert_array_equal(restored.score_samples(vectors), expected)


def test_estimator_fitted_on_a_backend_not_here_loads_on_the_cpu(vectors, tmp_path):
    # A model fitted on a Mac's GPU ("mps") failed inside torch when loaded on a machine without one.
    det = vector_detector().fit(vectors)
    expected = det.score_samples(vectors)
    det.features_.device_ = torch.device("mps")
    save(det, tmp_path / "det.pt")
    with pytest.warns(UserWarning, match="fitted on 'mps', which is not available here"):
        restored = load(tmp_path / "det.pt", backbone=tiny_mlp)
    assert restored.device_.type == "cpu"
    np.testing.assert_array_equal(restored.score_samples(vectors), expected)


def test_a_gpu_index_this_machine_lacks_loads_on_its_first_gpu(monkeypatch):
    from sklearn_panda._engine.device import loadable_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.warns(UserWarning, match=r"fitted on 'cuda:1', and this machine has 1 CUDA device\(s\)"):
        assert loadable_device(torch.device("cuda:1")) == torch.device("cuda", 0)
    for here in ("cuda", "cuda:0", "cpu"):
        assert loadable_device(torch.device(here)) == torch.device(here)


def test_loaded_parameters_refit_to_the_same_model(vectors, tmp_path):
    det = vector_detector(random_state=np.random.RandomState(4), contamination=0.2)
    save(det, tmp_path / "unfitted.pt")
    restored = load(tmp_path / "unfitted.pt", backbone=tiny_mlp)
    with pytest.raises(NotFittedError):
        check_is_fitted(restored)
    np.testing.assert_array_equal(
        clone(restored).fit(vectors).score_samples(vectors), clone(det).fit(vectors).score_samples(vectors)
    )


def test_unsupported_values_are_named_at_save(vectors, tmp_path):
    class MyScorer(CenterScorer):
        pass

    det = vector_detector(scorer=MyScorer(), n_steps=0).fit(vectors)
    with pytest.raises(TypeError, match="parameter scorer .* inside a function"):
        save(det, tmp_path / "det.pt")

    # Subclasses load by name (tests/test_torch_state.py), which one defined in a function has none.
    class Subclass(PandaDetector):
        pass

    with pytest.raises(TypeError, match="inside a function"):
        save(Subclass(), tmp_path / "det.pt")
    with pytest.raises(TypeError, match="save supports PandaDetector, PandaFeatures"):
        save(CenterScorer(), tmp_path / "det.pt")


def test_interrupted_save_keeps_the_previous_file(vectors, tmp_path, monkeypatch):
    save(vector_detector(n_steps=0).fit(vectors), tmp_path / "det.pt")
    before = (tmp_path / "det.pt").read_bytes()

    def interrupted(obj, file):
        file.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save(vector_detector(n_steps=1).fit(vectors), tmp_path / "det.pt")
    assert (tmp_path / "det.pt").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["det.pt"]


# ------------------------------------------------- interrupted and failing fits


def _interrupt_training_at(monkeypatch, step, error):
    real_run_sgd = base_module.run_sgd

    def run_sgd(*args, callbacks=(), **kwargs):
        def stop(current, loss, details):
            if current == step:
                raise error

        return real_run_sgd(*args, callbacks=[*callbacks, stop], **kwargs)

    monkeypatch.setattr(base_module, "run_sgd", run_sgd)


@pytest.mark.parametrize("error", [KeyboardInterrupt, RuntimeError("disk on fire")])
def test_interrupted_fit_leaves_a_fitted_estimator_as_it_was(small_images, monkeypatch, error):
    det = image_detector(n_steps=2).fit(small_images)
    scores = det.score_samples(small_images)
    attributes = dict(vars(det))
    state = fitted_state(det)
    _interrupt_training_at(monkeypatch, 1, error)
    with pytest.raises(type(error) if isinstance(error, Exception) else error):
        det.fit(small_images[::-1][:8])
    assert vars(det).keys() == attributes.keys()
    assert all(vars(det)[key] is value for key, value in attributes.items())
    assert_same_state(state, fitted_state(det))
    np.testing.assert_array_equal(det.score_samples(small_images), scores)


@pytest.mark.parametrize(
    "kind",
    ["images", "vectors"],
)
def test_interrupted_fit_leaves_an_unfitted_estimator_unfitted(small_images, vectors, monkeypatch, kind):
    det = image_detector(n_steps=3) if kind == "images" else vector_detector()
    X = small_images if kind == "images" else vectors
    params = dict(vars(det))
    _interrupt_training_at(monkeypatch, 0, KeyboardInterrupt)
    with pytest.raises(KeyboardInterrupt):
        det.fit(X)
    assert vars(det) == params
    with pytest.raises(NotFittedError):
        det.score_samples(X)


def _interrupting_mlp():
    raise KeyboardInterrupt


def test_interrupted_fit_on_new_vectors_keeps_n_features_in(vectors):
    det = vector_detector().fit(vectors)
    expected = det.score_samples(vectors)
    det.set_params(backbone=_interrupting_mlp)
    with pytest.raises(KeyboardInterrupt):
        det.fit(vectors[:, :5])
    det.set_params(backbone=tiny_mlp)
    assert det.n_features_in_ == 6
    np.testing.assert_array_equal(det.score_samples(vectors), expected)


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@pytest.mark.parametrize("learning_rate, scale", [(1e30, 1.0), (1e-2, 1e30)], ids=["huge-lr", "huge-input"])
def test_non_finite_loss_stops_with_advice_and_keeps_the_fitted_model(vectors, learning_rate, scale):
    det = vector_detector(normalize_features=False).fit(vectors)
    expected = det.score_samples(vectors)
    diverging = vector_detector(n_steps=5, learning_rate=learning_rate, clip_norm=None, normalize_features=False)
    with pytest.raises(FloatingPointError, match="lower the learning rate"):
        diverging.fit(vectors * scale)
    assert not hasattr(diverging, "net_")
    with pytest.raises(FloatingPointError, match="lower the learning rate"):
        det.set_params(learning_rate=learning_rate, clip_norm=None).fit(vectors * scale)
    np.testing.assert_array_equal(det.score_samples(vectors), expected)


def test_same_random_state_gives_identical_scores_on_the_cpu(small_images, vectors):
    a = image_detector(random_state=7, device="cpu").fit(small_images).score_samples(small_images)
    b = image_detector(random_state=7, device="cpu").fit(small_images).score_samples(small_images)
    np.testing.assert_array_equal(a, b)
    c = vector_ses(random_state=7, learning_rate=0.5).fit(vectors).score_samples(vectors)
    d = vector_ses(random_state=7, learning_rate=0.5).fit(vectors).score_samples(vectors)
    np.testing.assert_array_equal(c, d)
    e = vector_ses(random_state=8, learning_rate=0.5).fit(vectors).score_samples(vectors)
    assert not np.array_equal(c, e)  # the seed matters, so the equality above means something


# -------------------------------------------------------- GPU out of memory


class _OutOfMemoryAbove(nn.Module):
    """Runs ``inner`` but raises CUDA's out-of-memory error for batches above ``limit``."""

    def __init__(self, inner, limit):
        super().__init__()
        self.inner = inner
        self.limit = limit
        self.batch_sizes = []

    def __deepcopy__(self, memo):
        # Scoring may run a copy (PandaSES runs its checkpoints in one): one record for all copies.
        copied = _OutOfMemoryAbove(copy.deepcopy(self.inner, memo), self.limit)
        copied.batch_sizes = self.batch_sizes
        return copied

    def forward(self, x):
        self.batch_sizes.append(x.shape[0])
        if x.shape[0] > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")
        return self.inner(x)


def test_out_of_memory_retries_the_same_samples_with_smaller_batches():
    data = torch.randn(23, 5)
    weight = torch.randn(5, 3)
    seen = []

    def source(indices):
        seen.append(indices.tolist())
        return data[indices]

    expected = extract_features(lambda batch: batch @ weight, source, 23, 8)
    seen.clear()
    module = _OutOfMemoryAbove(lambda batch: batch @ weight, limit=3)
    with pytest.warns(RuntimeWarning) as record:
        features = extract_features(module, source, 23, 8)
    np.testing.assert_array_equal(features, expected)
    assert [str(w.message).split(";")[0][-12:] for w in record] == ["batch_size=8", "batch_size=4"]
    assert module.batch_sizes[:3] == [8, 4, 2]
    assert set(module.batch_sizes[3:]) == {2, 1} or set(module.batch_sizes[3:]) == {2}
    # The failed samples are retried first; every sample ends up computed exactly once.
    assert seen[:3] == [list(range(8)), list(range(4)), [0, 1]]
    succeeded = [b for b, size in zip(seen, module.batch_sizes) if size <= 3]
    assert sum(succeeded, []) == list(range(23))


def test_out_of_memory_at_one_sample_gives_up_with_advice():
    module = _OutOfMemoryAbove(nn.Identity(), limit=0)
    with pytest.warns(RuntimeWarning), pytest.raises(torch.OutOfMemoryError, match="even one sample at a time"):
        extract_features(module, lambda indices: torch.zeros(len(indices), 2), 5, 4)
    assert module.batch_sizes == [4, 2, 1]


class _Rows:
    """A stand-in for a Preprocessor: rows of a tensor by index."""

    def __init__(self, data):
        self.data = data

    def __len__(self):
        return len(self.data)

    def __call__(self, indices):
        return self.data[indices]


def test_trunk_cache_retries_with_smaller_batches():
    data = torch.randn(9, 4)
    trunk = _OutOfMemoryAbove(nn.Identity(), limit=2)
    with pytest.warns(RuntimeWarning, match="trunk outputs with batch_size=4"):
        cache = cache_trunk_outputs(trunk, _Rows(data), 4, 1.0, contextlib.nullcontext)
    assert torch.equal(cache, data)
    assert max(trunk.batch_sizes[1:]) == 4 and trunk.batch_sizes[-1] <= 2


def test_trunk_cache_without_room_is_skipped(monkeypatch):
    def no_room(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(torch, "empty", no_room)
    assert cache_trunk_outputs(nn.Identity(), _Rows(torch.randn(5, 3)), 2, 1.0, contextlib.nullcontext) is None


def _out_of_memory_resnet():
    model = tiny_resnet()
    model.layer1 = _OutOfMemoryAbove(model.layer1, limit=3)
    return model


def test_fit_and_score_survive_out_of_memory(small_images):
    params = dict(n_steps=0, batch_size=8, random_state=0)
    expected = image_detector(**params).fit(small_images).score_samples(small_images)
    with pytest.warns(RuntimeWarning, match="Out of memory"):
        det = image_detector(backbone=_out_of_memory_resnet, **params).fit(small_images)
    with pytest.warns(RuntimeWarning, match="Out of memory"):
        scores = det.score_samples(small_images)
    layer1 = det.net_.trunk[1]
    assert isinstance(layer1, _OutOfMemoryAbove) and 8 in layer1.batch_sizes
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-6)


def _out_of_memory_last_stage_resnet():
    model = tiny_resnet()
    model.layer4 = _OutOfMemoryAbove(model.layer4, limit=float("inf"))
    return model


def test_ses_scoring_survives_out_of_memory(small_images):
    params = {**TINY_IMAGES, "n_steps": 2, "checkpoint_every": 1, "random_state": 0}
    ses = PandaSES(**{**params, "backbone": _out_of_memory_last_stage_resnet}).fit(small_images)
    expected = ses.checkpoint_distances(small_images)
    # Only now: training batches are not shrunk, so fit must not run out of memory.
    (layer4,) = [module for module in ses.net_.stages.modules() if isinstance(module, _OutOfMemoryAbove)]
    layer4.limit = 3
    layer4.batch_sizes.clear()
    with pytest.warns(RuntimeWarning, match="Out of memory"):
        distances = ses.checkpoint_distances(small_images)
    assert 8 in layer4.batch_sizes and max(layer4.batch_sizes[-3:]) <= 3
    np.testing.assert_allclose(distances, expected, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------- threads


def _assert_threaded_scoring_matches_serial(estimator, X):
    """Scores from 4 threads equal serial scores, and scoring changes no fitted state."""
    state = fitted_state(estimator)
    rng = np.random.default_rng(3)
    parts = [X[rng.permutation(len(X))[:6]] for _ in range(8)]
    serial = [estimator.score_samples(part) for part in parts]
    with ThreadPoolExecutor(max_workers=4) as pool:
        threaded = list(pool.map(estimator.score_samples, parts))
    for a, b in zip(serial, threaded):
        np.testing.assert_array_equal(b, a)
    assert_same_state(state, fitted_state(estimator))


def test_detector_scoring_from_threads_matches_serial_scoring(fitted_image_detector, small_images):
    _assert_threaded_scoring_matches_serial(fitted_image_detector, small_images)


def test_ses_scoring_from_threads_matches_serial_scoring(small_images):
    ses = PandaSES(
        **{**TINY_IMAGES, "n_steps": 2, "checkpoint_every": 1, "random_state": 0},
        learning_rate=1.0,
        clip_norm=None,
    ).fit(small_images)
    _assert_threaded_scoring_matches_serial(ses, small_images)


def test_compiled_detector_scoring_from_threads_matches_serial_scoring(small_images):
    # n_steps=0 leaves the stages' parameters requiring gradients, which each compiled call switches off and back.
    detector = PandaDetector(**{**TINY_IMAGES, "n_steps": 0, "random_state": 0}, compile=True).fit(small_images)
    flags = [parameter.requires_grad for parameter in detector.net_.parameters()]
    _assert_threaded_scoring_matches_serial(detector, small_images)
    assert [parameter.requires_grad for parameter in detector.net_.parameters()] == flags
    assert any(flags)
