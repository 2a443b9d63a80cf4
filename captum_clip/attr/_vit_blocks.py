"""Handwritten ViT block forward exposing q, k, v and attention probabilities.

open_clip blocks call ``nn.MultiheadAttention(..., need_weights=False)`` and Hugging Face
``CLIPEncoderLayer`` does not return its attention either, so methods that need the
attention probabilities *with gradients* (Grad-ECLIP, gradient-weighted rollout) and
methods that need the value path alone (MaskCLIP) recompute the block here from the
block's own weights. :func:`block_forward` is tested equal to the block's own output;
:func:`trace_blocks` swaps it in for the duration of a forward pass (always undone) so
the user's forward function runs unchanged and its graph contains the traced tensors.

Also the shared plumbing of the baseline attributions: tower resolution, target
checks, batch splitting and the patch-map -> input-shape upsampling.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from captum_clip._hooks import HookManager
from captum_clip._towers import OpenClipViT, VisionTower
from captum_clip.hf import HFClipVision

__all__ = [
    "BlockTrace",
    "BlockView",
    "block_forward",
    "trace_blocks",
    "project_tokens",
    "resolve_tower",
    "check_targets",
    "split_batches",
    "to_input_shape",
]


@dataclass
class BlockTrace:
    """Intermediate tensors of one block forward (batch first).

    Attributes:
        q, k, v: ``(B, heads, L, head_dim)`` projections (after ``ln_1``, with biases).
        probs: ``(B, heads, L, L)`` softmax attention probabilities.
        context: ``(B, L, d)`` attention output before ``out_proj`` (heads concatenated).
        output: ``(B, L, d)`` block output.
    """

    q: Tensor
    k: Tensor
    v: Tensor
    probs: Tensor
    context: Tensor
    output: Tensor


class BlockView:
    """Uniform access to the parts of one open_clip or Hugging Face ViT block."""

    def __init__(self, block: nn.Module, heads: int) -> None:
        self.block = block
        self.heads = heads
        if hasattr(block, "self_attn") and hasattr(block, "layer_norm1"):  # HF CLIPEncoderLayer
            self.kind = "hf"
            a = block.self_attn
            self.ln_1, self.ln_2 = block.layer_norm1, block.layer_norm2
            self.ls_1 = self.ls_2 = nn.Identity()
            self.mlp = block.mlp
            self._q, self._k, self._v, self._out = a.q_proj, a.k_proj, a.v_proj, a.out_proj
            return
        attn = getattr(block, "attn", None)
        if not isinstance(attn, nn.MultiheadAttention):
            raise ValueError(
                "expected an open_clip ResidualAttentionBlock with nn.MultiheadAttention or a "
                f"transformers CLIPEncoderLayer, got {type(block).__name__} with attention "
                f"{type(attn).__name__}"
            )
        if (
            not attn._qkv_same_embed_dim
            or attn.bias_k is not None
            or attn.add_zero_attn
            or hasattr(block, "ln_1_kv")
        ):
            raise ValueError(
                "unsupported attention layout (separate q/k/v weights, bias_k/bias_v, "
                "add_zero_attn or cross-attention); only standard CLIP self-attention is supported"
            )
        self.kind = "open_clip"
        self.ln_1, self.ln_2, self.mlp = block.ln_1, block.ln_2, block.mlp
        self.ls_1, self.ls_2 = block.ls_1, block.ls_2
        self._attn = attn

    def qkv(self, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(q, k, v)``, each ``(B, L, d)``, of the normalised hidden states ``h``."""
        if self.kind == "hf":
            return self._q(h), self._k(h), self._v(h)
        a = self._attn
        return F.linear(h, a.in_proj_weight, a.in_proj_bias).chunk(3, dim=-1)

    def value(self, h: Tensor) -> Tensor:
        """Value projection ``W_v h + b_v`` ``(B, L, d)`` alone."""
        if self.kind == "hf":
            return self._v(h)
        a = self._attn
        d = h.shape[-1]
        bias = None if a.in_proj_bias is None else a.in_proj_bias[2 * d :]
        return F.linear(h, a.in_proj_weight[2 * d :], bias)

    def out_proj(self, context: Tensor) -> Tensor:
        """Attention output projection of the concatenated heads."""
        return self._out(context) if self.kind == "hf" else self._attn.out_proj(context)

    def additive_mask(self, mask: Tensor | None, batch: int, length: int) -> Tensor | None:
        """The block's attention mask as an additive ``(B or 1, heads or 1, L, L)`` tensor."""
        if mask is None:
            return None
        if mask.dtype == torch.bool:
            mask = torch.zeros(mask.shape, device=mask.device).masked_fill(mask, float("-inf"))
        if mask.ndim == 2:
            return mask[None, None]
        if mask.ndim == 3:  # nn.MultiheadAttention: (B*heads, L, L)
            return mask.reshape(batch, self.heads, length, length)
        return mask  # HF: (B, 1, L, L)


