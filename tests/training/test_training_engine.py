from __future__ import annotations

import json
import pickle
import shutil
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from pneumo.data import build_split, dataset_root, get_task, read_split_csv
from pneumo.data.records import Record
from pneumo.models import get_model
from pneumo.training import (
    build_config,
    load_run,
    load_yaml,
    predict_logits,
    read_metrics,
    read_run_meta,
    roc_auc,
    train,
    update_run_meta,
    validate_config,
)
from pneumo.training.data import build_train_data, contract_for, resolve_split, shard, synthetic_counts, with_synthetic
from pneumo.training.distributed import DistInfo
from pneumo.training.engine import Trainer

RUN_FILES = {
    "config.yaml",
    "split.csv",
    "env.json",
    "metrics.jsonl",
    "best.safetensors",
    "last.safetensors",
    "checkpoint.json",
    "last.state.safetensors",
    "last.state.json",
}
META_KEYS = {
    "format",
    "pneumo_version",
    "task",
    "class_names",
    "model",
    "dummy_class",
    "preprocess",
    "best",
    "last",
    "operating_point",
    "temperature",
    "ood",
}
METRIC_KEYS = {"epoch", "train_loss", "val_loss", "val_auc", "val_accuracy", "lr", "images_per_s", "seconds"}


def _trainer(cfg, tmp_path: Path) -> Trainer:
    data = build_train_data(cfg, resolve_split(cfg), get_task(cfg.task), progress=False)
    run_dir = tmp_path / "trainer"
    run_dir.mkdir(exist_ok=True)
    return Trainer(cfg, run_dir, data, DistInfo(), torch.device("cpu"))


