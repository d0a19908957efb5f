"""A short ACGAN run end to end: run folder, class control, classifier export, resume."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from pneumo.data.preprocess import PreprocessContract
from pneumo.data.records import dataset_root
from pneumo.data.splits import check_disjoint, read_split_csv
from pneumo.gan import Generator, class_agreement, generate, load_config, load_generator, resume_gan, train_gan
from pneumo.gan.checkpoint import _file_epoch
from pneumo.gan.config import read_config
from pneumo.runs.state import load_state, save_state

from .conftest import TINY, TOY_SIZE

CHECKPOINT_KEYS = {
    "format", "pneumo_version", "task", "class_names", "model", "dummy_class", "preprocess", "best", "last",
    "operating_point", "temperature", "ood",
}  # fmt: skip


def test_run_folder(gan_run: Path, toy_data: Path) -> None:
    for name in ("config.yaml", "env.json", "split.csv", "generator.safetensors", "generator_ema.safetensors",
                 "discriminator.safetensors", "last.state.safetensors", "classifier/best.safetensors"):  # fmt: skip
        assert (gan_run / name).is_file(), name
    assert not [p for p in gan_run.rglob("*") if p.suffix in (".pt", ".pth", ".pkl", ".tmp")]
    config = read_config(gan_run / "config.yaml")
    assert Path(config.data) == toy_data.resolve() and config.split_csv == str(gan_run / "split.csv")
    rows = [json.loads(line) for line in (gan_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4, 5, 6]
    for key in ("d_loss", "g_loss", "d_aux_real", "d_aux_fake", "g_aux", "aux_acc_real", "val_auc", "seconds"):
        assert all(isinstance(r[key], float) for r in rows), key
    assert rows[-1]["aux_acc_real"] > rows[0]["aux_acc_real"]
    assert json.loads((gan_run / "env.json").read_text())["torch"] == torch.__version__
    # fixed-noise grids every 3 epochs: one labelled row per class
    assert sorted(p.name for p in (gan_run / "samples").iterdir()) == ["epoch_0003.png", "epoch_0006.png"]
    grid = Image.open(gan_run / "samples" / "epoch_0006.png")
    assert grid.height == 3 * (TOY_SIZE + 2) + 2 and grid.width > 8 * (TOY_SIZE + 2)
    split = read_split_csv(gan_run / "split.csv", dataset_root(toy_data))
    assert check_disjoint(split) == {} and {r.split for r in split} == {"train", "val", "test"}


def test_generated_images_have_the_requested_class(gan_run: Path, toy_classifier) -> None:
    """Chance is 1/3 (balanced requests); an untrained generator sits there, the trained one must be well above.

    The toy classifier is independent of the GAN (trained on real images only). Six epochs reach about 0.95 here;
    0.6 leaves room for other BLAS/CPU rounding while staying far from chance.
    """
    labels = [c for c in range(3) for _ in range(30)]
    trained = class_agreement(toy_classifier, generate(load_generator(gan_run), labels, seed=7), labels)
    assert trained.overall >= 0.6, trained.confusion
    assert min(trained.per_class.values()) > 1 / 3, trained.confusion
    torch.manual_seed(0)
    fresh = Generator(z_dim=32, image_size=TOY_SIZE, base_channels=16, embed_dim=16)
    untrained = class_agreement(toy_classifier, generate(fresh, labels, seed=7), labels)
    assert untrained.overall < 0.5


def test_classifier_export_follows_the_checkpoint_contract(gan_run: Path) -> None:
    from pneumo.data.dataset import build_split
    from pneumo.data.tasks import get_task
    from pneumo.training import load_run, predict_logits, roc_auc

    meta = json.loads((gan_run / "classifier" / "checkpoint.json").read_text())
    assert set(meta) == CHECKPOINT_KEYS
    assert meta["task"] == "normal-bacteria-virus" and meta["class_names"] == ["normal", "bacteria", "virus"]
    assert meta["model"]["name"] == "acgan_discriminator" and meta["model"]["num_outputs"] == 3
    assert meta["preprocess"] == PreprocessContract(image_size=TOY_SIZE).to_dict()
    assert meta["dummy_class"] is False and meta["last"] == {"epoch": 6}
    rows = [json.loads(line) for line in (gan_run / "metrics.jsonl").read_text().splitlines()]
    best = max(rows, key=lambda r: r["val_auc"])  # the first of equal maxima, as training keeps
    assert meta["best"] == {"epoch": best["epoch"], "val_auc": best["val_auc"]}

    # the registry rebuilds it; on the run's val split it reproduces the AUC that chose it
    model, _ = load_run(gan_run / "classifier")
    records = read_split_csv(
        gan_run / "classifier" / "split.csv", dataset_root(read_config(gan_run / "config.yaml").data)
    )
    val = build_split("val", records, get_task("normal-bacteria-virus"), model.preprocess_contract, progress=False)
    logits = predict_logits(model, val, amp=False)
    assert logits.shape == (len(val), 3)
    probs = torch.softmax(torch.from_numpy(logits), 1).numpy()
    assert roc_auc(val.targets, probs) == pytest.approx(meta["best"]["val_auc"], abs=1e-6)


def test_pneumo_evaluate_works_on_the_export(gan_run: Path) -> None:
    from pneumo.evaluation.run import evaluate_run

    result = evaluate_run(gan_run / "classifier", n_boot=20, plots=False, progress=False, device="cpu")
    assert result["n_images"] == 30 and result["class_names"] == ["normal", "bacteria", "virus"]
    assert (Path(result["eval_dir"]) / "metrics.json").is_file()
    assert Path(result["eval_dir"]).parent == gan_run / "classifier"

    from pneumo.evaluation.runs_table import compare_runs

    row = compare_runs([gan_run / "classifier"])[0]  # epochs and wall time come from the GAN run
    assert row["model"] == "acgan_discriminator" and row["epochs"] == 6 and row["wall_time_s"] > 0


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(toy_data: Path, tmp_path: Path) -> None:
    tiny = ["image_size=16", "g_channels=8", "d_channels=8", "z_dim=8", "embed_dim=4", "batch_size=16"]
    config = load_config(None, [*tiny, "loss=nonsaturating", "label_smoothing=0.1", "epochs=2"], data=str(toy_data))
    straight = train_gan(config, tmp_path / "straight", progress=False)
    interrupted = train_gan(config.model_copy(update={"epochs": 1}), tmp_path / "resumed", progress=False)
    with pytest.raises(FileExistsError):
        train_gan(config, interrupted, progress=False)
    resume_gan(interrupted, epochs=2, progress=False)
    with pytest.raises(ValueError, match="has trained 2 epochs already"):  # config.yaml said 1 after trying it
        resume_gan(interrupted, epochs=1, progress=False)
    assert read_config(interrupted / "config.yaml").epochs == 2
    for name in ("generator", "generator_ema", "discriminator", "classifier/best"):
        a, b = load_file(straight / f"{name}.safetensors"), load_file(interrupted / f"{name}.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    rows = [
        [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in (run / "metrics.jsonl").open()]
        for run in (straight, interrupted)
    ]
    assert rows[0] == rows[1]

    # interrupted while saving epoch 2's state (its metrics row already written): the row is dropped and epoch 2
    # redone, so metrics and weights end as in the uninterrupted run
    import pneumo.gan.train as gan_train

    torn = tmp_path / "torn"
    train_gan(config.model_copy(update={"epochs": 1}), torn, progress=False)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(gan_train, "save_training_state", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
        with pytest.raises(KeyboardInterrupt):
            resume_gan(torn, epochs=2, progress=False)
    assert [json.loads(line)["epoch"] for line in (torn / "metrics.jsonl").open()] == [1, 2]
    resume_gan(torn, epochs=2, progress=False)
    assert [json.loads(line)["epoch"] for line in (torn / "metrics.jsonl").open()] == [1, 2]
    for name in ("generator", "generator_ema", "discriminator"):
        a, b = load_file(straight / f"{name}.safetensors"), load_file(torn / f"{name}.safetensors")
        assert all(torch.equal(a[k], b[k]) for k in a), name

    # interrupted after saving epoch 2's state, before its exports (weight files, a new best class head): the resume
    # trains nothing and writes them from the state
    cut = tmp_path / "cut"
    train_gan(config.model_copy(update={"epochs": 1}), cut, progress=False)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(gan_train, "val_metrics", lambda *a, **k: {"val_auc": 2.0, "val_loss": 0.0})  # epoch 2 is best
        real_export = gan_train.export_networks

        def export_until_epoch_2(*args, **kwargs):
            if kwargs["epoch"] == 2:
                raise KeyboardInterrupt
            real_export(*args, **kwargs)

        patch.setattr(gan_train, "export_networks", export_until_epoch_2)
        with pytest.raises(KeyboardInterrupt):
            resume_gan(cut, epochs=2, progress=False)
    assert gan_train.exported_epoch(cut) == 1
    assert _file_epoch(cut / "generator.safetensors") == 1
    resume_gan(cut, epochs=2, progress=False)
    assert _file_epoch(cut / "generator.safetensors") == 2
    assert [json.loads(line)["epoch"] for line in (cut / "metrics.jsonl").open()] == [1, 2]
    head = json.loads((cut / "classifier" / "checkpoint.json").read_text())
    assert head["best"] == {"epoch": 2, "val_auc": 2.0} and head["last"] == {"epoch": 2}
    state, _ = load_state(cut)
    exported = load_file(cut / "discriminator.safetensors")
    assert all(torch.equal(state[f"net.discriminator.{k}"], v) for k, v in exported.items())

    # a weights file from another epoch no longer matters: resuming reads the state and rewrites the file
    stale_run = tmp_path / "stale"
    shutil.copytree(interrupted, stale_run)
    stale = load_file(stale_run / "generator.safetensors")
    save_file({k: torch.zeros_like(v) for k, v in stale.items()}, str(stale_run / "generator.safetensors"),
              metadata={"epoch": "1", "format": "1"})  # fmt: skip
    resume_gan(stale_run, epochs=2, progress=False)
    restored = load_file(stale_run / "generator.safetensors")
    assert all(torch.equal(restored[k], stale[k]) for k in stale)

    # a state written before the networks moved into it resumes from the weight files, which must agree on the epoch
    legacy = tmp_path / "legacy"
    shutil.copytree(interrupted, legacy)
    tensors, info = load_state(legacy)
    save_state(legacy, {k: v for k, v in tensors.items() if not k.startswith("net.")}, info)
    save_file(stale, str(legacy / "generator.safetensors"), metadata={"epoch": "1", "format": "1"})
    with pytest.raises(ValueError, match="disagree"):
        resume_gan(legacy, epochs=3, progress=False)


def test_resume_refuses_an_edited_config_or_changed_images(toy_data: Path, tmp_path: Path) -> None:
    """Resuming took an edited config.yaml as it was (other learning rates, another loss from the next epoch on) and
    trained on whatever images the folder held by then: one run would continue with another's settings or data."""
    import yaml

    data = tmp_path / "data"
    shutil.copytree(toy_data, data)
    tiny = ["image_size=16", "g_channels=8", "d_channels=8", "z_dim=8", "embed_dim=4", "batch_size=16", "epochs=1"]
    run = train_gan(load_config(None, tiny, data=str(data)), tmp_path / "run", progress=False)
    saved = (run / "config.yaml").read_text()
    (run / "config.yaml").write_text(yaml.safe_dump({**yaml.safe_load(saved), "g_lr": 0.01, "loss": "nonsaturating"}))
    with pytest.raises(ValueError, match=r"differs from the config the run was trained with \(g_lr: 0.0001 -> 0.01; "
                       r"loss: 'hinge' -> 'nonsaturating'\)"):  # fmt: skip
        resume_gan(run, epochs=2, progress=False)
    assert read_config(run / "config.yaml").epochs == 1  # a refused resume does not record the new epochs
    (run / "config.yaml").write_text(saved)

    image = next(r.path for r in read_split_csv(run / "split.csv", dataset_root(data)) if r.split == "train")
    original = image.read_bytes()
    Image.fromarray(np.zeros((40, 40), dtype=np.uint8)).save(image, format="JPEG")
    with pytest.raises(ValueError, match=rf"changed since its training started \(train: other pixels or class 1 "
                       rf"\({image.name}\)\)"):  # fmt: skip
        resume_gan(run, epochs=2, progress=False)
    image.write_bytes(original)  # the same pixels again, in a dataset that moved: resumes from there
    moved = Path(shutil.move(data, tmp_path / "moved"))
    with pytest.raises(FileNotFoundError, match=rf"not at {data} any more; if it moved, resume with `pneumo gan "
                       rf"train --resume {run} --data NEW_PATH`"):  # fmt: skip
        resume_gan(run, epochs=2, progress=False)
    import pneumo.gan.train as gan_train

    with pytest.MonkeyPatch.context() as patch:  # epoch 2 no better: the head exported at epoch 1 stays as it is
        patch.setattr(gan_train, "write_classifier_run", lambda *a, **k: None)
        resume_gan(run, epochs=2, data=moved, progress=False)
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").open()] == [1, 2]
    assert read_config(run / "config.yaml").data == str(moved) and read_config(run / "config.yaml").epochs == 2
    # the class head's run too (unless a new best epoch rewrote it, it kept the old path for `pneumo evaluate`)
    assert yaml.safe_load((run / "classifier" / "config.yaml").read_text())["data"] == str(moved)


