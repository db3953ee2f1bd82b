"""The benchmark scripts run end to end on tiny settings (so they never rot).

Each runs as ``__main__`` in the test's own process (``runpy``; its command
line in ``sys.argv``), which spares it the seconds a new interpreter takes to
import torch; torch's thread count is restored and pyplot's figures closed afterwards.
"""

import csv
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def run_benchmark(name, *args, monkeypatch, capsys):
    """Run ``benchmarks/NAME.py ARGS`` as a script in this process; its standard output.

    A non-zero exit fails the test with what the script printed.
    """
    script = ROOT / "benchmarks" / f"{name}.py"
    monkeypatch.setattr(sys, "argv", [str(script), *map(str, args)])
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))  # scripts import their neighbours
    monkeypatch.setenv("MPLBACKEND", "Agg")
    threads = torch.get_num_threads()
    try:
        runpy.run_path(str(script), run_name="__main__")
    except SystemExit as exit:
        captured = capsys.readouterr()
        assert exit.code in (None, 0), f"{name}.py exited with {exit.code}\n{captured.out}\n{captured.err}"
        return captured.out
    finally:
        torch.set_num_threads(threads)
        if "matplotlib.pyplot" in sys.modules:
            sys.modules["matplotlib.pyplot"].close("all")
    return capsys.readouterr().out


