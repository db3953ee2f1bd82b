"""The third review's defects (issue 41), one test (or more) each; the item's number in each name's docstring."""

import os

import numpy as np
import pytest
from conftest import TINY_IMAGES, tiny_cnn
from PIL import Image
from sklearn.base import clone
from sklearn.pipeline import make_pipeline

from sklearn_panda import (
    CenterScorer,
    KMeansScorer,
    KNNScorer,
    MahalanobisScorer,
    PandaDetector,
    PandaFeatures,
    PandaOE,
    PandaSES,
)
from sklearn_panda.callbacks import TrainingCallback
from sklearn_panda.cli import build_parser, main
from sklearn_panda.datasets import load_deeppcb
from sklearn_panda.metrics import pixel_roc_auc, pro_score

TINY = dict(TINY_IMAGES, random_state=0, device="cpu")


def _images(n, seed, size=20):
    return (np.random.default_rng(seed).random((n, size, size, 3)) * 255).astype(np.uint8)


class Recorder(TrainingCallback):
    def __init__(self):
        self.steps = 0

    def on_step_end(self, net, **kwargs):
        self.steps += 1


# ---------------------------------------------------------------- item 4


def test_fit_predict_passes_fit_arguments_on():
    """Item 4: ``fit_predict(X, **fit_params)`` hands them to ``fit``, as scikit-learn's OutlierMixin."""
    X = _images(12, 0)
    recorder = Recorder()
    detector = PandaDetector(**TINY, n_steps=3)
    labels = detector.fit_predict(X, callbacks=[recorder])
    assert recorder.steps == 3 and labels.shape == (12,)
    np.testing.assert_array_equal(labels, np.where(detector.training_scores_ < detector.offset_, -1, 1))
    recorder = Recorder()
    pipeline = make_pipeline(PandaDetector(**TINY, n_steps=2))
    assert pipeline.fit_predict(X, pandadetector__callbacks=[recorder]).shape == (12,)
    assert recorder.steps == 2


# ---------------------------------------------------------------- item 6


@pytest.mark.parametrize("option", [["--crop-size", "none"], ["--crop-size", "5"], ["--n-steps", "0"]])
def test_fit_refuses_options_of_the_other_kind_whatever_their_value(option, tmp_path, capsys):
    """Item 6: an image-level option given to ``fit --local`` is refused, ``none`` included."""
    status = main(["fit", str(tmp_path), "--model", str(tmp_path / "m.pt"), "--local", *option])
    _, err = capsys.readouterr()
    assert status == 2
    assert f"{option[0]} cannot be used for a local model (--local)." in err
    args = build_parser().parse_args(["fit", "x", "--model", "m.pt", "--local", "--crop-size", "none"])
    assert args.crop_size is None


# ---------------------------------------------------------------- item 7


@pytest.mark.parametrize(
    "option, value",
    [("max_train", 0), ("max_train", -1), ("max_train", 2.5), ("max_train", True), ("max_test", 1), ("max_test", 0),
     ("max_test", "4")],
)
def test_load_deeppcb_checks_its_caps(option, value):
    """Item 7: ``max_train`` / ``max_test`` must be positive integers (``max_test`` at least 2) or None."""
    with pytest.raises(ValueError, match=f"{option} must be None or"):
        load_deeppcb(**{option: value})


def test_load_deeppcb_max_test_is_a_random_subset_of_regions():
    """Item 7: the sample's ``max_test`` keeps random board regions (seeded), each as template and defect."""
    _, X_full, y_full, masks_full = load_deeppcb()
    n_regions = len(X_full) // 2
    chosen = []
    for seed in (0, 1, 2):
        _, X_test, y_test, masks = load_deeppcb(max_train=3, max_test=7, random_state=seed)
        assert len(X_test) == 6 and y_test.tolist() == [1, 1, 1, -1, -1, -1]
        templates = [_index_of(image, X_full[:n_regions]) for image in X_test[:3]]
        defective = [_index_of(image, X_full[n_regions:]) for image in X_test[3:]]
        # A template and its defective image come from one region.
        assert templates == defective
        np.testing.assert_array_equal(masks[3:], masks_full[n_regions:][defective])
        chosen.append(templates)
    # Seed 0 draws the first three regions, by chance; the others do not.
    assert len({tuple(regions) for regions in chosen}) == 3
    _, again, _, _ = load_deeppcb(max_test=7, random_state=0)
    np.testing.assert_array_equal(again, load_deeppcb(max_test=7, random_state=0)[1])