def _balanced_batch(trainer: Trainer, per_class: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    targets = trainer.data.train.targets
    idx = [int(i) for c in range(trainer.k) for i in np.flatnonzero(targets == c)[:per_class]]
    images, labels, _ = trainer.train_set.__getitems__(idx)
    return images, labels


def _val_split(run: Path, cfg) -> object:
    records = read_split_csv(run / "split.csv", dataset_root(cfg.data))
    return build_split("val", records, get_task(cfg.task), contract_for(cfg), progress=False)


def _softmax(logits: np.ndarray) -> np.ndarray:
    return torch.softmax(torch.from_numpy(logits), dim=1).numpy()


@pytest.mark.parametrize(
    ("model", "size", "steps"),
    [("cnn", 64, 4), ("resnet18", 32, 3), ("resnet50", 32, 3), ("densenet121", 32, 3), ("efficientnet_lite0", 32, 3)],
)
def test_each_family_fits_a_fixed_batch(make_cfg, tmp_path: Path, model: str, size: int, steps: int) -> None:
    cfg = make_cfg(
        "augment.enabled=false", "drop_rate=0", "warmup_epochs=0", "schedule=none", model=model, image_size=size
    )
    trainer = _trainer(cfg, tmp_path)
    images, targets = _balanced_batch(trainer)
    losses = [trainer._train_step(images, targets)[0] for _ in range(steps)]
    assert losses[-1] < 0.9 * losses[0], losses


@pytest.mark.slow
def test_cnn_clearly_beats_chance(blob_data: Path, tmp_path: Path) -> None:
    # 40 validation images (20 per class): under chance the AUC has a standard deviation of about
    # sqrt((n1 + n2 + 1) / (12 n1 n2)) = 0.09, so 0.9 is over 4 standard deviations above 0.5; it is also above what
    # the brightest pixel alone achieves (about 0.83). Seeds 0-3 reach 0.97-1.0 by epoch 3 of 4.
    cfg = build_config(
        flags={"data": str(blob_data), "model": "cnn", "image_size": 48, "epochs": 4, "batch_size": 16, "lr": 3e-3},
        overrides=["val_fraction=0.25", "progress=false", f"out={tmp_path / 'blobs'}"],
    )
    run = train(cfg)
    assert read_run_meta(run)["best"]["val_auc"] > 0.9, read_metrics(run)


def test_frozen_stages_and_their_batchnorm_stay_put(make_cfg, tmp_path: Path) -> None:
    cfg = make_cfg("freeze=until:layer3", model="resnet18", lr=0.05)
    trainer = _trainer(cfg, tmp_path)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.fit()
    after = trainer.model.state_dict()
    frozen = ("conv1.", "bn1.", "layer1.", "layer2.", "layer3.")
    for key, value in before.items():
        if key.startswith(frozen):
            assert torch.equal(value, after[key]), f"{key} moved although frozen"
    assert not torch.equal(before["layer4.0.bn1.running_mean"], after["layer4.0.bn1.running_mean"])
    assert not torch.equal(before["layer4.1.conv2.weight"], after["layer4.1.conv2.weight"])
    assert not torch.equal(before["head.fc.weight"], after["head.fc.weight"])


def test_dummy_class_from_out_of_task_images(make_cfg) -> None:
    cfg = make_cfg("dummy_class=true", task="bacteria-virus")
    run = train(cfg)
    meta = read_run_meta(run)
    assert meta["dummy_class"] is True and meta["class_names"] == ["bacteria", "virus"]
    assert meta["model"]["num_outputs"] == 3
    model, _ = load_run(run)
    assert model.num_classes == 3

    records = read_split_csv(run / "split.csv", dataset_root(cfg.data))
    data = build_train_data(cfg, records, get_task(cfg.task), progress=False)
    n_normal_train = sum(r.split == "train" and r.label == "NORMAL" for r in records)
    assert (data.train.targets == 2).sum() == n_normal_train > 0  # NORMAL images are the dummy class
    assert set(np.unique(data.val.targets)) == {0, 1}  # validation scores the task classes only

    logits = predict_logits(model, data.val, batch_size=16)
    assert logits.shape == (len(data.val), 2)
    recorded = read_metrics(run)[0]["val_auc"]
    assert recorded == pytest.approx(roc_auc(data.val.targets, _softmax(logits)), abs=1e-9)


def test_dummy_class_made_on_the_fly_for_normal_pneumonia(make_cfg, tmp_path: Path) -> None:
    trainer = _trainer(make_cfg("dummy_class=true"), tmp_path)
    assert not trainer.data.dummy_from_data and trainer.synth_dummies > 0
    assert trainer.criterion.weight.shape == (3,)
    seen: list[tuple[torch.Size, torch.Tensor]] = []
    criterion = trainer.criterion

    def spy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        seen.append((logits.shape, targets.clone()))
        return criterion(logits, targets)

    trainer.criterion = spy
    images, targets = _balanced_batch(trainer)
    trainer._train_step(images, targets)
    shape, used = seen[0]
    assert shape == (len(targets) + trainer.synth_dummies, 3)
    assert int((used == 2).sum()) == trainer.synth_dummies


def test_run_folder_contract_no_pickle_and_reproduction(make_cfg, tmp_path: Path, monkeypatch) -> None:
    cfg = make_cfg("drop_rate=0.3", epochs=2)
    run = train(cfg)
    assert {p.name for p in run.iterdir()} >= RUN_FILES
    meta = read_run_meta(run)
    assert set(meta) == META_KEYS
    assert meta["model"] == {"name": "cnn", "num_outputs": 2, "in_chans": 1, "kwargs": {"drop_rate": 0.3}}
    assert meta["preprocess"]["image_size"] == 32 and meta["last"] == {"epoch": 2}
    assert meta["best"]["epoch"] in (1, 2) and meta["operating_point"] is None
    records = read_metrics(run)
    assert [r["epoch"] for r in records] == [1, 2] and all(set(r) >= METRIC_KEYS for r in records)
    assert meta["best"]["val_auc"] == max(r["val_auc"] for r in records)
    env = json.loads((run / "env.json").read_text())
    assert {"python", "torch", "torchvision", "numpy", "git_commit", "command", "device_name"} <= set(env)

    saved = validate_config(load_yaml(run / "config.yaml"))
    assert saved.split_file == str(run / "split.csv") and saved.out == str(run)
    moved = ("data", "out", "split_file")
    assert saved.model_dump(exclude=set(moved)) == cfg.model_dump(exclude=set(moved))

    def refuse(*args, **kwargs):
        raise AssertionError("unpickling while loading a run")

    with monkeypatch.context() as m:
        m.setattr(pickle, "load", refuse)
        m.setattr(pickle, "loads", refuse)
        m.setattr(torch, "load", refuse)
        model, loaded_meta = load_run(run, "best")
    assert not model.training and loaded_meta == meta
    reference = get_model("cnn", num_classes=2, drop_rate=0.3)
    assert set(model.state_dict()) == set(reference.state_dict())

    update_run_meta(run, temperature=1.7, operating_point={"threshold": 0.4})
    assert read_run_meta(run)["temperature"] == 1.7

    with pytest.raises(FileExistsError, match="--resume"):
        train(saved)
    again = train(saved.model_copy(update={"out": str(tmp_path / "again")}))
    assert (again / "split.csv").read_text() == (run / "split.csv").read_text()
    for name in ("best.safetensors", "last.safetensors"):
        a, b = load_file(run / name), load_file(again / name)
        assert all(torch.equal(a[k], b[k]) for k in a), f"{name} differs on a rerun of the saved config"


def test_resident_data_path_trains_exactly_like_the_loader(make_cfg, tmp_path: Path) -> None:
    """Copying the cache to the device once must change where pixels live, not which batches the model sees."""
    runs = {}
    for path in ("loader", "resident"):
        cfg = make_cfg("augment.enabled=true", epochs=2, data_path=path, out=str(tmp_path / path), fit_ood=False)
        runs[path] = train(cfg)
    a, b = load_file(runs["loader"] / "last.safetensors"), load_file(runs["resident"] / "last.safetensors")
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    la, lb = read_metrics(runs["loader"]), read_metrics(runs["resident"])
    for ra, rb in zip(la, lb, strict=True):
        assert (ra["train_loss"], ra["val_auc"], ra["val_loss"]) == (rb["train_loss"], rb["val_auc"], rb["val_loss"])


def test_resident_split_batches_equal_the_cached_batches(make_cfg) -> None:
    from pneumo.training.data import BatchedSplit, ResidentSplit, resident_bytes

    cfg = make_cfg()
    data = build_train_data(cfg, resolve_split(cfg), get_task(cfg.task), progress=False)
    cached, resident = BatchedSplit(data.train), ResidentSplit(data.train, torch.device("cpu"))
    batch = [5, 0, 17, 5, 3]
    for x, y in zip(cached.__getitems__(batch), resident.__getitems__(torch.tensor(batch)), strict=True):
        assert torch.equal(x, y)
    assert resident_bytes(data.train) == len(data.train) * 32 * 32 == resident.images.numel()


def test_progress_in_a_log_file_is_not_redrawn_every_step(make_cfg, capsys) -> None:
    """Without a TTY the bar refreshes at most every 30 s; the per-step postfix must not force a redraw."""
    train(make_cfg(progress=True, max_steps_per_epoch=12, fit_ood=False))
    err = capsys.readouterr().err
    draws = err.count("epoch 1/1:")
    assert 1 <= draws <= 2, f"the epoch bar was drawn {draws} times for 12 steps"


def test_shards_cover_the_set_with_padding() -> None:
    shards = [shard(7, r, 3) for r in range(3)]
    assert {len(s) for s in shards} == {3}
    assert sorted({i for s in shards for i in s}) == list(range(7))


@pytest.fixture
def tiny_gan_run(tmp_path: Path, make_cfg) -> Path:
    """A GAN run folder with an untrained 16 px generator, trained (as its split.csv says) on the train split the
    default test config carves: enough to exercise the synthetic-image plumbing."""
    from pneumo.data.splits import write_split_csv
    from pneumo.gan.checkpoint import GENERATOR_EMA, build_generator
    from pneumo.gan.config import GanConfig, save_config
    from pneumo.utils.atomic import save_safetensors

    config = GanConfig(image_size=16, z_dim=8, embed_dim=8, g_channels=8, max_channels=16)
    run = tmp_path / "gan"
    run.mkdir()
    save_config(config, run / "config.yaml")
    save_safetensors(run / GENERATOR_EMA, build_generator(config).state_dict())
    cfg = make_cfg()
    write_split_csv(resolve_split(cfg), run / "split.csv", dataset_root(cfg.data))
    return run


def _record(split: str, subtype: str) -> Record:
    label = "NORMAL" if subtype == "normal" else "PNEUMONIA"
    return Record(Path(f"{subtype}{id(object())}.png"), split, label, subtype, "p")


def test_synthetic_counts_balance_each_task() -> None:
    records = [_record("train", s) for s in ["normal"] * 2 + ["bacteria"] * 6 + ["virus"] * 3]
    records += [_record("val", "normal")] * 9  # validation never counts
    assert synthetic_counts("balance", records, get_task("normal-pneumonia"), False) == {
        "normal": 7,
        "bacteria": 0,
        "virus": 0,
    }
    assert synthetic_counts("balance", records, get_task("bacteria-virus"), False) == {
        "normal": 0,
        "bacteria": 0,
        "virus": 3,
    }
    assert synthetic_counts("balance", records, get_task("normal-bacteria-virus"), False) == {
        "normal": 4,
        "bacteria": 0,
        "virus": 3,
    }
    assert synthetic_counts(5, records, get_task("bacteria-virus"), True) == dict.fromkeys(
        ("normal", "bacteria", "virus"), 5
    )
    # PNEUMONIA images without a subtype count as pneumonia; the deficit goes to the known subtypes' proportion.
    unknown = [replace(_record("train", "bacteria"), subtype=None) for _ in range(4)]
    many_normal = [_record("train", s) for s in ["normal"] * 12 + ["bacteria"] * 3 + ["virus"] * 1] + unknown
    assert synthetic_counts("balance", many_normal, get_task("normal-pneumonia"), False) == {
        "normal": 0,
        "bacteria": 3,
        "virus": 1,
    }
    few_normal = [_record("train", "normal")] * 2 + unknown
    assert synthetic_counts("balance", few_normal, get_task("normal-pneumonia"), False)["normal"] == 2


def test_synthetic_images_join_the_train_split_only(make_cfg, tiny_gan_run: Path) -> None:
    cfg = make_cfg(f"synthetic.from_run={tiny_gan_run}", "synthetic.per_class=balance")
    run = train(cfg)
    real = read_split_csv(run / "split.csv", dataset_root(cfg.data))
    assert not any("synthetic" in r.path.name for r in real)  # split.csv stays the real split
    n_normal = sum(r.split == "train" and r.label == "NORMAL" for r in real)
    n_pneumonia = sum(r.split == "train" and r.label == "PNEUMONIA" for r in real)
    generated = sorted((run / "synthetic").rglob("synthetic-*.png"))
    assert len(generated) == abs(n_pneumonia - n_normal) > 0

    task = get_task(cfg.task)
    saved = validate_config(load_yaml(run / "config.yaml"))
    records = with_synthetic(saved, real, task, run, generate=False)  # what every rank and a resume see
    data = build_train_data(saved, records, task, progress=False)
    assert len(data.train) == n_normal + n_pneumonia + len(generated)
    assert np.bincount(data.train.targets).tolist() == [max(n_normal, n_pneumonia)] * 2
    assert len(data.val) == sum(r.split == "val" for r in real)


def test_balance_counts_the_train_images_that_decode(
    make_cfg, tiny_gan_run: Path, synthetic_data: Path, tmp_path
) -> None:
    # counted before the cache skipped an undecodable image, the class of that image came out one short
    data = tmp_path / "data"
    shutil.copytree(synthetic_data, data)
    cfg = make_cfg(f"synthetic.from_run={tiny_gan_run}", "synthetic.per_class=balance", data=str(data))
    task = get_task(cfg.task)
    real = resolve_split(cfg)
    train_labels = Counter(r.label for r in real if r.split == "train")
    minority = min(train_labels, key=train_labels.get)
    broken = next(r for r in real if r.split == "train" and r.label == minority)
    broken.path.write_bytes(b"not an image")
    records = with_synthetic(cfg, real, task, tmp_path / "run", generate=True)
    train_data = build_train_data(cfg, records, task, progress=False)
    assert broken.name not in {r.name for r in train_data.train.records}
    assert np.bincount(train_data.train.targets).tolist() == [max(train_labels.values())] * 2


def test_generated_images_record_their_generator_and_a_retrained_gan_is_noticed(
    make_cfg, tiny_gan_run: Path, tmp_path, caplog
) -> None:
    # nothing said which weights made a run's images: a GAN retrained in place went unnoticed on resume
    from pneumo.gan.checkpoint import GENERATOR_EMA, build_generator
    from pneumo.gan.config import read_config
    from pneumo.utils.atomic import save_safetensors
    from pneumo.utils.digest import file_sha256

    cfg = make_cfg(f"synthetic.from_run={tiny_gan_run}", "synthetic.per_class=2")
    task, real, run = get_task(cfg.task), resolve_split(cfg), tmp_path / "run"
    started = with_synthetic(cfg, real, task, run, generate=True)
    record = json.loads(next((run / "synthetic" / "train").glob("*.provenance.json")).read_text())
    assert record["generator_sha256"] == file_sha256(tiny_gan_run / GENERATOR_EMA)
    with caplog.at_level("WARNING"):
        assert with_synthetic(cfg, real, task, run, generate=False) == started
    assert "generator changed" not in caplog.text
    torch.manual_seed(123)  # the GAN trained again: other weights in the same run folder
    save_safetensors(
        tiny_gan_run / GENERATOR_EMA, build_generator(read_config(tiny_gan_run / "config.yaml")).state_dict()
    )
    with caplog.at_level("WARNING"):
        assert with_synthetic(cfg, real, task, run, generate=False) == started  # the run keeps its images
    assert "its generator changed since this run generated its images" in caplog.text


def test_images_an_earlier_attempt_left_in_the_run_folder_are_not_trained_on(make_cfg, tiny_gan_run: Path) -> None:
    """An attempt stopped before its first checkpoint leaves RUN/synthetic behind; a new run in the same folder, from
    another GAN, must neither add those images at its start nor pick them up when it resumes."""
    cfg = make_cfg(f"synthetic.from_run={tiny_gan_run}", "synthetic.per_class=2")
    task = get_task(cfg.task)
    real = resolve_split(cfg)
    run = tiny_gan_run.parent / "run"
    stale = run / "synthetic" / "train" / "NORMAL" / "synthetic-othergan-normal-00000.png"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"left by an earlier attempt")
    started = with_synthetic(cfg, real, task, run, generate=True)
    resumed = with_synthetic(cfg, real, task, run, generate=False)
    assert not stale.exists()
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_bytes(b"written later by someone else")
    assert with_synthetic(cfg, real, task, run, generate=False) == resumed == started
    assert len(started) == len(real) + 6 and all("othergan" not in r.path.name for r in started)


