"""Tiny random CLIPs whose vision towers are timm ViT / Eva trunks or CoCa's pooler.

Each builder returns ``(model, tokenizer)``: an open_clip ``CLIP`` (eval mode, seeded)
whose ``.visual`` is what the real registry architecture has -- an open_clip ``TimmModel``
over a timm ``VisionTransformer`` / ``Eva`` (EVA-02 with RoPE, EVA-01 without) built
small, or an open_clip ``VisionTransformer`` with CoCa's ``AttentionalPooler`` -- and a
tiny open_clip text tower
with open_clip's ``SimpleTokenizer`` (bundled, offline). ``TimmModel`` does not forward
size arguments to timm, so the trunk is created here with the same registry name and
the same pool / head settings ``TimmModel.__init__`` uses, at 32 px, width 32, 2 blocks.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import open_clip
import timm
import torch
from open_clip.timm_model import TimmModel
from torch import nn

__all__ = ["BUILDERS", "make_coca_vision", "make_eva01", "make_eva02", "make_siglip",
           "make_timm_avg_reg", "make_timm_token_reg", "make_vitamin", "timm_visual"]  # fmt: skip

EMBED, WIDTH, IMAGE, PATCH = 32, 32, 32, 8
TEXT = dict(context_length=16, vocab_size=49408, width=32, heads=2, layers=2)


def tokenizer() -> Callable:
    return open_clip.tokenizer.SimpleTokenizer(context_length=TEXT["context_length"])


def timm_visual(name: str, pool: str, proj: str | None, **trunk_kwargs) -> TimmModel:
    """A ``TimmModel`` built as ``TimmModel.__init__`` does (``timm_pool`` / ``timm_proj``),
    with small trunk arguments passed to ``timm.create_model``."""
    visual = TimmModel.__new__(TimmModel)
    nn.Module.__init__(visual)
    visual.image_size = (IMAGE, IMAGE)
    size = dict(img_size=IMAGE, patch_size=PATCH, embed_dim=WIDTH, depth=2, num_heads=2)
    kwargs = dict(size, **trunk_kwargs)
    head: OrderedDict[str, nn.Module] = OrderedDict()
    if proj in ("linear", "mlp"):
        visual.trunk = timm.create_model(name, pretrained=False, **kwargs)
        visual.trunk.reset_classifier(0, global_pool=pool)
        head["proj"] = nn.Linear(WIDTH, EMBED, bias=False)
    else:  # the trunk's classifier is the projection (timm_proj none / null)
        n_out = 0 if proj == "none" else EMBED
        visual.trunk = timm.create_model(
            name, pretrained=False, num_classes=n_out, global_pool=pool, **kwargs
        )
    visual.head = nn.Sequential(head)
    return visual


def _clip(visual: nn.Module, seed: int, **kw) -> nn.Module:
    torch.manual_seed(seed)
    vision = dict(image_size=IMAGE, patch_size=PATCH, width=32, layers=1, head_width=16)
    model = open_clip.model.CLIP(embed_dim=EMBED, vision_cfg=vision, text_cfg=TEXT, **kw)
    model.visual = visual
    return model.eval()


def make_siglip(seed: int = 0) -> tuple[nn.Module, Callable]:
    """SigLIP / SigLIP 2 style: no class token, MAP pooling, ``timm_proj='none'``, bias."""
    torch.manual_seed(seed)
    visual = timm_visual("vit_base_patch16_siglip_224", "map", "none")
    nn.init.normal_(visual.trunk.attn_pool.proj.weight, std=WIDTH**-0.5)  # unit-scale output
    return _clip(visual, seed, init_logit_bias=-10.0), tokenizer()


def make_timm_token_reg(seed: int = 0) -> tuple[nn.Module, Callable]:
    """timm ViT with a class token, 2 register tokens, LayerScale, token pooling and a
    linear ``TimmModel`` head."""
    torch.manual_seed(seed)
    visual = timm_visual(
        "vit_base_patch16_224", "token", "linear", reg_tokens=2, init_values=0.3, qkv_bias=True
    )
    return _clip(visual, seed), tokenizer()


def make_timm_avg_reg(seed: int = 0) -> tuple[nn.Module, Callable]:
    """timm ViT without class token, 2 registers, q/k norms, average pooling + fc_norm."""
    torch.manual_seed(seed)
    visual = timm_visual(
        "vit_base_patch16_224", "avg", "none", class_token=False, reg_tokens=2, qk_norm=True
    )
    return _clip(visual, seed), tokenizer()


def make_eva02(seed: int = 0, fused: bool = False) -> tuple[nn.Module, Callable]:
    """EVA02-CLIP style ``Eva``: class token, RoPE, separate q/k/v (``fused``: one qkv with
    q_bias / v_bias), SwiGLU with inner norm, inner attention norm, token pooling, the
    trunk's classifier as projection (``timm_proj`` null); layer scale when ``fused``."""
    torch.manual_seed(seed)
    extra = dict(qkv_fused=True, init_values=0.3) if fused else {}
    visual = timm_visual(
        "eva02_base_patch16_clip_224", "token", None, ref_feat_shape=(4, 4), **extra
    )
    nn.init.normal_(visual.trunk.head.weight, std=WIDTH**-0.5)  # timm inits it near 0
    for block in visual.trunk.blocks:  # EVA's q_bias / v_bias start at zero: make them count
        attn = block.attn
        for name in ("q_bias", "v_bias"):
            if getattr(attn, name, None) is not None:
                nn.init.normal_(getattr(attn, name), std=0.5)
    return _clip(visual, seed), tokenizer()


