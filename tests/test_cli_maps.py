"""The command line's local models: fit --local, score --maps, and the report's overlays."""

import base64
import csv
import importlib
import io
import os
import re
import sys
import types

import numpy as np
import pytest
from PIL import Image

from sklearn_panda import PandaPatchDetector, load
from sklearn_panda._io.images import collect_images
from sklearn_panda.cli import build_parser, main
from sklearn_panda.cli._commands import detector_from_args

MODULE = "panda_cli_patch_backbones"
FACTORY = f"{MODULE}:tiny_cnn"
LOCAL_FIT = ["--local", "--layers", "5", "7", "--resize", "none", "--coreset-ratio", "0.1", "--random-state", "0",
             "--device", "cpu"]


@pytest.fixture(scope="module")
def backbone_module(tmp_path_factory):
    folder = tmp_path_factory.mktemp("patch_backbones")
    (folder / f"{MODULE}.py").write_text(
        "from torch import nn\n\n\n"
        "def tiny_cnn():\n"
        "    layers = []\n"
        "    for n_in, n_out in ((3, 8), (8, 8), (8, 16), (16, 16)):\n"
        "        layers += [nn.Conv2d(n_in, n_out, 3, stride=2, padding=1), nn.ReLU()]\n"
        "    return nn.Sequential(*layers)\n"
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(folder))
        yield importlib.import_module(MODULE)
        sys.modules.pop(MODULE)


def _stripes(rng, height, width, phase=None):
    rows = (np.arange(height)[:, None] + (rng.integers(8) if phase is None else phase)) % 8 < 4
    image = np.where(rows, 200, 40) + rng.normal(0, 4, size=(height, width))
    return np.repeat(np.clip(image, 0, 255).astype(np.uint8)[..., None], 3, axis=2)


@pytest.fixture(scope="module")
def local(backbone_module, tmp_path_factory):
    """Stripes to fit on; test images of two sizes, two with a checkerboard defect; a fitted local model."""
    root = tmp_path_factory.mktemp("local")
    rng = np.random.default_rng(0)
    (root / "train").mkdir()
    (root / "test").mkdir()
    for i in range(10):
        Image.fromarray(_stripes(rng, 48, 64, phase=i % 8)).save(root / "train" / f"good{i}.png")
    for i, (height, width) in enumerate([(48, 64), (56, 72), (48, 64)]):
        Image.fromarray(_stripes(rng, height, width)).save(root / "test" / f"good{i}.png")
    for i in range(2):
        image = _stripes(rng, 48, 64)
        image[16:28, 24:36] = np.where(np.add.outer(np.arange(12), np.arange(12)) % 2 == 0, 255, 0)[..., None]
        Image.fromarray(image).save(root / "test" / f"scratched{i}.png")
    model = root / "local.pt"
    status = main(["fit", str(root / "train"), "--model", str(model), "--backbone-factory", FACTORY, *LOCAL_FIT])
    assert status == 0
    return types.SimpleNamespace(root=root, model=model, detector=load(model, backbone=backbone_module.tiny_cnn))


def run(capsys, *args):
    status = main([str(arg) for arg in args])
    out, err = capsys.readouterr()
    return status, out, err


def test_fit_local_options_become_patch_detector_parameters():
    parser = build_parser()
    detector = detector_from_args(parser.parse_args(["fit", "x", "--model", "m.pt", "--local"]))
    assert detector.get_params() == PandaPatchDetector(backbone="efficientnet_lite0").get_params()
    args = ["fit", "x", "--model", "m.pt", "--local", "--coreset-ratio", "0.05", "--layers", "a", "b",
            "--resize", "320", "--contamination", "0.1"]
    params = detector_from_args(parser.parse_args(args)).get_params()
    assert (params["coreset_ratio"], params["layers"], params["resize"], params["contamination"]) == (
        0.05, ["a", "b"], 320, 0.1,
    )