def test_a_source_run_trained_on_this_runs_validation_patients_is_refused(make_cfg, tiny_gan_run: Path) -> None:
    from pneumo.data.records import DatasetError
    from pneumo.data.splits import write_split_csv
    from pneumo.training.data import check_source_runs

    cfg = make_cfg(f"synthetic.from_run={tiny_gan_run}", "synthetic.per_class=balance")
    root = dataset_root(cfg.data)
    write_split_csv(resolve_split(cfg.model_copy(update={"seed": 1})), tiny_gan_run / "split.csv", root)
    with pytest.raises(DatasetError, match="holds out for validation or test"):
        train(cfg)  # refused before anything is trained
    check_source_runs(cfg.model_copy(update={"split_seed": 1}), resolve_split(cfg.model_copy(update={"split_seed": 1})))
    # the same holds for transfer from a run folder (weights: RUN), and for its weights file
    source = tiny_gan_run.parent / "source-run"
    source.mkdir()
    (tiny_gan_run / "split.csv").rename(source / "split.csv")
    for weights in (source, source / "best.safetensors"):
        transfer = make_cfg(weights=str(weights))
        with pytest.raises(DatasetError, match="source-run trained on"):
            check_source_runs(transfer, resolve_split(transfer))
    check_source_runs(make_cfg(weights=str(source), seed=1), resolve_split(make_cfg(weights=str(source), seed=1)))


