from __future__ import annotations

import csv
from pathlib import Path

import pytest

from pneumo.reproduce.paired import paired_difference, read_predictions

CLASSES = ("NORMAL", "PNEUMONIA")


def write_predictions(path: Path, rows: list[tuple[str, str, int, float]], sha256: list[str] | None = None) -> Path:
    """A ``predictions.csv`` in the layout ``evaluate_run`` writes: (path, patient, true class, P(PNEUMONIA)); with
    ``sha256``, each image's digest as today's evaluations record it (without: an older evaluation's file)."""
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        header = ["path", "patient_id", "true", *(f"logit_{c}" for c in CLASSES), *(f"p_{c}" for c in CLASSES)]
        writer.writerow([*header, "predicted", *(["sha256"] if sha256 else [])])
        for i, (image, patient, true, p) in enumerate(rows):
            digest = [sha256[i]] if sha256 else []
            writer.writerow([image, patient, CLASSES[true], 0.0, 0.0, 1 - p, p, CLASSES[int(p >= 0.5)], *digest])
    return path


# Six shared images, three NORMAL then three PNEUMONIA, one patient each.
TRUE = [0, 0, 0, 1, 1, 1]
PERFECT = [0.1, 0.2, 0.3, 0.7, 0.8, 0.9]  # AUC 1, accuracy 1
# Pairs (positive > negative): 0.4 beats 0.2; 0.8 beats 0.6, 0.2, 0.7; 0.3 beats 0.2 -> AUC 5/9.
# Decisions at 0.5: 1, 0, 1, 0, 1, 0 -> right on images 1 and 4 -> accuracy 2/6.
WORSE = [0.6, 0.2, 0.7, 0.4, 0.8, 0.3]


def two_runs(tmp_path: Path) -> tuple[Path, Path]:
    shared = [f"test/img{i}.jpeg" for i in range(6)]
    a_rows = [(img, f"p{i}", TRUE[i], PERFECT[i]) for i, img in enumerate(shared)]
    b_rows = [(img, f"p{i}", TRUE[i], WORSE[i]) for i, img in enumerate(shared)]
    # An image in one file only is not paired: here it would lower A's AUC and accuracy, or raise B's.
    a_rows.append(("test/only-in-a.jpeg", "pa", 0, 0.99))
    b_rows.append(("test/only-in-b.jpeg", "pb", 1, 0.99))
    b_rows.reverse()  # pairing goes by image path, not by row order
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    return write_predictions(a, a_rows), write_predictions(b, b_rows)


def test_read_predictions_maps_each_path_to_its_class_indices_and_probabilities(tmp_path: Path) -> None:
    a, _ = two_runs(tmp_path)
    rows = read_predictions(a)
    assert len(rows) == 7
    assert rows["test/img4.jpeg"] == {"patient": "p4", "true": 1, "probs": [pytest.approx(0.2), 0.8], "predicted": 1}
    assert rows["test/only-in-a.jpeg"]["predicted"] == 1 and rows["test/only-in-a.jpeg"]["true"] == 0


def test_paired_difference_is_candidate_minus_baseline_on_shared_images(tmp_path: Path) -> None:
    a, b = two_runs(tmp_path)
    result = paired_difference(a, b, n_boot=50)
    assert result["n_images"] == 6
    auc, acc = result["delta_roc_auc"], result["delta_accuracy"]
    assert auc["point"] == pytest.approx(1 - 5 / 9) and auc["point"] > 0
    assert acc["point"] == pytest.approx(1 - 2 / 6) and acc["point"] > 0
    assert auc["low"] <= auc["point"] <= auc["high"] and acc["low"] <= acc["point"] <= acc["high"]
    # the other way round: the opposite sign
    reverse = paired_difference(b, a, n_boot=50)
    assert reverse["delta_roc_auc"]["point"] == pytest.approx(5 / 9 - 1)
    assert reverse["delta_accuracy"]["point"] == pytest.approx(2 / 6 - 1)
    # a run against itself: no difference, in every replicate
    same = paired_difference(a, a, n_boot=50)["delta_accuracy"]
    assert same["point"] == same["low"] == same["high"] == 0.0