def test_score_maps_writes_an_overlay_per_image_at_its_size(local, tmp_path, capsys):
    output, maps = tmp_path / "scores.csv", tmp_path / "maps"
    status, out, err = run(capsys, "score", local.root / "test", "--model", local.model, "--backbone-factory",
                           FACTORY, "--output", output, "--maps", maps)
    assert status == 0, err
    assert f"Maps written to {maps}" in out
    with open(output, newline="") as file:
        header, *rows = list(csv.reader(file))
    assert header == ["path", "score", "label", "map"]
    paths = collect_images([local.root / "test"])
    assert sorted(os.listdir(maps)) == sorted(os.path.basename(row[3]) for row in rows)
    for path, _, _, map_file in rows:
        with Image.open(path) as image, Image.open(map_file) as overlay:
            assert overlay.size == image.size and overlay.mode == "RGB"
    # The most anomalous are the scratched ones, and their overlays are reddest where the scratch is.
    assert {os.path.basename(row[0]) for row in rows[:2]} == {"scratched0.png", "scratched1.png"}
    overlay = np.asarray(Image.open(rows[0][3]), dtype=float)
    redness = overlay[..., 0] - overlay[..., 2]
    assert redness[16:28, 24:36].mean() > redness[:, :12].mean() + 10
    scores = dict(zip(paths, local.detector.score_samples(paths)))
    np.testing.assert_allclose([float(row[1]) for row in rows], [scores[row[0]] for row in rows], rtol=1e-6)


def test_the_report_shows_overlays_beside_the_most_anomalous(local, tmp_path, capsys):
    report = tmp_path / "report.html"
    status, _, err = run(capsys, "score", local.root / "test", "--model", local.model, "--backbone-factory",
                         FACTORY, "--output", tmp_path / "s.csv", "--report", report, "--top", "2")
    assert status == 0, err
    page = report.read_text()
    anomalous_part, normal_part = page.split("most normal")
    overlays = re.findall(r'<img class="overlay" src="data:image/png;base64,([^"]+)"', anomalous_part)
    assert len(overlays) == 2 and "scratched" in anomalous_part
    assert 'class="overlay"' not in normal_part
    assert Image.open(io.BytesIO(base64.b64decode(overlays[0]))).size == (64, 48)
    assert not (tmp_path / "maps").exists()


@pytest.mark.parametrize(
    "case, words",
    [
        ("image-level model", ["--maps needs a local model", "PandaDetector"]),
        ("maps is a file", ["is a file; give a folder"]),
        ("maps parent missing", ["does not exist"]),
    ],
)
def test_maps_errors_are_one_line_and_write_nothing(case, words, local, tmp_path, capsys):
    model, factory, maps = local.model, FACTORY, tmp_path / "maps"
    if case == "image-level model":
        from sklearn_panda import PandaDetector, save

        image_level = PandaDetector(backbone=load_factory(), weights=None, n_steps=0, resize=None, crop_size=None,
                                    stage_ends=["3", "5"], feature_node="7", n_trainable_stages=1).fit(
            collect_images([local.root / "train"])
        )
        model = tmp_path / "image.pt"
        save(image_level, model)
    elif case == "maps is a file":
        maps.write_text("a file")
    else:
        maps = tmp_path / "absent" / "maps"
    status, out, err = run(capsys, "score", local.root / "test", "--model", model, "--backbone-factory", factory,
                           "--output", tmp_path / "s.csv", "--maps", maps)
    assert status == 2 and out == ""
    assert err.splitlines() == [err.strip()] and err.startswith("sklearn-panda: error: ")
    for word in words:
        assert word in err
    assert not (tmp_path / "s.csv").exists()
    assert case == "maps is a file" or not maps.exists()


def load_factory():
    return importlib.import_module(MODULE).tiny_cnn


def test_fit_refuses_options_of_the_other_kind(local, tmp_path, capsys):
    status, _, err = run(capsys, "fit", local.root / "train", "--model", tmp_path / "m.pt", "--backbone-factory",
                         FACTORY, *LOCAL_FIT, "--n-steps", "3")
    assert status == 2 and "--n-steps cannot be used for a local model" in err
    status, _, err = run(capsys, "fit", local.root / "train", "--model", tmp_path / "m.pt", "--coreset-ratio", "0.1")
    assert status == 2 and "--coreset-ratio cannot be used for an image-level model" in err
    assert not (tmp_path / "m.pt").exists()


