"""Per-backbone recipes: what "auto" means, and that it means exactly the recipe's values."""

import numpy as np
import pytest
from numpy.testing import assert_array_equal

from conftest import TINY_IMAGES
from sklearn_panda import PandaDetector, PandaFeatures, PandaOE, PandaSES, _recipes
from sklearn_panda._estimators.recipes import PAPER, RECIPES, Recipe, recipe_for


@pytest.fixture
def small_images():
    rng = np.random.default_rng(0)
    return (rng.random((12, 20, 20, 3)) * 255).astype(np.uint8)


def test_lite0_has_a_measured_recipe_and_every_other_backbone_the_papers():
    assert recipe_for("efficientnet_lite0") is RECIPES["efficientnet_lite0"]
    for backbone in ("resnet152", "resnet18", "mobilenet_v2", TINY_IMAGES["backbone"]):
        assert recipe_for(backbone) is PAPER
    assert (PAPER.n_steps, PAPER.learning_rate, PAPER.loss, PAPER.clip_norm, PAPER.scorer) == (
        300, 1e-2, "compactness", 1e-3, "knn"
    )
    # The paper's preprocessing; EfficientNet-Lite0 adapts briefly on the whole image.
    assert (PAPER.resize, PAPER.crop_size) == (256, 224)
    lite0 = RECIPES["efficientnet_lite0"]
    assert (lite0.n_steps, lite0.learning_rate, lite0.loss, lite0.clip_norm, lite0.scorer) == (
        100, 1e-1, "compactness", 1e-3, "mahalanobis"
    )
    assert (lite0.resize, lite0.crop_size) == ((224, 224), None)


def test_auto_is_the_default_of_the_recipe_parameters():
    for estimator in (PandaDetector(), PandaFeatures()):
        assert estimator.n_steps == estimator.learning_rate == estimator.loss == estimator.clip_norm == "auto"
    assert PandaDetector().scorer == "auto"
    # SES's checkpoints, not a recipe, decide how far it adapts.
    ses = PandaSES()
    assert (ses.n_steps, ses.learning_rate, ses.loss, ses.clip_norm, ses.scorer) == (500, 1e-2, "compactness", 1e-3, "knn")
    # The preprocessing belongs to the backbone: every estimator takes it from the recipe.
    for estimator in (PandaDetector(), PandaFeatures(), PandaSES(), PandaOE()):
        assert estimator.resize == estimator.crop_size == "auto"


def test_preprocessing_auto_resolves_by_backbone_and_is_kept_at_fit(small_images, monkeypatch):
    detector = PandaDetector(**{**TINY_IMAGES, "resize": "auto", "crop_size": "auto"}, n_steps=0, random_state=0)
    monkeypatch.setattr(_recipes, "PAPER", PAPER._replace(resize=24, crop_size=None))
    detector.fit(small_images)
    assert detector.preprocessing_ == {"resize": 24, "crop_size": None}
    explicit = PandaDetector(**{**TINY_IMAGES, "resize": 24, "crop_size": None}, n_steps=0, random_state=0)
    assert_array_equal(detector.score_samples(small_images), explicit.fit(small_images).score_samples(small_images))
    # A later change of the recipe does not change how a fitted model preprocesses.
    scores = detector.score_samples(small_images)
    monkeypatch.setattr(_recipes, "PAPER", PAPER._replace(resize=32, crop_size=28))
    assert_array_equal(detector.score_samples(small_images), scores)
    assert detector.fit(small_images).preprocessing_ == {"resize": 32, "crop_size": 28}


