"""GradCAM on a vision tower's grid: a ViT block's patch tokens or a convolutional stage.

Convolutional towers (open_clip ``ModifiedResNet``, timm ConvNeXt, FastViT / MobileCLIP)
get GradCAM's original setting: the feature map of a stage (default the last one, the map
the tower pools), channel weights = mean gradient over ``(h, w)``, map =
``ReLU(Σ_c weights_c · A_c)``. Any other tower (a hybrid, a user's own encoder) works from
a module the user names whose output is the ``(B, C, h, w)`` grid: ``grid_layer=``, as
Captum's ``LayerGradCam`` takes a layer. ``vit_gradcam`` keeps its name for every tower.

ViT towers:

Captum's ``LayerGradCam`` averages gradients over every dimension after the channel
dimension 1, which suits CNN maps ``(B, C, h, w)``. A ViT block outputs tokens
``(B, L, d)`` (CLS/prefix + ``h*w`` patches); fed directly, the "channels" would be the
tokens. Here a forward hook routes the block's patch tokens through an identity module as a
``(B, d, h, w)`` grid, and ``LayerGradCam`` attributes to that module: channel weights =
mean gradient over the patches, map = ``ReLU(Σ_d weights_d · acts_d)`` on the ``(h, w)``
grid, with the prefix tokens dropped. The map is upsampled with
``LayerAttribution.interpolate`` and broadcast to the input shape.

Which block: in a CLIP ViT that pools the CLS token, the patch tokens *output* by the last
block never reach the embedding (their gradient is exactly zero), so the default
``layer=None`` takes the output of the second-to-last block (= the input of the last one)
-- or the last block for towers that average the patch tokens. This is *not* quite
pytorch-grad-cam's ViT recipe: its ``blocks[-1].norm1`` target gives the LayerNorm of
that same hidden state (normalised per token, with the norm's affine weights), so the two
maps agree closely but not exactly (Pearson 0.857 on the trained testbed model, 0.998 on a
random ViT-B-32).

Example:
    >>> gc = vit_gradcam(clf)                       # reusable object (ViT or conv tower)
    >>> attr = gc.attribute(images, target=3)       # (B, 3, H, W)
    >>> attr = vit_gradcam(clf, images, target=3)   # one call
    >>> gc = vit_gradcam(clf, grid_layer=model.visual.trunk.stages[1])  # a named layer
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from captum.attr import LayerGradCam
from torch import Tensor, nn

from captum_clip._hooks import HookManager
from captum_clip._validate import check_target
from captum_clip.attr._base import UPSAMPLE_MODES, PatchMapAttribution

__all__ = ["ViTGradCam", "vit_gradcam"]


class _Grid(nn.Module):
    """Identity on the ``(B, d, h, w)`` patch grid; the layer ``LayerGradCam`` hooks."""

    def forward(self, grid: Tensor) -> Tensor:
        return grid


class ViTGradCam(PatchMapAttribution):
    """GradCAM on the patch tokens of a ViT block or on a stage's feature map (see module
    docstring).

    Args:
        forward_func: ``ClipClassifier`` / ``ClipSimilarity`` or any callable (then pass
            ``vision_model``, see :func:`captum_clip.models.resolve_tower`).
        layer: Block (ViT) or stage (convolutional tower) whose output is used; None
            (default): the second-to-last block for CLS-pooled ViTs, the last block for
            average-pooled ViTs, the last stage for convolutional towers.
        vision_model: The vision tower, when ``forward_func`` has no ``.vision``.
        relu_attributions: Apply ReLU to the map (GradCAM's definition).
        interpolate_mode: Upsampling of the ``(h, w)`` map (``"bilinear"``, ``"nearest"``,
            ``"bicubic"``).
        grid_layer: A module of the tower whose output is the ``(B, C, h, w)`` grid (any
            tower; needed for towers that are neither ViTs nor known convolutional ones).
        channels_last: ``grid_layer`` returns ``(B, h, w, C)``.
    """

    desc = "GradCAM"

    def __init__(
        self,
        forward_func: Callable,
        layer: int | None = None,
        vision_model: Any = None,
        relu_attributions: bool = True,
        interpolate_mode: str = "bilinear",
        grid_layer: nn.Module | None = None,
        channels_last: bool = False,
    ) -> None:
        super().__init__(
            forward_func, vision_model, need_cls=False, need_vit=False, grid_layer=grid_layer,
            channels_last=channels_last,
        )  # fmt: skip
        self.vision = self.tower
        # the last block's patch outputs reach the embedding unless only the class token is read
        pools_tokens = self.tower.pool_type in ("avg", "attn") or not self.tower.is_vit
        if layer is None:
            layer = -1 if pools_tokens or self.tower.n_blocks < 2 else -2
        self.layer = self.tower.block_index(layer)
        if self.layer == self.tower.n_blocks - 1 and not pools_tokens:
            warnings.warn(
                "GradCAM on the last block of a CLS-pooled ViT is zero everywhere (its patch "
                "outputs do not reach the embedding); use layer=-2 or layer=None",
                stacklevel=2,
            )
        self.block = self.tower.blocks[self.layer]
        if interpolate_mode not in UPSAMPLE_MODES:
            raise ValueError(
                f"interpolate_mode must be one of {UPSAMPLE_MODES}, got {interpolate_mode!r}"
            )
        self.relu_attributions = relu_attributions
        self.upsample = interpolate_mode
        self._grid = _Grid()

    def _hook(self, module: nn.Module, args: Any, out: Any) -> Any:
        rest = None
        if isinstance(out, tuple):
            out, rest = out[0], out[1:]
        if not self.tower.is_vit:
            grid = self._map_hook(out)
            return grid if rest is None else (grid, *rest)
        batch_first = self.tower.batch_first
        x = out if batch_first else out.transpose(0, 1)
        b, length, d = x.shape
        h, w = self.tower.grid_size
        n = self.tower.n_prefix
        if length != n + h * w:
            raise ValueError(f"expected {n + h * w} tokens from the block, got {length}")
        grid = self._grid(x[:, n:].transpose(1, 2).reshape(b, d, h, w))
        x = torch.cat([x[:, :n], grid.reshape(b, d, h * w).transpose(1, 2)], dim=1)
        x = x if batch_first else x.transpose(0, 1)
        return x if rest is None else (x, *rest)

    def _map_hook(self, out: Any) -> Tensor:
        """A stage's ``(B, C, h, w)`` map (``(B, h, w, C)`` channels-last) through the
        identity ``LayerGradCam`` reads, in the stage's own layout."""
        if not isinstance(out, Tensor) or out.ndim != 4:
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(
                f"GradCAM needs a (B, C, h, w) feature map from the grid layer "
                f"{type(self.block).__name__}, got {got}"
            )
        last = getattr(self.tower, "channels_last", False)
        grid = self._grid(out.permute(0, 3, 1, 2) if last else out)
        return grid.permute(0, 2, 3, 1) if last else grid

    def _patch_maps(
        self, images: Tensor, target: Tensor | None, args: tuple, hooks: HookManager
    ) -> Tensor:
        """``ReLU(sum_d mean-gradient_d * activation_d)`` on the ``(h, w)`` grid."""
        hooks.forward(self.block, self._hook)
        forward_func = self.forward_func

        def checked(x: Tensor, *rest: Any) -> Tensor:
            # the output is checked here, before Captum sees it: no Captum assert (which
            # `python -O` would drop) is reachable with a bad target or output
            out = forward_func(x, *rest)
            if not isinstance(out, Tensor) or out.ndim not in (1, 2) or out.shape[0] != len(x):
                got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
                raise ValueError(
                    f"forward_func must return a (B,) or (B, n_outputs) tensor for B={len(x)}, "
                    f"got {got}"
                )
            out = out[:, None] if out.ndim == 1 else out
            check_target(target, len(x), out.shape[1])
            return out

        if target is not None:
            target = target.to(images.device)
        cam = LayerGradCam(checked, self._grid).attribute(
            images,
            target=target,
            additional_forward_args=args or None,
            relu_attributions=self.relu_attributions,
        )
        return cam[:, 0]

    def attribute_grid(
        self, inputs: Tensor, target: Any = None, additional_forward_args: Any = None
    ) -> Tensor:
        """The map on the patch grid as ``(B, 1, h, w)``; kept for compatibility, prefer
        :meth:`patch_maps` (``(B, h, w)``)."""
        return self.patch_maps(inputs, target, additional_forward_args)[:, None]


def vit_gradcam(
    forward_func: Callable,
    inputs: Tensor | None = None,
    target: Any = None,
    layer: int | None = None,
    **kwargs: Any,
) -> ViTGradCam | Tensor:
    """GradCAM for CLIPs (ViT or convolutional towers, or a named ``grid_layer``): a
    :class:`ViTGradCam`, or its attributions if ``inputs`` given.

    Args:
        forward_func: See :class:`ViTGradCam`.
        inputs: Optional images; when given, the attributions are returned directly.
        target: Output index (with ``inputs``).
        layer: Block index (None: see :class:`ViTGradCam`).
        **kwargs: ``vision_model``, ``relu_attributions``, ``interpolate_mode``,
            ``grid_layer``, ``channels_last``, and with
            ``inputs`` the arguments of :meth:`ViTGradCam.attribute`
            (``additional_forward_args``, ``internal_batch_size``, ``show_progress``).
    """
    names = ("additional_forward_args", "internal_batch_size", "show_progress")
    call = {k: kwargs.pop(k) for k in names if k in kwargs}
    method = ViTGradCam(forward_func, layer=layer, **kwargs)
    if inputs is None:
        if target is not None or call:
            raise ValueError(f"target and {', '.join(call)} need inputs")
        return method
    return method.attribute(inputs, target=target, **call)
