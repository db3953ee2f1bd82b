"""The command line, end to end on real image files with a tiny backbone."""

import base64
import contextlib
import csv
import fractions
import importlib
import io
import os
import re
import subprocess
import sys
import types

import numpy as np
import pytest
import torch
from PIL import Image

from sklearn_panda import PandaDetector, load
from sklearn_panda._io.images import collect_images, write_files
from sklearn_panda.cli import build_parser, main
from sklearn_panda.cli._commands import detector_from_args

BACKBONE_MODULE = "panda_cli_backbones"
FACTORY = f"{BACKBONE_MODULE}:tiny_resnet"
TINY_FIT = ["--n-steps", "2", "--resize", "32", "--crop-size", "32", "--random-state", "0", "--device", "cpu"]


def _gradient(rng):
    """A smooth 32x32 image: the normal kind."""
    ramp = np.linspace(0, 255, 32) * (0.6 + 0.4 * rng.random())
    return np.repeat(np.tile(ramp, (32, 1))[..., None], 3, axis=2).astype(np.uint8)


def _noise(rng):
    return (rng.random((32, 32, 3)) * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def backbone_module(tmp_path_factory):
    """A user's module of backbones, importable from PYTHONPATH as the CLI expects."""
    folder = tmp_path_factory.mktemp("backbones")
    (folder / f"{BACKBONE_MODULE}.py").write_text(
        "from torchvision.models.resnet import BasicBlock, ResNet\n\n\n"
        "def tiny_resnet():\n"
        "    return ResNet(BasicBlock, [1, 1, 1, 1], num_classes=10)\n\n\n"
        "def same_net_other_name():\n"
        "    return tiny_resnet()\n"
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(folder))
        yield importlib.import_module(BACKBONE_MODULE)
        sys.modules.pop(BACKBONE_MODULE)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """train/: 7 normal images (one in a subfolder, one .JPG) and hidden debris that is no image;
    test/: 3 normal and 3 noise images."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    train, test = root / "train", root / "test"
    (train / "more").mkdir(parents=True)
    (train / ".cache").mkdir()
    test.mkdir()
    for i in range(6):
        Image.fromarray(_gradient(rng)).save(train / f"normal{i}.png")
    Image.fromarray(_gradient(rng)).save(train / "more" / "normal6.JPG")
    (train / ".cache" / "junk.png").write_bytes(b"not an image")
    (train / "._normal0.png").write_bytes(b"not an image")
    (train / "notes.md").write_text("not an image either")
    for i in range(3):
        Image.fromarray(_gradient(rng)).save(test / f"normal{i}.png")
        Image.fromarray(_noise(rng)).save(test / f"noise{i}.png")
    return types.SimpleNamespace(train=train, test=test)


@pytest.fixture(scope="module")
def fitted(backbone_module, folders, tmp_path_factory):
    """``sklearn-panda fit`` run once; every score test uses its model."""
    model = tmp_path_factory.mktemp("model") / "model.pt"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        status = main(
            ["fit", str(folders.train), "--model", str(model), "--backbone-factory", FACTORY, *TINY_FIT]
        )
    detector = load(model, backbone=backbone_module.tiny_resnet) if status == 0 else None
    return types.SimpleNamespace(status=status, stdout=stdout.getvalue(), model=model, detector=detector)


def run(capsys, *args):
    status = main([str(arg) for arg in args])
    out, err = capsys.readouterr()
    return status, out, err


def read_csv(path):
    with open(path, newline="") as file:
        rows = list(csv.reader(file))
    return rows[0], rows[1:]


def test_collect_images_searches_folders_recursively_and_skips_hidden_and_other_files(folders):
    names = [os.path.relpath(path, folders.train) for path in collect_images([folders.train])]
    assert names == [os.path.join("more", "normal6.JPG")] + [f"normal{i}.png" for i in range(6)]


def test_fit_saves_a_model_that_loads(fitted, folders):
    assert fitted.status == 0
    params = fitted.detector.get_params()
    assert [params[key] for key in ("n_steps", "resize", "crop_size", "random_state")] == [2, 32, 32, 0]
    # A factory brings its own weights: the CLI does not ask for ImageNet ones.
    assert params["weights"] is None
    assert len(fitted.detector.training_scores_) == 7
    assert "Fitted a PandaDetector on 7 images" in fitted.stdout
    assert f"Model saved to {fitted.model}" in fitted.stdout


def test_fit_verbose_shows_progress_and_saves_a_quiet_model(backbone_module, folders, tmp_path, capsys):
    # fit -v left verbose=1 in the features_ a PandaDetector nests (they copy its parameters at fit):
    # their transform printed progress bars in every later use of the model.
    model = tmp_path / "model.pt"
    status, _, err = run(capsys, "fit", folders.train, "--model", model, "--backbone-factory", FACTORY, *TINY_FIT, "-v")
    assert status == 0 and "100%" in err
    detector = load(model, backbone=backbone_module.tiny_resnet)
    assert detector.verbose == 0 and detector.features_.verbose == 0


def test_fit_options_become_detector_parameters():
    parser = build_parser()
    named = detector_from_args(parser.parse_args(["fit", "x", "--model", "m.pt"]))
    assert named.get_params() == PandaDetector(backbone="efficientnet_lite0").get_params()
    args = ["fit", "x", "--model", "m.pt", "--backbone", "resnet18", "--weights", "none", "-v",
            "--contamination", "0.1", "--n-steps", "3", "--resize", "40", "--crop-size", "36",
            "--stage-ends", "layer2", "layer3", "--feature-node", "layer3"]
    params = detector_from_args(parser.parse_args(args)).get_params()
    # -v shows progress for the run (fit_command); it is not a parameter of the model saved.
    assert params["backbone"] == "resnet18" and params["weights"] is None and params["verbose"] == 0
    assert [params[key] for key in ("contamination", "n_steps", "resize", "crop_size")] == [0.1, 3, 40, 36]
    assert params["stage_ends"] == ["layer2", "layer3"] and params["feature_node"] == "layer3"


def test_fit_size_options_take_none_and_default_to_the_recipe():
    parser = build_parser()
    params = detector_from_args(parser.parse_args(["fit", "x", "--model", "m.pt", "--crop-size", "none"])).get_params()
    assert (params["resize"], params["crop_size"]) == ("auto", None)
    params = detector_from_args(parser.parse_args(["fit", "x", "--model", "m.pt", "--resize", "NONE"])).get_params()
    assert (params["resize"], params["crop_size"]) == (None, "auto")
    params = detector_from_args(parser.parse_args(["fit", "x", "--model", "m.pt", "--resize", "24x32"])).get_params()
    assert params["resize"] == (24, 32)
    for bad in ("0", "-3", "big", "24x", "0x3"):
        with pytest.raises(SystemExit):
            parser.parse_args(["fit", "x", "--model", "m.pt", "--resize", bad])


def test_score_writes_a_csv_sorted_by_score_with_labels(fitted, folders, tmp_path, capsys):
    output = tmp_path / "scores.csv"
    status, out, err = run(capsys, "score", folders.test, "--model", fitted.model,
                           "--backbone-factory", FACTORY, "--output", output)
    assert status == 0, err
    header, rows = read_csv(output)
    assert header == ["path", "score", "label"]
    paths = collect_images([folders.test])
    assert sorted(row[0] for row in rows) == sorted(paths)
    scores = np.array([float(row[1]) for row in rows])
    assert np.all(np.diff(scores) >= 0)
    expected = dict(zip(paths, fitted.detector.score_samples(paths)))
    np.testing.assert_allclose(scores, [expected[row[0]] for row in rows], rtol=1e-6)
    expected_labels = dict(zip(paths, fitted.detector.predict(paths)))
    assert [row[2] for row in rows] == [
        "anomaly" if expected_labels[row[0]] == -1 else "normal" for row in rows
    ]
    n_flagged = sum(row[2] == "anomaly" for row in rows)
    assert f"Scored 6 images: {n_flagged} flagged" in out
    assert f"threshold {fitted.detector.offset_:.6g}" in out
    assert f"Scores written to {output}" in out


def test_score_takes_image_files_and_list_files(fitted, folders, tmp_path, capsys):
    listed = tmp_path / "lists" / "images.txt"
    listed.parent.mkdir()
    relative = os.path.relpath(folders.test / "noise0.png", listed.parent)
    listed.write_text(f"# normal images first\n{folders.test / 'normal1.png'}\n\n  {relative}  \n")
    output = tmp_path / "scores.csv"
    single = folders.test / "normal2.png"
    status, _, err = run(capsys, "score", listed, single, "--model", fitted.model,
                         "--backbone-factory", FACTORY, "--output", output)
    assert status == 0, err
    _, rows = read_csv(output)
    assert sorted(os.path.normpath(row[0]) for row in rows) == sorted(
        os.path.normpath(path) for path in (folders.test / "normal1.png", listed.parent / relative, single)
    )


def test_report_is_a_self_contained_page_of_extremes_and_histogram(fitted, folders, tmp_path, capsys):
    output, report = tmp_path / "scores.csv", tmp_path / "report.html"
    status, out, err = run(capsys, "score", folders.test, "--model", fitted.model, "--backbone-factory",
                           FACTORY, "--output", output, "--report", report, "--top", "2")
    assert status == 0, err
    assert f"Report written to {report}" in out
    page = report.read_text()
    # Nothing is fetched from elsewhere: no scripts, no external sources.
    assert "<script" not in page and 'src="http' not in page and "<link" not in page
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == 4
    for encoded in images:
        assert Image.open(io.BytesIO(base64.b64decode(encoded))).size == (32, 32)
    assert "<svg" in page and f"threshold {fitted.detector.offset_:.6g}" in page
    _, rows = read_csv(output)
    anomalous_part, normal_part = page.split("most normal")
    for path, *_ in rows[:2]:
        assert path in anomalous_part
    for path, *_ in rows[-2:]:
        assert path in normal_part


def test_a_factory_of_another_name_loads_with_a_one_line_warning(fitted, folders, tmp_path, capsys):
    status, _, err = run(capsys, "score", folders.test, "--model", fitted.model, "--output",
                         tmp_path / "s.csv", "--backbone-factory", f"{BACKBONE_MODULE}:same_net_other_name")
    assert status == 0
    assert err.splitlines() == [err.strip()] and err.startswith("sklearn-panda: warning:")
    assert "same_net_other_name" in err


def _bad_model(kind, fitted, tmp_path):
    path = tmp_path / "bad.pt"
    if kind == "garbage":
        path.write_bytes(b"this is not a model\n")
    elif kind == "truncated":
        path.write_bytes(fitted.model.read_bytes()[:4096])
    elif kind == "numpy archive":
        # A zip archive too, but not torch's.
        with open(path, "wb") as file:
            np.savez(file, weights=np.zeros(3))
    elif kind == "pickled object":
        torch.save({"weights": fractions.Fraction(1, 3)}, path)
    else:
        torch.save({"weights": torch.zeros(3)}, path)
    return path


SCORE_ERRORS = {
    "missing path": (lambda ctx: [ctx.tmp / "nowhere"], {}, ["No such file or folder", "nowhere"]),
    "empty folder": (lambda ctx: [ctx.empty], {}, ["No images in folder", "empty"]),
    "unreadable image": (lambda ctx: [ctx.folders.test, ctx.broken], {}, ["Could not read", "broken.png"]),
    "missing list entry": (lambda ctx: [ctx.bad_list], {}, ["line 2", "gone.png"]),
    "garbage model": (None, {"model": "garbage"}, ["bad.pt", "not a model file"]),
    "truncated model": (None, {"model": "truncated"}, ["bad.pt", "not a model file"]),
    "numpy archive": (None, {"model": "numpy archive"}, ["bad.pt", "not a model file", "damaged"]),
    "pickled object": (None, {"model": "pickled object"}, ["bad.pt", "not a model file", "weights-only"]),
    "foreign torch file": (None, {"model": "foreign"}, ["bad.pt", "not a file written by"]),
    "missing model": (None, {"model_path": "missing.pt"}, ["No such model file", "missing.pt"]),
    "model needs its factory": (None, {"factory": None}, ["--backbone-factory", "tiny_resnet"]),
    "unimportable factory": (None, {"factory": "no_such_module:f"}, ["Cannot import", "no_such_module"]),
    "malformed factory": (None, {"factory": "no_colon"}, ["MODULE:FUNCTION", "no_colon"]),
    "missing output folder": (None, {"output": "absent/scores.csv"}, ["does not exist", "absent"]),
}


@pytest.mark.parametrize("case", SCORE_ERRORS)
def test_score_errors_are_one_line_and_write_nothing(case, fitted, folders, tmp_path, capsys):
    sources, options, words = SCORE_ERRORS[case]
    ctx = types.SimpleNamespace(tmp=tmp_path, folders=folders, empty=tmp_path / "empty",
                                broken=tmp_path / "broken.png", bad_list=tmp_path / "list.txt")
    ctx.empty.mkdir()
    ctx.broken.write_bytes(b"\x89PNG but not really")
    ctx.bad_list.write_text(f"{folders.test / 'normal0.png'}\ngone.png\n")
    out_folder = tmp_path / "out"
    out_folder.mkdir()
    # An earlier result must survive a failed run untouched.
    (out_folder / "scores.csv").write_text("earlier result\n")
    model = fitted.model
    if "model" in options:
        model = _bad_model(options["model"], fitted, tmp_path)
    elif "model_path" in options:
        model = tmp_path / options["model_path"]
    factory = options.get("factory", FACTORY)
    args = ["score", *(sources(ctx) if sources else [folders.test]), "--model", model,
            "--output", out_folder / options.get("output", "scores.csv"),
            "--report", out_folder / "report.html"]
    status, out, err = run(capsys, *args, *(["--backbone-factory", factory] if factory else []))
    assert status == 2
    assert err.splitlines() == [err.strip()], err
    assert err.startswith("sklearn-panda: error: ")
    for word in words:
        assert word in err
    assert "Traceback" not in err and out == ""
    assert os.listdir(out_folder) == ["scores.csv"]
    assert (out_folder / "scores.csv").read_text() == "earlier result\n"


def test_outputs_are_replaced_only_once_all_are_written(tmp_path):
    (tmp_path / "scores.csv").write_text("earlier result\n")
    with pytest.raises(FileNotFoundError):
        write_files({tmp_path / "scores.csv": b"new\n", tmp_path / "absent" / "report.html": b"<html>"})
    assert os.listdir(tmp_path) == ["scores.csv"]
    assert (tmp_path / "scores.csv").read_text() == "earlier result\n"


@pytest.mark.parametrize("case", ["missing folder", "unreadable image", "bad option value"])
def test_fit_errors_are_one_line_and_write_no_model(case, backbone_module, folders, tmp_path, capsys):
    source, options = folders.train, TINY_FIT
    if case == "missing folder":
        source = tmp_path / "nowhere"
    elif case == "unreadable image":
        source = tmp_path / "train.txt"
        source.write_text(f"{folders.train / 'normal0.png'}\n{folders.test / 'normal0.png'}\nbroken.png\n")
        (tmp_path / "broken.png").write_bytes(b"not an image")
    else:
        options = [*TINY_FIT, "--contamination", "0.9"]
    out_folder = tmp_path / "out"
    out_folder.mkdir()
    status, _, err = run(capsys, "fit", source, "--model", out_folder / "model.pt",
                         "--backbone-factory", FACTORY, *options)
    assert status == 2
    assert err.splitlines() == [err.strip()] and err.startswith("sklearn-panda: error: ")
    named = {"missing folder": "nowhere", "unreadable image": "broken.png",
             "bad option value": "contamination"}
    assert named[case] in err
    assert os.listdir(out_folder) == []


@pytest.mark.parametrize("model", ["", "models/"])
def test_a_model_path_naming_no_file_is_refused_before_the_fit(model, backbone_module, folders, tmp_path,
                                                                 capsys, monkeypatch):
    # --model "" fitted every image, then failed to save with the atomic writer's raw error.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    status, _, err = run(capsys, "fit", folders.train, "--model", model, "--backbone-factory", FACTORY, *TINY_FIT)
    assert status == 2 and f"--model {model!r} names no file; give a file name." in err
    assert sorted(os.listdir(tmp_path)) == ["models"] and os.listdir(tmp_path / "models") == []


@pytest.mark.parametrize(
    "args, message",
    [
        (["score", "x", "--model", "m.pt"], "--output"),
        (["score", "x", "--model", "m.pt", "--output", "s.csv", "--top", "0"], "at least 1"),
        (["fit", "x", "--model", "m.pt", "--contamination", "lots"], "'auto' or a number"),
        (["fit", "x", "--model", "m.pt", "--backbone", "resnet18", "--backbone-factory", "a:b"],
         "not allowed"),
        ([], "COMMAND"),
    ],
)
def test_bad_usage_exits_with_status_2(args, message, capsys):
    status, _, err = run(capsys, *args)
    assert status == 2
    assert message in err


def test_python_m_sklearn_panda_help():
    result = subprocess.run(
        [sys.executable, "-m", "sklearn_panda", "--help"], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: sklearn-panda")
    assert "fit" in result.stdout and "score" in result.stdout


def test_fit_and_update_refuse_an_image_named_twice(folders, fitted, tmp_path, capsys):
    # `fit data/ data/more/` trained on normal6.JPG twice: its copy is its nearest neighbour, which
    # pulled the leave-one-out scores and the threshold towards zero.
    model = tmp_path / "twice.pt"
    status, _, err = run(capsys, "fit", folders.train, folders.train / "more", "--model", model,
                         "--backbone-factory", FACTORY, *TINY_FIT)
    assert status == 2 and "fit got 1 image file(s) more than once" in err and "normal6.JPG" in err
    assert not model.exists()
    status, _, err = run(capsys, "update", folders.test, folders.test / "noise0.png", "--model", fitted.model,
                         "--output", tmp_path / "updated.pt", "--backbone-factory", FACTORY)
    assert status == 2 and "update got 1 image file(s) more than once" in err


def test_a_link_into_a_missing_folder_is_refused_before_the_work(tmp_path):
    from sklearn_panda.cli._outputs import check_destination

    (tmp_path / "current.pt").symlink_to(tmp_path / "models" / "v3.pt")
    with pytest.raises(FileNotFoundError, match="The folder for --model does not exist: .*models"):
        check_destination(tmp_path / "current.pt", "--model")


def test_an_interruption_is_one_line_and_writes_nothing(backbone_module, folders, tmp_path, capsys, monkeypatch):
    # Ctrl-C during a fit printed a 20- to 60-line traceback.
    import sklearn_panda.cli._commands as commands

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(commands, "collect_images", interrupted)
    status, out, err = run(capsys, "fit", folders.train, "--model", tmp_path / "model.pt",
                           "--backbone-factory", FACTORY, *TINY_FIT)
    assert status == 130 and out == ""
    assert err == "sklearn-panda: interrupted; no output was written or replaced.\n"
    assert os.listdir(tmp_path) == []