def test_a_source_run_on_another_copy_of_the_dataset_is_checked_by_file_name(
    make_cfg, tiny_gan_run: Path, synthetic_data: Path, tmp_path: Path
) -> None:
    # the same images read through a manifest one folder up share no path with the GAN's split.csv: only a warning,
    # and its patients went unchecked
    import csv

    from pneumo.data import discover
    from pneumo.data.records import DatasetError
    from pneumo.data.splits import write_split_csv
    from pneumo.training.data import check_source_runs

    cfg = make_cfg(f"synthetic.from_run={tiny_gan_run}", "synthetic.per_class=balance")
    root = dataset_root(cfg.data)
    write_split_csv(resolve_split(cfg.model_copy(update={"seed": 1})), tiny_gan_run / "split.csv", root)  # leaks
    manifest = tmp_path / "manifest.csv"
    with manifest.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "subtype", "patient_id", "split"])
        for r in discover(synthetic_data):
            writer.writerow([str(r.path.resolve()), r.label, r.subtype or "", r.patient_id, r.split])
    via_manifest = make_cfg(f"synthetic.from_run={tiny_gan_run}", "synthetic.per_class=balance", data=str(manifest))
    with pytest.raises(DatasetError, match="holds out for validation or test"):
        check_source_runs(via_manifest, resolve_split(via_manifest))