def block_forward(view: BlockView, x: Tensor, attn_mask: Tensor | None = None) -> BlockTrace:
    """The block's forward on batch-first ``x`` ``(B, L, d)``, keeping every intermediate.

    Reproduces ``ResidualAttentionBlock.forward`` (open_clip) and ``CLIPEncoderLayer``
    (Hugging Face) in eval mode (no attention dropout):
    ``x + ls_1(out_proj(softmax(q k^T / sqrt(d_h) + mask) v)) `` then ``+ ls_2(mlp(ln_2(.)))``.
    """
    b, length, d = x.shape
    hd = d // view.heads
    q, k, v = (t.reshape(b, length, view.heads, hd).transpose(1, 2) for t in view.qkv(view.ln_1(x)))
    logits = (q @ k.transpose(-1, -2)) * hd**-0.5
    mask = view.additive_mask(attn_mask, b, length)
    if mask is not None:
        logits = logits + mask.to(logits.dtype)
    probs = logits.softmax(dim=-1)
    context = (probs @ v).transpose(1, 2).reshape(b, length, d)
    out = x + view.ls_1(view.out_proj(context))
    out = out + view.ls_2(view.mlp(view.ln_2(out)))
    return BlockTrace(q, k, v, probs, context, out)


def _replacement(view: BlockView, batch_first: bool, store: dict, index: int) -> Callable:
    def run(x: Tensor, mask: Tensor | None) -> Tensor:
        if torch.is_grad_enabled() and not x.requires_grad:
            x = x.detach().requires_grad_(True)  # keep a graph even for frozen models
        trace = block_forward(view, x, mask)
        store[index] = trace
        return trace.output

    if view.kind == "hf":

        def forward_hf(hidden_states: Tensor, attention_mask: Tensor | None = None, *a, **kw):
            return run(hidden_states, attention_mask)

        return forward_hf

    def forward(q_x: Tensor, k_x=None, v_x=None, attn_mask: Tensor | None = None) -> Tensor:
        if k_x is not None or v_x is not None:
            raise ValueError("cross-attention blocks are not supported")
        if batch_first:
            return run(q_x, attn_mask)
        return run(q_x.transpose(0, 1), attn_mask).transpose(0, 1)

    return forward


def trace_blocks(
    tower: VisionTower, indices: list[int], hooks: HookManager
) -> dict[int, BlockTrace]:
    """Run the blocks ``indices`` through :func:`block_forward` until ``hooks`` exits.

    Returns a dict that the next forward pass fills with a :class:`BlockTrace` per traced
    block. The blocks' ``forward`` is patched through ``hooks`` (restored on its exit).
    """
    store: dict[int, BlockTrace] = {}
    batch_first = getattr(getattr(tower.module, "transformer", None), "batch_first", True)
    blocks = tower.blocks
    for i in indices:
        view = BlockView(blocks[i], tower.heads)
        hooks.patch_attr(blocks[i], "forward", _replacement(view, batch_first, store, i))
    return store


def project_tokens(tower: VisionTower, tokens: Tensor) -> Tensor:
    """Map last-block tokens ``(B, P, d)`` to the embedding space as if each were pooled."""
    if isinstance(tower, HFClipVision):
        return tower.clip.visual_projection(tower.module.post_layernorm(tokens))
    m = tower.module
    if getattr(m, "attn_pool", None) is not None:
        raise ValueError("vision towers with an attention pooler (CoCa) are not supported")
    x = m.ln_post(tokens)
    return x if m.proj is None else x @ m.proj


def resolve_tower(forward_func: Any, vision_model: Any, need_cls: bool) -> VisionTower:
    """The ViT tower adapter of ``forward_func`` (or of an explicit ``vision_model``)."""
    from captum_clip.models import ClipAdapter

    if vision_model is None:
        tower = getattr(forward_func, "vision", None)
        if not isinstance(tower, VisionTower):
            raise TypeError(
                "forward_func must be a ClipClassifier/ClipSimilarity (with .vision), or pass "
                f"vision_model=; got {type(forward_func).__name__}"
            )
    elif isinstance(vision_model, VisionTower):
        tower = vision_model
    elif isinstance(getattr(vision_model, "vision", None), VisionTower):  # a ClipClassifier
        tower = vision_model.vision
    elif isinstance(vision_model, nn.Module):
        if hasattr(vision_model, "transformer") and hasattr(vision_model, "_embeds"):
            tower = OpenClipViT(vision_model)
        else:
            tower = ClipAdapter(vision_model).vision
    else:
        raise TypeError(
            "vision_model must be a CLIP model, an open_clip VisionTransformer or a "
            f"VisionTower, got {type(vision_model).__name__}"
        )
    if not tower.is_vit or not isinstance(tower, (OpenClipViT, HFClipVision)):
        raise ValueError(
            f"this method needs a ViT vision tower (open_clip or Hugging Face CLIP); "
            f"got {type(tower.module).__name__}"
        )
    for block in tower.blocks:
        BlockView(block, tower.heads)  # raises for unsupported block types
    m = tower.module
    if getattr(m, "attn_pool", None) is not None:
        raise ValueError("vision towers with an attention pooler (CoCa) are not supported")
    if need_cls and getattr(m, "pool_type", "tok") != "tok":
        raise ValueError(
            "this method reads the class token; the vision tower pools with "
            f"pool_type={m.pool_type!r}"
        )
    return tower


