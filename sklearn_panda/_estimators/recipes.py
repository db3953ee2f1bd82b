"""Per-backbone defaults: what ``"auto"`` means for the adaptation, the scorer and the preprocessing.

A recipe gives the values that ``n_steps="auto"``, ``learning_rate="auto"``,
``loss="auto"``, ``clip_norm="auto"``, ``scorer="auto"``, ``resize="auto"``
and ``crop_size="auto"`` take for a backbone. Every backbone without a
measured recipe gets the paper's (its preprocessing, the compactness loss,
SGD at 1e-2, kNN with k=2), with 300 steps instead of the paper's 2,300 so
that a fit stays affordable on a CPU. EfficientNet-Lite0's recipe was chosen
on validation splits of two kinds of images at once, Fashion-MNIST and small
natural photos, every class, worst class first
(``benchmarks/defaults_study.py``, tables in ``benchmarks/RESULTS.md``):
the whole image resized to 224 x 224 instead of the paper's centre crop,
100 steps of the compactness loss at 1e-1 (``benchmarks/adaptation_study.py``),
scored by the Mahalanobis distance to a Gaussian with a Ledoit-Wolf
covariance instead of kNN.
Passing a recipe's value explicitly gives the same result as ``"auto"``.

This module imports neither torch nor the estimators.
"""

from typing import NamedTuple

AUTO = "auto"


class Recipe(NamedTuple):
    """The defaults of one backbone family and where they come from."""

    n_steps: int
    learning_rate: float
    scorer: str
    source: str
    loss: str = "compactness"
    clip_norm: float | None = 1e-3
    # The paper's preprocessing: resize the shorter side to 256, centre-crop 224.
    resize: int | tuple[int, int] | None = 256
    crop_size: int | None = 224


PAPER = Recipe(
    n_steps=300,
    learning_rate=1e-2,
    scorer="knn",
    source="the paper's loss, learning rate and scorer; 300 steps (the paper's 2,300 ran on a GPU)",
)

RECIPES = {
    "efficientnet_lite0": Recipe(
        n_steps=100,
        learning_rate=1e-1,
        scorer="mahalanobis",
        source=(
            "chosen on validation splits of Fashion-MNIST and natural images, worst class first "
            "(benchmarks/RESULTS.md, defaults study)"
        ),
        # The whole image at the network's own 224 x 224: no border cropped away.
        resize=(224, 224),
        crop_size=None,
    ),
}


def recipe_for(backbone):
    """The recipe of ``backbone``: its own where one was measured, the paper's otherwise.

    Parameters
    ----------
    backbone : str or callable
        A backbone as the estimators take it. A callable gets the paper's
        recipe: nothing is known of what it returns.

    Returns
    -------
    Recipe
        The defaults for ``n_steps``, ``learning_rate``, ``loss``,
        ``clip_norm``, ``scorer``, ``resize`` and ``crop_size``, and their source.

    Examples
    --------
    >>> from sklearn_panda._estimators.recipes import recipe_for
    >>> recipe_for("efficientnet_lite0").n_steps
    100
    >>> recipe_for("efficientnet_lite0").resize
    (224, 224)
    >>> recipe_for("efficientnet_lite0").scorer
    'mahalanobis'
    >>> recipe_for("resnet152").n_steps
    300
    """
    return RECIPES.get(backbone, PAPER) if isinstance(backbone, str) else PAPER


def resolve(estimator, name):
    """``estimator``'s parameter ``name``, or its backbone's recipe value when it is ``"auto"``.

    Parameters
    ----------
    estimator : estimator
        An estimator with a ``backbone`` parameter and the parameter ``name``.
    name : {"n_steps", "learning_rate", "loss", "clip_norm", "scorer", "resize", "crop_size"}
        The parameter to resolve.

    Returns
    -------
    object
        The parameter's value, with ``"auto"`` replaced by the recipe's.

    Examples
    --------
    >>> from sklearn_panda import PandaDetector
    >>> from sklearn_panda._estimators.recipes import resolve
    >>> resolve(PandaDetector(backbone="efficientnet_lite0"), "n_steps")
    100
    >>> resolve(PandaDetector(backbone="efficientnet_lite0", n_steps=0), "n_steps")
    0
    """
    value = getattr(estimator, name)
    if isinstance(value, str) and value == AUTO:
        return getattr(recipe_for(estimator.backbone), name)
    return value
