"""compile=True: torch.compile'd inference passes give the eager results."""

import copy
import gc
import pickle
import weakref

import numpy as np
import torch
from conftest import TINY_IMAGES

from sklearn_panda import PandaDetector, PandaSES
from sklearn_panda._engine.compilation import _CACHE_ATTRIBUTE, compiled


def test_padding_is_exact_and_requires_grad_is_restored():
    layer = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4).eval(), torch.nn.Flatten())
    batch = torch.randn(3, 3, 6, 6).contiguous(memory_format=torch.channels_last)
    forward = compiled(layer, batch_size=5)
    assert compiled(layer, batch_size=5) is forward
    with torch.inference_mode():
        expected = layer(batch)
        got = forward(batch)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert all(parameter.requires_grad for parameter in layer.parameters())


def test_changed_weights_are_compiled_again():
    layer = torch.nn.Linear(3, 2)
    batch = torch.randn(4, 3)
    with torch.inference_mode():
        before = compiled(layer, batch_size=4)(batch)
    with torch.no_grad():
        layer.weight.mul_(2.0)
    with torch.inference_mode():
        after = compiled(layer, batch_size=4)(batch)
        torch.testing.assert_close(after, layer(batch))
    assert not torch.allclose(before, after)


def test_a_dropped_module_is_collected_with_its_compilation(monkeypatch):
    # Like the real one, this torch.compile's result holds the module strongly;
    # it spares the test a C++ compilation.
    monkeypatch.setattr(torch, "compile", lambda module, **options: module)
    layer = torch.nn.Linear(3, 2)
    compiled(layer, batch_size=4)
    alive = weakref.ref(layer)
    del layer
    gc.collect()
    assert alive() is None


def test_copies_and_pickles_of_a_module_leave_its_compilation_behind(monkeypatch):
    monkeypatch.setattr(torch, "compile", lambda module, **options: module)
    layer = torch.nn.Linear(3, 2)
    forward = compiled(layer, batch_size=4)
    for other in (copy.deepcopy(layer), pickle.loads(pickle.dumps(layer))):
        assert compiled(other, batch_size=4) is not forward
    assert compiled(layer, batch_size=4) is forward


def test_compiled_detector_scores_like_the_eager_one(images):
    params = {**TINY_IMAGES, "n_steps": 3, "inference_batch_size": 5, "random_state": 0}
    eager = PandaDetector(**params).fit(images)
    compiled_detector = PandaDetector(**params, compile=True).fit(images)
    # Compiled for the inference batch only: fit's passes and the 13 images below (two full batches of 5
    # and a partial batch padded to 5) run one compiled batch size (a test of its own compiled the
    # network once more for this).
    new = images[:13]
    np.testing.assert_allclose(compiled_detector.score_samples(new), eager.score_samples(new), rtol=1e-4, atol=1e-6)
    assert set(vars(compiled_detector.net_.trunk)[_CACHE_ATTRIBUTE]) == {5}
    restored = pickle.loads(pickle.dumps(compiled_detector))
    np.testing.assert_allclose(restored.score_samples(new), eager.score_samples(new), rtol=1e-4, atol=1e-6)


def test_compiled_ses_scores_like_the_eager_one(images):
    params = {**TINY_IMAGES, "n_steps": 2, "checkpoint_every": 1, "random_state": 0}
    eager = PandaSES(**params).fit(images)
    compiled_ses = PandaSES(**params, compile=True).fit(images)
    np.testing.assert_allclose(
        compiled_ses.checkpoint_distances(images[:13]), eager.checkpoint_distances(images[:13]), rtol=1e-4, atol=1e-6
    )


def test_compiled_bfloat16_detector_scores_like_the_eager_one(images):
    # The trunk's float32 stages (autocast switched off inside) compile too.
    params = {**TINY_IMAGES, "n_steps": 0, "precision": "bfloat16", "random_state": 0}
    eager = PandaDetector(**params).fit(images)
    compiled_detector = PandaDetector(**params, compile=True).fit(images)
    np.testing.assert_allclose(
        compiled_detector.extract_features(images[:13]), eager.extract_features(images[:13]), rtol=0, atol=0.01
    )
