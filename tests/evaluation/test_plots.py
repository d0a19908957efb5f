import io

import numpy as np
import pytest
from PIL import Image
from scipy.special import softmax
from sklearn.metrics import average_precision_score, roc_auc_score

from pneumo.evaluation import plots

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
BINARY = ["NORMAL", "PNEUMONIA"]
THREE = ["NORMAL", "BACTERIA", "VIRUS"]


@pytest.fixture
def drawn(monkeypatch):
    """The figures the plot functions save, to check what they draw (and not only that a file appeared)."""
    figures = []
    real = plots._save

    def keep(fig, path):
        figures.append(fig)
        return real(fig, path)

    monkeypatch.setattr(plots, "_save", keep)
    return figures


def assert_png(path, expected, ink=(0.01, 0.6)):
    """A PNG written atomically whose pixels are a drawing: some, but not most, of it off-white."""
    assert path == expected
    data = expected.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    assert [p.name for p in expected.parent.iterdir() if p.name.endswith(".tmp")] == []  # atomic write
    gray = np.asarray(Image.open(io.BytesIO(data)).convert("L"), dtype=np.float64)
    share = float((gray < 200).mean())
    assert ink[0] < share < ink[1], share
    return gray


def legend(fig, axis=0):
    return [t.get_text() for t in fig.axes[axis].get_legend().get_texts()]


@pytest.fixture(scope="module")
def predictions():
    rng = np.random.default_rng(0)
    y2 = rng.integers(0, 2, 80)
    logits2 = np.stack([np.zeros(80), 2 * (2 * y2 - 1) + rng.normal(0, 1.5, 80)], axis=1)
    y3 = rng.integers(0, 3, 90)
    logits3 = rng.normal(0, 1, (90, 3))
    logits3[np.arange(90), y3] += 1.5
    return y2, logits2, y3, logits3


def test_roc_plot_draws_each_curve_its_auc_and_the_operating_points(predictions, tmp_path, drawn):
    y2, logits2, y3, logits3 = predictions
    p2, p3 = softmax(logits2, axis=1), softmax(logits3, axis=1)
    ops = {"t = 0.50": 0.5, "validated t = 0.31 (Youden)": 0.31}
    out = tmp_path / "binary.png"
    assert_png(plots.plot_roc(y2, p2, BINARY, out, operating_points=ops), out)
    labels = legend(drawn[-1])
    assert labels[0] == f"PNEUMONIA (AUC = {roc_auc_score(y2, p2[:, 1]):.3f})" and labels[-1] == "chance"
    assert [label.split(":")[0] for label in labels[1:3]] == list(ops)
    curve = drawn[-1].axes[0].get_lines()[0]
    assert (curve.get_xdata()[0], curve.get_ydata()[-1]) == (0.0, 1.0)  # from (0, 0) to (1, 1)
    out = tmp_path / "three.png"
    assert_png(plots.plot_roc(y3, p3, THREE, out), out)
    expected = [f"{name} vs rest (AUC = {roc_auc_score(y3 == c, p3[:, c]):.3f})" for c, name in enumerate(THREE)]
    assert legend(drawn[-1]) == [*expected, "chance"]


def test_pr_plot_draws_each_curve_with_its_average_precision_and_prevalence(predictions, tmp_path, drawn):
    y2, logits2, *_ = predictions
    p2 = softmax(logits2, axis=1)
    out = tmp_path / "pr.png"
    assert_png(plots.plot_pr(y2, p2, BINARY, out, operating_points={"t = 0.50": 0.5}), out)
    labels = legend(drawn[-1])
    assert labels[0] == f"PNEUMONIA (AP = {average_precision_score(y2, p2[:, 1]):.3f})"
    assert labels[1] == f"PNEUMONIA prevalence {y2.mean():.2f}" and labels[2].startswith("t = 0.50: recall ")


