import numpy as np
import pytest
from scipy.special import softmax

from pneumo.evaluation import plots

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
BINARY = ["NORMAL", "PNEUMONIA"]
THREE = ["NORMAL", "BACTERIA", "VIRUS"]


def assert_png(path, expected):
    assert path == expected
    data = expected.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    assert len(data) > 5000  # a rendered figure, not an empty canvas
    assert [p.name for p in expected.parent.iterdir() if p.name.endswith(".tmp")] == []  # atomic write


@pytest.fixture(scope="module")
def predictions():
    rng = np.random.default_rng(0)
    y2 = rng.integers(0, 2, 80)
    logits2 = np.stack([np.zeros(80), 2 * (2 * y2 - 1) + rng.normal(0, 1.5, 80)], axis=1)
    y3 = rng.integers(0, 3, 90)
    logits3 = rng.normal(0, 1, (90, 3))
    logits3[np.arange(90), y3] += 1.5
    return y2, logits2, y3, logits3


@pytest.mark.parametrize("plot", [plots.plot_roc, plots.plot_pr])
def test_curve_plots_binary_with_operating_points_and_three_class(plot, predictions, tmp_path):
    y2, logits2, y3, logits3 = predictions
    ops = {"t = 0.50": 0.5, "validated t = 0.31 (Youden)": 0.31}
    out = tmp_path / "binary.png"
    assert_png(plot(y2, softmax(logits2, axis=1), BINARY, out, operating_points=ops), out)
    out = tmp_path / "three.png"
    assert_png(plot(y3, softmax(logits3, axis=1), THREE, out), out)


def test_confusion_plot_with_an_empty_row(tmp_path):
    out = tmp_path / "sub" / "cm.png"  # missing folders are created
    assert_png(plots.plot_confusion([[20, 3, 1], [2, 30, 4], [0, 0, 0]], THREE, out), out)
    with pytest.raises(ValueError):
        plots.plot_confusion([[1, 2], [3, 4]], THREE, out)


def test_reliability_plot_before_and_after(predictions, tmp_path):
    y2, logits2, *_ = predictions
    out = tmp_path / "rel.png"
    written = plots.plot_reliability(
        y2, softmax(5 * logits2, axis=1), out, probs_calibrated=softmax(logits2, axis=1), temperature=5.0
    )
    assert_png(written, out)


def test_training_curves_plot_whatever_numeric_keys_exist(tmp_path):
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
    out = tmp_path / "steps.png"
    assert_png(plots.plot_training_curves([{"loss": 1.0}, {"loss": 0.5}, {"loss": 0.3}], out), out)


def test_confident_errors_grid_and_empty_case(tmp_path):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (40, 40), dtype=np.uint8) for _ in range(20)]
    out = tmp_path / "errors.png"
    written = plots.plot_confident_errors(images, ["NORMAL"] * 20, ["PNEUMONIA"] * 20, rng.random(20), out, max_n=6)
    assert_png(written, out)
    out = tmp_path / "none.png"
    assert plots.plot_confident_errors([], [], [], [], out) == out
    assert out.read_bytes().startswith(PNG_SIGNATURE)
    with pytest.raises(ValueError):
        plots.plot_confident_errors(images, ["NORMAL"], ["PNEUMONIA"], [0.9], out)