def make_eva01(seed: int = 0) -> tuple[nn.Module, Callable]:
    """EVA01-g-14 style ``Eva`` (``eva_giant_patch14_224``): class token, absolute positions
    only (no RoPE: ``trunk.rope`` is None), fused qkv with q / v biases, a plain MLP of
    ratio 6144 / 1408, token pooling, the trunk's classifier as projection (``timm_proj``
    null)."""
    torch.manual_seed(seed)
    visual = timm_visual("eva_giant_patch14_224", "token", None, mlp_ratio=6144 / 1408)
    nn.init.normal_(visual.trunk.head.weight, std=WIDTH**-0.5)  # timm inits it near 0
    for block in visual.trunk.blocks:  # q_bias / v_bias start at zero: make them count
        for name in ("q_bias", "v_bias"):
            if getattr(block.attn, name, None) is not None:
                nn.init.normal_(getattr(block.attn, name), std=0.5)
    return _clip(visual, seed), tokenizer()


def make_vitamin(seed: int = 0, image: int = 64) -> tuple[nn.Module, Callable]:
    """ViTamin style (``vitamin_small_224``): timm's ``MbConvStages`` stem (conv, LayerNorm2d
    + GELU, conv; two stages of MBConv blocks with LayerNorm2d; a strided conv with
    LayerNorm2d: stride 16) as a ``HybridEmbed``, then ViT blocks with ``GeGluMlp``, no
    class token, average pooling and a linear ``TimmModel`` head (``timm_pool=""``: timm's
    own avg). Stem widths 8 / 16, width 32, 2 blocks; a 4x4 grid at 64 px. The biases
    (zero in timm's init) are drawn at random so that they count."""
    from timm.models.vitamin import GeGluMlp, VitCfg, VitConvCfg, _create_vitamin

    torch.manual_seed(seed)
    visual = TimmModel.__new__(TimmModel)
    nn.Module.__init__(visual)
    visual.image_size = (image, image)
    conv = VitConvCfg(norm_layer="layernorm2d", norm_eps=1e-6)
    stem = VitCfg(embed_dim=(8, 16, WIDTH), depths=(1, 1, 1), stem_width=8, conv_cfg=conv)
    visual.trunk = _create_vitamin(
        "vitamin_small_224", img_size=image, embed_dim=WIDTH, depth=2, num_heads=2,
        mlp_layer=GeGluMlp, mlp_ratio=2.0, class_token=False, global_pool="avg", embed_cfg=stem,
    )  # fmt: skip
    visual.trunk.reset_classifier(0)
    with torch.no_grad():
        for module in visual.trunk.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)) and module.bias is not None:
                module.bias.normal_(0.0, 0.2)
    visual.head = nn.Sequential(OrderedDict(proj=nn.Linear(WIDTH, EMBED, bias=False)))
    return _clip(visual, seed), tokenizer()


def make_coca_vision(seed: int = 0) -> tuple[nn.Module, Callable]:
    """An open_clip ``VisionTransformer`` with CoCa's ``AttentionalPooler`` (4 queries, the
    first one pooled) inside a CLIP (CoCa's text tower is a separate concern)."""
    torch.manual_seed(seed)
    vision = dict(
        image_size=IMAGE, patch_size=PATCH, width=48, layers=2, head_width=16,
        attentional_pool=True, attn_pooler_queries=4, attn_pooler_heads=2,
    )  # fmt: skip
    model = open_clip.model.CLIP(embed_dim=EMBED, vision_cfg=vision, text_cfg=TEXT)
    return model.eval(), tokenizer()


BUILDERS = {
    "siglip": make_siglip,
    "timm_token_reg": make_timm_token_reg,
    "timm_avg_reg": make_timm_avg_reg,
    "eva02": make_eva02,
    "eva02_fused": lambda seed=0: make_eva02(seed, fused=True),
    "eva01": make_eva01,
    "coca_vision": make_coca_vision,
}