def test_auto_gives_the_same_scores_as_the_recipes_values_passed_explicitly(small_images, monkeypatch):
    # A short paper recipe, so that the fit is quick; "auto" must read it at fit time.
    recipe = Recipe(n_steps=3, learning_rate=0.05, scorer="mahalanobis", source="test", loss="mean_shifted",
                    clip_norm=None)
    monkeypatch.setattr(_recipes, "PAPER", recipe)
    params = dict(TINY_IMAGES, random_state=0)
    auto = PandaDetector(**params).fit(small_images)
    values = dict(n_steps=3, learning_rate=0.05, loss="mean_shifted", clip_norm=None)
    explicit = PandaDetector(**params, **values, scorer="mahalanobis").fit(small_images)
    assert auto.recipe_ == {**values, "scorer": "mahalanobis"}
    assert len(auto.history_["loss"]) == 3
    assert type(auto.scorer_).__name__ == "MahalanobisScorer"
    assert_array_equal(auto.score_samples(small_images), explicit.score_samples(small_images))
    # Another value is another result: the recipe really is what ran.
    for name, value in (("learning_rate", 0.01), ("loss", "compactness"), ("clip_norm", 1e-3)):
        other = PandaDetector(**params, **{**values, name: value}, scorer="mahalanobis").fit(small_images)
        assert not np.array_equal(auto.score_samples(small_images), other.score_samples(small_images)), name


def test_explicit_values_override_the_recipe(small_images):
    detector = PandaDetector(**TINY_IMAGES, n_steps=2, learning_rate=0.1, scorer="center", random_state=0)
    detector.fit(small_images)
    paper_loss = {"loss": PAPER.loss, "clip_norm": PAPER.clip_norm}
    assert detector.recipe_ == {"n_steps": 2, "learning_rate": 0.1, **paper_loss, "scorer": "center"}
    features = PandaFeatures(**TINY_IMAGES, n_steps=2, clip_norm=None, random_state=0).fit(small_images)
    assert features.recipe_ == {"n_steps": 2, "learning_rate": PAPER.learning_rate, "loss": PAPER.loss,
                                "clip_norm": None}


def test_lite0_recipe_runs_and_equals_its_explicit_values(small_images, monkeypatch):
    pytest.importorskip("efficientnet_lite_pytorch")
    # The recipe's own geometry and rate on 12 images, with 3 of its steps to keep it short.
    recipe = RECIPES["efficientnet_lite0"]._replace(n_steps=3)
    monkeypatch.setitem(RECIPES, "efficientnet_lite0", recipe)
    auto = PandaDetector(backbone="efficientnet_lite0", random_state=0).fit(small_images)
    values = {name: getattr(recipe, name) for name in ("n_steps", "learning_rate", "loss", "clip_norm", "scorer")}
    geometry = {"resize": recipe.resize, "crop_size": recipe.crop_size}
    explicit = PandaDetector(backbone="efficientnet_lite0", random_state=0, **values, **geometry).fit(small_images)
    assert auto.recipe_ == values
    assert type(auto.scorer_).__name__ == "MahalanobisScorer"
    assert auto.preprocessing_ == geometry
    assert_array_equal(auto.score_samples(small_images), explicit.score_samples(small_images))


def test_resize_pair_is_height_and_width_and_a_bad_one_is_named(small_images):
    wide = np.concatenate([small_images, small_images], axis=2)  # 20 x 40
    params = {**TINY_IMAGES, "crop_size": None, "n_steps": 0, "random_state": 0}
    pair = PandaDetector(**{**params, "resize": (24, 32)}).fit(wide)
    assert pair.preprocessing_ == {"resize": (24, 32), "crop_size": None}
    assert pair._preprocessor(pair._check_fit_input(wide[:1]), pair.device_)(np.arange(1)).shape[-2:] == (24, 32)
    # An integer keeps the aspect ratio: the shorter side.
    side = PandaDetector(**{**params, "resize": 24}).fit(wide)
    assert side._preprocessor(side._check_fit_input(wide[:1]), side.device_)(np.arange(1)).shape[-2:] == (24, 48)
    for bad in ((24,), (24, 0), (24, 2.5), [1, 2, 3]):
        with pytest.raises(ValueError, match="resize must be an integer"):
            PandaDetector(**{**params, "resize": bad}).fit(small_images)
