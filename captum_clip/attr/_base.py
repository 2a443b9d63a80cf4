"""The shared scaffold of the patch-map attributions (GradCAM, rollout, Grad-ECLIP, MaskCLIP).

:class:`PatchMapAttribution` owns everything but the maths: the tower (through
:func:`captum_clip.models.resolve_tower`), the checks of ``inputs``, ``target`` and
``internal_batch_size``, the split into internal batches, the guard that restores the
model (hooks, patched forwards, modes, ``requires_grad``) on any exit, and the upsampling
of the ``(B, h, w)`` patch maps to the inputs' shape. A method is a constructor plus
:meth:`PatchMapAttribution._patch_maps`; a new one is one file and one test file.
Attention methods (rollout, Grad-ECLIP, MaskCLIP) refuse towers without attention with
one message (:func:`refuse_without_attention`); GradCAM reads any feature grid.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from captum.attr import Attribution
from torch import Tensor, nn
from tqdm.auto import tqdm

from captum_clip._hooks import HookManager
from captum_clip._validate import check_batch_size, check_images, check_target
from captum_clip.attr._captum import CaptumConformance
from captum_clip.models.adapter import resolve_tower
from captum_clip.models.base import VisionTower
from captum_clip.models.blocks import BlockTrace, trace_blocks
from captum_clip.models.conv import grid_tower

__all__ = [
    "PatchMapAttribution",
    "refuse_without_attention",
    "slice_args",
    "split_batches",
    "to_input_shape",
    "traced_scores",
]

UPSAMPLE_MODES = ("nearest", "bilinear", "bicubic")

NO_ATTENTION_ALTERNATIVES = (
    "AttnLRP(clf) (LRP with a rule per layer type, on ResNet, ConvNeXt and FastViT / "
    "MobileCLIP towers), CCI(clf) (pixel masking on the tower's feature grid), vit_gradcam(clf) (GradCAM on the "
    "last stage), IntegratedInteractions(model, tokenizer) (at the input pixels), "
    "diagnose(..., method='region_ablation') and the deletion / insertion metrics"
)
"""What works on a vision tower without attention (named by the refusals)."""


def refuse_without_attention(method: str, tower: VisionTower) -> None:
    """The one refusal of an attention-only method on a tower that is not a ViT.

    Raises:
        ValueError: ``tower`` is not a ViT (its message names what works instead).
    """
    if not tower.is_vit:
        trunk = getattr(tower.module, "trunk", None)  # open_clip TimmModel: name the timm net
        name = type(trunk if isinstance(trunk, nn.Module) else tower.module).__name__
        raise ValueError(
            f"{method} reads the attention of a ViT vision tower (every patch token, in "
            f"every block); {name} is not a ViT. What works on it: "
            f"{NO_ATTENTION_ALTERNATIVES}"
        )


def split_batches(batch: int, internal_batch_size: int | None) -> list[slice]:
    """Slices of ``range(batch)`` with at most ``internal_batch_size`` examples each."""
    size = check_batch_size(internal_batch_size) or batch
    return [slice(i, min(i + size, batch)) for i in range(0, batch, size)]


def slice_args(args: Any, sl: slice, batch: int) -> tuple:
    """``additional_forward_args`` as a tuple, batch-sized tensors sliced to ``sl``."""
    if args is None:
        return ()
    args = args if isinstance(args, tuple) else (args,)
    return tuple(
        a[sl] if isinstance(a, Tensor) and a.ndim > 0 and a.shape[0] == batch else a for a in args
    )


def to_input_shape(maps: Tensor, inputs: Tensor, mode: str = "bilinear") -> Tensor:
    """Upsample ``(B, h, w)`` patch maps to ``inputs`` ``(B, C, H, W)`` (``align_corners``
    False for the smooth modes) and repeat them over the channels."""
    kw = {} if mode == "nearest" else {"align_corners": False}
    up = F.interpolate(maps[:, None].float(), size=tuple(inputs.shape[-2:]), mode=mode, **kw)
    out = up.expand(-1, inputs.shape[1], -1, -1).contiguous()
    return out.to(device=inputs.device, dtype=inputs.dtype)


def known_outputs(forward_func: Any) -> int | None:
    """Number of outputs of a ClipClassifier/ClipSimilarity (None for other callables)."""
    emb = getattr(forward_func, "text_embeddings", None)
    return int(emb.shape[0]) if isinstance(emb, Tensor) and emb.ndim == 2 else None


def traced_scores(
    forward_func: Callable,
    tower: VisionTower,
    images: Tensor,
    args: tuple,
    target: Tensor | None,
    indices: list[int],
    hooks: HookManager,
) -> tuple[Tensor, dict[int, BlockTrace]]:
    """Target scores ``(B,)`` of ``forward_func(images, *args)`` with blocks ``indices`` traced.

    The graph is built even under an outer ``torch.no_grad`` and for frozen models, so
    gradients wrt the traced tensors can be taken with ``torch.autograd.grad(scores,
    tensors, grad_outputs=torch.ones_like(scores))`` (per-example scores are independent).
    """
    store = trace_blocks(tower, indices, hooks)
    with torch.enable_grad():
        out = forward_func(images, *args)
        if not isinstance(out, Tensor) or out.ndim not in (1, 2) or out.shape[0] != len(images):
            raise ValueError(
                f"forward_func must return a (B,) or (B, n_outputs) tensor for B={len(images)}, "
                f"got {tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__}"
            )
        if missing := [i for i in indices if i not in store]:
            raise ValueError(
                f"forward_func did not run vision blocks {missing} of the given vision tower; "
                "pass the vision_model that forward_func actually uses"
            )
        n_outputs = 1 if out.ndim == 1 else out.shape[1]
        t = check_target(target, len(images), n_outputs)
        if out.ndim == 1:
            return out, store
        return out.gather(1, t[:, None].to(out.device))[:, 0], store


class PatchMapAttribution(CaptumConformance, Attribution):
    """Base of the attributions that compute a map on a vision tower's patch grid.

    Subclasses set the class attributes and implement :meth:`_patch_maps`.

    Args:
        forward_func: A :class:`~captum_clip.models.ClipClassifier` /
            :class:`~captum_clip.models.ClipSimilarity`, or any callable
            ``(images, *args) -> (B, n_outputs)`` running ``vision_model``'s blocks.
        vision_model: The CLIP model (or open_clip ``VisionTransformer`` / tower adapter)
            when ``forward_func`` has no ``.vision``; see
            :func:`captum_clip.models.resolve_tower`.
        need_cls: The method reads the class token (the tower must pool it).
        need_vit: The method reads attention (a ViT tower is required; others are refused
            by :func:`refuse_without_attention`). False: any tower with a feature grid
            (a ViT's patch tokens, a convolutional tower's last stage, or ``grid_layer``).
        grid_layer: ``need_vit=False`` only: a module of the tower whose output is the
            ``(B, C, h, w)`` grid (see :class:`~captum_clip.models.conv.LayerTower`);
            ``channels_last``: it is ``(B, h, w, C)``.

    Attributes:
        tower: The vision tower adapter (see :func:`captum_clip.models.resolve_tower`).
        needs_grad: Run :meth:`_patch_maps` with gradients enabled (else under no_grad).
        calls_forward: The method runs ``forward_func`` (else ``additional_forward_args``
            must be None).
        upsample: How the patch maps are upsampled (``"bilinear"``, ``"nearest"``,
            ``"bicubic"``).
        desc: Label of the progress bar.
    """

    needs_grad: bool = True
    calls_forward: bool = True
    upsample: str = "bilinear"
    desc: str = "attribution"

    def __init__(
        self,
        forward_func: Callable,
        vision_model: Any = None,
        *,
        need_cls: bool = True,
        need_vit: bool = True,
        grid_layer: nn.Module | None = None,
        channels_last: bool = False,
    ) -> None:
        if not callable(forward_func):
            raise TypeError(f"forward_func must be callable, got {type(forward_func).__name__}")
        super().__init__(forward_func)
        tower = resolve_tower(forward_func, vision_model)
        if need_vit:
            if grid_layer is not None:
                raise TypeError(f"{type(self).__name__} reads attention and takes no grid_layer")
            refuse_without_attention(type(self).__name__, tower)
            tower = resolve_tower(forward_func, vision_model, vit=True, need_cls=need_cls)
        else:
            tower = grid_tower(tower, grid_layer, channels_last)
        self.tower = tower

    def n_outputs(self) -> int | None:
        """Outputs per example when known before a forward pass (for the target check)."""
        return known_outputs(self.forward_func)

    def _guarded(self) -> list[nn.Module]:
        ff = self.forward_func
        return self.tower.guarded + ([ff] if isinstance(ff, nn.Module) else [])

    def _patch_maps(
        self, images: Tensor, target: Tensor | None, args: tuple, hooks: HookManager
    ) -> Tensor:
        """The method's maps ``(b, h, w)`` for one internal batch (inputs already checked;
        ``hooks`` is open and restores the model when the batch is done)."""
        raise NotImplementedError

    def patch_maps(
        self,
        inputs: Tensor,
        target: Any = None,
        additional_forward_args: Any = None,
        internal_batch_size: int | None = None,
        show_progress: bool = False,
    ) -> Tensor:
        """The maps on the ``(h, w)`` patch grid, ``(B, h, w)`` (arguments as :meth:`attribute`)."""
        inputs = check_images(inputs, self.tower.image_size, name="inputs", dtype=self.tower.dtype)
        batch = inputs.shape[0]
        slices = split_batches(batch, internal_batch_size)
        if additional_forward_args is not None and not self.calls_forward:
            raise ValueError(
                f"{type(self).__name__} reads the vision tower directly and never calls "
                "forward_func; additional_forward_args must be None"
            )
        targets = check_target(target, batch, self.n_outputs())
        maps = []
        grad = torch.enable_grad() if self.needs_grad else torch.no_grad()
        with grad:
            for sl in tqdm(slices, desc=self.desc, disable=not show_progress):
                with HookManager(*self._guarded()) as hooks:
                    args = slice_args(additional_forward_args, sl, batch)
                    t = None if targets is None else targets[sl]
                    maps.append(self._patch_maps(inputs[sl], t, args, hooks).detach())
        return torch.cat(maps)

    def attribute(
        self,
        inputs: Tensor,
        target: Any = None,
        additional_forward_args: Any = None,
        internal_batch_size: int | None = None,
        show_progress: bool = False,
    ) -> Tensor:
        """Patch maps upsampled to the inputs.

        Args:
            inputs: ``(B, 3, H, W)`` preprocessed images at the model's size.
            target: See :mod:`captum_clip._validate` (an int, or one per example).
            additional_forward_args: Extra arguments passed to ``forward_func`` after the
                images (tensors with ``B`` rows are split with the batch).
            internal_batch_size: Process at most this many images at once (None: all).
            show_progress: Show a tqdm bar over the internal batches.

        Returns:
            ``(B, 3, H, W)``: the ``(h, w)`` map upsampled (mode :attr:`upsample`) to
            ``H x W`` and repeated over the channels, on the inputs' device and dtype.
        """
        maps = self.patch_maps(
            inputs, target, additional_forward_args, internal_batch_size, show_progress
        )
        return to_input_shape(maps, inputs, self.upsample)
