import base64
import math
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from pneumo.evaluation import plots
from pneumo.evaluation.bootstrap import CI
from pneumo.evaluation.compare import ci_rows, compare_table, format_ci
from pneumo.evaluation.model_card import KNOWN_LIMITATIONS, render_model_card, write_model_card
from pneumo.evaluation.report import BANNER, write_html_report

CIS = {"roc_auc": CI(0.912, 0.889, 0.934, 1000), "sensitivity": CI(0.95, 0.921, 0.973, 1000)}


class Collector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[str] = []
        self.images: list[dict] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "img":
            self.images.append(dict(attrs))

    def handle_data(self, data):
        self.text.append(data)


@pytest.fixture(scope="module")
def plot_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("plots")
    cm = plots.plot_confusion([[10, 2], [1, 12]], ["NORMAL", "PNEUMONIA"], folder / "cm.png")
    curves = plots.plot_training_curves([{"epoch": 0, "loss": 1.0}, {"epoch": 1, "loss": 0.5}], folder / "tc.png")
    return {"Confusion matrix": cm, "Training curves": curves}


def test_html_report_is_self_contained_and_escaped(plot_files, tmp_path):
    out = tmp_path / "report.html"
    written = write_html_report(
        out,
        title="Run <script>alert(1)</script>",
        config={"model": {"name": "resnet18", "pretrained": False}, "data_dir": tmp_path, "lr": np.float32(0.001)},
        data_summary={"test images": 624, "classes": {"NORMAL": 234, "PNEUMONIA": 390}},
        metrics_table=[*ci_rows(CIS, split="test"), {"metric": "ece", "ci": CI(0.05, math.nan, math.nan)}],
        plots=plot_files,
        limitations=["Tiny test <b>set</b>"],
        extra_sections={"Notes": "a & b"},
    )
    assert written == out
    text = out.read_text(encoding="utf-8")
    parser = Collector()
    parser.feed(text)
    parser.close()
    body_text = " ".join(parser.text)

    assert "script" not in parser.tags and "b" not in parser.tags  # user text is escaped, never markup
    assert "Run <script>alert(1)</script>" in body_text
    assert "Tiny test <b>set</b>" in body_text and "a & b" in body_text
    assert BANNER in body_text
    assert "link" not in parser.tags and "http://" not in text and "https://" not in text

    assert len(parser.images) == len(plot_files)
    for image in parser.images:
        prefix = "data:image/png;base64,"
        assert image["src"].startswith(prefix)
        assert base64.b64decode(image["src"][len(prefix) :]).startswith(b"\x89PNG")

    assert "0.912" in body_text and "[0.889, 0.934]" in body_text  # point and CI columns
    assert "95 % CI" in body_text
    assert "name: resnet18" in body_text and "lr: 0.001" in body_text  # YAML config


def test_model_card_has_required_sections(tmp_path):
    out = tmp_path / "MODEL_CARD.md"
    write_model_card(
        out,
        run_name="resnet18-binary",
        task="binary: NORMAL vs PNEUMONIA",
        class_names=["NORMAL", "PNEUMONIA"],
        model={"architecture": "resnet18", "parameters": 11_177_538},
        data_summary={"train": 4186, "val": 1046, "test": 624},
        preprocess={"size": 224, "grayscale": True, "normalise": {"mean": 0.5, "std": 0.25}},
        metrics_table=ci_rows(CIS),
        threshold={"value": 0.4213, "method": "youden", "split": "validation"},
        temperature={"temperature": 1.84, "ece_before": 0.09, "ece_after": 0.02},
        limitations=["Trained for 3 epochs only."],
    )
    card = out.read_text(encoding="utf-8")
    for heading in (
        "## Model details",
        "## Intended use",
        "## Data",
        "## Preprocessing contract",
        "## Metrics",
        "## Operating point",
        "## Calibration",
        "## Known failure modes and limitations",
    ):
        assert heading in card
    assert "NOT a medical device" in card and "diagnosis" in card
    assert "Kermany" in card and "single centre" in card and "CC BY 4.0" in card
    assert "0.912" in card and "[0.889, 0.934]" in card and "| test |" in card
    assert "0.4213" in card and "youden" in card and "**validation** split" in card
    assert "T = 1.840" in card
    assert "0.93" in card and "overlap" in card and "adults" in card
    assert all(item in card for item in KNOWN_LIMITATIONS)
    assert "Trained for 3 epochs only." in card
    assert card.index("## Model details") < card.index("## Known failure modes and limitations")


def test_model_card_for_multiclass_without_threshold_or_calibration(tmp_path):
    out = write_model_card(
        tmp_path / "MODEL_CARD.md",
        run_name="r",
        task="3-class",
        class_names=["NORMAL", "BACTERIA", "VIRUS"],
        model="densenet121",
        data_summary={},
        preprocess={},
        metrics_table=[],
        threshold=None,
        temperature=None,
        limitations=[],
    )
    card = out.read_text(encoding="utf-8")
    assert "argmax" in card and "not recalibrated" in card and "densenet121" in card


