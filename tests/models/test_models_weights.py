"""Weights: grayscale first conv, local files and run folders, transfer with another head, ImageNet resolution."""

from __future__ import annotations

import logging
import pickle
import typing
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision
from safetensors.torch import save_file

from pneumo.models import adapt_first_conv, get_model, load_weights, resolve_imagenet_weights, save_weights


def _randomise(model: torch.nn.Module) -> None:
    """Give every BN non-trivial running statistics so that loading them is visible."""
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)


def test_first_conv_sum_equals_replicated_gray_input() -> None:
    torch.manual_seed(0)
    weight = torch.randn(8, 3, 7, 7)
    gray = torch.randn(2, 1, 20, 20)
    summed = F.conv2d(gray, adapt_first_conv(weight, 1), padding=3)
    replicated = F.conv2d(gray.repeat(1, 3, 1, 1), weight, padding=3)
    torch.testing.assert_close(summed, replicated, rtol=1e-5, atol=1e-5)
    # the reverse direction: 1-channel weights in a 3-channel model see a replicated gray image identically
    gray_weight = torch.randn(8, 1, 7, 7)
    torch.testing.assert_close(
        F.conv2d(gray.repeat(1, 3, 1, 1), adapt_first_conv(gray_weight, 3), padding=3),
        F.conv2d(gray, gray_weight, padding=3),
        rtol=1e-5,
        atol=1e-5,
    )
    with pytest.raises(ValueError):
        adapt_first_conv(weight, 2)