def test_runs_without_a_shared_image_are_refused(tmp_path: Path) -> None:
    a = write_predictions(tmp_path / "a.csv", [("x.jpeg", "p", 0, 0.2)])
    b = write_predictions(tmp_path / "b.csv", [("y.jpeg", "p", 0, 0.2)])
    with pytest.raises(ValueError, match="share no image"):
        paired_difference(a, b, n_boot=10)


def test_runs_of_another_task_or_other_labels_are_refused(tmp_path: Path) -> None:
    # a three-class baseline was read with the binary candidate's column count: confident, meaningless differences
    a, _ = two_runs(tmp_path)
    three = tmp_path / "three.csv"
    names = ("normal", "bacteria", "virus")
    with three.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            ["path", "patient_id", "true", *(f"logit_{c}" for c in names), *(f"p_{c}" for c in names), "predicted"]
        )
        for i in range(6):
            writer.writerow([f"test/img{i}.jpeg", f"p{i}", names[TRUE[i]], 0, 0, 0, 0.8, 0.1, 0.1, names[TRUE[i]]])
    with pytest.raises(ValueError, match=r"different classes .* needs runs of one task"):
        paired_difference(a, three, n_boot=20)
    relabelled = tmp_path / "relabelled.csv"
    write_predictions(relabelled, [(f"test/img{i}.jpeg", f"p{i}", 1 - TRUE[i], WORSE[i]) for i in range(6)])
    with pytest.raises(ValueError, match="label 6 shared image"):
        paired_difference(a, relabelled, n_boot=20)


def test_a_listed_subset_is_read_as_csv(tmp_path: Path) -> None:
    from pneumo.reproduce.paired import read_image_list

    listed = tmp_path / "matched-images.csv"
    with listed.open("w", newline="") as f:
        csv.writer(f).writerows([["path"], ["test/NORMAL/IM-0001, copy.jpeg"], ["test/img1.jpeg"]])
    assert read_image_list(listed) == {"test/NORMAL/IM-0001, copy.jpeg", "test/img1.jpeg"}
    a, b = two_runs(tmp_path)
    assert paired_difference(a, b, n_boot=20, images=read_image_list(listed))["n_images"] == 1


def test_a_list_saved_by_a_spreadsheet_is_read_and_a_broken_one_named(tmp_path: Path) -> None:
    from pneumo.reproduce.paired import read_image_list

    bom = tmp_path / "excel.csv"
    bom.write_bytes("path\r\ntest/img1.jpeg\r\n".encode("utf-8-sig"))  # "\ufeffpath" was no 'path' column
    assert read_image_list(bom) == {"test/img1.jpeg"}
    broken = tmp_path / "broken.csv"
    broken.write_text('path\n"' + "x" * 200_000 + '"\n')  # over csv's field size limit: csv.Error, a traceback
    with pytest.raises(ValueError, match=r"broken\.csv: not a readable CSV"):
        read_image_list(broken)


def test_paired_against_leaves_out_runs_not_evaluated(tmp_path: Path) -> None:
    from pneumo.reproduce.paired import paired_against

    a, b = two_runs(tmp_path)
    runs = {}
    for name, preds in (("base", a), ("cand", b), ("fresh", None)):
        run = tmp_path / name
        (run / "eval-chest-xray-test").mkdir(parents=True)
        (run / "config.yaml").write_text("data: /somewhere/chest_xray\n")
        if preds is not None:
            (run / "eval-chest-xray-test" / "metrics.json").write_text("{}")
            (run / "eval-chest-xray-test" / "predictions.csv").write_text(preds.read_text())
        runs[name] = run
    out = paired_against(list(runs.values()), runs["base"], n_boot=20)
    assert [d["run"] for d in out] == ["cand"] and out[0]["baseline"] == "base"
    with pytest.raises(FileNotFoundError, match="fresh has no evaluation of test"):
        paired_against([runs["cand"]], runs["fresh"], n_boot=20)


