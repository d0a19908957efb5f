"""``pneumo gan train | sample | synth`` through the typer app (registered by the main CLI as ``gan``)."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from pneumo.cli.gan import app
from pneumo.data.splits import read_split_csv

runner = CliRunner()


def test_train_resume_sample_synth_on_the_synthetic_dataset(synthetic_data: Path, tmp_path: Path) -> None:
    run = tmp_path / "cli-run"
    tiny = ["g_channels=8", "d_channels=8", "z_dim=8", "embed_dim=4", "batch_size=32"]
    args = ["train", "--data", str(synthetic_data), "--image-size", "16", "--epochs", "1", "--out", str(run), "--quiet"]
    args += ["--seed", "3"]
    result = runner.invoke(app, args + [arg for s in tiny for arg in ("--set", s)])
    assert result.exit_code == 0, result.output
    assert (run / "classifier" / "checkpoint.json").is_file()
    config = (run / "config.yaml").read_text()
    assert "image_size: 16" in config and "g_channels: 8" in config and "\nseed: 3\n" in config

    result = runner.invoke(app, ["train", "--resume", str(run), "--epochs", "2", "--quiet"])
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").open()] == [1, 2]

    result = runner.invoke(app, ["sample", str(run), "--class", "virus", "--n", "4", "--out", str(tmp_path / "g.png")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "g.png").is_file()

    result = runner.invoke(app, ["synth", str(run), "--out", str(tmp_path / "syn"), "--per-class", "2"])
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "syn" / "train").rglob("synthetic-clirun-*.png"))) == 6


def test_cli_errors_are_short_messages(tmp_path: Path) -> None:
    result = runner.invoke(app, ["train", "--resume", str(tmp_path), "--seed", "3"])
    assert result.exit_code == 2 and "only --epochs and --data" in result.output
    result = runner.invoke(app, ["train", "--set", "image_size=48", "--data", str(tmp_path)])
    assert result.exit_code == 2 and "power of two" in result.output
    result = runner.invoke(app, ["train"])
    assert result.exit_code == 2 and "--data" in result.output
    result = runner.invoke(app, ["sample", str(tmp_path), "--out", str(tmp_path / "x.png")])
    assert result.exit_code == 2 and "error:" in result.output


def test_quality_command_scores_a_run_without_touching_test(gan_run: Path) -> None:
    from pneumo.gan.quality import quality_file_name

    head = quality_file_name(gan_run / "classifier", "val", 0, None, 0).removesuffix(
        "-val.json"
    )  # quality-classifier-HASH
    assert head.startswith("quality-classifier-") and len(head) == len("quality-classifier-") + 8
    result = runner.invoke(app, ["quality", str(gan_run), "--classifier", str(gan_run / "classifier")])
    assert result.exit_code == 0, result.output
    assert "NOT Inception" in result.output
    written = json.loads((gan_run / f"{head}-val.json").read_text())
    assert written["split"] == "val" and written["n_images"] > 2
    assert written["frechet_distance"] >= 0 and 0 <= written["class_agreement"]["overall"] <= 1
    result = runner.invoke(
        app, ["quality", str(gan_run), "--classifier", str(gan_run / "classifier"), "--split", "test"]
    )
    assert result.exit_code == 2 and "test split stays untouched" in result.output
    # the EMA generator with standing BatchNorm statistics: scored apart, written beside the plain score
    args = ["quality", str(gan_run), "--classifier", str(gan_run / "classifier"), "--standing-batches", "3"]
    assert runner.invoke(app, args).exit_code == 0
    standing = json.loads((gan_run / f"{head}-val-standing3.json").read_text())
    assert standing["standing_batches"] == 3 and standing["n_images"] == written["n_images"]
    assert standing["frechet_distance"] != written["frechet_distance"]  # other statistics, other images

    # another noise seed is another result: its own file, the default one left as it was, the settings recorded
    args = ["quality", str(gan_run), "--classifier", str(gan_run / "classifier"), "--seed", "1"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    seeded = json.loads((gan_run / f"{head}-val-seed1.json").read_text())
    assert (seeded["seed"], written["seed"], written["max_images"]) == (1, 0, None)
    assert json.loads((gan_run / f"{head}-val.json").read_text()) == written
    # the reachable level: the classifier on the real images at the GAN size, beside the generated ones
    assert 0 <= written["class_agreement_real"]["overall"] <= 1 and "real images at the GAN size" in result.output
    # the GAN's own class head chose its epoch on these very patients, and trained on none of them: counted
    val_patients = {r.patient_id for r in read_split_csv(gan_run / "split.csv", gan_run) if r.split == "val"}
    assert written["reference_patients_in_classifier_split"] == {"train": 0, "val": len(val_patients)}


def test_reference_patients_are_counted_by_the_classifier_split_that_saw_them(tmp_path: Path) -> None:
    from pneumo.data.records import Record
    from pneumo.data.splits import write_split_csv
    from pneumo.gan.quality import patients_seen_by

    def record(patient: str, split: str) -> Record:
        return Record(tmp_path / f"{patient}_virus_1.jpeg", split, "PNEUMONIA", "virus", patient)

    write_split_csv(
        [record("p1", "train"), record("p2", "val"), record("p3", "test")], tmp_path / "split.csv", tmp_path
    )
    assert patients_seen_by(tmp_path, {"p1", "p2", "p3", "p4"}) == {"train": 1, "val": 1}
    assert patients_seen_by(tmp_path / "no-run", {"p1"}) == {"train": 0, "val": 0}


def test_quality_of_two_classifiers_named_alike_is_kept_apart(tmp_path: Path) -> None:
    # every GAN's exported head is a folder named classifier: scoring with a second one overwrote the first's result
    from pneumo.gan.quality import quality_file_name

    a, b = tmp_path / "gan-a" / "classifier", tmp_path / "gan-b" / "classifier"
    assert quality_file_name(a, "val", 0, None, 0) != quality_file_name(b, "val", 0, None, 0)
    assert quality_file_name(a, "val", 0, None, 0) == quality_file_name(a, "val", 0, None, 0)