def check_targets(target: Any, batch: int, n_outputs: int | None) -> Tensor | None:
    """Per-example target indices ``(B,)`` (or None when the output is one score each)."""
    if target is None:
        if n_outputs is None or n_outputs == 1:
            return None if n_outputs is None else torch.zeros(batch, dtype=torch.long)
        raise ValueError(
            f"target is required: forward_func has {n_outputs} outputs per example "
            "(pass a class/text index, or one per example)"
        )
    if isinstance(target, bool) or (isinstance(target, Tensor) and target.dtype == torch.bool):
        raise TypeError("target must be an int, a list of ints or an integer tensor, got bool")
    if isinstance(target, int):
        t = torch.full((batch,), target, dtype=torch.long)
    elif isinstance(target, Tensor):
        if target.is_floating_point() or target.is_complex() or target.ndim > 1:
            raise TypeError(
                f"target tensor must be an integer scalar or (B,) tensor, got {target.dtype} "
                f"{tuple(target.shape)}"
            )
        t = target.detach().cpu().long().reshape(-1)
        t = t.expand(batch).clone() if t.numel() == 1 else t
    elif isinstance(target, (list, tuple)):
        if not all(isinstance(i, int) and not isinstance(i, bool) for i in target):
            raise TypeError(f"target list must hold ints, got {target!r}")
        t = torch.tensor(list(target), dtype=torch.long)
    else:
        raise TypeError(
            f"target must be an int, a list of ints or an integer tensor, got "
            f"{type(target).__name__}"
        )
    if t.numel() != batch:
        raise ValueError(f"expected one target per example ({batch}), got {t.numel()}")
    if n_outputs is not None and ((t < 0).any() or (t >= n_outputs).any()):
        raise ValueError(
            f"target must be in [0, {n_outputs - 1}] for {n_outputs} outputs, got "
            f"{t.tolist() if batch > 1 else int(t[0])}"
        )
    return t


def split_batches(batch: int, internal_batch_size: int | None) -> list[slice]:
    """Slices of ``range(batch)`` with at most ``internal_batch_size`` examples each."""
    if internal_batch_size is None:
        return [slice(0, batch)]
    if isinstance(internal_batch_size, bool) or not isinstance(internal_batch_size, int):
        raise TypeError(
            f"internal_batch_size must be a positive int or None, got "
            f"{type(internal_batch_size).__name__}"
        )
    if internal_batch_size < 1:
        raise ValueError(f"internal_batch_size must be >= 1, got {internal_batch_size}")
    return [
        slice(i, min(i + internal_batch_size, batch)) for i in range(0, batch, internal_batch_size)
    ]


def slice_args(args: Any, sl: slice, batch: int) -> tuple:
    """``additional_forward_args`` as a tuple, batch-sized tensors sliced to ``sl``."""
    if args is None:
        return ()
    args = args if isinstance(args, tuple) else (args,)
    return tuple(
        a[sl] if isinstance(a, Tensor) and a.ndim > 0 and a.shape[0] == batch else a for a in args
    )


def to_input_shape(maps: Tensor, inputs: Tensor) -> Tensor:
    """Upsample ``(B, h, w)`` patch maps bilinearly to ``inputs`` ``(B, 3, H, W)``."""
    up = F.interpolate(
        maps[:, None].float(), size=tuple(inputs.shape[-2:]), mode="bilinear", align_corners=False
    )
    out = up.expand(-1, inputs.shape[1], -1, -1).contiguous()
    return out.to(device=inputs.device, dtype=inputs.dtype)


def guarded_modules(forward_func: Any, tower: VisionTower) -> list[nn.Module]:
    """Modules whose mode and ``requires_grad`` flags an attribution must restore."""
    mods = [forward_func, tower.module, getattr(tower, "clip", None)]
    return [m for m in mods if isinstance(m, nn.Module)]


def known_outputs(forward_func: Any) -> int | None:
    """Number of outputs of a ClipClassifier/ClipSimilarity (None for other callables)."""
    emb = getattr(forward_func, "text_embeddings", None)
    return int(emb.shape[0]) if isinstance(emb, Tensor) and emb.ndim == 2 else None


def traced_scores(
    forward_func: Callable,
    tower: VisionTower,
    images: Tensor,
    args: tuple,
    target: Any,
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
        if out.ndim == 1:
            if target is not None:
                check_targets(target, len(images), 1)
            return out, store
        t = check_targets(target, len(images), out.shape[1]).to(out.device)
        return out.gather(1, t[:, None])[:, 0], store
