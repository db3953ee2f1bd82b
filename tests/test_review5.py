"""The eighth reading's defects (2026-12-07: scorers, metrics, data sets, the patch detector's parameters), one test (or more) each."""

import pickle
import warnings

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sklearn_panda import CenterScorer, KMeansScorer, KNNScorer, MahalanobisScorer, PandaPatchDetector
from sklearn_panda.datasets import load_deeppcb


# KNNScorer kept the caller's faiss_params dict: editing it after fit changed the live scores
# (k_factor, read at each search) and a pickled copy's (nprobe, set again on unpickling).
def test_a_faiss_params_dict_edited_after_fit_changes_no_score():
    pytest.importorskip("faiss")
    rng = np.random.default_rng(0)
    X, T = rng.normal(size=(300, 16)).astype(np.float32), rng.normal(size=(20, 16)).astype(np.float32)
    params = {"nprobe": 1, "k_factor": 1}
    model = KNNScorer(algorithm="faiss", faiss_index="IVF16,Flat", faiss_params=params, random_state=0).fit(X)
    expected = model.score_samples(T)
    params.update(nprobe=16, k_factor=50)
    np.testing.assert_array_equal(model.score_samples(T), expected)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(model)).score_samples(T), expected)
    exhaustive = KNNScorer(algorithm="faiss", faiss_index="IVF16,Flat", faiss_params=params, random_state=0).fit(X)
    assert not np.array_equal(exhaustive.score_samples(T), expected)  # the edit matters to a new fit


# MahalanobisScorer: a Ledoit-Wolf shrinkage of 0 (or rounding noise about it, 1e-17) on rank-deficient
# rows (two balanced groups of repeated rows) left a singular covariance: offset_ NaN (every point an
# inlier) or +20 (every one an outlier), or a point 0.01 off a training row scored -7e14, without a word.
@pytest.mark.parametrize(
    "rows", [[[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]], [[0.3, 0.4, 0.5], [0.6, 0.1, 0.9]]], ids=["zero", "rounding-noise"]
)
@pytest.mark.parametrize("n", [5, 7, 10])
def test_a_shrinkage_estimate_of_zero_on_a_singular_covariance_is_refused(rows, n):
    X = np.array(rows[:1] * n + rows[1:] * n)
    with pytest.raises(ValueError, match=r"ledoit_wolf shrinkage estimate \(.*\) is below float32's resolution .* "
                                         r"shrinkage=0\.1, or shrinkage='oas'"):
        MahalanobisScorer().fit(X)
    scorer = MahalanobisScorer(shrinkage="oas").fit(X)
    assert np.isfinite(scorer.offset_) and scorer.offset_ < 0
    np.testing.assert_array_equal(scorer.predict([X[0], X[0] + 0.01, [50.0, -50.0, 7.0]]), [1, 1, -1])


# The scorers computed float64 features in float32 without a word: large values that vary little lost
# their ranking (KNNScorer: 14 distinct scores among 400 points), and values beyond float32's range made
# offset_ NaN (every point an inlier).
@pytest.mark.parametrize("scorer", [KNNScorer(), KMeansScorer(n_clusters=2), CenterScorer(), MahalanobisScorer()],
                         ids=lambda scorer: type(scorer).__name__)