def test_tiny_config_constant_is_valid() -> None:
    assert load_config(None, TINY).g_channels == 16


def test_the_split_follows_the_seed_like_pneumo_train(toy_data: Path) -> None:
    """Seed s of a GAN and seed s of a classifier carve the same validation split, so GAN balancing can be repeated
    over seeds without a leak; ``split_seed`` fixes the carve while the seed varies."""
    from pneumo.data.records import discover
    from pneumo.data.splits import make_split
    from pneumo.gan import load_config
    from pneumo.gan.train import load_data

    def val_paths(**kwargs) -> set[str]:
        config = load_config(None, [f"{k}={v}" for k, v in kwargs.items()], data=str(toy_data))
        return {str(r.path) for r in load_data(config, progress=False).records if r.split == "val"}

    def carved(seed: int) -> set[str]:
        records = make_split(discover(str(toy_data)), val_fraction=0.1, seed=seed)
        return {str(r.path) for r in records if r.split == "val"}

    assert val_paths(seed=1) == carved(1) != carved(0)
    assert val_paths(seed=1, split_seed=0) == carved(0)


def test_standing_batchnorm_statistics_of_the_ema_generator(gan_run: Path) -> None:
    """The EMA weights are an average while its BatchNorm statistics are copied from the live generator: off by default
    (no consistent gain measured), ``ema_standing_batches`` recomputes them from the EMA generator's own outputs."""
    from pneumo.gan.synth import standing_statistics
    from pneumo.gan.train import ACGANSteps

    ema = load_generator(gan_run)
    live_stats = load_file(gan_run / "generator.safetensors")
    norm = next(name for name, m in ema.named_modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert torch.equal(ema.get_submodule(norm).running_mean, live_stats[f"{norm}.running_mean"])  # default: copied
    config = read_config(gan_run / "config.yaml")
    for batches, standing_expected in ((0, False), (2, True)):
        steps = ACGANSteps(
            config.model_copy(update={"ema_standing_batches": batches}), torch.tensor([0.2, 0.5, 0.3]),
            torch.device("cpu"), torch.Generator().manual_seed(0),
        )  # fmt: skip
        exported = steps.exported_ema_generator()
        assert (exported is not steps.ema_generator) == standing_expected
        copied = steps.ema_generator.get_submodule(norm).running_mean
        assert torch.equal(exported.get_submodule(norm).running_mean, copied) != standing_expected

    probs = torch.tensor([0.2, 0.5, 0.3])
    before = {k: v.clone() for k, v in ema.state_dict().items()}
    standing = standing_statistics(ema, probs, batches=1, batch_size=16, seed=7)
    assert all(torch.equal(before[k], v) for k, v in ema.state_dict().items())  # the original is left as it was
    assert not standing.training and standing.get_submodule(norm).momentum == 0.1
    # one batch: the running mean is that batch's mean at the first BatchNorm's input, the variance its unbiased one
    rng = torch.Generator().manual_seed(7)
    z, labels = torch.randn(16, ema.z_dim, generator=rng), torch.multinomial(probs, 16, replacement=True, generator=rng)
    seen = []
    probe = copy.deepcopy(ema).train()
    probe.get_submodule(norm).register_forward_hook(lambda m, inputs, out: seen.append(inputs[0]))
    with torch.no_grad():
        probe(z, labels)
    x = seen[0].transpose(0, 1).flatten(1)
    torch.testing.assert_close(standing.get_submodule(norm).running_mean, x.mean(1))
    torch.testing.assert_close(standing.get_submodule(norm).running_var, x.var(1, unbiased=True))
    again = standing_statistics(ema, probs, batches=1, batch_size=16, seed=7)
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in standing.state_dict().items())