def test_evaluations_with_image_digests_pair_by_content_not_by_name(tmp_path: Path) -> None:
    """A run evaluated on the real data and one on the synthetic demo data paired 9 colliding file names."""
    names = [f"test/IM-004{i}-0001.jpeg" for i in range(6)]
    digests = [f"{i:064x}" for i in range(6)]
    a = write_predictions(tmp_path / "a.csv", [(n, f"p{i}", TRUE[i], PERFECT[i]) for i, n in enumerate(names)], digests)
    other = [f"{i + 100:064x}" for i in range(6)]  # the same names, other images
    b = write_predictions(tmp_path / "b.csv", [(n, f"p{i}", TRUE[i], WORSE[i]) for i, n in enumerate(names)], other)
    with pytest.raises(ValueError, match=r"evaluated on different images \(6 and 6, 0 identical\)"):
        paired_difference(a, b, n_boot=20)
    # the same images under other names (another copy, another layout) pair by content
    renamed = [(f"elsewhere/{i}.jpeg", f"q{i}", TRUE[i], WORSE[i]) for i in range(6)][::-1]
    c = write_predictions(tmp_path / "c.csv", renamed, digests[::-1])
    result = paired_difference(a, c, n_boot=50)
    assert result["paired_by"] == "sha256" and result["n_images"] == 6
    assert result["delta_roc_auc"]["point"] == pytest.approx(1 - 5 / 9)
    assert result["delta_accuracy"]["point"] == pytest.approx(1 - 2 / 6)


def test_an_undefined_difference_is_said_not_printed_as_nan(tmp_path: Path) -> None:
    from pneumo.reproduce.paired import paired_text

    normal = [(f"test/img{i}.jpeg", f"p{i}", 0, WORSE[i]) for i in range(3)]
    digests = [f"{i:064x}" for i in range(3)]
    a = write_predictions(tmp_path / "a.csv", normal, digests)
    b = write_predictions(tmp_path / "b.csv", [(n, p, t, 1 - q) for n, p, t, q in normal], digests)
    line = paired_text({"run": "b", "baseline": "a", **paired_difference(b, a, n_boot=20)})
    assert "nan" not in line.lower()
    assert "ROC AUC undefined (the 3 images do not hold every class)" in line and "accuracy +" in line


def test_paired_against_refuses_evaluations_of_different_datasets(tmp_path: Path) -> None:
    import json

    from pneumo.reproduce.paired import paired_against

    a, b = two_runs(tmp_path)
    runs = {}
    for name, preds, dataset in (
        ("base", a, {"name": "chest-xray", "source": "/data/chest_xray", "images_sha256": "1" * 64}),
        ("demo", b, {"name": "chest-xray", "source": "/demo/chest_xray", "synthetic": True, "images_sha256": "2" * 64}),
        ("old", b, {"name": "chest-xray", "source": "/demo/chest_xray"}),
    ):
        run = tmp_path / name
        (run / "eval-chest-xray-test").mkdir(parents=True)
        (run / "config.yaml").write_text("data: /somewhere/chest_xray\n")
        (run / "eval-chest-xray-test" / "metrics.json").write_text(json.dumps({"dataset": dataset}))
        (run / "eval-chest-xray-test" / "predictions.csv").write_text(preds.read_text())
        runs[name] = run
    with pytest.raises(
        ValueError, match=r"different datasets \(chest-xray SYNTHETIC 22222222 vs chest-xray 11111111\)"
    ):
        paired_against([runs["demo"]], runs["base"], n_boot=20)
    with pytest.raises(ValueError, match=r"one predates image digests: evaluate both again"):
        paired_against([runs["old"]], runs["base"], n_boot=20)
