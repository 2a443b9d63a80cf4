"""Convolutional image towers, and any tower whose grid layer the user names.

What the family is, and how the adapters read it:

* **Grid**: the output of the last stage -- a ``(B, C, h, w)`` feature map (``(B, h, w,
  C)`` for a trunk with ``output_fmt="NHWC"``) -- is the patch grid. CCI clusters its
  cells and hides a cluster by replacing its pixels with the baseline (``mask_mode=
  "pixel"``: there is no attention to mask); GradCAM weights its channels (the original
  setting of GradCAM). ``blocks`` are the stages in forward order; ``layer=i`` of a
  method reads the output of stage ``i``.
* **Grid size** (:attr:`ConvTower.grid_size`): measured once with a forward of one zero
  image at :attr:`image_size` (hooked, eval mode, no gradient; the model is restored).
  Measured with random weights: RN50, convnext_base and swin_base_patch4_window7_224 7x7
  at 224 px (stride 32), MobileCLIP-S1 / MobileCLIP2-S0 (FastViT MCi) 8x8 at 256 px.
* **Families**: :class:`OpenClipResNet` (open_clip ``ModifiedResNet``: ``layer1..4``,
  attention pooling); :class:`TimmConv` (open_clip ``TimmModel`` over a timm trunk that
  is not a ViT: ConvNeXt ``stages``; FastViT / MobileCLIP ``stages`` then ``final_conv``,
  whose output is the last map; Swin ``layers``, whose maps are ``(B, h, w, C)``, timm
  builds it with ``output_fmt="NHWC"``; a timm ResNet's ``layer1..4``); :class:`LayerTower` (any
  other tower, e.g. a hybrid such as ViTamin or a user's own encoder: the user names the
  module whose output is the grid, as for Captum's ``LayerGradCam``).
* Methods that need attention (attention-mode CCI, rollout, Grad-ECLIP, MaskCLIP) refuse
  these towers with one message naming what works instead
  (:func:`captum_clip.attr._base.refuse_without_attention`); integrated interactions
  attribute them at the input pixels, in the cells of this grid.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from captum_clip._hooks import HookManager, preserve_model_state
from captum_clip.models.base import VisionTower

__all__ = ["ConvTower", "LayerTower", "OpenClipResNet", "TimmConv", "grid_tower"]

GRID_HINT = (
    "name the module whose output is the feature grid, e.g. "
    "CCI(clf, grid_layer=model.visual.trunk.stages[-1]) or "
    "vit_gradcam(clf, grid_layer=model.visual.trunk.stages[-1]) (a (B, C, h, w) map)"
)


def _pair(size: Any) -> tuple[int, int]:
    return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))


class ConvTower(VisionTower):
    """Shared part of the tower adapters whose grid is a stage's feature map.

    Subclasses give ``blocks`` (the stages; the last one's output is the grid) and
    ``image_size``; ``channels_last`` says the maps are ``(B, h, w, C)``.
    """

    channels_last: bool = False

    def __init__(self, module: nn.Module) -> None:
        super().__init__(module)
        self._grids: dict[tuple[int, int], tuple[int, int]] = {}

    def to_grid(self, out: Any) -> Tensor | None:
        """``(B, h, w, C)`` from a stage output (a 4-D map, or a tuple starting with one)."""
        out = out[0] if isinstance(out, (tuple, list)) and out else out
        if not isinstance(out, Tensor) or out.ndim != 4:
            return None
        return out if self.channels_last else out.permute(0, 2, 3, 1)

    def grid_tokens(self, out: Any, batch: int) -> Tensor | None:
        grid = self.to_grid(out)
        return grid if grid is not None and grid.shape[0] == batch else None

    def run(self, images: Tensor) -> Tensor:
        """The embedding of ``images`` (the tower's forward)."""
        return self.module(images)

    def __call__(self, images: Tensor) -> Tensor:
        return self.run(images)

    def stage_output(self, images: Tensor, layer: int = -1) -> Tensor:
        """The raw output of stage ``layer`` (hooked during one forward of the tower)."""
        stage = self.blocks[self.block_index(layer)]
        captured: list[Any] = []
        with HookManager() as hooks:
            hooks.forward(stage, lambda m, a, o: captured.append(o))
            self.run(images.to(self.dtype))
        if len(captured) != 1:
            raise ValueError(
                f"the grid layer {type(stage).__name__} ran {len(captured)} times in one "
                "forward of the vision tower; it must run exactly once"
            )
        out = captured[0]
        return out[0] if isinstance(out, (tuple, list)) else out

    def patch_features(self, images: Tensor, layer: int = -1) -> Tensor:
        grid = self.to_grid(self.stage_output(images, layer))
        if grid is None:
            stage = self.blocks[self.block_index(layer)]
            raise ValueError(
                f"the grid layer {type(stage).__name__} must return a 4-D feature map "
                f"(B, C, h, w); {GRID_HINT}"
            )
        return grid

    @property
    def grid_size(self) -> tuple[int, int]:
        """``(h, w)`` of the last stage's map at :attr:`image_size` (measured once)."""
        size = self.image_size
        if size not in self._grids:
            param = next(iter(self.module.parameters()), None)
            device = param.device if param is not None else torch.device("cpu")
            probe = torch.zeros(1, 3, *size, device=device, dtype=self.dtype)
            with torch.no_grad(), preserve_model_state(*self.guarded):
                for m in self.guarded:
                    m.eval()
                feats = self.patch_features(probe, -1)
            self._grids[size] = (int(feats.shape[1]), int(feats.shape[2]))
        return self._grids[size]


class OpenClipResNet(ConvTower):
    """open_clip ``ModifiedResNet``: ``layer1..4``, then ``AttentionPool2d``."""

    pool_type = "attn"  # AttentionPool2d

    @property
    def blocks(self) -> list[nn.Module]:
        m = self.module
        return [m.layer1, m.layer2, m.layer3, m.layer4]

    @property
    def image_size(self) -> tuple[int, int]:
        return _pair(self.module.image_size)

    def patch_features(self, images: Tensor, layer: int = -1) -> Tensor:
        stop = self.block_index(layer) + 1
        m = self.module
        x = m.stem(images.to(dtype=m.conv1.weight.dtype))
        for block in self.blocks[:stop]:
            x = block(x)
        return x.permute(0, 2, 3, 1)


class TimmConv(ConvTower):
    """open_clip ``TimmModel`` over a timm trunk that is not a ViT (ConvNeXt, FastViT /
    MobileCLIP, ...): the grid is the map the trunk pools (see module docstring)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__(module)
        self.trunk = module.trunk
        self.channels_last = getattr(self.trunk, "output_fmt", "NCHW") == "NHWC"

    @property
    def blocks(self) -> list[nn.Module]:
        trunk = self.trunk
        stages = getattr(trunk, "stages", None)
        if isinstance(stages, nn.Sequential) and len(stages) > 0:
            out = list(stages)
            final = getattr(trunk, "final_conv", None)  # FastViT / MobileCLIP
            if isinstance(final, nn.Module) and not isinstance(final, nn.Identity):
                out.append(final)
            return out
        layers = getattr(trunk, "layers", None)  # Swin: stages in .layers, NHWC maps
        if isinstance(layers, nn.Sequential) and len(layers) > 0:
            return list(layers)
        layers = [getattr(trunk, f"layer{i}", None) for i in range(1, 5)]
        if all(isinstance(m, nn.Module) for m in layers):  # timm ResNet
            return layers
        raise ValueError(
            f"cannot find the stages of the timm trunk {type(trunk).__name__} (expected "
            f".stages, .layers or .layer1..4, found none); {GRID_HINT}"
        )

    @property
    def image_size(self) -> tuple[int, int]:
        return _pair(self.module.image_size)

    @property
    def pool_type(self) -> str:
        head = getattr(self.module, "head", None)
        if isinstance(head, nn.Module) and hasattr(head, "pool"):  # abs_attn / rot_attn
            return "attn"
        pool = getattr(self.trunk, "global_pool", None)
        if not isinstance(pool, nn.Module):
            pool = getattr(getattr(self.trunk, "head", None), "global_pool", None)
        kind = getattr(pool, "pool_type", None)
        return "avg" if kind == "avg" else "unknown"


class LayerTower(ConvTower):
    """Any vision tower, with the grid read from a module the user names.

    Args:
        tower: The adapter of the tower (:func:`captum_clip.models.resolve_tower`); its
            forward, dtype and image size are used.
        grid_layer: A submodule of the tower whose output is a ``(B, C, h, w)`` feature
            map (``(B, h, w, C)`` with ``channels_last``), run once per forward.
        channels_last: The map is ``(B, h, w, C)``.
    """

    def __init__(self, tower: VisionTower, grid_layer: nn.Module, channels_last: bool = False):
        if not isinstance(grid_layer, nn.Module):
            raise TypeError(
                f"grid_layer must be an nn.Module of the vision tower (as Captum's "
                f"LayerGradCam takes), got {type(grid_layer).__name__}; {GRID_HINT}"
            )
        if not any(m is grid_layer for root in tower.guarded for m in root.modules()):
            raise ValueError(
                f"grid_layer ({type(grid_layer).__name__}) is not a submodule of the vision "
                f"tower {type(tower.module).__name__}; {GRID_HINT}"
            )
        super().__init__(tower.module)
        self.base = tower
        self.grid_layer = grid_layer
        self.channels_last = bool(channels_last)

    @property
    def blocks(self) -> list[nn.Module]:
        return [self.grid_layer]

    @property
    def guarded(self) -> list[nn.Module]:
        return self.base.guarded

    @property
    def dtype(self) -> torch.dtype:
        return self.base.dtype

    @property
    def image_size(self) -> tuple[int, int] | None:  # type: ignore[override]
        """The tower's input size, or None when it does not say (then any size is taken)."""
        try:
            return tuple(self.base.image_size)
        except (NotImplementedError, AttributeError, ValueError, TypeError):
            size = getattr(self.module, "image_size", None)
            return None if size is None else _pair(size)

    @property
    def grid_size(self) -> tuple[int, int]:
        if self.image_size is None:
            raise ValueError(
                f"the grid size of {type(self.module).__name__} is unknown until images are "
                "given (the tower has no .image_size)"
            )
        return super().grid_size

    def run(self, images: Tensor) -> Tensor:
        return self.base(images)


def grid_tower(
    tower: VisionTower, grid_layer: nn.Module | None = None, channels_last: bool = False
) -> VisionTower:
    """The tower a grid method (pixel-mode CCI, GradCAM) reads.

    Args:
        tower: A resolved tower adapter.
        grid_layer: A module whose output is the grid (a :class:`LayerTower` is made), or
            None: ``tower`` itself, which must know its grid (a ViT's patch tokens or a
            convolutional tower's last stage).
        channels_last: ``grid_layer`` returns ``(B, h, w, C)``.

    Raises:
        ValueError: No ``grid_layer`` and the tower's grid is unknown (the message says how
            to name it).
    """
    if grid_layer is not None:
        return LayerTower(tower, grid_layer, channels_last)
    try:
        tower.n_blocks  # noqa: B018 - raises for towers without known stages
    except NotImplementedError:
        raise ValueError(
            f"the grid of the vision tower {type(tower.module).__name__} is unknown (it is "
            f"neither a ViT nor a known convolutional tower); {GRID_HINT}"
        ) from None
    return tower