def test_float64_features_float32_cannot_hold_are_named(scorer):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # ordinary float64 features: no warning
        fitted = clone(scorer).fit(X)
    with pytest.raises(ValueError, match=r"computes in float32, and the features hold values too large for its "
                                         r"squared distances \(largest .*; at most 5\.33e\+18 for 3 features\)"):
        clone(scorer).fit(X * 1e39)
    with pytest.raises(ValueError, match=r"too large for its squared distances"):
        fitted.score_samples(X[:2] * 1e39)
    # 512 features: squared distances overflow float32 from about 4e17 (offset_ was NaN at 1e18).
    with pytest.raises(ValueError, match=r"at most 4\.08e\+17 for 512 features"):
        clone(scorer).fit(rng.normal(size=(40, 512)) * 1e18)
    for large in (1e7 + X, (1_700_000_000 + 1000 * X).astype(np.int64)):  # integers are checked as float64 is
        with pytest.warns(UserWarning, match=r"fewer than 1,000 steps across the spread of 3 feature\(s\) \(feature 0: "
                                             r"values up to 1(\.\d+)?e\+0[79]"):
            clone(scorer).fit(large)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # scaled first, as the message says: no warning
        make_pipeline(StandardScaler(), clone(scorer)).fit(1e7 + X)
    # float32 features too: at 1e20 their squared distances overflowed (offset_ NaN, scores -inf).
    with pytest.raises(ValueError, match=r"too large for its squared distances \(largest 2\.\d+e\+20"):
        clone(scorer).fit((X * 1e20).astype(np.float32))
    with pytest.raises(ValueError, match=r"too large for its squared distances"):
        fitted.score_samples((X[:2] * 1e20).astype(np.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # float32 features give no precision warning: they are as computed
        clone(scorer).fit((1e7 + X).astype(np.float32))


# PandaPatchDetector: a layer with a 2-D output raised torch's IndexError; layers out of order or unknown
# were reported under split_model's names (stage_ends, feature_node); device="tpu" raised torch's
# RuntimeError. Each now names the parameter the user gave.
@pytest.mark.parametrize(
    "params, message",
    [
        ({"layers": ["layer2", "fc"]}, r"layers must name feature maps \(n, C, H, W\); 'fc' gives an output of shape \(3, 1000\)"),
        ({"layers": ["layer3", "layer2"]}, r"layers=\['layer3', 'layer2'\] cannot split ResNet .*'layer3' does not come before"),
        ({"layers": ["nope"]}, r"layers=\['nope'\] cannot split ResNet .*no node or module 'nope'"),
        ({"device": "tpu"}, r"device='tpu' is not a torch device"),
    ],
)
def test_bad_layers_and_devices_are_named(params, message):
    X = (np.random.default_rng(0).random((3, 32, 32, 3)) * 255).astype(np.uint8)
    with pytest.raises(ValueError, match=message):
        PandaPatchDetector(backbone="resnet18", weights=None, resize=None, **params).fit(X)


# layers=["avgpool"] (a 1 x 1 output) was taken without a word: one patch per image, every map constant.
def test_layers_giving_one_patch_per_image_warn_and_the_defaults_do_not():
    X = (np.random.default_rng(0).random((3, 32, 32, 3)) * 255).astype(np.uint8)
    with pytest.warns(UserWarning, match=r"layers=\['avgpool'\] give one patch per image \(32 x 32 pixels"):
        detector = PandaPatchDetector(backbone="resnet18", weights=None, resize=None, layers=["avgpool"]).fit(X)
    only_map = detector.anomaly_maps(X[:1])[0]
    np.testing.assert_allclose(only_map, only_map[0, 0], rtol=1e-5)  # what the warning says: one value
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        detector = PandaPatchDetector(backbone="resnet18", weights=None, resize=None).fit(X)  # 4 x 4 patches
        detector.anomaly_maps(X[:1])
    # Scoring images too small for one patch each warned at fit only, not when they came later.
    with pytest.warns(UserWarning, match=r"Images scored at 8 x 8 pixels give one patch each"):
        detector.score_samples(X[:2, :8, :8])


# load_deeppcb(random_state=-1) gave numpy's message. (Its test regions are drawn after the training
# templates, from one stream: documented and kept, so that the benchmarks' DeepPCB splits stay the ones
# their figures were measured on.)
def test_load_deeppcb_names_a_bad_seed_and_takes_a_generator():
    with pytest.raises(ValueError, match=r"random_state must be a non-negative integer.*got -1"):
        load_deeppcb(random_state=-1)
    by_generator = load_deeppcb(max_train=10, max_test=8, random_state=np.random.default_rng(3))
    for ours, theirs in zip(by_generator, load_deeppcb(max_train=10, max_test=8, random_state=3)):
        np.testing.assert_array_equal(ours, theirs)
