"""``sklearn-panda fit --config FILE``: any detector's and scorer's parameters from JSON or TOML."""

import json
import sys

import numpy as np
import pytest
from PIL import Image

from sklearn_panda import KNNScorer, MahalanobisScorer, PandaDetector, PandaPatchDetector, PandaSES, load
from sklearn_panda.cli import build_parser, main
from sklearn_panda.cli._commands import detector_from_args

SES_TOML = """
detector = "PandaSES"
[parameters]
backbone = "resnet18"
n_steps = 4
checkpoint_every = 2
[scorer]
class = "MahalanobisScorer"
shrinkage = "oas"
"""


def detector_from(tmp_path, config, *options, name="config.json"):
    path = tmp_path / name
    path.write_text(config if isinstance(config, str) else json.dumps(config))
    return detector_from_args(build_parser().parse_args(["fit", "x", "--model", "m.pt", "--config", str(path), *options]))


@pytest.mark.skipif(sys.version_info < (3, 11), reason="tomllib is Python 3.11's")
def test_a_toml_file_gives_the_detector_its_parameters_and_scorer(tmp_path):
    detector = detector_from(tmp_path, SES_TOML, name="ses.toml")
    assert type(detector) is PandaSES
    params = detector.get_params(deep=False)
    assert (params["backbone"], params["n_steps"], params["checkpoint_every"]) == ("resnet18", 4, 2)
    assert isinstance(params["scorer"], MahalanobisScorer) and params["scorer"].shrinkage == "oas"


def test_options_on_the_command_line_override_the_file(tmp_path):
    config = {"parameters": {"backbone": "resnet18", "n_steps": 4, "contamination": 0.05}}
    detector = detector_from(tmp_path, config, "--n-steps", "7", "--backbone", "resnet34")
    assert type(detector) is PandaDetector
    params = detector.get_params(deep=False)
    assert (params["backbone"], params["n_steps"], params["contamination"]) == ("resnet34", 7, 0.05)
    # Without --backbone or a backbone in the file, the command line's offline default.
    assert detector_from(tmp_path, {"parameters": {"n_steps": 0}}).backbone == "efficientnet_lite0"


def test_a_scorer_given_by_name_in_the_parameters(tmp_path):
    detector = detector_from(tmp_path, {"parameters": {"scorer": "kmeans"}})
    assert detector.scorer == "kmeans"
    knn = detector_from(tmp_path, {"scorer": {"class": "KNNScorer", "n_neighbors": 5}}).scorer
    assert isinstance(knn, KNNScorer) and knn.n_neighbors == 5


def test_a_patch_detector_from_the_file_is_a_local_model(tmp_path):
    config = {"detector": "PandaPatchDetector", "parameters": {"neighbourhood": 1, "sigma": 8.0}}
    detector = detector_from(tmp_path, config, "--coreset-ratio", "0.2")
    assert type(detector) is PandaPatchDetector
    assert (detector.neighbourhood, detector.sigma, detector.coreset_ratio) == (1, 8.0, 0.2)
    with pytest.raises(ValueError, match="--n-steps cannot be used for a local model"):
        detector_from(tmp_path, config, "--n-steps", "3")


@pytest.mark.parametrize(
    "config, message",
    [
        ("{not json", "is not valid JSON"),
        ([1, 2], "must hold an object"),
        ({"detectors": "PandaSES"}, "unknown keys detectors; a config file has detector, parameters, scorer"),
        ({"detector": "PandaOE"}, "unknown detector 'PandaOE'; choose one of PandaDetector, PandaSES"),
        ({"parameters": {"n_step": 3}}, "PandaDetector takes no parameter n_step; its parameters: average_mirror, backbone"),
        ({"parameters": []}, "parameters must be a table"),
        ({"scorer": {"n_neighbors": 3}}, "class = one of KNNScorer"),
        ({"scorer": {"class": "KNNScorer", "k": 3}}, "scorer: KNNScorer takes no parameter k"),
        ({"parameters": {"scorer": "knn"}, "scorer": {"class": "KNNScorer"}}, "give the scorer once"),
        ({"detector": "PandaPatchDetector", "scorer": {"class": "KNNScorer"}}, "PandaPatchDetector takes no scorer"),
    ],
)
def test_bad_config_files_are_named_errors(config, message, tmp_path):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        detector_from(tmp_path, config)


def test_local_and_a_config_of_another_detector_conflict(tmp_path):
    with pytest.raises(ValueError, match="--local fits a PandaPatchDetector; --config .* names a PandaSES"):
        detector_from(tmp_path, {"detector": "PandaSES"}, "--local")


def test_fit_with_a_config_end_to_end_and_its_errors_in_one_line(tmp_path, capsys):
    rng = np.random.default_rng(0)
    folder = tmp_path / "good"
    folder.mkdir()
    for i in range(6):
        Image.fromarray((rng.random((32, 32, 3)) * 40 + 100).astype(np.uint8)).save(folder / f"{i}.png")
    config = tmp_path / "ses.json"
    config.write_text(json.dumps({
        "detector": "PandaSES",
        "parameters": {"backbone": "resnet18", "weights": None, "n_steps": 2, "checkpoint_every": 1,
                       "resize": 32, "crop_size": 32, "random_state": 0, "device": "cpu"},
        "scorer": {"class": "CenterScorer"},
    }))
    model = tmp_path / "ses.pt"
    assert main(["fit", str(folder), "--model", str(model), "--config", str(config)]) == 0
    assert "Fitted a PandaSES on 6 images (resnet18" in capsys.readouterr().out
    restored = load(model)
    assert type(restored) is PandaSES and type(restored.scorer).__name__ == "CenterScorer"
    assert main(["fit", str(folder), "--model", str(model), "--config", str(tmp_path / "none.json")]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"sklearn-panda: error: No such config file: {tmp_path / 'none.json'}"