def test_rgb_resnet_loaded_as_gray_matches_replicated_input(tmp_path: Path) -> None:
    torch.manual_seed(0)
    rgb = get_model("resnet18", num_classes=2, in_chans=3)
    _randomise(rgb)
    path = save_weights(rgb, tmp_path / "rgb.safetensors")
    gray = get_model("resnet18", num_classes=2, in_chans=1, weights=path)
    assert gray.conv1.weight.shape[1] == 1
    x = torch.randn(2, 1, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(gray.eval()(x), rgb.eval()(x.repeat(1, 3, 1, 1)), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    ("name", "fmt"),
    [("resnet18", "safetensors"), ("densenet121", "safetensors"), ("cnn", "safetensors"), ("resnet18", "pth")],
)
def test_transfer_loads_backbone_and_skips_other_head(
    name: str, fmt: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    torch.manual_seed(0)
    source = get_model(name, num_classes=2)
    _randomise(source)
    if fmt == "safetensors":
        path = save_weights(source, tmp_path / "w.safetensors")
    else:
        path = tmp_path / "w.pth"
        torch.save({"state_dict": source.state_dict(), "epoch": 3}, path)  # a common checkpoint layout
    with caplog.at_level(logging.INFO, logger="pneumo.models.weights"):
        target = get_model(name, num_classes=3, weights=path)
    assert "kept a fresh head" in caplog.text
    src_state, dst_state = source.state_dict(), target.state_dict()
    for key, value in src_state.items():
        if key.startswith("head."):
            assert dst_state[key].shape != value.shape
        else:
            assert torch.equal(dst_state[key], value), key
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(source.eval().forward_features(x), target.eval().forward_features(x))


def test_same_head_loads_everything(tmp_path: Path) -> None:
    source = get_model("cnn", num_classes=3)
    target = get_model("cnn", num_classes=3, weights=save_weights(source, tmp_path / "w.safetensors"))
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value)


def test_load_head_false_keeps_a_fresh_head_of_the_same_shape(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = get_model("cnn", num_classes=2)
    _randomise(source)
    path = save_weights(source, tmp_path / "w.safetensors")
    torch.manual_seed(1)
    fresh = get_model("cnn", num_classes=2)
    torch.manual_seed(1)
    target = get_model("cnn", num_classes=2, weights=path, load_head=False)
    for key, value in target.state_dict().items():
        expected = fresh.state_dict()[key] if key.startswith("head.") else source.state_dict()[key]
        assert torch.equal(value, expected), key


def test_run_folder_prefers_best_then_last(tmp_path: Path) -> None:
    best, last = get_model("cnn", num_classes=2), get_model("cnn", num_classes=2)
    save_weights(last, tmp_path / "last.safetensors")
    loaded = get_model("cnn", num_classes=2, weights=tmp_path)
    assert torch.equal(loaded.head.fc.weight, last.head.fc.weight)
    save_weights(best, tmp_path / "best.safetensors")
    loaded = get_model("cnn", num_classes=2, weights=tmp_path)
    assert torch.equal(loaded.head.fc.weight, best.head.fc.weight)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=r"best\.safetensors"):
        get_model("cnn", num_classes=2, weights=empty)


def test_refuses_when_nothing_matches_or_architecture_differs(tmp_path: Path) -> None:
    save_file({"foo.weight": torch.zeros(3)}, tmp_path / "foreign.safetensors")
    with pytest.raises(ValueError, match="no backbone weight matched"):
        get_model("cnn", num_classes=2, weights=tmp_path / "foreign.safetensors")
    # a CNN's weights into a ResNet: only the 2-class head's bias fits, which is no transfer
    cnn = get_model("cnn", num_classes=2)
    with pytest.raises(ValueError, match="no backbone weight matched the model"):
        get_model("resnet18", num_classes=2, weights=save_weights(cnn, tmp_path / "cnn.safetensors"))
    wide = get_model("cnn", num_classes=2, widths=(8, 16, 32, 64))
    with pytest.raises(ValueError, match="incompatible shapes"):
        get_model("cnn", num_classes=2, weights=save_weights(wide, tmp_path / "wide.safetensors"))


def test_missing_and_unexpected_keys_are_reported(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    state = get_model("cnn", num_classes=2).state_dict()
    state.pop("features.block4.1.1.running_mean")
    state["extra.weight"] = torch.zeros(1)
    model = get_model("cnn", num_classes=2)
    with caplog.at_level(logging.WARNING, logger="pneumo.models.weights"):
        report = load_weights(model, state)
    assert report.missing == ["features.block4.1.1.running_mean"]
    assert report.unexpected == ["extra.weight"]
    assert "missing" in caplog.text and "unexpected" in caplog.text


class _Payload:
    """Any non-tensor class: unpickling it could run code, so weights_only must refuse it."""


def test_pth_is_loaded_with_weights_only(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"conv.weight": torch.zeros(1), "payload": _Payload()}, path)
    with pytest.raises(pickle.UnpicklingError):
        get_model("cnn", num_classes=2, weights=path)


@pytest.mark.parametrize(
    ("arch", "enum"),
    [
        ("resnet18", torchvision.models.ResNet18_Weights.IMAGENET1K_V1),
        ("resnet50", torchvision.models.ResNet50_Weights.IMAGENET1K_V2),
        ("densenet121", torchvision.models.DenseNet121_Weights.IMAGENET1K_V1),
    ],
)
def test_imagenet_resolves_to_torchvision_enum(arch: str, enum: torchvision.models.WeightsEnum) -> None:
    assert resolve_imagenet_weights(arch) is enum
    assert enum.url.startswith("https://download.pytorch.org/")


@pytest.mark.parametrize("arch", ["resnet18", "densenet121"])
def test_imagenet_path_without_download(
    arch: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Stand in for the download with a torchvision-layout state dict (DenseNet's in its legacy key names, and
    without BatchNorm step counters: the 2017 file predates them)."""
    torch.manual_seed(0)
    reference = torchvision.models.get_model(arch, weights=None)
    state = reference.state_dict()
    if arch == "densenet121":
        state = {k.replace(".norm1.", ".norm.1.").replace(".conv2.", ".conv.2."): v for k, v in state.items()}
        state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
        assert any(".norm.1." in k for k in state)
    calls: list[dict] = []

    def fake_get_state_dict(self: torchvision.models.WeightsEnum, **kwargs: object) -> dict:
        calls.append(kwargs)
        return state

    monkeypatch.setattr(type(resolve_imagenet_weights(arch)), "get_state_dict", fake_get_state_dict)
    model = get_model(arch, num_classes=2, weights="imagenet")
    assert len(calls) == 1
    first = "conv1" if arch == "resnet18" else "features.conv0"
    ref_state, own = reference.state_dict(), model.state_dict()
    torch.testing.assert_close(own[f"{first}.weight"], ref_state[f"{first}.weight"].sum(dim=1, keepdim=True))
    for key, value in ref_state.items():
        if key in own and key != f"{first}.weight":
            assert torch.equal(own[key], value), key
    assert model.head.fc.out_features == 2  # the 1000-class ImageNet head was skipped
    assert "missing" not in caplog.text and "unexpected" not in caplog.text  # nothing to warn about


def test_offline_imagenet_error_names_the_file_to_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without internet and without a cached file, the error says where the file goes (and nothing is half-built)."""
    from urllib.error import URLError

    from pneumo.models import WeightsUnavailableError

    def offline(*args: object, **kwargs: object) -> dict:
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(type(resolve_imagenet_weights("resnet18")), "get_state_dict", offline)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    url = resolve_imagenet_weights("resnet18").url
    with pytest.raises(WeightsUnavailableError) as caught:
        get_model("resnet18", num_classes=2, weights="imagenet")
    message = str(caught.value)
    assert url in message and str(tmp_path / "hub" / "checkpoints" / url.rsplit("/", 1)[1]) in message
    assert "name resolution" in message and isinstance(caught.value, FileNotFoundError)


class _Payload:
    """A pickle that runs code when unpickled (it only records that it ran)."""

    ran: typing.ClassVar[list[bool]] = []

    def __reduce__(self):
        return (_Payload.ran.append, (True,))


@pytest.mark.parametrize("hash_matches", [False, True])
def test_a_cached_imagenet_file_is_checked_and_never_unpickled_with_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hash_matches: bool
) -> None:
    # torch hub checks the hash only when it downloads and unpickles with code execution by default: a file copied
    # into the cache (as the offline message says to) ran whatever it held
    import pneumo.models.weights as weights_module
    import pneumo.utils.digest as digest

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    url = resolve_imagenet_weights("resnet18").url
    cached = tmp_path / "hub" / "checkpoints" / url.rsplit("/", 1)[1]
    cached.parent.mkdir(parents=True)
    torch.save({"conv1.weight": _Payload()}, cached)
    if hash_matches:  # a hash prefix collision stands in for a file that passes the name check
        prefix = weights_module._HASH_IN_NAME.search(cached.name).group(1)
        monkeypatch.setattr(digest, "file_sha256", lambda path: prefix + "0" * 56)
    _Payload.ran.clear()
    with pytest.raises(ValueError, match="does not start with" if not hash_matches else "not a plain weights file"):
        get_model("resnet18", num_classes=2, weights="imagenet")
    assert _Payload.ran == []


def test_input_size_check_works_on_a_model_with_real_weights() -> None:
    # a public function: on a CPU model it blamed the image size for the meta input it made itself
    from pneumo.models import check_input_size

    model = get_model("resnet18", num_classes=2)
    check_input_size(model, 224)
    with pytest.raises(ValueError, match="8 px images are too small"):
        check_input_size(get_model("densenet121", num_classes=2), 8)
    assert next(model.parameters()).device.type == "cpu"  # the model itself stays where it was