def test_format_ci_and_tables():
    assert format_ci(CI(0.912, 0.889, 0.934)) == "0.912 [0.889, 0.934]"
    assert format_ci(CI(0.91234, 0.88888, 0.93456), digits=2) == "0.91 [0.89, 0.93]"
    assert format_ci(CI(0.5, math.nan, math.nan)) == "0.500"
    assert format_ci(CI(math.nan, math.nan, math.nan)) == "n/a"
    assert format_ci({"point": 0.9, "low": 0.8, "high": 0.95}) == "0.900 [0.800, 0.950]"

    rows = [{"run": "resnet|18", "roc_auc": CIS["roc_auc"], "n": 624}, {"run": "cnn", "roc_auc": 0.8}]
    md = compare_table(rows, ["run", "roc_auc", "n"]).splitlines()
    assert md[0] == "| run | roc_auc | n |"
    assert md[2] == "| resnet\\|18 | 0.912 [0.889, 0.934] | 624 |"
    assert md[3] == "| cnn | 0.800 | n/a |"

    plain = compare_table(rows, ["run", "roc_auc"], markdown=False).splitlines()
    assert plain[0].split() == ["run", "roc_auc"]
    assert plain[2].startswith("resnet|18  0.912 [0.889, 0.934]")
    assert plain[3].index("0.800") == plain[2].index("0.912")  # aligned columns


def test_ci_rows_keeps_requested_order():
    rows = ci_rows(CIS, ["sensitivity", "roc_auc", "absent"], split="val")
    assert [r["metric"] for r in rows] == ["sensitivity", "roc_auc"]
    assert rows[0] == {"metric": "sensitivity", "point": 0.95, "low": 0.921, "high": 0.973, "split": "val"}


def test_model_card_data_kind_follows_the_dataset(tmp_path: Path) -> None:
    """The Kermany description only for the Kermany release: a synthetic set is flagged, another set is not named."""
    from pneumo.data.records import discover
    from pneumo.data.synth import generate_dataset
    from pneumo.evaluation.writers import data_kind

    synthetic = generate_dataset(tmp_path / "synth", n=40, seed=0, progress=False)
    records = discover(synthetic)
    assert data_kind(synthetic, records) == "synthetic"
    assert data_kind(synthetic.parent, records) == "synthetic"  # the folder above the README works too
    kermany = tmp_path / "kermany"
    shutil.copytree(synthetic, kermany, ignore=shutil.ignore_patterns("README.md"))
    assert data_kind(kermany, discover(kermany)) == "kermany"
    other = tmp_path / "other"
    for i, r in enumerate(discover(kermany)):
        dst = other / r.split / r.label / f"scan_{i}.jpeg"
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(r.path, dst)
    assert data_kind(other, discover(other)) == "other"
    # trained on Kermany, evaluated on a synthetic set: still flagged
    assert data_kind(kermany, discover(kermany), evaluated_on=synthetic) == "synthetic"

    common = dict(run_name="r", task="t", class_names=["a", "b"], model="cnn", data_summary={}, preprocess={},
                  metrics_table=[], threshold=None, temperature=None, limitations=[])  # fmt: skip
    cards = {kind: render_model_card(**common, data_kind=kind) for kind in ("kermany", "synthetic", "other")}
    assert "Guangzhou" in cards["kermany"] and "SYNTHETIC" not in cards["kermany"]
    assert "Guangzhou" not in cards["synthetic"] and cards["synthetic"].count("SYNTHETIC") >= 2
    assert "Guangzhou" not in cards["other"] and "Kermany et al." not in cards["other"]
    assert all("NOT a medical device" in card for card in cards.values())


def test_card_rows_label_each_metric_by_what_it_depends_on_and_name_short_intervals() -> None:
    """A ranking metric was labelled with the threshold it does not use; an interval that rests on fewer resamples
    (the metric undefined in the others, e.g. a class not drawn) did not say so."""
    from pneumo.evaluation.writers import card_rows

    def ci(n_valid: int) -> dict:
        return {"point": 0.9, "low": 0.8, "high": 0.95, "n_valid": n_valid}

    result = {
        "class_names": ["NORMAL", "PNEUMONIA"],
        "dataset": {"name": "chest-xray"},
        "split": "test",
        "bootstrap": {"n_boot": 1000},
        "primary": "at_validated_threshold",
        "metrics": {
            "at_validated_threshold": {
                "label": "validated t = 0.374 (youden)",
                "probabilities": "temperature-scaled",
                "ci": {"sensitivity": ci(1000), "roc_auc": ci(1000), "npv": ci(987)},
            },
        },
    }
    labels = [row["metric"] for row in card_rows(result)]
    assert labels == [
        "sensitivity (validated t = 0.374 (youden))",
        "npv (validated t = 0.374 (youden); CI from 987 of 1000 resamples)",
        "roc_auc (temperature-scaled probabilities)",
    ]


def test_report_rows_add_a_resamples_column_only_when_an_interval_rests_on_fewer() -> None:
    from pneumo.evaluation.writers import Scored, report_rows

    def scored(n_valid: int) -> Scored:
        cis = {"roc_auc": CI(0.9, 0.8, 0.95, 1000), "npv": CI(0.9, 0.8, 0.95, n_valid)}
        return Scored("at_0.5", "t = 0.50", 0.5, "raw", {}, cis)

    full = report_rows([scored(1000)], ["npv", "roc_auc"], 1000)
    assert [sorted(row) for row in full] == [["high", "low", "metric", "operating_point", "point", "probabilities"]] * 2
    short = report_rows([scored(987)], ["npv", "roc_auc"], 1000)
    assert [(row["metric"], row["resamples"]) for row in short] == [("npv", 987), ("roc_auc", 1000)]
