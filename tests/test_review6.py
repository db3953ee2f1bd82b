"""The ninth and tenth readings' defects (2026-12-07: a maintainer's reading of the whole package; the adaptation
paths as a user), one test (or more) each."""

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from sklearn_panda import PandaDetector, PandaFeatures, PandaOE, PandaPatchDetector
from sklearn_panda._engine.device import resolve_device
from sklearn_panda.model_selection import NormalOnlySplit

from conftest import TINY_IMAGES, tiny_mlp, tiny_resnet


# PandaOE's combine_knn scorer was built without the detector's seed (PandaDetector's got it): an
# approximate index (algorithm="auto" on large galleries) was then built on many threads, run to run.
def test_pandaoe_seeds_its_knn_scorer():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(20, 6))
    y = np.r_[np.ones(12), -np.ones(8)]
    oe = PandaOE(backbone=tiny_mlp, weights=None, n_steps=2, combine_knn=True, random_state=5).fit(X, y)
    assert oe.knn_scorer_.random_state is not None
    again = PandaOE(backbone=tiny_mlp, weights=None, n_steps=2, combine_knn=True, random_state=5).fit(X, y)
    assert again.knn_scorer_.random_state == oe.knn_scorer_.random_state


# NormalOnlySplit(random_state=0) without shuffle ignored the seed without a word (KFold refuses it).
def test_normal_only_split_refuses_a_seed_without_shuffle():
    y = np.r_[np.ones(9), -np.ones(3)]
    with pytest.raises(ValueError, match="random_state has no effect since shuffle is False"):
        list(NormalOnlySplit(3, random_state=0).split(y, y))
    assert len(list(NormalOnlySplit(3, shuffle=True, random_state=0).split(y, y))) == 3


# Only CUDA was checked: device="meta" (or an unavailable "mps") failed inside torch during the fit.
@pytest.mark.parametrize("device", ["meta", "mps", "xpu"])
def test_a_device_that_is_not_here_is_named(device):
    if device in ("mps", "xpu"):
        backend = torch.backends.mps if device == "mps" else getattr(torch, "xpu", None)
        if backend is not None and backend.is_available():
            pytest.skip(f"{device} is available here")
    with pytest.raises(ValueError, match=rf"device='{device}'.* (not available|was requested)"):
        PandaDetector(backbone=tiny_mlp, weights=None, n_steps=0, device=device).fit(np.zeros((4, 6)))
    assert resolve_device("cpu") == torch.device("cpu")


def test_a_gpu_index_beyond_the_machine_s_gpus_is_named(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ValueError, match=r"device='cuda:2' was requested but this machine has 2 CUDA device\(s\)"):
        resolve_device("cuda:2")
    assert resolve_device("cuda:1") == torch.device("cuda:1")


# True passed scikit-learn's integer constraint as 1: resize=True crashed inside torch, crop_size=True
# cropped every image to one pixel, (True, 64) was read as (1, 64); the patch detector refused them.
@pytest.mark.parametrize(
    "params, message",
    [
        ({"resize": True}, "resize must be an integer"),
        ({"resize": (True, 32)}, "resize must be an integer"),
        ({"crop_size": True}, "crop_size must be an integer"),
    ],
)
@pytest.mark.parametrize("estimator", [PandaDetector, PandaFeatures])
def test_booleans_are_refused_as_image_sizes(estimator, params, message, images):
    with pytest.raises(ValueError, match=message):
        estimator(**{**TINY_IMAGES, "n_steps": 0, **params}).fit(images[:4])
    with pytest.raises(ValueError, match="resize must be an integer"):
        PandaPatchDetector(backbone="resnet18", weights=None, resize=(True, 32)).fit(images[:4])


