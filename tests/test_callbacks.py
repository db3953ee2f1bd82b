"""Training callbacks: PandaFeatures.fit(X, callbacks=[...]) and what PandaSES builds on them."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_IMAGES
from sklearn.pipeline import make_pipeline

from sklearn_panda import KNNScorer, PandaDetector, PandaFeatures, PandaSES
from sklearn_panda.callbacks import TrainingCallback

ADAPTATION = dict(TINY_IMAGES, n_steps=4, learning_rate=0.1, clip_norm=None, batch_size=8, random_state=0)


def _images(n, seed):
    return (np.random.default_rng(seed).random((n, 20, 20, 3)) * 255).astype(np.uint8)


class Recorder(TrainingCallback):
    def __init__(self, chosen=None):
        self.chosen = chosen
        self.calls = []

    def on_train_begin(self, net, *, n_samples, generator, **kwargs):
        self.calls.append(("begin", n_samples))
        return self.chosen

    def on_step_end(self, net, *, step, loss, details, **kwargs):
        self.calls.append(("step", step, loss, sorted(details)))

    def on_train_end(self, net, *, training_inputs, trunk_outputs, **kwargs):
        self.calls.append(("end", len(training_inputs)))
        self.net, self.training_inputs, self.trunk_outputs = net, training_inputs, trunk_outputs


def test_hooks_are_called_in_order_with_the_steps_losses():
    recorder = Recorder()
    features = PandaFeatures(**ADAPTATION).fit(_images(16, 0), callbacks=[recorder])
    assert recorder.calls[0] == ("begin", 16) and recorder.calls[-1] == ("end", 16)
    steps = recorder.calls[1:-1]
    assert [call[1] for call in steps] == [0, 1, 2, 3]
    assert [call[2] for call in steps] == features.history_["loss"]
    assert all(call[3] == ["compactness", "ewc_penalty"] for call in steps)


def test_without_steps_only_the_begin_and_end_hooks_run():
    recorder = Recorder()
    PandaFeatures(**{**ADAPTATION, "n_steps": 0}).fit(_images(10, 0), callbacks=[recorder])
    assert recorder.calls == [("begin", 10), ("end", 10)]


@pytest.mark.parametrize("trunk_cache_mb", [64, 0])
def test_train_end_sees_the_training_inputs_and_trunk_outputs(trunk_cache_mb):
    recorder = Recorder()
    train = _images(12, 0)
    features = PandaFeatures(**ADAPTATION, trunk_cache_mb=trunk_cache_mb)
    expected = features.fit_transform(train, callbacks=[recorder])
    assert recorder.net is features.net_
    with torch.inference_mode():
        trunk_outputs = recorder.net.trunk(recorder.training_inputs(np.arange(12)))
        if trunk_cache_mb:
            torch.testing.assert_close(recorder.trunk_outputs, trunk_outputs, rtol=1e-5, atol=1e-5)
        else:
            assert recorder.trunk_outputs is None
        pooled = F.normalize(recorder.net.stages(trunk_outputs), dim=1).numpy()
    np.testing.assert_allclose(pooled, expected, rtol=1e-4, atol=1e-5)


def test_a_callback_chooses_the_samples_to_train_on():
    """Training on a chosen subset is training on those samples alone (the trunk still sees all)."""
    train, queries = _images(20, 0), _images(4, 1)
    chosen = np.arange(0, 20, 2)
    on_subset = PandaFeatures(**ADAPTATION).fit(train, callbacks=[Recorder(chosen)])
    alone = PandaFeatures(**ADAPTATION).fit(train[chosen])
    np.testing.assert_allclose(on_subset.center_, alone.center_, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(on_subset.transform(queries), alone.transform(queries), rtol=1e-4, atol=1e-5)
    everything = PandaFeatures(**ADAPTATION).fit(train)
    assert not np.allclose(everything.center_, alone.center_, atol=1e-4)


@pytest.mark.parametrize(
    "choices, message",
    [
        ([np.arange(3), np.arange(2)], "so did an earlier callback, Recorder: at most one callback"),
        ([np.array([0, 0, 1])], "distinct integer indices"),
        ([np.array([0, 99])], r"in \[0, 10\)"),
        ([np.array([], dtype=int)], "distinct integer indices"),
        ([np.array([0.0, 1.0])], "distinct integer indices"),
    ],
)
def test_bad_choices_of_training_samples_are_named(choices, message):
    with pytest.raises(ValueError, match=message):
        PandaFeatures(**ADAPTATION).fit(_images(10, 0), callbacks=[Recorder(c) for c in choices])


@pytest.mark.parametrize("callbacks", [Recorder(), [lambda *args: None], "log"])
def test_callbacks_must_be_a_list_of_training_callbacks(callbacks):
    with pytest.raises(TypeError, match="TrainingCallback"):
        PandaFeatures(**ADAPTATION).fit(_images(10, 0), callbacks=callbacks)


def test_a_failing_hook_leaves_the_transformer_as_it_was():
    class Stop(TrainingCallback):
        def on_step_end(self, net, *, step, **kwargs):
            if step == 2:
                raise KeyboardInterrupt

    features = PandaFeatures(**ADAPTATION).fit(_images(10, 0))
    before = features.transform(_images(3, 1))
    with pytest.raises(KeyboardInterrupt):
        features.fit(_images(10, 5), callbacks=[Stop()])
    np.testing.assert_array_equal(features.transform(_images(3, 1)), before)
    assert len(features.history_["loss"]) == 4


def test_callbacks_reach_the_features_in_a_pipeline():
    recorder = Recorder()
    pipeline = make_pipeline(PandaFeatures(**ADAPTATION), KNNScorer())
    pipeline.fit(_images(12, 0), pandafeatures__callbacks=[recorder])
    assert [call[0] for call in recorder.calls] == ["begin", "step", "step", "step", "step", "end"]


def test_detectors_pass_callbacks_to_their_features():
    train = _images(12, 0)
    recorder = Recorder()
    detector = PandaDetector(**ADAPTATION).fit(train, callbacks=[recorder])
    assert [call[2] for call in recorder.calls[1:-1]] == detector.history_["loss"]
    plain = PandaDetector(**ADAPTATION).fit(train)
    np.testing.assert_array_equal(detector.score_samples(train), plain.score_samples(train))


def test_ses_runs_the_users_callbacks_beside_its_checkpoints():
    train = _images(12, 0)
    recorder = Recorder()
    ses = PandaSES(**ADAPTATION, checkpoint_every=2).fit(train, callbacks=[recorder])
    # Trained on the gallery: the validation images are held out by the checkpoint callback.
    assert recorder.calls[0] == ("begin", 12) and len(recorder.calls) == 6
    assert ses.checkpoint_steps_ == [0, 2, 4]
    # The error names PandaSES, not "an earlier callback" the user never passed.
    with pytest.raises(ValueError, match="and so did PandaSES itself .*at most one callback"):
        PandaSES(**ADAPTATION, checkpoint_every=2).fit(train, callbacks=[Recorder(np.arange(5))])