def test_a_relative_gan_run_is_saved_absolute(make_cfg, tiny_gan_run: Path, monkeypatch) -> None:
    # saved as given ("gan", "."), a resume from another folder looked for the GAN there
    monkeypatch.chdir(tiny_gan_run.parent)
    run = train(make_cfg("synthetic.from_run=gan", "synthetic.per_class=2", fit_ood=False))
    saved = validate_config(load_yaml(run / "config.yaml"))
    assert saved.synthetic.from_run == str(tiny_gan_run.resolve())


def test_a_gan_run_whose_patients_are_unknown_is_refused(make_cfg, tiny_gan_run: Path) -> None:
    # without split.csv it was left out of the leak check without a word, and its images were trained on
    from pneumo.data.records import DatasetError
    from pneumo.training.data import check_source_runs

    (tiny_gan_run / "split.csv").unlink()
    cfg = make_cfg(f"synthetic.from_run={tiny_gan_run}", "synthetic.per_class=balance")
    with pytest.raises(DatasetError, match=r"without split\.csv, so the patients it trained on are unknown"):
        check_source_runs(cfg, resolve_split(cfg))


class _Interrupted(Exception):
    pass


def test_early_stopping_counts_epochs_without_gain_across_a_resume(make_cfg, tmp_path: Path, monkeypatch) -> None:
    """Validation AUC per epoch is scripted: best at epoch 2, then two epochs without gain stop a patience-2 run
    at epoch 4 of 8, also when the run is interrupted in between (the count of epochs without gain is restored)."""
    from pneumo.training import resume

    scripted = {1: 0.60, 2: 0.70, 3: 0.65, 4: 0.69, 5: 0.71, 6: 0.75, 7: 0.80, 8: 0.85}
    real_validate = Trainer.validate
    interrupt_at: list[int] = []

    def validate(self: Trainer) -> dict[str, float]:
        if self.progress.epoch in interrupt_at:
            raise _Interrupted
        return {**real_validate(self), "val_auc": scripted[self.progress.epoch]}

    monkeypatch.setattr(Trainer, "validate", validate)
    flags = {"epochs": 8, "early_stopping_patience": 2, "max_steps_per_epoch": 1, "fit_ood": False}

    straight = train(make_cfg(out=str(tmp_path / "straight"), **flags))
    assert [r["epoch"] for r in read_metrics(straight)] == [1, 2, 3, 4]
    assert read_run_meta(straight)["best"]["epoch"] == 2

    interrupt_at.append(4)
    with pytest.raises(_Interrupted):
        train(make_cfg(out=str(tmp_path / "interrupted"), **flags))
    run = tmp_path / "interrupted"
    assert [r["epoch"] for r in read_metrics(run)] == [1, 2, 3]
    interrupt_at.clear()
    resume(run)
    assert [r["epoch"] for r in read_metrics(run)] == [1, 2, 3, 4]  # not 5 or more: epoch 3 counted
    assert read_run_meta(run)["best"]["epoch"] == 2