def test_the_host_counted_ema_update_is_averaged_models_with_the_warm_up() -> None:
    # AveragedModel.update_parameters read its device-side count each step (a GPU sync); ours counts on the host and
    # must give the same weights, bit for bit
    from torch.optim.swa_utils import AveragedModel

    from pneumo.gan.config import GanConfig
    from pneumo.gan.train import ACGANSteps, ema_decay

    config = GanConfig(image_size=16, z_dim=8, embed_dim=8, g_channels=8, max_channels=16, ema_decay=0.9)
    torch.manual_seed(0)
    steps = ACGANSteps(config, torch.tensor([0.3, 0.5, 0.2]), torch.device("cpu"), torch.Generator().manual_seed(0))

    @torch.no_grad()
    def warm_up(ema_params, params, n_averaged):  # the former multi_avg_fn
        torch._foreach_lerp_(ema_params, params, 1.0 - ema_decay(0.9, int(n_averaged)))

    reference = AveragedModel(steps.generator, multi_avg_fn=warm_up, use_buffers=False)
    for _ in range(25):
        with torch.no_grad():
            for p in steps.generator.parameters():
                p.add_(torch.randn_like(p))
        steps.update_ema()
        reference.update_parameters(steps.generator)
    assert steps.ema_updates == int(steps.ema.n_averaged) == int(reference.n_averaged) == 25
    for mine, theirs in zip(steps.ema.module.parameters(), reference.module.parameters(), strict=True):
        assert torch.equal(mine, theirs)
    assert ema_decay(0.9, 0) == 0.1 and ema_decay(0.9, 1000) == 0.9