def _index_of(image, images):
    return int(np.flatnonzero((images == image).all(axis=(1, 2)))[0])


# ---------------------------------------------------------------- item 8


def test_a_boolean_mask_of_training_samples_is_refused():
    """Item 8: a callback returning a boolean mask gets the "distinct integer indices" message."""

    class Mask(TrainingCallback):
        def on_train_begin(self, net, *, n_samples, **kwargs):
            return [True, False]

    with pytest.raises(ValueError, match="distinct integer indices"):
        PandaFeatures(**TINY, n_steps=1).fit(_images(6, 0), callbacks=[Mask()])


# ---------------------------------------------------------------- item 9


@pytest.mark.parametrize("metric", [pro_score, pixel_roc_auc])
@pytest.mark.parametrize("empty", [np.zeros((0, 4, 4)), []])
def test_metrics_of_no_image_say_so(metric, empty):
    """Item 9: zero images get the metrics' own message, not numpy's."""
    with pytest.raises(ValueError, match="at least one image is required"):
        metric(empty, empty)


# ---------------------------------------------------------------- item 12


def test_uint16_arrays_read_as_16_bit_files(tmp_path):
    """Item 12: a uint16 array is divided by 65,535, as a 16-bit file is: the same features."""
    rng = np.random.default_rng(0)
    images = (rng.random((4, 20, 20)) * 65535).astype(np.uint16)
    paths = []
    for index, image in enumerate(images):
        paths.append(str(tmp_path / f"{index}.png"))
        Image.fromarray(image).save(paths[-1])
    features = PandaFeatures(**TINY, n_steps=0).fit(images)
    np.testing.assert_allclose(features.transform(images), features.transform(paths), rtol=1e-5, atol=1e-6)
    # The same picture at 8 bits: nearly the same features.
    eight_bit = np.round(images / 257).astype(np.uint8)
    np.testing.assert_allclose(features.transform(images), features.transform(eight_bit), atol=2e-2)


# ---------------------------------------------------------------- item 10

# Parameters not changed after fit, with the reason.
NOT_CHANGED = {
    # Speed only, but the first call compiles (tens of seconds, a C++ compiler): too slow for a test.
    "compile": "compiles at the first call",
}

NETWORK_ALTERNATIVES = {
    "backbone": tiny_cnn,
    "weights": "IMAGENET1K_V1",
    "n_trainable_stages": 1,
    "stage_ends": ["layer1", "layer2"],
    "feature_node": "layer2",
    "resize": 40,
    "crop_size": 24,
    "normalize_features": False,
    "batch_size": 3,
    "inference_batch_size": 5,
    "precision": "bfloat16",
    "trunk_cache_mb": 0,
    "device": "cuda",
    "random_state": 7,
    "verbose": 1,
}
ADAPTATION_ALTERNATIVES = {
    **NETWORK_ALTERNATIVES,
    "n_steps": 5,
    "loss": "mean_shifted",
    "temperature": 0.5,
    "regularization": "ewc",
    "ewc_lambda": 10.0,
    "fisher": "fisher.pt",
    "n_fisher_batches": 3,
    "learning_rate": 0.5,
    "momentum": 0.5,
    "weight_decay": 0.1,
    "clip_norm": 1.0,
    "average_mirror": True,
}
SCORER_ALTERNATIVES = {"metric": "cosine", "contamination": 0.2}