def test_confusion_plot_with_an_empty_row(tmp_path, drawn):
    out = tmp_path / "sub" / "cm.png"  # missing folders are created
    cm = [[20, 3, 1], [2, 30, 4], [0, 0, 0]]
    assert_png(plots.plot_confusion(cm, THREE, out), out)
    counts, rates = drawn[-1].axes[0], drawn[-1].axes[2]  # the colour bars sit between
    np.testing.assert_array_equal(counts.get_images()[0].get_array(), cm)
    assert [t.get_text() for t in counts.texts] == [str(v) for row in cm for v in row]
    assert [t.get_text() for t in rates.texts][:3] == ["0.83", "0.12", "0.04"]
    assert [t.get_text() for t in rates.texts][6:] == ["–"] * 3  # an empty row stays blank, not 0
    with pytest.raises(ValueError):
        plots.plot_confusion([[1, 2], [3, 4]], THREE, out)


def test_reliability_plot_before_and_after(predictions, tmp_path, drawn):
    y2, logits2, *_ = predictions
    out = tmp_path / "rel.png"
    written = plots.plot_reliability(
        y2, softmax(5 * logits2, axis=1), out, probs_calibrated=softmax(logits2, axis=1), temperature=5.0
    )
    assert_png(written, out)
    labels = legend(drawn[-1])
    assert labels[0] == "perfect calibration" and len(labels) == 3
    assert all(": ECE = 0." in label for label in labels[1:])
    assert sum(p.get_height() for p in drawn[-1].axes[1].patches) == 2 * len(y2)  # both histograms, every image


def test_training_curves_plot_whatever_numeric_keys_exist(tmp_path, drawn):
    records = [
        {
            "epoch": e,
            "train_loss": 1 / (e + 1),
            "val_loss": 1.1 / (e + 1),
            "val_auc": 0.7 + 0.02 * e,
            "lr": 1e-3 * 0.5**e,
            "phase": "train",
        }
        for e in range(6)
    ]
    records[2].pop("val_auc")  # a key missing from some records
    out = tmp_path / "curves.png"
    assert_png(plots.plot_training_curves(records, out), out)
    panels = {ax.get_ylabel(): ax for ax in drawn[-1].axes}
    assert list(panels) == ["Loss", "Metrics", "Learning rate"] and panels["Learning rate"].get_yscale() == "log"
    assert [line.get_label() for line in panels["Loss"].get_lines()] == ["train_loss", "val_loss"]
    auc = panels["Metrics"].get_lines()[0]
    assert list(auc.get_xdata()) == [0, 1, 3, 4, 5]  # epoch 2 has no val_auc: left out, not drawn as 0
    out = tmp_path / "steps.png"
    assert_png(plots.plot_training_curves([{"loss": 1.0}, {"loss": 0.5}, {"loss": 0.3}], out), out)
    assert list(drawn[-1].axes[0].get_lines()[0].get_ydata()) == [1.0, 0.5, 0.3]


def test_confident_errors_grid_and_empty_case(tmp_path, drawn):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (40, 40), dtype=np.uint8) for _ in range(20)]
    confidences = rng.random(20)
    out = tmp_path / "errors.png"
    written = plots.plot_confident_errors(images, ["NORMAL"] * 20, ["PNEUMONIA"] * 20, confidences, out, max_n=6)
    assert_png(written, out, ink=(0.2, 0.9))  # mostly the noise images themselves
    shown = drawn[-1].axes
    most_confident = np.argsort(-confidences)[:6]
    assert len(shown) == 6
    for ax, i in zip(shown, most_confident, strict=True):
        np.testing.assert_array_equal(ax.get_images()[0].get_array(), images[i])
        assert ax.get_title() == f"true: NORMAL\npred: PNEUMONIA ({confidences[i]:.2f})"
    out = tmp_path / "none.png"
    assert plots.plot_confident_errors([], [], [], [], out) == out
    assert [t.get_text() for t in drawn[-1].axes[0].texts] == ["No errors to show"]
    assert out.read_bytes().startswith(PNG_SIGNATURE)
    with pytest.raises(ValueError):
        plots.plot_confident_errors(images, ["NORMAL"], ["PNEUMONIA"], [0.9], out)
