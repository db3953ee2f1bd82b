"""The eighth reading's defects (2026-12-07: scorers, metrics, data sets, the patch detector's parameters), one test (or more) each."""

import pickle

import numpy as np
import pytest

from sklearn_panda import KNNScorer


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
