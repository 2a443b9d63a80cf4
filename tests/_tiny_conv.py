"""Tiny random CLIPs whose image towers are convolutional (or a user's own encoder).

Each builder returns ``(model, tokenizer)``: an open_clip model (eval mode, seeded) whose
``.visual`` is what the registry architecture has, built small and offline -- open_clip
``ModifiedResNet`` (RN50), an open_clip ``TimmModel`` over a timm ``ConvNeXt``
(convnext_base: ``timm_pool=""``, ``timm_proj="linear"``) or over a timm ``FastVit`` MCi
(MobileCLIP-S1 / MobileCLIP2-S0: ``timm_pool="avg"``, the trunk's classifier as the
projection, a text tower without causal mask inside ``CustomTextCLIP``) or over a timm
``SwinTransformer`` (swin_base_patch4_window7_224: stages in ``.layers``, NHWC maps), or a small
convolutional encoder of the user's own -- with open_clip's bundled ``SimpleTokenizer``.
``TimmModel`` does not forward size arguments to timm, so the trunk is created here with
the registry name, small depths / widths, and the pool / head settings
``TimmModel.__init__`` uses. Images are 128 px (a 4x4 grid at stride 32).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import open_clip
import timm
import torch
from open_clip.timm_model import TimmModel
from torch import nn

__all__ = [
    "BUILDERS", "IMAGE", "make_convnext", "make_custom", "make_fastvit", "make_resnet", "make_swin"
]  # fmt: skip

EMBED, IMAGE = 32, 128
TEXT = dict(context_length=16, vocab_size=49408, width=32, heads=2, layers=2)


def tokenizer() -> Callable:
    return open_clip.tokenizer.SimpleTokenizer(context_length=TEXT["context_length"])


def _timm_visual(name: str, pool: str, proj: str | None, **trunk_kwargs) -> TimmModel:
    """A ``TimmModel`` built as ``TimmModel.__init__`` does, with small trunk arguments."""
    visual = TimmModel.__new__(TimmModel)
    nn.Module.__init__(visual)
    visual.image_size = (IMAGE, IMAGE)
    head: OrderedDict[str, nn.Module] = OrderedDict()
    if proj in ("linear", "mlp"):
        visual.trunk = timm.create_model(name, pretrained=False, **trunk_kwargs)
        visual.trunk.reset_classifier(0, **(dict(global_pool=pool) if pool else {}))
        head["drop"] = nn.Dropout(0.0)
        head["proj"] = nn.Linear(visual.trunk.num_features, EMBED, bias=False)
    else:  # the trunk's classifier is the projection (timm_proj null)
        visual.trunk = timm.create_model(
            name, pretrained=False, num_classes=EMBED, global_pool=pool, **trunk_kwargs
        )
    visual.head = nn.Sequential(head)
    return visual


def _with_visual(visual: nn.Module, seed: int, custom_text: bool = False) -> nn.Module:
    torch.manual_seed(seed)
    vision = dict(image_size=IMAGE, patch_size=32, width=32, layers=1, head_width=16)
    if custom_text:
        text = dict(TEXT, no_causal_mask=True)
        model = open_clip.model.CustomTextCLIP(EMBED, vision_cfg=vision, text_cfg=text)
    else:
        model = open_clip.model.CLIP(embed_dim=EMBED, vision_cfg=vision, text_cfg=TEXT)
    model.visual = visual
    return model.eval()


def make_resnet(seed: int = 0) -> tuple[nn.Module, Callable]:
    """RN50-style: open_clip ``ModifiedResNet`` (attention pooling), width 8, 1 block a stage."""
    torch.manual_seed(seed)
    vision = dict(image_size=IMAGE, layers=[1, 1, 1, 1], width=8, head_width=32)
    model = open_clip.model.CLIP(embed_dim=EMBED, vision_cfg=vision, text_cfg=TEXT)
    return model.eval(), tokenizer()


def make_convnext(seed: int = 0) -> tuple[nn.Module, Callable]:
    """convnext_base-style: timm ConvNeXt (its own avg pool + norm head) and a linear proj.

    timm initialises the conv biases at zero; with a LayerNorm right after the stem the
    random tower is then scale-invariant (``f(a x) = f(x)`` for ``a > 0``, and the zero
    image a jump), which no trained model is. The biases are drawn at random here.
    """
    torch.manual_seed(seed)
    visual = _timm_visual("convnext_base", "", "linear", depths=(1, 1, 1, 1), dims=(8, 16, 32, 64))
    with torch.no_grad():
        for module in visual.trunk.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)) and module.bias is not None:
                module.bias.normal_(0.0, 0.5)
    return _with_visual(visual, seed), tokenizer()


def make_fastvit(seed: int = 0) -> tuple[nn.Module, Callable]:
    """MobileCLIP-style: timm FastViT MCi (RepMixer stages, an attention stage, final_conv),
    avg pool, the classifier as projection, and a text tower without causal mask."""
    torch.manual_seed(seed)
    visual = _timm_visual(
        "fastvit_mci0", "avg", None, layers=(1, 1, 1, 1), embed_dims=(8, 16, 32, 64)
    )
    return _with_visual(visual, seed, custom_text=True), tokenizer()


def make_swin(seed: int = 0) -> tuple[nn.Module, Callable]:
    """swin_base_patch4_window7_224-style: timm SwinTransformer (stages in ``.layers``,
    ``(B, h, w, C)`` maps, final norm, avg pool) and a linear proj (``timm_pool=""``); four
    stages of one block, width 8, 4x4 windows: maps 32, 16, 8, 4 at 128 px (stride 32).
    The biases are drawn at random (timm starts them at zero), as for ConvNeXt."""
    torch.manual_seed(seed)
    visual = _timm_visual(
        "swin_base_patch4_window7_224", "", "linear", img_size=IMAGE, embed_dim=8,
        depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2), window_size=4,
    )  # fmt: skip
    with torch.no_grad():
        for module in visual.trunk.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)) and module.bias is not None:
                module.bias.normal_(0.0, 0.5)
    return _with_visual(visual, seed), tokenizer()


class TinyEncoder(nn.Module):
    """A user's own image encoder: two conv stages, global average pooling, a projection."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 4, stride=4), nn.GELU(), nn.Conv2d(8, 16, 4, stride=4), nn.GELU()
        )
        self.proj = nn.Linear(16, EMBED)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.features(x).mean((2, 3)))


def make_custom(seed: int = 0) -> tuple[nn.Module, Callable]:
    """An open_clip CLIP whose ``.visual`` is :class:`TinyEncoder` (no ``image_size``, no
    known grid: the user names ``visual.features``; its map is 8x8 at 128 px)."""
    torch.manual_seed(seed)
    return _with_visual(TinyEncoder(), seed), tokenizer()


BUILDERS: dict[str, Callable[..., tuple[nn.Module, Callable]]] = {
    "RN50 (ModifiedResNet)": make_resnet,
    "convnext_base (timm ConvNeXt)": make_convnext,
    "MobileCLIP-S1 / MobileCLIP2-S0 (timm FastViT MCi)": make_fastvit,
    "swin_base_patch4_window7_224 (timm SwinTransformer)": make_swin,
}
"""The convolutional families of the registry, by the architecture each stands for."""