@pytest.fixture(scope="module")
def image_level(local, tmp_path_factory):
    """An image-level model of the same tiny network, saved: the other kind ``score`` takes."""
    from sklearn_panda import PandaDetector, save

    detector = PandaDetector(backbone=load_factory(), weights=None, n_steps=0, resize=(48, 64), crop_size=None,
                             stage_ends=["3", "5"], feature_node="7", n_trainable_stages=1).fit(
        collect_images([local.root / "train"])
    )
    model = tmp_path_factory.mktemp("image_level") / "image.pt"
    save(detector, model)
    return types.SimpleNamespace(model=model, detector=detector)


@pytest.mark.parametrize("with_output", [True, False], ids=["output", "no-output"])
@pytest.mark.parametrize("with_report", [False, True], ids=["no-report", "report"])
@pytest.mark.parametrize("with_maps", [False, True], ids=["no-maps", "maps"])
@pytest.mark.parametrize("kind", ["local", "image-level"])
def test_every_combination_of_score_options(kind, with_maps, with_report, with_output, local, image_level,
                                            tmp_path, capsys):
    """Issue 41, item 1: ``score`` of either kind of model with or without ``--maps``, ``--report``
    and ``--output`` (required); the plainest call, a local model with none, crashed."""
    fitted = local if kind == "local" else image_level
    output, report, maps = tmp_path / "scores.csv", tmp_path / "report.html", tmp_path / "maps"
    args = ["score", local.root / "test", "--model", fitted.model, "--backbone-factory", FACTORY]
    args += (["--output", output] if with_output else []) + (["--report", report] if with_report else [])
    args += ["--maps", maps] if with_maps else []
    status, out, err = run(capsys, *args)
    if not with_output or (with_maps and kind == "image-level"):
        assert status == 2 and out == ""
        assert ("--output" if not with_output else "--maps needs a local model") in err
        assert os.listdir(tmp_path) == []
        return
    assert status == 0, err
    assert out.splitlines()[1:] == [f"Scores written to {output}"] + [f"Maps written to {maps}"] * with_maps + [
        f"Report written to {report}"
    ] * with_report
    with open(output, newline="") as file:
        header, *rows = list(csv.reader(file))
    assert header == ["path", "score", "label"] + ["map"] * with_maps
    paths = collect_images([local.root / "test"])
    expected = dict(zip(paths, fitted.detector.score_samples(paths)))
    scores = [float(row[1]) for row in rows]
    assert sorted(row[0] for row in rows) == sorted(paths) and scores == sorted(scores)
    np.testing.assert_allclose(scores, [expected[row[0]] for row in rows], rtol=1e-6)
    assert sorted(os.listdir(tmp_path)) == sorted(["scores.csv"] + ["maps"] * with_maps + ["report.html"] * with_report)
    if with_maps:
        assert sorted(os.listdir(maps)) == sorted(os.path.basename(row[3]) for row in rows)
    if with_report:
        assert report.read_text().count('class="overlay"') == (min(8, len(paths)) if kind == "local" else 0)