def test_an_interruption_after_the_stopping_epochs_state_keeps_its_metrics_line(
    make_cfg, tmp_path: Path, monkeypatch
) -> None:
    """The state that says "finished" is saved before the epoch's metrics line; interrupted in between, the resume
    returned at once for a finished run, and the line (an epoch of the results table's count) was lost for good."""
    import pneumo.training.engine as engine
    from pneumo.training import resume

    scripted = {1: 0.70, 2: 0.60, 3: 0.65}
    real_validate = Trainer.validate
    monkeypatch.setattr(
        Trainer, "validate", lambda self: {**real_validate(self), "val_auc": scripted[self.progress.epoch]}
    )
    real_append = engine.append_metrics

    def append(path: Path, record: dict) -> None:
        if record["epoch"] == 2:
            raise _Interrupted
        real_append(path, record)

    monkeypatch.setattr(engine, "append_metrics", append)
    run = tmp_path / "run"
    flags = {"epochs": 3, "early_stopping_patience": 1, "max_steps_per_epoch": 1, "fit_ood": False}
    with pytest.raises(_Interrupted):
        train(make_cfg(out=str(run), **flags))
    assert [r["epoch"] for r in read_metrics(run)] == [1]
    monkeypatch.setattr(engine, "append_metrics", real_append)
    resume(run)
    assert [r["epoch"] for r in read_metrics(run)] == [1, 2]