def _fit_unsupervised(estimator):
    return estimator.fit(_images(16, 0))


def _fit_with_exposure(estimator):
    return estimator.fit(_images(16, 0), np.r_[np.ones(10, dtype=int), -np.ones(6, dtype=int)])


def _fit_vectors(estimator):
    return estimator.fit(np.random.default_rng(0).normal(size=(40, 5)))


# estimator (as fitted), how to fit it, and another valid value of every parameter.
FROZEN_CASES = {
    "PandaFeatures": (PandaFeatures(**TINY, n_steps=2), _fit_unsupervised, ADAPTATION_ALTERNATIVES),
    "PandaDetector": (
        PandaDetector(**TINY, n_steps=2),
        _fit_unsupervised,
        {**ADAPTATION_ALTERNATIVES, "scorer": "kmeans", "contamination": 0.2},
    ),
    "PandaSES": (
        PandaSES(**TINY, n_steps=4, checkpoint_every=2),
        _fit_unsupervised,
        {**ADAPTATION_ALTERNATIVES, "scorer": "center", "contamination": 0.2, "checkpoint_every": 3,
         "validation_fraction": 0.3, "checkpoint_dtype": "bfloat16", "max_dispersion": None},
    ),
    "PandaOE": (
        PandaOE(**TINY, n_steps=2),
        _fit_with_exposure,
        {**NETWORK_ALTERNATIVES, "n_steps": 5, "learning_rate": 0.5, "momentum": 0.5, "weight_decay": 0.1,
         "clip_norm": 1.0, "normalize_features": True, "n_trainable_stages": 2, "combine_knn": True, "normal_label": 0,
         "contamination": 0.2},
    ),
    "KNNScorer": (
        KNNScorer(),
        _fit_vectors,
        {**SCORER_ALTERNATIVES, "n_neighbors": 5, "algorithm": "nndescent", "faiss_index": "IVF4,Flat",
         "faiss_params": {"nprobe": 2}, "working_memory": 1, "n_jobs": 2, "random_state": 3},
    ),
    "KMeansScorer": (
        KMeansScorer(n_clusters=4, random_state=0),
        _fit_vectors,
        {**SCORER_ALTERNATIVES, "n_clusters": 2, "n_init": 3, "random_state": 5},
    ),
    "CenterScorer": (CenterScorer(), _fit_vectors, SCORER_ALTERNATIVES),
    "MahalanobisScorer": (
        MahalanobisScorer(),
        _fit_vectors,
        {"contamination": 0.2, "n_components": 2, "shrinkage": "oas"},
    ),
}

SCORING_METHODS = ("score_samples", "decision_function", "transform", "extract_features", "checkpoint_distances")


def _outputs(estimator, X):
    return {name: getattr(estimator, name)(X) for name in SCORING_METHODS if hasattr(estimator, name)}


@pytest.mark.parametrize("name", sorted(FROZEN_CASES))
def test_parameters_set_after_fit_change_no_output(name, tmp_path):
    """Item 10: a fitted model scores, transforms and exports as fitted, whatever ``set_params`` says."""
    estimator, fit, alternatives = FROZEN_CASES[name]
    estimator = fit(clone(estimator))
    params = estimator.get_params(deep=False)
    assert sorted(alternatives) == sorted(set(params) - set(NOT_CHANGED))
    assert all(_differs(alternatives[key], params[key]) for key in alternatives)
    X = np.random.default_rng(1).normal(size=(6, 5)) if "Scorer" in name else _images(6, 1)
    before = _outputs(estimator, X)
    exported_before = _exported_scores(estimator, X, tmp_path / "before.onnx")
    estimator.set_params(**alternatives)
    after = _outputs(estimator, X)
    assert sorted(after) == sorted(before)
    for method in before:
        np.testing.assert_allclose(after[method], before[method], rtol=1e-6, atol=1e-6, err_msg=method)
    if exported_before is not None:
        np.testing.assert_allclose(_exported_scores(estimator, X, tmp_path / "after.onnx"), exported_before, atol=1e-6)