def test_score_regions_writes_one_row_a_region_as_defect_regions_finds_them(local, backbone_module, tmp_path,
                                                                            capsys):
    # A pixel threshold low enough that the scratches make regions (the fixture's stripe phases
    # seen once each put its leave-one-out maps, and so its threshold, high), and a blur narrow
    # enough for these small images that a scratch stays above it.
    detector = PandaPatchDetector(backbone=backbone_module.tiny_cnn, weights=None, layers=["5", "7"], resize=None,
                                  coreset_ratio=1.0, pixel_contamination=0.5, sigma=4.0, random_state=0)
    detector.fit(collect_images([local.root / "train"])).save(tmp_path / "model.pt")
    output, regions = tmp_path / "scores.csv", tmp_path / "regions.csv"
    status, out, err = run(capsys, "score", local.root / "test", "--model", tmp_path / "model.pt",
                           "--backbone-factory", FACTORY, "--output", output, "--regions", regions)
    assert status == 0, err
    with open(regions, newline="") as file:
        header, *rows = list(csv.reader(file))
    assert header == ["path", "region", "top", "left", "bottom", "right", "area", "peak", "peak_row", "peak_col"]
    assert f"{len(rows)} defect regions written to {regions}" in out
    paths = collect_images([local.root / "test"])
    expected = [
        [paths[region["image"]]] + [str(region[key]) for key in header[1:] if key != "peak"]
        for found in detector.defect_regions(paths) for region in found
    ]
    assert [row[:7] + row[8:] for row in rows] == expected
    assert rows, "the scratched images have regions above the pixel threshold"


def test_score_regions_needs_a_local_model_and_its_own_file(local, tmp_path, capsys):
    output = tmp_path / "scores.csv"
    status, _, err = run(capsys, "score", local.root / "test", "--model", local.model, "--backbone-factory",
                         FACTORY, "--output", output, "--regions", output)
    assert status != 0 and "--regions and --output name the same file" in err
    assert not output.exists()


def test_update_adds_images_to_a_local_model(local, backbone_module, tmp_path, capsys):
    updated = tmp_path / "updated.pt"
    original = local.model.read_bytes()
    good = sorted((local.root / "test").glob("good*.png"))
    status, out, err = run(capsys, "update", *good, "--model", local.model, "--output", updated,
                           "--backbone-factory", FACTORY)
    assert status == 0, err
    assert local.model.read_bytes() == original  # --output: the model file is left as it was
    detector = load(updated, backbone=backbone_module.tiny_cnn)
    assert detector.n_samples_seen_ == 13 and detector.n_training_patches_ > local.detector.n_training_patches_
    assert len(detector.memory_bank_) > len(local.detector.memory_bank_)
    expected = load(local.model, backbone=backbone_module.tiny_cnn).partial_fit([str(path) for path in good])
    assert detector.offset_ == pytest.approx(expected.offset_)
    assert f"10 -> 13 training images, a memory bank of {len(local.detector.memory_bank_)} -> " in out
    assert f"Model saved to {updated}" in out


def test_verbose_shows_progress_for_the_run_and_is_not_saved_in_the_model(local, backbone_module, tmp_path, capsys):
    # fit -v and update -v saved verbose=1 in the model: every later use of it printed progress bars.
    model, updated = tmp_path / "fitted.pt", tmp_path / "updated.pt"
    status, _, err = run(capsys, "fit", local.root / "train", "--model", model, "--backbone-factory", FACTORY,
                         *LOCAL_FIT, "-v")
    assert status == 0 and "patch features" in err
    assert load(model, backbone=backbone_module.tiny_cnn).verbose == 0
    status, _, err = run(capsys, "update", local.root / "test" / "good0.png", "--model", model, "--output", updated,
                         "--backbone-factory", FACTORY, "-v")
    assert status == 0 and "patch features" in err
    assert load(updated, backbone=backbone_module.tiny_cnn).verbose == 0


def test_fit_says_how_many_training_images_it_scored(local, tmp_path, monkeypatch, capsys):
    # A local model scores at most CALIBRATION_IMAGES (64) training images leave-one-out; the summary
    # counted the flagged among those as if they were all the training images.
    import sklearn_panda._estimators.patch_bank as patch_bank

    monkeypatch.setattr(patch_bank, "CALIBRATION_IMAGES", 6)
    status, out, _ = run(capsys, "fit", local.root / "train", "--model", tmp_path / "model.pt",
                         "--backbone-factory", FACTORY, *LOCAL_FIT)
    assert status == 0 and "on 10 images" in out
    assert re.search(r"below which \d of the 6 training images scored fall \(leave-one-out\)", out), out
    monkeypatch.undo()
    status, out, _ = run(capsys, "fit", local.root / "train", "--model", tmp_path / "model.pt",
                         "--backbone-factory", FACTORY, *LOCAL_FIT)
    assert status == 0 and re.search(r"below which \d+ training images fall", out), out