def test_best_weights_are_those_of_the_recorded_best_epoch_after_any_interruption(
    make_cfg, tmp_path: Path, monkeypatch
) -> None:
    """best.safetensors is written after the state that knows its epoch. Interrupted before it (state saved, best
    not yet written), a resume writes it from the restored weights; best never holds an epoch the state lacks."""
    from safetensors.torch import load_file

    from pneumo.runs.checkpoint import weights_meta
    from pneumo.runs.state import load_state
    from pneumo.training import resume

    scripted = {1: 0.60, 2: 0.70, 3: 0.65}
    real_validate, real_save_best = Trainer.validate, Trainer._save_best
    fail_best_at: list[int] = [2]

    def validate(self: Trainer) -> dict[str, float]:
        return {**real_validate(self), "val_auc": scripted[self.progress.epoch]}

    def save_best(self: Trainer) -> None:
        if self.progress.best_epoch in fail_best_at:
            raise _Interrupted  # the process dies between saving the state and writing best.safetensors
        real_save_best(self)

    monkeypatch.setattr(Trainer, "validate", validate)
    monkeypatch.setattr(Trainer, "_save_best", save_best)
    flags = {"epochs": 3, "max_steps_per_epoch": 1, "fit_ood": False, "early_stopping_patience": None}
    run = tmp_path / "run"
    with pytest.raises(_Interrupted):
        train(make_cfg(out=str(run), **flags))
    assert weights_meta(run / "best.safetensors")["epoch"] == 1  # still epoch 1's: epoch 2's never got written
    tensors, info = load_state(run)
    assert info["progress"]["best_epoch"] == 2 and info["progress"]["epoch"] == 3
    epoch2 = {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")}
    fail_best_at.clear()
    resume(run)
    best = load_file(run / "best.safetensors")
    assert weights_meta(run / "best.safetensors")["epoch"] == read_run_meta(run)["best"]["epoch"] == 2
    assert best.keys() == epoch2.keys() and all(torch.equal(best[k], epoch2[k]) for k in best)


def test_a_run_interrupted_while_saving_its_first_state_can_be_started_again(make_cfg, tmp_path: Path, monkeypatch):
    """The epoch's metrics line is written after the state that holds it: before, a kill between the two left a
    folder that resume refused (no state) and train refused too (it held metrics.jsonl)."""
    real_save_last = Trainer._save_last

    def save_last(self: Trainer) -> None:
        raise _Interrupted  # killed while saving the state of epoch 1

    monkeypatch.setattr(Trainer, "_save_last", save_last)
    flags = {"epochs": 1, "max_steps_per_epoch": 1, "fit_ood": False}
    run = tmp_path / "run"
    with pytest.raises(_Interrupted):
        train(make_cfg(out=str(run), **flags))
    assert not (run / "metrics.jsonl").exists()
    monkeypatch.setattr(Trainer, "_save_last", real_save_last)
    assert train(make_cfg(out=str(run), **flags)) == run  # the same folder starts again
    assert [r["epoch"] for r in read_metrics(run)] == [1]


def _train_until_epoch_2(cfg, monkeypatch) -> None:
    """Train ``cfg`` and interrupt it in epoch 2's validation (epoch 1 checkpointed), as a kill would."""
    real_validate = Trainer.validate

    def validate(self: Trainer) -> dict[str, float]:
        if self.progress.epoch == 2:
            raise _Interrupted
        return real_validate(self)

    with monkeypatch.context() as patched:
        patched.setattr(Trainer, "validate", validate)
        with pytest.raises(_Interrupted):
            train(cfg)


def test_resume_refuses_a_config_edited_since_the_run_started(make_cfg, tmp_path: Path, monkeypatch) -> None:
    """An edited config.yaml was taken in part (epochs, batch size) and ignored in part (the optimizer state keeps
    its lr): neither run. Settings of where and how fast (device, workers, paths) may change."""
    import yaml

    from pneumo.training import ConfigError, resume

    run = tmp_path / "run"
    _train_until_epoch_2(make_cfg(out=str(run), epochs=3, max_steps_per_epoch=1, fit_ood=False), monkeypatch)
    saved = (run / "config.yaml").read_text()
    edited = {**yaml.safe_load(saved), "lr": 0.5, "augment": {"rotation": 20.0}}
    (run / "config.yaml").write_text(yaml.safe_dump(edited))
    with pytest.raises(ConfigError, match=r"differs from the config the run was trained with \(augment.rotation: "
                       r"7.0 -> 20.0; lr: 0.002 -> 0.5\)"):  # fmt: skip
        resume(run)
    (run / "config.yaml").write_text(yaml.safe_dump({**yaml.safe_load(saved), "device": "cpu", "num_workers": 0}))
    assert resume(run) == run and [r["epoch"] for r in read_metrics(run)] == [1, 2, 3]
    from pneumo.runs.runinfo import config_changes

    assert config_changes(None, {"lr": 1.0}) == []  # a state saved before the config was recorded in it
    # a setting a later version added (with its default) is no edit; model_kwargs compare as a whole
    assert config_changes({"lr": 1.0}, {"lr": 1.0, "new_setting": 3}) == []
    assert config_changes({"model_kwargs": {"w": [4]}}, {"model_kwargs": {"w": [8]}}) == [
        "model_kwargs: {'w': [4]} -> {'w': [8]}"
    ]


def test_resume_refuses_images_changed_since_the_run_started(
    make_cfg, synthetic_data: Path, tmp_path: Path, monkeypatch
) -> None:
    """A run killed, its dataset edited, then resumed trained its last epochs on other images than its first. The
    check is on pixels: the same images copied elsewhere (new paths, new file times, a new cache) resume."""
    import shutil

    import yaml
    from PIL import Image

    from pneumo.training import resume

    data = tmp_path / "data"
    shutil.copytree(synthetic_data, data)
    run = tmp_path / "run"
    flags = {"epochs": 3, "max_steps_per_epoch": 1, "fit_ood": False, "cache_dir": str(tmp_path / "cache")}
    _train_until_epoch_2(make_cfg(data=str(data), out=str(run), **flags), monkeypatch)
    train_files = [r for r in read_split_csv(run / "split.csv", data) if r.split == "train"]
    edited, removed = train_files[0].path, train_files[1].path
    original = edited.read_bytes()
    Image.fromarray(np.full((40, 40), 200, dtype=np.uint8)).save(edited)
    removed.unlink()
    with pytest.raises(ValueError, match=rf"changed since its training started \(train: removed 1 \({removed.name}\); "
                       rf"other pixels or class 1 \({edited.name}\)\)"):  # fmt: skip
        resume(run)

    moved = tmp_path / "moved"
    shutil.copytree(data, moved)
    (moved / edited.relative_to(data)).write_bytes(original)
    (moved / removed.relative_to(data)).write_bytes((synthetic_data / removed.relative_to(data)).read_bytes())
    shutil.rmtree(data)
    with pytest.raises(FileNotFoundError, match=rf"not at {data} any more; if it moved, resume with `pneumo train "
                       rf"--resume {run} --data NEW_PATH`"):  # fmt: skip
        resume(run)
    config = yaml.safe_load((run / "config.yaml").read_text())
    config.update(cache_dir=str(tmp_path / "new-cache"))  # a new cache: the pixels are compared, not cache rows
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    assert resume(run, data=moved) == run and [r["epoch"] for r in read_metrics(run)] == [1, 2, 3]
    assert yaml.safe_load((run / "config.yaml").read_text())["data"] == str(moved)  # later commands look there


def test_a_bad_freeze_stage_fails_before_the_run_folder_is_written(make_cfg, tmp_path: Path) -> None:
    out = tmp_path / "never"
    with pytest.raises(ValueError, match=r"unknown stage 'layer9' for cnn; valid: block1"):
        train(make_cfg(out=str(out), freeze="until:layer9"))
    assert not out.exists()  # no split written, no image cached


@pytest.mark.parametrize(("model", "size"), [("cnn", 8), ("densenet121", 16)])
def test_an_image_size_the_model_cannot_take_fails_before_the_run_folder_is_written(
    make_cfg, tmp_path: Path, model: str, size: int
) -> None:
    out = tmp_path / "never"
    with pytest.raises(ValueError, match=rf"{model}: {size} px images are too small for this model"):
        train(make_cfg(out=str(out), model=model, image_size=size))
    assert not out.exists()


def test_model_kwargs_cannot_set_what_pneumo_sets(make_cfg) -> None:
    # drop_rate given twice passed the architecture check and failed after the split and the cache were written
    from pneumo.training.config import ConfigError

    with pytest.raises(ConfigError, match="model_kwargs cannot set drop_rate"):
        make_cfg("model_kwargs.drop_rate=0.5")


def test_weights_of_another_architecture_leave_no_run_folder(make_cfg, tmp_path: Path) -> None:
    # found only when the trainer loaded them, outside the cleanup: a folder with config, env and split stayed
    from pneumo.models import get_model, save_weights

    source = tmp_path / "resnet18.safetensors"
    save_weights(get_model("resnet18", num_classes=2), source)
    run = tmp_path / "cnn-from-resnet"
    with pytest.raises(ValueError, match="no backbone weight matched"):
        train(make_cfg(out=str(run), weights=str(source), fit_ood=False))
    assert not run.exists()


def test_evaluation_logits_replicate_gray_input_for_a_three_channel_model(make_cfg) -> None:
    # predict, serve and ONNX export replicated the gray channel for an in_chans=3 model; evaluation did not
    from pneumo.models import get_model

    cfg = make_cfg()
    records = resolve_split(cfg)
    data = build_train_data(cfg, records, get_task(cfg.task), progress=False)
    model = get_model("cnn", num_classes=2, in_chans=3)
    model.num_task_classes = 2
    model.preprocess_contract = data.contract
    logits = predict_logits(model, data.val, batch_size=16)
    assert logits.shape == (len(data.val), 2) and np.isfinite(logits).all()