# precision="float16" trained without loss scaling: about 1% of the weights that a float32 step moves got
# no gradient here (8% at 224 x 224), their float16 gradients underflowing to zero.
def test_a_float16_step_moves_the_weights_a_float32_step_moves():
    X = (np.random.default_rng(0).random((8, 96, 96, 3)) * 255).astype(np.uint8)
    settings = dict(TINY_IMAGES, resize=None, crop_size=None, random_state=0, learning_rate=1.0, momentum=0.0,
                    weight_decay=0.0, clip_norm=None)
    start = dict(PandaFeatures(**settings, n_steps=0).fit(X).net_.stages.named_parameters())
    moved = {}
    for precision in ("float32", "float16"):
        stages = PandaFeatures(**settings, n_steps=1, precision=precision).fit(X).net_.stages
        moved[precision] = sum(int((value != start[name]).sum()) for name, value in stages.named_parameters())
    assert moved["float16"] >= 0.998 * moved["float32"]  # 0.988 unscaled


# A factory returning a module it keeps (backbone=lambda: model) had that module adapted in place (and
# frozen, set to eval, made channels-last): every estimator fitted with it shared one network, so a
# second fit changed the first one's features. A module given as backbone failed in its own forward.
def test_a_factory_s_module_is_copied_and_a_module_is_refused(images):
    model = tiny_resnet()
    before = {name: value.clone() for name, value in model.state_dict().items()}
    settings = dict(TINY_IMAGES, backbone=lambda: model, n_steps=3, random_state=0)
    first = PandaFeatures(**settings).fit(images)
    expected = first.transform(images[:4])
    PandaFeatures(**{**settings, "random_state": 1}).fit(images)
    np.testing.assert_array_equal(first.transform(images[:4]), expected)
    assert model.training and all(value.requires_grad for value in model.parameters())
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, before[name], rtol=0, atol=0)
    with pytest.raises(TypeError, match=r"backbone must be a name or a factory that returns a module, not a module"):
        PandaFeatures(**{**settings, "backbone": model}).fit(images)
    with pytest.raises(TypeError, match="not a module"):
        PandaPatchDetector(backbone=model, weights=None).fit(images)


# loss="mean_shifted" in batches of one image: its contrastive loss is exactly 0, nothing trained, no word.
def test_mean_shifted_batches_of_one_image_are_refused(images):
    with pytest.raises(ValueError, match=r"loss='mean_shifted' contrasts .* batches of 1 image hold no other"):
        PandaFeatures(**{**TINY_IMAGES, "batch_size": 1}, loss="mean_shifted", n_steps=1).fit(images[:4])


# A Fisher given as tensors that require grad (or bfloat16, or on a GPU) failed on its way through numpy;
# a fisher without regularization="ewc" was ignored without a word.
def test_a_given_fisher_takes_any_tensor_and_is_named_when_unused():
    X = np.random.default_rng(0).normal(size=(12, 6))
    settings = dict(backbone=tiny_mlp, weights=None, n_steps=2, random_state=0)
    stages = PandaFeatures(**{**settings, "n_steps": 0}).fit(X).net_.stages
    as_arrays = {name: np.full(tuple(value.shape), 0.5, dtype=np.float32) for name, value in stages.named_parameters()}
    expected = PandaFeatures(**settings, regularization="ewc", fisher=as_arrays).fit(X).transform(X)
    for convert in (lambda a: torch.tensor(a, requires_grad=True), lambda a: torch.tensor(a, dtype=torch.bfloat16)):
        given = {name: convert(value) for name, value in as_arrays.items()}
        np.testing.assert_array_equal(PandaFeatures(**settings, regularization="ewc", fisher=given).fit(X).transform(X), expected)
    with pytest.warns(UserWarning, match=r"fisher is not used: it weights the EWC penalty, and regularization is None"):
        PandaFeatures(**settings, fisher=as_arrays).fit(X)


