"""Grad-CAM heatmaps with pytorch-grad-cam, mapped back onto the original image.

The target layer is the model's ``cam_target_layer`` (pytorch-grad-cam's recommendation per architecture: the last
conv block of the CNN, ``layer4[-1]`` of ResNets, ``features.norm5`` of DenseNets). The heatmap is computed at the
model input size and then undoes the contract's geometry (squash / center-crop / letterbox), so the overlay lines up
with the image as the user gave it.
"""

from __future__ import annotations

import copy
import io

import numpy as np
import torch
from PIL import Image
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.image import show_cam_on_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from pneumo.data.preprocess import PreprocessContract


def cam_unavailable_reason(model: nn.Module, image_size: int) -> str | None:
    """Why Grad-CAM cannot localise anything at ``image_size`` px, or None.

    A target layer of a single position (ResNets and DenseNets below about 64 px) gives one number per image, which
    pytorch-grad-cam's min-max scaling turns into an all-zero map: an empty overlay that looks like an answer. The
    shape is found by a forward pass of a copy on the meta device (no memory, no arithmetic).
    """
    probe = copy.deepcopy(model).to("meta").eval()
    grid: list[tuple[int, ...]] = []
    handle = probe.cam_target_layer.register_forward_hook(lambda _m, _i, out: grid.append(tuple(out.shape[-2:])))
    try:
        with torch.no_grad():
            probe(torch.empty(1, int(getattr(model, "in_chans", 1)), image_size, image_size, device="meta"))
    finally:
        handle.remove()
    if grid and grid[0][0] * grid[0][1] < 2:
        return (
            f"Grad-CAM cannot localise at {image_size} px: the model's target layer is {grid[0][0]}x{grid[0][1]} "
            "there, so every heatmap would be empty; train at a larger image size to explain"
        )
    return None


def grad_cam(model: nn.Module, x: torch.Tensor, target_index: int, layer: nn.Module | None = None) -> np.ndarray:
    """Grad-CAM of output ``target_index`` for one normalised input ``(1, C, S, S)``: float32 ``S x S`` in [0, 1].

    Runs with gradients even when called under ``torch.inference_mode``; the model's parameters are untouched.
    """
    layer = layer if layer is not None else model.cam_target_layer
    with torch.inference_mode(False), torch.enable_grad(), GradCAM(model=model, target_layers=[layer]) as cam:
        # an input made under inference mode cannot enter autograd, its clone here can; its gradient (not the
        # weights') carries the gradient to the target layer, so the model needs no weight gradients
        x = x.clone().requires_grad_(True)
        heat = cam(input_tensor=x, targets=[ClassifierOutputTarget(target_index)])[0]
    model.zero_grad(set_to_none=True)
    return np.clip(np.nan_to_num(heat.astype(np.float32)), 0.0, 1.0)


def _resize_float(arr: np.ndarray, width: int, height: int) -> np.ndarray:
    img = Image.fromarray(arr.astype(np.float32)).resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.float32)


OVERLAY_MAX_SIDE = 2048  # an overlay is for looking at: a 64-megapixel upload must not cost gigabytes of float RGB


def shrink_for_overlay(gray: np.ndarray, max_side: int = OVERLAY_MAX_SIDE) -> np.ndarray:
    """The grayscale original, scaled down (aspect kept) so that its longer side is at most ``max_side``."""
    height, width = gray.shape
    scale = max_side / max(height, width)
    if scale >= 1:
        return gray
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(gray).resize(size, Image.Resampling.BOX))


def heatmap_to_original(heatmap: np.ndarray, height: int, width: int, contract: PreprocessContract) -> np.ndarray:
    """Undo the contract's geometry: a model-size heatmap as ``height x width`` (zero where the model saw nothing)."""
    if contract.geometry == "center-crop":
        side = min(width, height)
        out = np.zeros((height, width), dtype=np.float32)
        top, left = (height - side) // 2, (width - side) // 2
        out[top : top + side, left : left + side] = _resize_float(heatmap, side, side)
        return out
    if contract.geometry == "letterbox":
        side = max(width, height)
        full = _resize_float(heatmap, side, side)
        top, left = (side - height) // 2, (side - width) // 2
        return full[top : top + height, left : left + width]
    return _resize_float(heatmap, width, height)


def overlay_png(gray: np.ndarray, heatmap: np.ndarray, image_weight: float = 0.55) -> bytes:
    """PNG bytes of a JET-coloured heatmap blended over a grayscale uint8 image of the same size."""
    rgb = np.repeat((gray.astype(np.float32) / 255.0)[..., None], 3, axis=2)
    blended = show_cam_on_image(rgb, np.clip(heatmap, 0.0, 1.0), use_rgb=True, image_weight=image_weight)
    buf = io.BytesIO()
    Image.fromarray(blended).save(buf, format="PNG")
    return buf.getvalue()
