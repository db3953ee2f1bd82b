"""A patch detector's fitted memory: its banks of normal patches, their searches and its offsets.

:class:`BankAssembly` turns a stream of patch grids (one batch of training
images at a time) into the fitted attributes of a
:class:`~sklearn_panda.PandaPatchDetector`: each bank is chosen by a two-stage
coreset (:class:`~sklearn_panda._engine.coreset.StreamingCoreset`), fitted into
a search, and the offsets are measured from the leave-one-out scores of a
random sample of calibration images. Given an earlier fit, it goes on from
that fit's banks and calibration images (``partial_fit``).
"""

import warnings
from dataclasses import dataclass

import numpy as np
import torch

from .._engine.coreset import StreamingCoreset
from .._engine.progress import ProgressBar
from ..scorers import offset_from_training_scores
from .patch_bank import bank_search, patch_rows, pixel_offset
from .patch_calibration import CalibrationSample, compact, leave_one_out_worst

# (progress label, bank attribute, attribute of the image each bank row came from), one per bank.
BANKS = (
    ("memory bank", "memory_bank_", "memory_bank_images_"),
    ("fine bank", "fine_bank_", "fine_bank_images_"),
)


def first_batch_checked(stream, spec):
    """``stream``'s batches, once its first shows that the patch features suit the detector's ``spec``.

    ``n_features`` must be at most the patch features' channels (an error),
    and images should give more than one patch (a warning: with a 1 x 1 grid,
    ``layers`` such as ``["avgpool"]``, every pixel of a map gets the same
    value). Checked at fit only: a detector fitted before these checks with
    more ``n_features`` (it kept all the channels) still scores.
    """
    batches = iter(stream)
    first = next(batches, None)
    if first is None:
        return
    _, grids, size, *_ = first
    n_features, channels = spec["n_features"], grids[0].shape[1]
    if n_features is not None and n_features > channels:
        raise ValueError(
            f"n_features={n_features} is more than the {channels} channels of the patch features (the "
            f"layers' channels together): give at most {channels}, or None to keep them all."
        )
    if spec["layers"] and grids[0].shape[-2:] == (1, 1):
        warnings.warn(
            f"layers={spec['layers']!r} give one patch per image ({size[0]} x {size[1]} pixels scored): "
            "each anomaly map has a single value and the detector compares whole images. Name layers "
            "whose outputs are feature maps of several positions ('auto': the stages at strides 8 and "
            "16), or score the images larger (resize).",
            UserWarning,
        )
    yield first
    yield from batches


def leave_one_out_scores(stream, banks, spec, scales, calibration):
    """Every training image's leave-one-out ``score_samples``, measured as the calibration images' are.

    ``stream`` gives :func:`~sklearn_panda._engine.patch_features.patch_grids`'s
    batches of the images a detector was fitted on, in the order it saw them;
    ``banks`` holds ``(rows, the image each row came from, its search)`` a
    bank; ``scales`` is ``score_scales_`` (``None`` for one bank). Each
    image is measured against the banks without its own patches (where every
    bank row is its own, against the other ``calibration`` images' patches,
    as in the fit).
    """
    scores = {}
    quiet = ProgressBar(0, "", False)
    for indices, _, size, _, maps in stream:
        entries = [
            {"image": int(index), "size": list(size), "maps": [compact(one[offset]) for one in maps]}
            for offset, index in enumerate(indices.tolist())
        ]
        worst, map_maxima, _ = leave_one_out_worst(banks, entries, spec, quiet, pool=calibration)
        scores.update(zip(indices.tolist(), -image_scores(worst, map_maxima, spec, scales)))
    return np.array([scores[index] for index in range(len(scores))])


def image_scores(worst, map_maxima, spec, scales):
    """Each image's anomaly (higher = more anomalous) from its worst patches ``(n,)`` (one array a
    bank: :func:`~sklearn_panda._estimators.patch_bank.worst_patches`) or its smoothed map's maxima
    ``(n,)``, as ``spec["image_score"]`` says.

    ``"patch+fine"`` sums each bank's worst patches divided by its ``scales``
    entry (their median over the calibration images).

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_panda._estimators.patch_memory import image_scores
    >>> worst = [np.array([3.0]), np.array([4.0])]
    >>> image_scores(worst, np.array([2.5]), {"image_score": "patch+fine"}, [3.0, 2.0])
    array([3.])
    """
    if spec["image_score"] == "map":
        return np.asarray(map_maxima, dtype=np.float64)
    if spec["image_score"] == "patch":
        return np.asarray(worst[0], dtype=np.float64)
    return sum(np.asarray(one, dtype=np.float64) / scale for one, scale in zip(worst, scales))