def _differs(alternative, value):
    return not (type(alternative) is type(value) and alternative == value)


def _exported_scores(estimator, X, path):
    if type(estimator) is not PandaDetector:
        return None
    from sklearn_panda.deploy import OnnxDetector, export_onnx

    export_onnx(estimator, path, image_size=X.shape[1:3])
    return OnnxDetector(path).score_samples(X)


# ---------------------------------------------------------------- item 2


@pytest.mark.parametrize("metric", ["sqeuclidean", "euclidean", "cosine"])
def test_gallery_distance_searches_in_pieces_in_the_exported_graph(metric, tmp_path):
    """Item 2: the exported search holds at most ``chunk_size`` gallery columns at once; same distances."""
    import onnx
    import onnxruntime
    import torch

    from sklearn_panda._engine.onnx_graph import OPSET, GalleryDistance

    rng = np.random.default_rng(0)
    gallery, queries = rng.normal(size=(50, 6)).astype(np.float32), rng.normal(size=(9, 6)).astype(np.float32)
    scorer = KNNScorer(n_neighbors=3, metric=metric).fit(gallery)
    expected = scorer.score_samples(queries)
    # The scorer's gallery: its training features, L2-normalised for the cosine metric.
    distance = GalleryDistance(scorer._gallery_search().gallery, 3, metric, chunk_size=7).eval()
    np.testing.assert_allclose(-distance(torch.from_numpy(queries)).numpy(), expected, rtol=1e-5, atol=1e-5)
    program = torch.onnx.export(
        distance, (torch.from_numpy(queries),), dynamo=True, input_names=["features"],
        dynamic_shapes=({0: torch.export.Dim("n", min=1)},), opset_version=OPSET, verbose=False,
    )
    model = onnx.shape_inference.infer_shapes(program.model_proto)
    widths = [
        value.type.tensor_type.shape.dim[-1].dim_value
        for value in model.graph.value_info
        if len(value.type.tensor_type.shape.dim) == 2 and value.type.tensor_type.shape.dim[0].dim_param
    ]
    assert widths and max(widths) <= 7
    path = tmp_path / "distance.onnx"
    onnx.save(program.model_proto, path)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (found,) = session.run(None, {"features": queries})
    np.testing.assert_allclose(-found, expected, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- item 9: the maps folder


def test_score_maps_leaves_no_folder_behind_when_an_image_fails(tmp_path, capsys):
    """Item 9: a truncated JPEG (which passes ``Image.verify``) fails the scoring; ``--maps`` is not left behind."""
    from sklearn_panda import PandaPatchDetector, save

    images = tmp_path / "images"
    images.mkdir()
    for index in range(3):
        Image.fromarray(_images(1, index, size=32)[0]).save(images / f"{index}.png")
    detector = PandaPatchDetector(backbone=tiny_cnn, weights=None, layers=["5", "7"], resize=None,
                                  device="cpu", random_state=0).fit(sorted(str(p) for p in images.iterdir()))
    model = tmp_path / "local.pt"
    save(detector, model)
    broken = images / "broken.jpg"
    Image.fromarray(_images(1, 5, size=64)[0]).save(broken, quality=95)
    data = broken.read_bytes()
    broken.write_bytes(data[: len(data) * 2 // 3])
    with Image.open(broken) as image:
        image.verify()
    maps = tmp_path / "maps"
    status = main(["score", str(images), "--model", str(model), "--backbone-factory", "conftest:tiny_cnn",
                   "--output", str(tmp_path / "s.csv"), "--maps", str(maps)])
    _, err = capsys.readouterr()
    assert status == 2 and "broken.jpg" in err
    assert not maps.exists()
    assert sorted(os.listdir(tmp_path)) == ["images", "local.pt"]