def test_the_generator_trains_every_d_steps_steps_across_epochs(toy_data: Path, tmp_path: Path) -> None:
    # counted per epoch, an epoch of fewer batches than d_steps never trained the generator, without a word
    from pneumo.runs.runinfo import read_metrics

    config = load_config(None, [*TINY, "image_size=16", "epochs=3", "batch_size=256", "d_steps=2"], data=str(toy_data))
    run = train_gan(config, tmp_path / "run", progress=False)
    rows = read_metrics(run / "metrics.jsonl")
    assert [r["steps"] for r in rows] == [1, 2, 3]  # one batch an epoch
    assert ["g_loss" in r for r in rows] == [False, True, False]


def test_a_gan_split_file_with_a_patient_in_train_and_val_is_refused(toy_data: Path, tmp_path: Path) -> None:
    # pneumo train refused such a file; the GAN chose its class head's epoch on patients it trained on
    import csv

    from pneumo.data.records import discover
    from pneumo.data.splits import make_split, write_split_csv
    from pneumo.gan.train import load_data

    write_split_csv(make_split(discover(toy_data)), tmp_path / "split.csv", toy_data)
    with (tmp_path / "split.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    train_patient = next(r["patient_id"] for r in rows if r["split"] == "train")
    next(r for r in rows if r["split"] == "val")["patient_id"] = train_patient  # one of their images in val
    with (tmp_path / "split.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    config = load_config(None, [*TINY, "image_size=16"], data=str(toy_data), split_csv=str(tmp_path / "split.csv"))
    with pytest.raises(ValueError, match=r"1 patient\(s\) in both train and val"):
        load_data(config, progress=False)


def test_a_run_interrupted_before_its_first_checkpoint_starts_again(
    toy_data: Path, tmp_path: Path, monkeypatch
) -> None:
    # neither resumable (no state) nor restartable ("already holds a run"): the folder had to be removed by hand
    import pneumo.gan.train as gan_train

    class Stop(Exception):
        pass

    config = load_config(None, [*TINY, "image_size=16", "epochs=1"], data=str(toy_data))
    real_save = gan_train.save_training_state
    monkeypatch.setattr(gan_train, "save_training_state", lambda *a, **k: (_ for _ in ()).throw(Stop()))
    with pytest.raises(Stop):
        gan_train.train_gan(config, tmp_path / "run", progress=False)
    assert (tmp_path / "run" / "config.yaml").exists() and (tmp_path / "run" / "metrics.jsonl").exists()
    monkeypatch.setattr(gan_train, "save_training_state", real_save)
    run = gan_train.train_gan(config, tmp_path / "run", progress=False)
    assert [r["epoch"] for r in gan_train.read_metrics(run / "metrics.jsonl")] == [1]
    with pytest.raises(FileExistsError, match="already holds a run"):
        gan_train.train_gan(config, tmp_path / "run", progress=False)