@dataclass(frozen=True)
class BankAssembly:
    """The parameters of a patch detector that choose its banks and offsets.

    Parameters
    ----------
    coreset_ratio, projection_dim, n_neighbors, algorithm, contamination, pixel_contamination, verbose
        As :class:`~sklearn_panda.PandaPatchDetector`'s.
    """

    coreset_ratio: float
    projection_dim: int
    n_neighbors: int
    algorithm: str
    contamination: object
    pixel_contamination: object
    verbose: int

    @classmethod
    def of(cls, detector):
        """The assembly a detector's current parameters describe."""
        return cls(**{name: getattr(detector, name) for name in cls.__dataclass_fields__})

    def learn(self, stream, n_images, spec, seed, previous=None):
        """The fitted banks, searches and offsets, as a dict of attributes.

        Parameters
        ----------
        stream : iterable
            :func:`~sklearn_panda._engine.patch_features.patch_grids`'s batches
            of the ``n_images`` new training images.
        n_images : int
        spec : dict
            The detector's ``patch_spec_``.
        seed : int
            Seeds the coresets' projections and the calibration sample.
        previous : PandaPatchDetector, optional
            A fitted detector whose banks and calibration images the new
            images are added to.
        """
        fine = spec["image_score"] == "patch+fine"
        first = previous.n_samples_seen_ if previous is not None else 0
        sample = CalibrationSample(
            previous.calibration_maps_ if previous is not None else [], n_images, np.random.default_rng([seed, first])
        )
        coresets = [self._coreset(seed) for _ in range(2 if fine else 1)]
        for indices, grids, size, original, maps in stream:
            rows = [patch_rows(grid) for grid in grids]
            owners = torch.from_numpy(np.repeat(indices + first, rows[0].shape[1]))
            for coreset, batch in zip(coresets, rows):
                coreset.add(batch.reshape(-1, batch.shape[-1]), owners)
            for offset, index in enumerate(indices.tolist()):
                sample.offer(index, image=first + index, maps=[one[offset] for one in maps], size=size, original=original)
        banks = []
        for coreset, (label, bank_name, images_name) in zip(coresets, BANKS):
            chosen = None
            if previous is not None:
                bank, images = getattr(previous, bank_name), getattr(previous, images_name)
                chosen = (torch.from_numpy(bank), torch.from_numpy(images), previous.n_training_patches_)
            banks.append(self._select(coreset, seed, label, chosen))
        progress = ProgressBar(len(sample.entries), "training scores", self.verbose > 0)
        worst, map_maxima, input_maxima = leave_one_out_worst(banks, sample.entries, spec, progress)
        scales = np.median(np.stack(worst), axis=1) if fine else None
        training_scores = -image_scores(worst, map_maxima, spec, scales)
        fitted = {
            "patch_spec_": spec,
            "n_training_patches_": coresets[0].n_seen_ + (previous.n_training_patches_ if previous is not None else 0),
            "n_samples_seen_": first + n_images,
            "calibration_maps_": sample.entries,
            "training_scores_": training_scores,
            "offset_": offset_from_training_scores(training_scores, self.contamination),
            "training_map_maxima_": input_maxima,
            "pixel_offset_": pixel_offset(input_maxima, self.pixel_contamination),
        }
        fitted.update(memory_bank_=banks[0][0], memory_bank_images_=banks[0][1], scorer_=banks[0][2])
        if fine:
            fitted.update(fine_bank_=banks[1][0], fine_bank_images_=banks[1][1], fine_scorer_=banks[1][2])
            fitted["score_scales_"] = scales
        return fitted

    def _coreset(self, seed):
        return StreamingCoreset(
            self.coreset_ratio,
            min_select=self.n_neighbors + 1,
            projection_dim=self.projection_dim,
            generator=torch.Generator().manual_seed(seed),
        )

    def _select(self, coreset, seed, label, chosen=None):
        """``(bank, the image each row came from, its fitted search)`` from a coreset's stream
        (going on from an earlier selection ``chosen``: see ``StreamingCoreset.select``)."""
        bars = []

        def show(done, total):
            if not bars:
                bars.append(ProgressBar(total, label, self.verbose > 0))
            bars[0].update(done)

        bank, owners = coreset.select(progress=show, chosen=chosen)
        bank, owners = bank.cpu().numpy(), owners.numpy()
        return bank, owners, bank_search(self.algorithm, len(bank), self._neighbours_for(len(bank)), seed).fit(bank)

    def _neighbours_for(self, n_bank):
        if self.n_neighbors >= n_bank:
            warnings.warn(
                f"n_neighbors ({self.n_neighbors}) is not smaller than the memory bank ({n_bank} patches, "
                "one of which is left out of each training image's score); using "
                f"{max(1, n_bank - 1)}.",
                UserWarning,
            )
            return max(1, n_bank - 1)
        return self.n_neighbors