def test_update_replaces_the_model_only_once_it_has_succeeded(local, tmp_path, capsys):
    model = tmp_path / "model.pt"
    model.write_bytes(local.model.read_bytes())
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    status, _, err = run(capsys, "update", local.root / "test" / "good0.png", broken, "--model", model,
                         "--backbone-factory", FACTORY)
    assert status == 2 and "broken.png" in err and err.count("\n") == 1
    assert model.read_bytes() == local.model.read_bytes()
    status, out, err = run(capsys, "update", local.root / "test" / "good0.png", "--model", model,
                           "--backbone-factory", FACTORY)
    assert status == 0 and "10 -> 11 training images" in out and model.read_bytes() != local.model.read_bytes()


def test_update_refuses_an_image_level_model(tmp_path, capsys):
    from sklearn_panda import PandaDetector

    rng = np.random.default_rng(0)
    images = (rng.random((6, 32, 32, 3)) * 255).astype(np.uint8)
    model = tmp_path / "image_level.pt"
    PandaDetector(backbone="resnet18", weights=None, n_steps=0, random_state=0).fit(images).save(model)
    Image.fromarray(images[0]).save(tmp_path / "new.png")
    status, _, err = run(capsys, "update", tmp_path / "new.png", "--model", model)
    assert status == 2 and "update needs a local model (fit --local, a PandaPatchDetector)" in err


def test_update_names_the_images_the_model_flagged_and_fit_says_when_thresholds_rest_on_few(local, tmp_path,
                                                                                               capsys):
    # An inspector's update accepted anything without a word (another product's photo made the model
    # blind), and a fit on a few dozen images set 1% thresholds at its most unusual image unsaid.
    status, out, err = run(capsys, "fit", local.root / "train", "--model", tmp_path / "model.pt",
                           "--backbone-factory", FACTORY, *LOCAL_FIT)
    assert status == 0, err
    assert ("Note: with 10 training images scored, contamination 0.01 and pixel_contamination 0.01 rests on the "
            "most unusual of them, so new images are flagged and regions drawn more rarely than that share: fit "
            "on at least 100 normal images, or raise --contamination or a config file's pixel_contamination.") in out
    scratched = sorted((local.root / "test").glob("scratched*.png"))
    flags = local.detector.predict([str(path) for path in scratched])
    status, out, err = run(capsys, "update", *scratched, "--model", local.model, "--output", tmp_path / "u.pt",
                           "--backbone-factory", FACTORY)
    assert status == 0, err
    n_flagged = int(np.sum(flags == -1))
    assert n_flagged > 0, "the fixture's scratched images are anomalies to its model"
    assert f"Note: the model flagged {n_flagged} of the 2 added images as anomalies before adding them" in out
    status, out, _ = run(capsys, "update", local.root / "test" / "good0.png", "--model", local.model,
                         "--output", tmp_path / "v.pt", "--backbone-factory", FACTORY)
    assert status == 0 and "Note: the model flagged" not in out


def test_scoring_again_into_one_maps_folder_writes_over_each_image_s_map(local, tmp_path, capsys):
    # Maps were named by the image's position in the run: a second run wrote new names beside the first
    # run's maps (40 PNGs for 28 images), and the CSV named 12 of them.
    maps = tmp_path / "maps"
    test = sorted((local.root / "test").glob("*.png"))
    for sources in (test, test[2:]):
        status, _, err = run(capsys, "score", *sources, "--model", local.model, "--backbone-factory", FACTORY,
                             "--output", tmp_path / "scores.csv", "--maps", maps)
        assert status == 0, err
    assert len(list(maps.iterdir())) == len(test)
    with open(tmp_path / "scores.csv") as file:
        named = {os.path.basename(row["map"]) for row in csv.DictReader(file)}
    assert len(named) == len(test) - 2 and named <= {path.name for path in maps.iterdir()}