def test_one_class_benchmark_tiny_run(tmp_path, monkeypatch, capsys):
    pytest.importorskip("efficientnet_lite_pytorch")
    out = run_benchmark(
        "one_class",
        "--dataset", "digits", "--classes", "0", "--max-train", "20", "--max-test", "40",
        "--methods", "paper-unadapted", "unadapted", "panda", "ses", "ses-all", "oe", "oe-knn", "iforest-pixels",
        "--steps", "2", "--ses-steps", "2", "--checkpoint-every", "1", "--oe-steps", "2",
        "--clip-norm", "0", "--resize", "64", "--crop-size", "64",
        "--out", tmp_path,
        monkeypatch=monkeypatch, capsys=capsys,
    )
    assert "| **mean** |" in out
    with open(tmp_path / "one_class_digits_efficientnet_lite0.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["class"] for row in rows] == ["0"]
    methods = ("paper-unadapted", "unadapted", "ses", "ses-all")
    assert all(0 <= float(row[method]) <= 100 for row in rows for method in methods)


def test_speed_benchmark_tiny_run(tmp_path, monkeypatch, capsys):
    # Every row of the speed benchmark but the compile=True ones (compile=True itself is
    # tested in test_compilation.py; each row here would compile a backbone anew, the
    # slowest thing in the suite), on 8 digit images and a small random network (MobileNetV3
    # small: the paper pipeline's 224x224 inputs cost it a twentieth of a ResNet18), so the
    # script keeps working; its numbers mean nothing at this size.
    run_benchmark(
        "speed",
        "--dataset", "digits", "--backbone", "mobilenet_v3_small", "--weights", "none",
        "--n-images", "8", "--n-train", "10", "--n-test", "20", "--steps", "1",
        "--checkpoints", "1", "--skip-auc", "--memory-images", "16", "--precision-classes", "1",
        "--skip-compile", "--out", tmp_path,
        monkeypatch=monkeypatch, capsys=capsys,
    )
    table = (tmp_path / "speed_mobilenet_v3_small.md").read_text()
    for row in (
        "| paper pipeline", "| package, float32, inference_batch_size=32 |", "| package, bfloat16 |",
        "| bare torch loop on cached trunk outputs |", "| PandaSES, T=1 |", "| trunk_cache_mb=0 |",
        "| 1 |",
    ):
        assert row in table
    assert "compile=True" not in table


def test_batch_size_benchmark_tiny_run(monkeypatch, capsys):
    out = run_benchmark(
        "batch_size", "--backbone", "resnet18", "--weights", "none",
        "--sizes", "1", "2", "--n-images", "4", "--rounds", "1", "--crop-size", "64",
        monkeypatch=monkeypatch, capsys=capsys,
    )
    header, _, row = out.strip().splitlines()
    assert header == "| resnet18, float32 | 1 | 2 | auto |"
    # resnet18 at 64x64: 64 channels at 32x32 in float32 is its largest activation.
    assert row.startswith("| images/s (largest activation 0.3 MB per image) |")
    assert row.endswith("| 2 |")


def test_speed_benchmark_mean_cosine():
    # The number that says the package's features match the paper pipeline's (issue 16: >= 0.999).
    import importlib.util

    import numpy as np

    spec = importlib.util.spec_from_file_location("speed", ROOT / "benchmarks" / "speed.py")
    speed = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(speed)
    reference = np.array([[1.0, 0.0], [1.0, 1.0]])
    assert speed.mean_cosine(reference, 3 * reference) == pytest.approx(1)
    assert speed.mean_cosine(reference, np.array([[0.0, 2.0], [1.0, 1.0]])) == pytest.approx(0.5)
    assert speed.mean_cosine(reference, -reference) == pytest.approx(-1)


def test_adaptation_study_report_pairs_runs_by_learning_rate_times_steps(tmp_path, capsys):
    # Under the paper's clip a step moves the parameters by a length proportional to the
    # learning rate: the report pairs runs with the same lr x steps, against the unadapted
    # kNN baseline, on the classes both have, and leaves out runs that are not plain
    # clipped compactness (EWC here).
    import importlib.util

    spec = importlib.util.spec_from_file_location("adaptation_study", ROOT / "benchmarks" / "adaptation_study.py")
    study = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(study)
    rows = [
        (0, "unadapted", 0, 90.0, 91.0), (1, "unadapted", 0, 80.0, 81.0),
        (0, "s2-lr1e-2", 1000, 91.0, 91.5), (1, "s2-lr1e-2", 1000, 79.0, 80.0),
        (0, "s2-lr1e-1", 100, 90.5, 91.5),  # class 1 not measured: the row compares on class 0
        (0, "s2-lr1e-1-ewc", 100, 99.0, 99.0), (1, "s2-lr1e-1-ewc", 100, 99.0, 99.0),
    ]
    path = tmp_path / "rows.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=study.FIELDS)
        writer.writeheader()
        for label, setting, step, val, test in rows:
            writer.writerow({"class": label, "setting": setting, "step": step, "scorer": "knn", "val_auc": val,
                             "test_auc": test, "train_seconds": 1, "compactness_ratio": "", "n_train": 2,
                             "n_val": 2, "n_test": 2, "threads": 1, "cpu": "test"})
    study.main(["--report", "--csv", str(path), "--out", str(tmp_path / "out")])
    table = capsys.readouterr().out
    assert "| 2 | 10 | s2-lr1e-1 x 100 | s2-lr1e-2 x 1000 | 0 | +0.50 / +0.50 | +1.00 / +0.50 | 0.50 / 0.00 |" in table
    assert "ewc x" not in table
    # Each class's own best setting, by validation and by test gain, bounds any one setting's mean.
    assert "| 0 | s2-lr1e-1-ewc at 100, knn | +9.00 / +8.00 | s2-lr1e-1-ewc at 100, knn | +8.00 |" in table
    assert "| mean | | +14.00 / +13.00 | | +13.00 |" in table
    assert (tmp_path / "out" / "adaptation_study.md").read_text().strip() == table.strip()


def _load_benchmark(name):
    import importlib.util

    sys.path.insert(0, str(ROOT / "benchmarks"))  # feature_study imports adaptation_study
    try:
        spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return module


def test_feature_study_variants_weigh_each_tap_the_same(tmp_path, capsys):
    # A variant concatenates its taps, each L2-normalised; unknown taps or grids are an error;
    # the report ranks variants by the mean validation gain over head@1 kNN, per class.
    import numpy as np

    study = _load_benchmark("feature_study")
    assert study.parse_variant("head@1+b14@2") == [("head", 1), ("b14", 2)]
    with pytest.raises(ValueError, match="unknown part 'head@3'"):
        study.parse_variant("head@3")
    taps = {("head", 1): np.array([[3.0, 4.0], [0.0, 2.0]]), ("b14", 2): np.array([[0.0, 5.0, 0.0, 0.0]] * 2)}
    features = study.features(taps, np.array([1, 0]), "head@1+b14@2")
    np.testing.assert_allclose(features, [[0, 1, 0, 1, 0, 0], [0.6, 0.8, 0, 1, 0, 0]])

    rows = [(0, "head@1", "knn", 90.0, 91.0), (1, "head@1", "knn", 80.0, 81.0),
            (0, "head@2", "knn", 92.0, 91.5), (1, "head@2", "knn", 79.0, 80.0)]
    path = tmp_path / "rows.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=study.FIELDS)
        writer.writeheader()
        for label, variant, scorer, val, test in rows:
            writer.writerow({"class": label, "variant": variant, "scorer": scorer, "dim": 4, "val_auc": val,
                             "test_auc": test, "n_train": 2, "n_val": 2, "n_test": 2, "cpu": "test"})
    study.main(["--report", "--csv", str(path)])
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| head")]
    assert lines[0] == "| head@2 | knn | 4 | 2 | 85.50 | +0.50 | 1 (-1.00) | 85.75 | -0.25 | 91.50 | 80.00 |"
    assert lines[1].startswith("| head@1 | knn | 4 | 2 | 85.00 | +0.00 |")


def test_ses_variants_take_the_checkpoints_of_a_shorter_run():
    # A variant's checkpoints are those a PandaSES(n_steps, checkpoint_every) would keep, less
    # the too-dispersed ones; checkpoint 0 always takes part; "max" of d_t / s_t is SES's score.
    import numpy as np

    variants = _load_benchmark("ses_variants")
    dump = {
        "steps": np.array([0, 50, 100, 150, 200]),
        "normalizers": np.array([1.0, 2.0, 4.0, 1.0, 2.0]),
        "dispersions": np.array([0.1, 0.1, 0.2, 0.5, 0.3]),
        "val_distances": np.array([[1.0, 3.0], [4.0, 2.0], [4.0, 12.0], [9.0, 9.0], [2.0, 2.0]]),
    }
    assert variants.selected_checkpoints(dump, 200, 50, 3.0).tolist() == [0, 1, 2, 4]
    assert variants.selected_checkpoints(dump, 200, 50, None).tolist() == [0, 1, 2, 3, 4]
    assert variants.selected_checkpoints(dump, 100, 100, 3.0).tolist() == [0, 2]
    np.testing.assert_allclose(variants.variant_scores(dump, "val", 100, 50, "max", "mean", 3.0), [-2.0, -3.0])
    np.testing.assert_allclose(variants.variant_scores(dump, "val", 100, 100, "mean", "mean", 3.0), [-1.0, -3.0])
    # z: (d - s) / (dispersion * s), checkpoint 0 and 2: (0, 20) and (0, 10).
    np.testing.assert_allclose(variants.variant_scores(dump, "val", 100, 100, "max", "z", 3.0), [0.0, -20.0])


def test_adaptation_study_measures_the_defaults_of_efficientnet_lite0():
    # RESULTS.md reports "s2-lr1e-1-nocrop" at step 100 as the default PandaDetector of
    # EfficientNet-Lite0 and "ses-defaults-nocrop" as PandaSES's defaults: pin both to the recipe.
    from sklearn_panda import PandaDetector, PandaSES
    from sklearn_panda._estimators.recipes import resolve

    # Nothing is fitted; weights=None keeps the estimators off any weight file all the same.
    study = _load_benchmark("adaptation_study")
    for setting, estimator, n_steps in (
        ("s2-lr1e-1-nocrop", PandaDetector(backbone="efficientnet_lite0", weights=None), 100),
        ("ses-defaults-nocrop", PandaSES(backbone="efficientnet_lite0", weights=None), 500),
    ):
        params = {key: value for key, value in study.SETTINGS[setting].items() if key != "ses"}
        params.setdefault("n_steps", n_steps)
        for key, value in params.items():
            assert resolve(estimator, key) == value, (setting, key)
    assert resolve(PandaDetector(backbone="efficientnet_lite0", weights=None), "n_steps") == 100
    assert resolve(PandaDetector(backbone="efficientnet_lite0", weights=None), "scorer") == "mahalanobis"


def test_adaptation_study_plots_each_run_from_the_unadapted_features_of_its_preprocessing():
    study = _load_benchmark("adaptation_study")
    for setting in study.SETTINGS:
        start = study.unadapted_of(setting)
        assert study.preprocessing(study.SETTINGS[start]) == study.preprocessing(study.SETTINGS[setting]), setting
        assert study.SETTINGS[start]["n_steps"] == 0


def test_deeppcb_benchmark_tiny_run_and_resume(tmp_path, monkeypatch, capsys):
    # On the DeepPCB sample that ships with the package, at 224 x 224: the script keeps working and
    # skips the settings its CSV already holds; its numbers mean nothing at this size.
    pytest.importorskip("efficientnet_lite_pytorch")
    out = tmp_path / "deeppcb.csv"
    command = ["--max-train", "6", "--max-test", "4", "--settings", "fine-224", "image-paper", "--csv", out]
    run_benchmark("deeppcb", *command, monkeypatch=monkeypatch, capsys=capsys)
    with open(out) as handle:
        rows = {row["setting"]: row for row in csv.DictReader(handle)}
    assert set(rows) == {"fine-224", "image-paper"}
    assert 0 <= float(rows["fine-224"]["pixel_auc"]) <= 1 and rows["image-paper"]["pixel_auc"] == ""
    again = run_benchmark("deeppcb", *command, monkeypatch=monkeypatch, capsys=capsys)
    assert "fine-224: in" in again and "already" in again


def test_large_photos_benchmark_tiny_run(tmp_path, monkeypatch, capsys):
    # A 600 x 400 photo in tiles of at most 100,000 pixels, scored in a process of its own (as the
    # script does for each size), with a small random network: the script keeps working; its numbers
    # mean nothing here (one piece, --untiled, is the same child process with another budget).
    out = tmp_path / "large_photos.md"
    run_benchmark(
        "large_photos", "--backbone", "resnet18", "--weights", "none",
        "--sizes", "600x400", "--fit-size", "200x160", "--fit-images", "2", "--tile-pixels", "100000",
        "--threads", "1", "--repeats", "1", "--out", out,
        monkeypatch=monkeypatch, capsys=capsys,
    )
    rows = [line.split(" | ") for line in out.read_text().splitlines() if line.startswith("| 600 x 400 |")]
    assert [row[2] for row in rows] == ["2 x 8"]


def test_defaults_study_splits_natural_images_without_overlap():
    study = _load_benchmark("defaults_study")
    labels = np.repeat(np.arange(3), [705, 800, 760])
    plan = study.natural_protocol(labels, seed=0)
    for label, fits in plan.items():
        train, test_normal, test_others = fits["test"]
        fit_train, val_normal, val_others = fits["val"]
        assert (len(train), len(test_normal), len(test_others)) == (400, 300, 300)
        assert (len(fit_train), len(val_normal), len(val_others)) == (300, 100, 300)
        # Validation lies inside the training images; the test images are never seen in a fit.
        assert set(fit_train) | set(val_normal) == set(train) and not set(fit_train) & set(val_normal)
        assert not set(test_normal) & set(train) and (labels[test_normal] == label).all()
        assert (labels[test_others] != label).all() and (labels[val_others] != label).all()
        # Other classes' validation anomalies come from their training images, never their test ones.
        others_test = {i for o, f in plan.items() if o != label for i in f["test"][1]}
        assert not set(val_others) & others_test


def test_defaults_report_ranks_worst_class_first_then_passes(tmp_path):
    report = _load_benchmark("defaults_report")
    rng = np.random.default_rng(0)
    for dataset in ("a", "b"):
        for label in range(2):
            folder = tmp_path / dataset / f"class{label}" / "both"
            folder.mkdir(parents=True)
            for split, n in (("train", 30), ("val", 20), ("test", 20)):
                for extractor in ("unadapted", "lr1e-1@100", "lr1e-1@30", "lr1e-2@100", "guard-lr1e-1@100"):
                    for view in ("whole", "flip", "crop"):
                        values = rng.normal(size=(n, 4))
                        if split != "train":
                            values[n // 2 :] += 1.0 + (view == "whole")
                        np.save(folder / f"{extractor}_{view}_{split}.npy", values)
            np.save(folder / "guard_rows.npy", np.arange(3))
            for split in ("val", "test"):
                np.save(folder / f"labels_{split}.npy", np.r_[np.ones(10), -np.ones(10)])
        report.measure(tmp_path / dataset, tmp_path / f"{dataset}.csv")
    assert report.passes("default, Mahalanobis") == 1 and report.passes("unadapted + default, whole + mirror") == 4
    assert report.passes("baseline (crop, unadapted)") == 1
    table = report.joint([tmp_path / "a.csv", tmp_path / "b.csv"])
    chosen = [line for line in table.splitlines() if "(chosen)" in line]
    assert len(chosen) == 1
    # The rows are in the order of their worst validation gain.
    worst = [float(line.split("|")[3]) for line in table.splitlines()[2:]]
    assert worst == sorted(worst, reverse=True)


def test_bsdata_dates_counts_only_pairs_of_the_same_day():
    dates = _load_benchmark("bsdata_dates")
    assert dates.capture_time("x/01_200905081130_277500_315_crop_2.jpg") == "200905081130"
    rng = np.random.default_rng(0)
    days = rng.choice(["200901", "200902", "200903"], 60)
    anomalous = rng.random(60) < 0.4
    scores = rng.normal(size=60) + anomalous
    # Brute force: every (anomalous, normal) pair of one day, a tie counting half.
    wins = [
        (scores[a] > scores[n]) + 0.5 * (scores[a] == scores[n])
        for a in np.flatnonzero(anomalous) for n in np.flatnonzero(~anomalous) if days[a] == days[n]
    ]
    matched, pairs = dates.date_matched_auc(anomalous, scores, days)
    assert pairs == len(wins) and matched == pytest.approx(np.mean(wins))
    # A score that is the day alone ranks every photo above the earlier days' and none within a day.
    by_day = days.astype(float) + 0.0 * anomalous
    assert dates.date_matched_auc(anomalous, by_day, days)[0] == 0.5
    dates.BOOTSTRAP_DRAWS = 200
    low, high = dates.paired_bootstrap(anomalous, -scores, scores)
    assert 0 < low <= high  # the better score's lead, never below zero here
    # Paired: both scores see the same draws, so a score against its own monotone transform differs by
    # exactly nothing in every draw (an unpaired bootstrap would spread).
    assert list(dates.paired_bootstrap(anomalous, scores, 2 * scores + 1)) == [0, 0]
    assert list(dates.date_matched_difference_interval(anomalous, scores, 2 * scores + 1, days)) == [0, 0]


def test_bsdata_dates_tiny_run(surface_sets, tmp_path, monkeypatch, capsys):
    # From stored scores (the script reuses them; fitting PandaDetector would take too long here).
    splits = _load_benchmark("patch_study").bsdata_splits(surface_sets / "bsdata")
    paths, y, split = [], [], []
    for name in ("validation", "test"):
        paths += splits[name][1]
        y += list(splits[name][2])
        split += [name] * len(splits[name][1])
    rng = np.random.default_rng(0)
    scores = rng.normal(size=len(paths)) + (np.array(y) == -1)
    np.savez(tmp_path / "bsdata_dates.npz", paths=np.array(paths), y=np.array(y), image_level=scores,
             patch=-scores, split=np.array(split))
    out = run_benchmark("bsdata_dates", "--out", tmp_path, "--threads", "1", "--draws", "20",
                        monkeypatch=monkeypatch, capsys=capsys)
    assert out.count("| PandaPatchDetector() |") == 3 and out.count("95% paired bootstrap interval") == 2
    assert "# BSData test split: 22 normal, 3 pitted photos" in out and "date-matched pairs: 0" not in out


def test_bsdata_crossfit_pairs_are_a_roc_auc():
    crossfit, dates = _load_benchmark("bsdata_crossfit"), _load_benchmark("bsdata_dates")
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    normal, pitted = rng.normal(size=40).round(1), rng.normal(size=25).round(1) + 1  # rounded: ties too
    normal_days, pitted_days = rng.choice(["200901", "200902"], 40), rng.choice(["200901", "200902"], 25)
    # One model for every normal photo: the share of won pairs is the ROC AUC, the same-day share
    # bsdata_dates' date-matched ROC AUC.
    wins = crossfit.pair_wins(normal, np.broadcast_to(pitted, (40, 25)))
    labels = np.r_[np.zeros(40, dtype=bool), np.ones(25, dtype=bool)]
    assert crossfit.pair_auc(wins, np.ones((40, 25))) == pytest.approx(roc_auc_score(labels, np.r_[normal, pitted]))
    same_day = (normal_days[:, None] == pitted_days[None]).astype(float)
    matched = dates.date_matched_auc(labels, np.r_[normal, pitted], np.r_[normal_days, pitted_days])[0]
    assert crossfit.pair_auc(wins, same_day) == pytest.approx(matched)
    # Each normal photo's row compares it with the pitted photos as its own model scored them: the
    # odd rows' model scores every pitted photo 100 higher, the even rows' as before.
    odd = np.arange(40) % 2 == 1
    shifted = crossfit.pair_wins(normal, np.broadcast_to(pitted, (40, 25)) + 100 * odd[:, None])
    everyone = np.arange(25)
    assert crossfit.pair_auc(shifted, np.ones((40, 25)), (np.flatnonzero(odd), everyone)) == 1
    even_labels = np.r_[np.zeros((~odd).sum(), dtype=bool), np.ones(25, dtype=bool)]
    assert crossfit.pair_auc(shifted, np.ones((40, 25)), (np.flatnonzero(~odd), everyone)) == pytest.approx(
        roc_auc_score(even_labels, np.r_[normal[~odd], pitted]))
    # Paired draws: a detector against itself differs by nothing; against a worse one, by more than nothing.
    assert list(crossfit.paired_pair_interval(wins, wins, np.ones((40, 25)), draws=50)) == [0, 0]
    worse = crossfit.pair_wins(normal, np.broadcast_to(pitted - 1, (40, 25)))
    low, high = crossfit.paired_pair_interval(worse, wins, np.ones((40, 25)), draws=50)
    assert 0 < low < high
    # Both kinds of photos are drawn: a difference that lives in one pitted column, or in one normal
    # row, spreads only if the columns, or the rows, are resampled.
    for axis in (0, 1):
        better = wins.copy()
        better[(slice(None), 0) if axis == 0 else (0, slice(None))] = 1
        low, high = crossfit.paired_pair_interval(wins, better, np.ones((40, 25)), draws=50)
        assert low < high, axis


def test_bsdata_crossfit_tiny_run(surface_sets, tmp_path, monkeypatch, capsys):
    # Two folds: the second from stored scores, the first fitted (both detectors; the image-level one
    # with a single adaptation step, its default's 45 s on these photos being the script's, not the test's).
    pytest.importorskip("efficientnet_lite_pytorch")
    import sklearn_panda

    image_level = sklearn_panda.PandaDetector
    monkeypatch.setattr(sklearn_panda, "PandaDetector", lambda **params: image_level(**params, n_steps=1))
    crossfit = _load_benchmark("bsdata_crossfit")
    normal, pitted = crossfit.photos(surface_sets / "bsdata")
    assert (len(normal), len(pitted)) == (55, 3)  # the 33 training and 22 normal test photos; the pitted test ones
    fold = crossfit.folds_of(normal, 2)
    late = np.array([crossfit.capture_time(p)[:6] >= crossfit.LATE for p in normal])
    assert abs(late[fold == 0].sum() - late[fold == 1].sum()) <= 1  # stratified by the date
    arguments = ["--bsdata", surface_sets / "bsdata", "--folds", "2", "--threads", "1", "--draws", "20"]

    def store(folder, k, image_level_normal, image_level_pitted, patch_normal, patch_pitted):
        (folder / "bsdata_crossfit").mkdir(parents=True, exist_ok=True)
        np.savez(folder / "bsdata_crossfit" / f"fold{k}of2.npz", image_level_normal=image_level_normal,
                 image_level_pitted=image_level_pitted, patch_normal=patch_normal, patch_pitted=patch_pitted,
                 normal_paths=np.array([p for p, f in zip(normal, fold) if f == k]), pitted_paths=np.array(pitted))

    # Fold 1 stored, fold 0 fitted.
    held_out = int((fold == 1).sum())
    store(tmp_path, 1, np.zeros(held_out), np.ones(3), np.ones(held_out), np.zeros(3))
    out = run_benchmark("bsdata_crossfit", *arguments, "--out", tmp_path, monkeypatch=monkeypatch, capsys=capsys)
    fitted = np.load(tmp_path / "bsdata_crossfit" / "fold0of2.npz")
    assert list(fitted["normal_paths"]) == [p for p, f in zip(normal, fold) if f == 0]
    assert fitted["patch_normal"].shape == (55 - held_out,) and fitted["image_level_pitted"].shape == (3,)
    assert "each fit on 27 / 28 photos" in out and out.count("95% paired bootstrap interval") == 4
    assert "| PandaPatchDetector() |" in out.split("# Normal photos only")[1]
    # Stored scores for other photos stop the run instead of being read as this fold's.
    np.savez(tmp_path / "bsdata_crossfit" / "fold1of2.npz", **{
        **np.load(tmp_path / "bsdata_crossfit" / "fold1of2.npz"), "pitted_paths": np.array(pitted[::-1])})
    with pytest.raises(ValueError, match="other photos than fold 1"):
        run_benchmark("bsdata_crossfit", *arguments, "--out", tmp_path, monkeypatch=monkeypatch, capsys=capsys)

    # Every fold stored, with scores whose figures are known. Image level: fold k's model scores an
    # early normal photo 10 k, a late one 10 k + 1, every pitted photo 10 k + 0.5: the pitted photos
    # win the pairs of early photos only, and a late photo outscores an early one of its own fold
    # (not of the other: 1 < 10). Patch: pitted 1, normal 0, whatever the date.
    stored = tmp_path / "stored"
    for k in (0, 1):
        rows = fold == k
        store(stored, k, late[rows] + 10.0 * k, np.full(3, 10 * k + 0.5), np.zeros(rows.sum()), np.ones(3))
    out = run_benchmark("bsdata_crossfit", *arguments, "--out", stored, monkeypatch=monkeypatch, capsys=capsys)
    pairs, date_rows = out.split("# Normal photos only")
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ") for line in pairs.splitlines() if line.startswith("| ")}
    per_fold = " / ".join(f"{100 * (~late[fold == k]).mean():.1f}" for k in (0, 1))
    assert rows["PandaDetector() (image level)"][1:3] == [f"{100 * (~late).mean():.1f}", per_fold]
    assert rows["PandaPatchDetector()"][1:3] == ["100.0", "100.0 / 100.0"]
    assert "| PandaDetector() (image level) | 100.0 |" in date_rows and "| PandaPatchDetector() | 50.0 |" in date_rows


def test_patch_global_study_tiny_run_caps_each_term_at_its_training_spread(
    surface_sets, tmp_path, monkeypatch, capsys
):
    # From stored inputs (stage outputs, the study's and the top-k study's distances, image-level
    # scores) for the stand-in sets' validation splits; one capped row checked against its definition.
    from sklearn.metrics import roc_auc_score

    study, global_study = _load_benchmark("patch_study"), _load_benchmark("patch_global_study")
    splits = {"deeppcb": study.deeppcb_splits(surface_sets / "deeppcb")["validation"],
              "bsdata": study.bsdata_splits(surface_sets / "bsdata")["validation"]}
    cache, rng, expected = tmp_path / "cache", np.random.default_rng(0), {}
    cache.mkdir()
    (tmp_path / "patch_study_scores").mkdir()
    for dataset, (fit, images, y, _) in splits.items():
        anomalous = np.asarray(y) == -1
        for image in fit + images:
            # Evaluation images lie at random distances beyond the training spread, whatever their
            # label (as DeepPCB's unseen boards): capped, the term is a constant for them.
            shift = rng.uniform(0, 3) if image in images else 0.0
            np.savez(study.cache_path(cache, image, "native"), map0=rng.normal(shift, 1, (3, 4, 4)),
                     map1=rng.normal(0, 1, (2, 2, 2)))
        for name in (global_study.PATCH, global_study.FINE):
            np.savez(tmp_path / "patch_study_scores" / f"{dataset}_validation_{name}.npz",
                     patch=rng.random(len(images)) + anomalous, loo_patch=rng.random(len(fit)) + 0.5)
        kept = {f"eval{w}": -np.sort(-rng.random((len(images), 6)) - 0.3 * anomalous[:, None], axis=1) for w in (0, 1)}
        kept.update({f"loo{w}": -np.sort(-rng.random((20, 6)), axis=1) for w in (0, 1)})
        np.savez(tmp_path / f"patch_topk_{dataset}.npz", **kept, y=np.asarray(y))
        np.savez(tmp_path / f"patch_global_panda_{dataset}.npz", loo=rng.random(len(fit)), test=rng.random(len(images)))
        # patch+fine+capped-mean-nn with the worst-4 base, by its definition.
        base = sum(kept[f"eval{w}"][:, :4].mean(1) / np.median(kept[f"loo{w}"][:, :4].mean(1)) for w in (0, 1))
        train = np.stack([global_study.global_descriptor(cache, image) for image in fit])
        test = np.stack([global_study.global_descriptor(cache, image) for image in images])
        within = np.linalg.norm(train[:, None] - train[None], axis=2)
        np.fill_diagonal(within, np.inf)
        loo, nearest = within.min(1), np.linalg.norm(test[:, None] - train[None], axis=2).min(1)
        capped = np.minimum(nearest, loo.max()) / np.median(loo)
        expected[dataset] = 100 * roc_auc_score(anomalous, base + capped)
        expected[dataset, "beyond"] = " / ".join(f"{100 * (nearest[rows] > loo.max()).mean():.0f}%"
                                                 for rows in (~anomalous, anomalous))
    arguments = ["--deeppcb", surface_sets / "deeppcb", "--bsdata", surface_sets / "bsdata", "--cache", cache,
                 "--out", tmp_path, "--threads", "1"]
    for base_name in ("max", "worst4"):
        out = run_benchmark("patch_global_study", *arguments, "--base", base_name, monkeypatch=monkeypatch, capsys=capsys)
        assert f"(base: {base_name})" in out and "| patch+fine+capped-panda |" in out
        row = next(line for line in out.splitlines() if line.startswith("| patch+fine+capped-mean-nn |"))
        if base_name == "worst4":
            found = [float(cell) for cell in row.split("|")[2:4]]
            assert found == pytest.approx([expected["deeppcb"], expected["bsdata"]], abs=0.05)
    assert f"| mean-nn | {expected['deeppcb', 'beyond']} | {expected['bsdata', 'beyond']} |" in out.split("beyond the cap")[1]


def test_patch_fit_cost_parses_settings():
    parse = _load_benchmark("patch_fit_cost").parse_setting
    assert parse("default") == ("default", {}, 0)
    assert parse("seed-2") == ("default", {}, 2)
    assert parse("ratio-0.05") == ("ratio-0.05", {"coreset_ratio": 0.05}, 0)
    assert parse("ratio-0.02+seed-1") == ("ratio-0.02", {"coreset_ratio": 0.02}, 1)
    assert parse("sigma-4+seed-2") == ("sigma-4", {"sigma": 4.0}, 2)
    assert parse("old-defaults+seed-3")[1:] == ({"border": "inside", "image_score": "map", "coreset_ratio": 0.1}, 3)


@pytest.fixture(scope="module")
def surface_sets(tmp_path_factory):
    """Tiny stand-ins for the DeepPCB and BSData folders the benchmarks read, laid out as those are
    (the tests never read the real ones).

    DeepPCB: four 128 x 128 one-bit boards a group (template, the same board with a flipped block as
    its tested image, the block as its mask). BSData: 66 normal (33 to fit, 11 to validate, 22 to
    test, as the set's 300 split) and 60 pitted (57 to validate, as the set's) 64 x 160 photos of noise,
    each pit a faint dark disc with its mask, named as the set names them (capture time second).
    """
    from PIL import Image

    from sklearn_panda._io.deeppcb import TEST_GROUPS, TRAIN_GROUPS

    root = tmp_path_factory.mktemp("surfaces")
    rng = np.random.default_rng(0)
    for group in TRAIN_GROUPS + TEST_GROUPS:
        for kind in ("template", "tested", "mask"):
            (root / "deeppcb" / group / kind).mkdir(parents=True)
        for name in ("a.png", "b.png", "c.png", "d.png"):
            board = np.kron(rng.random((16, 16)) < 0.5, np.ones((8, 8), dtype=bool))
            mask = np.zeros_like(board)
            top, left = rng.integers(8, 112, size=2)
            mask[top : top + 2, left : left + 2] = True
            for kind, image in (("template", board), ("tested", board ^ mask), ("mask", mask)):
                Image.fromarray(255 * image.astype(np.uint8)).save(root / "deeppcb" / group / kind / name)
    for kind in ("normal", "pitting", "mask"):
        (root / "bsdata" / kind).mkdir(parents=True)
    rows, cols = np.mgrid[:64, :160]
    for number in range(126):
        photo = np.clip(128 + 20 * rng.normal(size=(64, 160, 1)), 0, 255).repeat(3, axis=2)
        name = f"01_2009{4 + number % 2:02d}{number:06d}_277500_315_crop_2"  # 09-04 and 09-05
        if number < 66:
            Image.fromarray(photo.astype(np.uint8)).save(root / "bsdata" / "normal" / f"{name}.jpg")
            continue
        y, x = rng.integers(8, 56), rng.integers(8, 152)
        pit = (rows - y) ** 2 + (cols - x) ** 2 < 16
        photo[pit] -= 40
        Image.fromarray(photo.astype(np.uint8)).save(root / "bsdata" / "pitting" / f"{name}.jpg")
        Image.fromarray(255 * pit.astype(np.uint8)).save(root / "bsdata" / "mask" / f"{name}.png")
    return root


def test_patch_fit_cost_tiny_run(surface_sets, tmp_path, monkeypatch, capsys):
    # One fit a data set and setting, as the script's own child process runs it, then the tables
    # from the lines they printed (the script skips settings its file holds, so no child starts).
    pytest.importorskip("efficientnet_lite_pytorch")
    import json

    roots = ["--deeppcb", surface_sets / "deeppcb", "--bsdata", surface_sets / "bsdata", "--threads", "1"]
    lines = []
    for dataset in ("deeppcb", "bsdata"):
        out = run_benchmark(
            "patch_fit_cost", "--one", dataset, "ratio-0.02+seed-1", *roots, monkeypatch=monkeypatch, capsys=capsys
        )
        row = json.loads(out.strip().splitlines()[-1])
        assert (row["dataset"], row["setting"], row["split"]) == (dataset, "ratio-0.02+seed-1", "test")
        assert row["n_train"] == (20 if dataset == "deeppcb" else 33)
        assert row["bank_rows"] == pytest.approx(0.02 * row["training_patches"], abs=1)
        assert 0 <= row["image_auc"] <= 1 and 0 <= row["pixel_auc"] <= 1
        lines.append(json.dumps(row))
    jsonl = tmp_path / "rows.jsonl"
    jsonl.write_text("\n".join(lines) + "\n")
    out = run_benchmark(
        "patch_fit_cost", "--datasets", "deeppcb", "bsdata", "--settings", "ratio-0.02+seed-1", "--jsonl", jsonl, *roots,
        monkeypatch=monkeypatch, capsys=capsys,
    )
    assert sum(line.startswith(("| deeppcb | ratio-0.02+seed-1 |", "| bsdata | ratio-0.02+seed-1 |"))
               for line in out.splitlines()) == 4  # both tables, both sets
    # Each split's table holds its own rows only (a row written before --split is the test split's).
    validation = [json.dumps({**json.loads(line), "split": "validation", "fit_s": 12345}) for line in lines]
    jsonl.write_text("\n".join(lines + validation) + "\n")
    for split, shown in (("test", False), ("validation", True)):
        out = run_benchmark(
            "patch_fit_cost", "--datasets", "deeppcb", "bsdata", "--settings", "ratio-0.02+seed-1", "--jsonl", jsonl,
            "--split", split, *roots, monkeypatch=monkeypatch, capsys=capsys,
        )
        assert ("| 12345 |" in out) is shown and out.count("| deeppcb | ratio-0.02+seed-1 |") == 2


def test_patch_fit_cost_mirrored_fits_the_images_and_their_mirror_images(surface_sets, tmp_path, monkeypatch, capsys):
    pytest.importorskip("efficientnet_lite_pytorch")
    import json

    from PIL import Image

    fit = _load_benchmark("patch_study").deeppcb_splits(surface_sets / "deeppcb")["test"][0]
    copies = _load_benchmark("patch_fit_cost").mirrored_copies(fit[:2], tmp_path / "once")
    for image, copy in zip(fit, copies):
        np.testing.assert_array_equal(np.asarray(Image.open(copy)), np.asarray(Image.open(image))[:, ::-1])
    out = run_benchmark("patch_fit_cost", "--one", "deeppcb", "mirrored", "--deeppcb", surface_sets / "deeppcb",
                        "--threads", "1", "--mirrored", tmp_path / "mirrored", monkeypatch=monkeypatch, capsys=capsys)
    row = json.loads(out.strip().splitlines()[-1])
    assert row["n_train"] == 2 * len(fit) and len(list((tmp_path / "mirrored").glob("*.png"))) == len(fit)


@pytest.fixture(scope="module")
def validation_models(tmp_path_factory):
    """A folder for the default detectors fitted on the stand-in sets' validation splits: the first
    benchmark that needs one fits and saves it, the others load it (one fit a set for the module)."""
    return tmp_path_factory.mktemp("validation_models")


def test_patch_sigma_study_tiny_run(surface_sets, validation_models, monkeypatch, capsys):
    # Detectors fitted on the stand-in sets' validation splits; at their own sigma (the default's) the
    # study's maps are the detector's anomaly maps.
    pytest.importorskip("efficientnet_lite_pytorch")
    models = validation_models
    out = run_benchmark(
        "patch_sigma_study", "--deeppcb", surface_sets / "deeppcb", "--bsdata", surface_sets / "bsdata",
        "--models", models, "--threads", "1", "--sigmas", "2", monkeypatch=monkeypatch, capsys=capsys,
    )
    rows = [line for line in out.splitlines() if line.startswith("| ") and "sigma" not in line and "---" not in line]
    assert [row.split(" | ")[0] for row in rows] == ["| 2", "| 6"]  # the detectors' own always measured
    assert "by the rule sigma" in out
    from sklearn_panda import load

    study = _load_benchmark("patch_sigma_study")
    images = _load_benchmark("patch_study").bsdata_splits(surface_sets / "bsdata")["validation"][1][:6]
    detector = load(models / "bsdata_validation.pt")
    own = detector.get_params()["sigma"]
    found = study.maps_by_sigma(detector, images, [own, 2 * own])
    for mine, theirs in zip(found[own], detector.anomaly_maps(images)):
        np.testing.assert_allclose(mine, theirs, rtol=1e-5, atol=1e-6)
    assert not np.allclose(found[2 * own][0], found[own][0])


def test_topk_study_standardises_each_bank_by_its_leave_one_out_spread():
    study = _load_benchmark("patch_topk_study")
    rng = np.random.default_rng(0)
    evaluation = [-np.sort(-rng.random((30, 8)), axis=1) for _ in range(2)]
    loo = [-np.sort(-rng.random((20, 8)), axis=1) for _ in range(2)]
    normal = loo[1][:, :4].mean(1)
    quartiles = np.percentile(normal, [25, 75])
    np.testing.assert_allclose(study.standardised(4, 1, "interquartile range")(evaluation, loo),
                               (evaluation[1][:, :4].mean(1) - np.median(normal)) / (quartiles[1] - quartiles[0]))
    np.testing.assert_allclose(study.standardised(4, 1, "standard deviation")(evaluation, loo),
                               (evaluation[1][:, :4].mean(1) - np.median(normal)) / normal.std())
    found = {name: score for name, score in study.candidates(8) if "less its median over its" in name}
    assert len(found) == 2
    for name, score in found.items():
        spread = "interquartile range" if "interquartile" in name else "standard deviation"
        np.testing.assert_allclose(score(evaluation, loo), sum(study.standardised(4, w, spread)(evaluation, loo)
                                                               for w in (0, 1)))


def test_patch_scoring_speed_and_topk_study_tiny_run(surface_sets, validation_models, tmp_path, monkeypatch, capsys):
    # The top-k study's "top-4 mean" is the detector's own image score (n_worst_patches=4, each bank
    # over its median leave-one-out value): its ROC AUC is the scoring benchmark's exact search's,
    # and its scores the detector's.
    pytest.importorskip("efficientnet_lite_pytorch")
    roots = ["--deeppcb", surface_sets / "deeppcb", "--bsdata", surface_sets / "bsdata", "--threads", "1"]
    models = validation_models
    out = run_benchmark(
        "patch_scoring_speed", "--dataset", "deeppcb", "--split", "validation", "--models", models,
        "--variants", "fitted", "exact", "hnsw16-ef4", "batchnorm+hnsw16-ef4-k1-uncertified", *roots,
        monkeypatch=monkeypatch, capsys=capsys,
    )
    table = {line.split(" | ")[0].lstrip("| "): line.split(" | ") for line in out.splitlines() if line.startswith("| ")}
    assert set(table) >= {"fitted", "exact", "hnsw16-ef4", "batchnorm+hnsw16-ef4-k1-uncertified"}
    assert float(table["exact"][-1].rstrip(" |")) == 0  # a bank this small is searched exactly when fitted
    # The share of the time in the exact search again of the largest distances: only where it runs.
    certification = {variant: float(row[4].rstrip("%")) for variant, row in table.items() if variant != "variant"}
    assert certification["exact"] == certification["batchnorm+hnsw16-ef4-k1-uncertified"] == 0
    assert 0 < certification["hnsw16-ef4"] <= float(table["hnsw16-ef4"][3].rstrip("%"))
    # The first round's size: each photo's two banks searched again at least once, that many rows each.
    out = run_benchmark(
        "patch_scoring_speed", "--dataset", "deeppcb", "--split", "validation", "--models", models,
        "--certified-first", "8", "32", "--n-images", "2", *roots, monkeypatch=monkeypatch, capsys=capsys,
    )
    rounds = [line.split(" | ") for line in out.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert [row[0] for row in rounds] == ["| 8", "| 32"]
    for size, _, searches_a_photo, rows_a_photo in ((int(row[0][2:]), *map(float, row[1:3]), float(row[3][:-2]))
                                                    for row in rounds):
        assert searches_a_photo >= 2 and rows_a_photo >= 2 * size
    out = run_benchmark(
        "patch_topk_study", "--models", models, "--out", tmp_path, "--keep", "128", *roots,
        monkeypatch=monkeypatch, capsys=capsys,
    )
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ") for line in out.splitlines() if line.startswith("| ")}
    assert "patch+fine top-64 mean minus the 128th largest" in rows and "patch+fine, top-256 mean" not in rows
    assert float(rows["patch+fine, top-4 mean"][1]) == pytest.approx(float(table["exact"][5]), abs=0.06)  # DeepPCB
    # and score by score, from the distances the study kept:
    from sklearn_panda import load

    kept = np.load(tmp_path / "patch_topk_deeppcb.npz")
    study = sum(kept[f"eval{w}"][:, :4].mean(1) / np.median(kept[f"loo{w}"][:, :4].mean(1)) for w in (0, 1))
    images = _load_benchmark("patch_study").deeppcb_splits(surface_sets / "deeppcb")["validation"][1]
    detector = load(models / "deeppcb_validation.pt")
    np.testing.assert_allclose(-detector.score_samples(images), study, rtol=1e-5)


def test_patch_coarse_study_term_is_the_worst_patches_against_the_coarse_bank(surface_sets, tmp_path, monkeypatch, capsys):
    # With a bank of every training patch (ratio 1) the coarse term is, by its definition, each image's
    # mean of its 4 largest nearest-neighbour distances to the training patches, and a calibration
    # image's is the same without its own patches; each table row combines it with the stored default.
    from sklearn.metrics import roc_auc_score

    study, coarse = _load_benchmark("patch_study"), _load_benchmark("patch_coarse_study")
    monkeypatch.setattr(coarse, "RATIO", 1.0)
    calibration = {"deeppcb": [0, 2, 3], "bsdata": [1, 4, 7, 9]}
    monkeypatch.setattr(coarse, "calibration_images", lambda model: calibration[Path(model).stem.split("_")[0]])
    cache, rng, expected = tmp_path / "cache", np.random.default_rng(0), {}
    cache.mkdir()
    for dataset, root in (("deeppcb", surface_sets / "deeppcb"), ("bsdata", surface_sets / "bsdata")):
        splits = getattr(study, f"{dataset}_splits")(root)
        fit, images, y, _ = splits["validation"]
        anomalous = np.asarray(y) == -1
        grids = {}
        for image in fit + images:
            grids[image] = rng.normal(0, 1, (5, 3, 4))
            if image in images and anomalous[images.index(image)]:
                grids[image][:, 1, 1] += 4.0  # one odd patch
            np.savez(study.cache_path(cache, image, "224"), map0=grids[image], map1=rng.normal(0, 1, (2, 2, 2)),
                     size=np.array([3, 4]), original=np.array([3, 4]))
        kept = {f"eval{w}": -np.sort(-rng.random((len(images), 6)), axis=1) for w in (0, 1)}
        kept.update({f"loo{w}": -np.sort(-rng.random((20, 6)), axis=1) for w in (0, 1)})
        np.savez(tmp_path / f"patch_topk_{dataset}.npz", **kept, y=np.asarray(y))
        base = sum(kept[f"eval{w}"][:, :4].mean(1) / np.median(kept[f"loo{w}"][:, :4].mean(1)) for w in (0, 1))

        def rows(image):
            return grids[image].reshape(5, -1).T

        def worst4(image, others):
            bank = np.concatenate([rows(other) for other in others])
            nearest = np.linalg.norm(rows(image)[:, None] - bank[None], axis=2).min(1)
            return np.sort(nearest)[-4:].mean()

        evaluation, loo = coarse.coarse_term(cache, fit, images, calibration[dataset], "s8-n1")
        np.testing.assert_allclose(evaluation, [worst4(image, fit) for image in images], rtol=1e-4)
        np.testing.assert_allclose(loo, [worst4(fit[i], fit[:i] + fit[i + 1 :]) for i in calibration[dataset]],
                                   rtol=1e-4)
        expected[dataset] = 100 * roc_auc_score(anomalous, base + 0.5 * evaluation / np.median(loo))
    threads = torch.get_num_threads()
    try:  # in this process, so that the patched bank ratio and calibration images hold
        coarse.main([str(arg) for arg in ("--deeppcb", surface_sets / "deeppcb", "--bsdata", surface_sets / "bsdata",
                                          "--cache", cache, "--out", tmp_path, "--models", tmp_path, "--threads", 1)])
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("| default + 0.5 x 224-s8-n1 |"))
    assert [float(cell) for cell in row.split("|")[2:4]] == pytest.approx([expected["deeppcb"], expected["bsdata"]], abs=0.05)
