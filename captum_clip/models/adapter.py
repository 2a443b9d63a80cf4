"""From a user's model to the tower adapters: :class:`ClipAdapter` and :func:`resolve_tower`.

This is the one place that recognises model types: :func:`vision_tower` and
:func:`text_tower` map a family to its adapter module (one per family in this package);
every attribution method finds its vision tower through :func:`resolve_tower`, with one set
of accepted inputs and one wording of the errors.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from captum_clip.models.base import TextTower, VisionTower
from captum_clip.models.conv import OpenClipResNet, TimmConv
from captum_clip.models.hf_clip import HFClipText, HFClipVision, is_hf_clip
from captum_clip.models.hf_siglip import HFSiglipText, HFSiglipVision, is_hf_siglip
from captum_clip.models.open_clip_text import text_tower as open_clip_text_tower
from captum_clip.models.open_clip_vit import OpenClipViT
from captum_clip.models.timm_vit import TimmViT, is_timm_attention

__all__ = ["ClipAdapter", "resolve_tower", "vision_tower"]


def vision_tower(visual: nn.Module) -> VisionTower:
    """The adapter of an open_clip visual module (a generic one for unknown types).

    open_clip ``VisionTransformer`` (CoCa's included), ``ModifiedResNet``, and
    ``TimmModel`` over a timm ViT / Eva (attention) or any other timm trunk (ConvNeXt,
    FastViT / MobileCLIP: convolutional, the last stage is the grid).
    """
    from open_clip.modified_resnet import ModifiedResNet
    from open_clip.transformer import VisionTransformer

    if isinstance(visual, VisionTransformer):
        return OpenClipViT(visual)
    if isinstance(visual, ModifiedResNet):
        return OpenClipResNet(visual)
    trunk = getattr(visual, "trunk", None)  # open_clip TimmModel
    if isinstance(trunk, nn.Module):
        if is_timm_attention(trunk):
            return TimmViT(visual)
        return TimmConv(visual)
    return VisionTower(visual)


class ClipAdapter:
    """Uniform view of a CLIP dual encoder (open_clip or Hugging Face ``CLIPModel``).

    Attributes:
        model: The wrapped model (unchanged).
        vision: A :class:`~captum_clip.models.base.VisionTower` (patch grid, blocks, hidden states).
        text: A :class:`~captum_clip.models.base.TextTower`.
    """

    def __init__(self, model: nn.Module) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"expected a CLIP nn.Module, got {type(model).__name__}")
        self.model = model
        self.is_hf = is_hf_clip(model) or is_hf_siglip(model)
        if is_hf_clip(model):
            self.vision: VisionTower = HFClipVision(model)
            self.text: TextTower = HFClipText(model)
            return
        if is_hf_siglip(model):
            self.vision = HFSiglipVision(model)
            self.text = HFSiglipText(model)
            return
        visual = getattr(model, "visual", None)
        if not isinstance(visual, nn.Module) or not hasattr(model, "encode_text"):
            raise TypeError(
                f"{type(model).__name__} is neither an open_clip CLIP (with .visual "
                "and .encode_text) nor a transformers CLIPModel / SiglipModel"
            )
        self.vision = vision_tower(visual)
        self.text = open_clip_text_tower(model)

    def encode_image(self, images: Tensor) -> Tensor:
        """Unnormalised image embeddings ``(B, D)``."""
        if self.is_hf:
            return self.vision(images)
        return self.model.encode_image(images, normalize=False)  # CoCa normalises by default

    def encode_text(self, ids: Tensor) -> Tensor:
        """Unnormalised text embeddings ``(N, D)``."""
        if self.is_hf:
            return self.text.from_hidden(self.text.embed(ids), ids, 0)
        return self.model.encode_text(ids, normalize=False)

    @property
    def logit_scale(self) -> Tensor:
        return self.model.logit_scale.detach().exp()

    @property
    def logit_bias(self) -> Tensor | None:
        bias = getattr(self.model, "logit_bias", None)
        return None if bias is None else bias.detach()


def resolve_tower(
    forward_func: Any, vision_model: Any = None, *, vit: bool = False, need_cls: bool = False
) -> VisionTower:
    """The vision-tower adapter of ``forward_func`` or of an explicit ``vision_model``.

    Args:
        forward_func: A ``ClipClassifier`` / ``ClipSimilarity`` (anything with a
            ``.vision`` tower adapter; used when ``vision_model`` is None) or any callable.
        vision_model: A :class:`~captum_clip.models.base.VisionTower`, a :class:`ClipAdapter`,
            a ``ClipClassifier`` / ``ClipSimilarity``, an open_clip ``CLIP`` / Hugging Face
            ``CLIPModel``, or an open_clip visual module (``VisionTransformer`` or
            ``ModifiedResNet``).
        vit: Require a ViT tower whose blocks :class:`~captum_clip.models.blocks.BlockView`
            can open (open_clip, Hugging Face CLIP, timm ViT / EVA) and whose pooling is
            known (class token, average, attention pooler).
        need_cls: Require a tower that pools the class token (implies ``vit``).

    Raises:
        TypeError: No vision tower can be found in the arguments.
        ValueError: The tower is not of the required kind.
    """
    if vision_model is None:
        tower = getattr(forward_func, "vision", None)
        if not isinstance(tower, VisionTower):
            raise TypeError(
                f"cannot find the vision tower of forward_func ({type(forward_func).__name__}): pass a "
                "ClipClassifier/ClipSimilarity, or vision_model= (a CLIP model or its .visual)"
            )
    elif isinstance(vision_model, VisionTower):
        tower = vision_model
    elif isinstance(vision_model, ClipAdapter):
        tower = vision_model.vision
    elif isinstance(getattr(vision_model, "vision", None), VisionTower):  # a ClipClassifier
        tower = vision_model.vision
    elif isinstance(vision_model, nn.Module):
        if hasattr(vision_model, "encode_text") or hasattr(vision_model, "vision_model"):
            tower = ClipAdapter(vision_model).vision
        else:
            tower = vision_tower(vision_model)
            if type(tower) is VisionTower:
                raise TypeError(
                    f"unsupported vision_model {type(vision_model).__name__}: expected an "
                    "open_clip CLIP, a transformers CLIPModel, or an open_clip "
                    "VisionTransformer / ModifiedResNet"
                )
    else:
        raise TypeError(
            "vision_model must be a VisionTower, ClipAdapter, CLIP model or open_clip visual "
            f"module, got {type(vision_model).__name__}"
        )
    if vit or need_cls:
        if not tower.is_vit:
            raise ValueError(
                "this method needs a ViT vision tower (open_clip or Hugging Face CLIP); got "
                f"{type(tower.module).__name__}"
            )
        for i in range(tower.n_blocks):
            tower.block_view(i)  # raises for unsupported block layouts
        if tower.pool_type == "unknown":
            raise ValueError(
                f"the vision tower {type(tower.module).__name__} pools in a way this method "
                "cannot read; class-token, average and attention pooling (CoCa, SigLIP MAP) "
                "are supported"
            )
    if need_cls and tower.pool_type != "tok":
        raise ValueError(
            "this method reads the class token; the vision tower pools with "
            f"pool_type={tower.pool_type!r}"
        )
    return tower