# PandaOE given PyOD's labels (0 normal, 1 anomalous) with the default normal_label=1: a detector turned
# inside out (ROC AUC 0), without a word.
def test_pandaoe_warns_that_0_1_labels_take_the_1s_as_normal():
    X = np.random.default_rng(0).normal(size=(20, 6))
    settings = dict(backbone=tiny_mlp, weights=None, n_steps=1, random_state=0)
    with pytest.warns(UserWarning, match=r"normal_label=1 takes the images labelled 1 as normal.*set normal_label=0"):
        PandaOE(**settings).fit(X, np.r_[np.zeros(12), np.ones(8)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        PandaOE(**settings).fit(X, np.r_[np.ones(12), -np.ones(8)])
        PandaOE(**settings, normal_label=0).fit(X, np.r_[np.zeros(12), np.ones(8)])


# A one-column DataFrame of paths (pd.read_csv) gave "could not convert string to float"; gray arrays
# refused by a colour model were not told how to convert.
def test_a_column_of_paths_is_a_list_of_paths_and_gray_arrays_get_the_conversion(images, tmp_path):
    from PIL import Image

    paths = []
    for index, image in enumerate(images[:4]):
        paths.append(str(tmp_path / f"{index}.png"))
        Image.fromarray(image).save(paths[-1])
    features = PandaFeatures(**TINY_IMAGES, n_steps=0).fit(paths)
    column = np.array(paths, dtype=object)[:, None]
    np.testing.assert_array_equal(features.transform(column), features.transform(paths))
    colour = PandaFeatures(**TINY_IMAGES, n_steps=0).fit(images[:4])
    with pytest.raises(ValueError, match=r"np\.repeat\(X\[\.\.\., None\], 3, axis=-1\)"):
        colour.transform(images[:2, :, :, 0])
    pandas = pytest.importorskip("pandas")
    np.testing.assert_array_equal(features.transform(pandas.DataFrame({"path": paths})), features.transform(paths))


# PandaDetector fitted on one image ran the whole adaptation, then failed in its scorer's words.
@pytest.mark.parametrize("scorer, n_samples", [("knn", 1), ("mahalanobis", 2)])
def test_too_few_samples_for_the_scorer_are_refused_before_the_adaptation(scorer, n_samples, monkeypatch):
    monkeypatch.setattr(PandaFeatures, "_fit_checked", lambda *args, **kwargs: pytest.fail("adapted first"))
    with pytest.raises(ValueError, match=rf"needs at least {n_samples + 1} training samples: its scorer \('{scorer}'\)"):
        PandaDetector(backbone=tiny_mlp, weights=None, scorer=scorer).fit(np.zeros((n_samples, 6)))


# The command line checked image files with PIL's verify, which refused PNGs whose chunk checksums the
# decoder tolerates: a file the library reads was refused by `sklearn-panda fit`.
def test_the_command_line_refuses_exactly_the_files_the_library_refuses(tmp_path):
    import io
    import struct

    from PIL import Image

    from sklearn_panda._io.images import read_image
    from sklearn_panda.cli._inputs import check_readable

    buffer = io.BytesIO()
    Image.fromarray(np.arange(64 * 64 * 3, dtype=np.uint8).reshape(64, 64, 3)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    start = data.find(b"IDAT")
    data[start + 4 + struct.unpack(">I", data[start - 4 : start])[0]] ^= 0xFF  # the chunk's checksum
    (tmp_path / "checksum.png").write_bytes(bytes(data))
    (tmp_path / "truncated.png").write_bytes(buffer.getvalue()[: len(data) // 2])
    read_image(tmp_path / "checksum.png")
    check_readable([tmp_path / "checksum.png"])
    for refuse in (read_image, lambda path: check_readable([path])):
        with pytest.raises(ValueError, match=r"Could not read image file .*truncated\.png: image file is truncated"):
            refuse(tmp_path / "truncated.png")


# Two rules found images in a folder: the command line's (subfolders too) and the data sets' (one level):
# train/good/batch2/ was trained on by `sklearn-panda fit train/good` and ignored by load_one_class.
def test_a_data_set_folder_with_images_in_subfolders_is_refused_not_half_read(tmp_path):
    from PIL import Image

    from sklearn_panda._io.images import collect_images
    from sklearn_panda.datasets import load_one_class

    for path in ("train/good/a.png", "train/good/.cache/b.png", "test/good/c.png", "test/crack/d.png"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(tmp_path / path)
    X_train, _, _ = load_one_class("image_folder", None, root=tmp_path)  # hidden folders skipped by both
    assert X_train == collect_images([tmp_path / "train" / "good"])
    (tmp_path / "train" / "good" / "batch2").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "train" / "good" / "batch2" / "e.png")
    with pytest.raises(ValueError, match=r"good holds images in subfolders \(1, e\.g\. .*batch2/e\.png\)"):
        load_one_class("image_folder", None, root=tmp_path)


# export_onnx and quantize_onnx wrote with onnx.save: an interrupted write left a truncated file, and a
# failed metadata step an int8 file without the package's metadata in the user's place.
def test_onnx_files_are_written_whole_or_not_at_all(tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    from sklearn_panda.deploy import export_onnx, quantize_onnx

    X = (np.random.default_rng(0).random((6, 32, 32, 3)) * 255).astype(np.uint8)
    detector = PandaDetector(**TINY_IMAGES, n_steps=0).fit(X)
    path = export_onnx(detector, tmp_path / "det.onnx", image_size=(32, 32))
    original = path.read_bytes()
    monkeypatch.setattr("sklearn_panda.deploy._set_metadata", lambda *args: (_ for _ in ()).throw(KeyboardInterrupt))
    for write in (lambda: export_onnx(detector, path, image_size=(32, 32)), lambda: quantize_onnx(path, path, X[:4])):
        with pytest.raises(KeyboardInterrupt):
            write()
        assert path.read_bytes() == original
    assert sorted(item.name for item in tmp_path.iterdir()) == ["det.onnx"]


# A callback could not stop the adaptation: raising discarded the whole fit.
def test_a_callback_returning_true_ends_the_adaptation_after_that_step():
    from sklearn_panda.callbacks import TrainingCallback

    class StopAt(TrainingCallback):
        def __init__(self, last):
            self.last, self.seen = last, []

        def on_step_end(self, net, *, step, **kwargs):
            self.seen.append(step)
            return step == self.last

    X = np.random.default_rng(0).normal(size=(30, 6))
    settings = dict(backbone=tiny_mlp, weights=None, batch_size=8, random_state=0)
    stopper, witness = StopAt(2), StopAt(None)
    stopped = PandaFeatures(**settings, n_steps=10).fit(X, callbacks=[stopper, witness])
    assert stopper.seen == witness.seen == [0, 1, 2] and len(stopped.history_["loss"]) == 3
    three_steps = PandaFeatures(**settings, n_steps=3).fit(X)
    np.testing.assert_array_equal(stopped.transform(X), three_steps.transform(X))
    detector = PandaDetector(**settings, n_steps=10).fit(X, callbacks=[StopAt(0)])
    assert len(detector.features_.history_["loss"]) == 1


# PandaOE.fit took no callbacks (its fine-tuning is an adaptation too).
def test_pandaoe_calls_the_training_callbacks():
    from sklearn_panda.callbacks import TrainingCallback

    class Log(TrainingCallback):
        def __init__(self, choose=False):
            self.calls, self.choose = [], choose

        def on_train_begin(self, net, *, n_samples, **kwargs):
            self.calls.append(("begin", n_samples))
            return [0, 1] if self.choose else None

        def on_step_end(self, net, *, step, **kwargs):
            self.calls.append(("step", step))
            return step == 1

        def on_train_end(self, net, *, training_inputs, **kwargs):
            self.calls.append(("end", len(training_inputs)))

    X = np.random.default_rng(0).normal(size=(20, 6))
    y = np.r_[np.ones(12), -np.ones(8)]
    log = Log()
    oe = PandaOE(backbone=tiny_mlp, weights=None, n_steps=5, random_state=0).fit(X, y, callbacks=[log])
    assert log.calls == [("begin", 20), ("step", 0), ("step", 1), ("end", 20)] and len(oe.history_["loss"]) == 2
    assert len(PandaOE(backbone=tiny_mlp, weights=None, n_steps=5).fit_predict(X, y, callbacks=[Log()])) == 20
    with pytest.raises(ValueError, match="PandaOE fine-tunes on every sample it is given"):
        PandaOE(backbone=tiny_mlp, weights=None, n_steps=5).fit(X, y, callbacks=[Log(choose=True)])


# A review of the fixes above: what they missed or broke.
def test_subpackages_are_attributes_of_the_package_as_before():
    import subprocess
    import sys

    code = (
        "import sklearn_panda as sp; assert sp.scorers.KNNScorer is sp.KNNScorer; "
        "print(sp.callbacks.__name__, sp.model_selection.__name__, sp._engine.__name__)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["sklearn_panda.callbacks", "sklearn_panda.model_selection", "sklearn_panda._engine"]


def test_a_module_that_cannot_be_copied_is_used_as_returned_with_a_warning(images):
    import threading

    class Locked(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = tiny_resnet()
            self.lock = threading.Lock()  # deepcopy cannot copy a lock

        def forward(self, x):
            return self.net(x)

    settings = dict(TINY_IMAGES, n_steps=0, stage_ends=["net.layer2", "net.layer3", "net.layer4"])
    with pytest.warns(UserWarning, match=r"cannot be copied .*it is used as returned"):
        PandaFeatures(**{**settings, "backbone": lambda: Locked()}).fit(images[:4])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a class builds a new module: nothing to copy, nothing to warn about
        PandaFeatures(**{**settings, "backbone": Locked}).fit(images[:4])


@pytest.mark.parametrize("device", ["meta"])
def test_meta_is_refused_and_other_backends_are_asked(device, monkeypatch):
    import types

    with pytest.raises(ValueError, match="device='meta' is not available here"):
        resolve_device(device)
    monkeypatch.setattr(torch, "hpu", types.SimpleNamespace(is_available=lambda: False), raising=False)
    with pytest.raises(ValueError, match="device='hpu' is not available here"):
        resolve_device("hpu")
    monkeypatch.setattr(torch, "hpu", types.SimpleNamespace(is_available=lambda: True), raising=False)
    assert resolve_device("hpu").type == "hpu"


def test_on_step_end_returning_anything_but_a_bool_is_named():
    from sklearn_panda.callbacks import TrainingCallback

    class ReturnsTheLoss(TrainingCallback):
        def on_step_end(self, net, *, loss, **kwargs):
            return loss

    with pytest.raises(TypeError, match=r"ReturnsTheLoss\.on_step_end must return None, True .* or False; got float"):
        PandaFeatures(backbone=tiny_mlp, weights=None, n_steps=3).fit(np.zeros((8, 6)), callbacks=[ReturnsTheLoss()])


def test_no_0_1_warning_for_boolean_labels():
    X = np.random.default_rng(0).normal(size=(20, 6))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        PandaOE(backbone=tiny_mlp, weights=None, n_steps=1, normal_label=True).fit(X, np.r_[np.ones(12), np.zeros(8)] > 0)


@pytest.mark.parametrize("scorer, n_samples", [("knn", 1), ("mahalanobis", 2)])
def test_too_few_samples_for_a_given_scorer_are_refused_before_the_adaptation(scorer, n_samples, monkeypatch):
    from sklearn_panda import KNNScorer, MahalanobisScorer

    given = KNNScorer() if scorer == "knn" else MahalanobisScorer()
    monkeypatch.setattr(PandaFeatures, "_fit_checked", lambda *args, **kwargs: pytest.fail("adapted first"))
    with pytest.raises(ValueError, match=rf"needs at least {n_samples + 1} training samples"):
        PandaDetector(backbone=tiny_mlp, weights=None, scorer=given).fit(np.zeros((n_samples, 6)))


def test_export_onnx_names_the_extra_before_any_work(monkeypatch):
    import importlib.util

    from sklearn_panda.deploy import export_onnx

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None if name == "onnx" else find_spec(name, *args))
    with pytest.raises(ImportError, match=r"export_onnx needs ONNX: pip install 'sklearn-panda\[onnx\]'"):
        export_onnx(object(), "never.onnx", image_size=(8, 8))


# With the public names imported on first use, load found only the estimator classes already imported:
# a fresh process could not load a PandaPatchDetector (or PandaOE) file with `from sklearn_panda import load`.
def test_a_fresh_process_loads_every_estimator_file(tmp_path):
    import subprocess
    import sys

    from sklearn_panda import save

    X = (np.random.default_rng(0).random((6, 32, 32, 3)) * 255).astype(np.uint8)
    save(PandaPatchDetector(backbone="resnet18", weights=None, resize=None).fit(X), tmp_path / "patch.pt")
    vectors = np.random.default_rng(0).normal(size=(20, 6))
    save(PandaOE(backbone=tiny_mlp, weights=None, n_steps=1).fit(vectors, np.r_[np.ones(12), -np.ones(8)]),
         tmp_path / "oe.pt")
    # PandaOE's tiny backbone is the tests' own factory, given to load (which imports no module a file names).
    code = (
        "from conftest import tiny_mlp; from sklearn_panda import load; "
        f"print(type(load({str(tmp_path / 'patch.pt')!r})).__name__, "
        f"type(load({str(tmp_path / 'oe.pt')!r}, backbone=tiny_mlp)).__name__)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(Path(__file__).parent))
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["PandaPatchDetector", "PandaOE"]


# GridSearchCV(refit=True) with NormalOnlySplit refitted the best detector on every sample, anomalies
# included, without a word (found by a scikit-learn conventions reading): y is still ignored, but a
# y marking anomalies now warns.
def test_a_y_marking_anomalies_warns_that_they_are_fitted_as_normal():
    from sklearn.model_selection import GridSearchCV

    from sklearn_panda import KNNScorer, NormalOnlySplit

    rng = np.random.default_rng(0)
    X = np.vstack([rng.normal(size=(24, 4)), rng.normal(6, 1, size=(6, 4))])
    y = np.r_[np.ones(24, dtype=int), -np.ones(6, dtype=int)]
    search = GridSearchCV(KNNScorer(), {"n_neighbors": [1, 2]}, cv=NormalOnlySplit(), scoring="roc_auc")
    with pytest.warns(UserWarning, match=r"KNNScorer\.fit ignores y, which labels 6 of the 30 samples -1"):
        search.fit(X, y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # refit=False: the folds fit normal samples only, no warning
        GridSearchCV(KNNScorer(), {"n_neighbors": [1, 2]}, cv=NormalOnlySplit(), scoring="roc_auc",
                     refit=False).fit(X, y)
        KNNScorer().fit(X, np.r_[np.ones(24), np.zeros(6)])  # not outlier labels: ignored quietly
    settings = dict(backbone=tiny_mlp, weights=None, random_state=0)
    for detector in (PandaDetector(**settings, n_steps=0), PandaPatchDetector(**settings)):
        with pytest.warns(UserWarning, match=r"\.fit ignores y"):
            detector.fit(X, y)
        with pytest.warns(UserWarning, match=r"\.fit ignores y"):
            detector.fit_predict(X, y)
    with pytest.warns(UserWarning, match=r"PandaPatchDetector\.fit ignores y"):
        PandaPatchDetector(**settings).fit(X[:24]).partial_fit(X, y)


def test_normal_only_split_prints_its_parameters_and_named_backbones_tag_images():
    from sklearn_panda import NormalOnlySplit

    assert repr(NormalOnlySplit(4, shuffle=True, random_state=0)) == \
        "NormalOnlySplit(n_splits=4, random_state=0, shuffle=True)"
    for estimator in (PandaDetector(), PandaPatchDetector()):
        tags = estimator.__sklearn_tags__()
        assert not tags.input_tags.two_d_array and tags.input_tags.three_d_array and not tags.non_deterministic
    assert PandaDetector(backbone=tiny_mlp).__sklearn_tags__().input_tags.two_d_array
