"""Hugging Face ``CLIPModel`` adapter (optional extra: ``pip install captum-clip[hf]``).

Gives a ``transformers.CLIPModel`` the same tower interface as open_clip models, so
``ClipClassifier``, ``ClipSimilarity``, CCI and IntegratedInteractions accept it unchanged.
The forward passes here run the model's own modules layer by layer (embeddings,
encoder layers, final norms, projections) and are tested equal to ``get_image_features`` /
``get_text_features``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from captum_clip._hooks import HookManager
from captum_clip.models.base import TextTower, ViTTower

__all__ = ["is_hf_clip", "HFClipVision", "HFClipText", "HFText", "HFTokenizer", "HFVision"]


def is_hf_clip(model: object) -> bool:
    """True for a ``transformers.CLIPModel`` (checked without importing transformers)."""
    return all(hasattr(model, a) for a in ("vision_model", "text_model", "visual_projection"))


class HFVision(ViTTower):
    """What the Hugging Face vision towers share (CLIP, SigLIP): the encoder layers called
    as ``layer(x, attention_mask)``, the config, and hiding patches through that mask."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model.vision_model)
        self.clip = model
        self.config = model.config.vision_config

    @property
    def blocks(self) -> list[nn.Module]:
        return list(self.module.encoder.layers)

    @property
    def heads(self) -> int:
        return int(self.config.num_attention_heads)

    @property
    def guarded(self) -> list[nn.Module]:
        return [self.module, self.clip]

    def __call__(self, images: Tensor) -> Tensor:
        return self.head(self.run_blocks(self.embed(images), 0, self.n_blocks))

    def run_blocks(
        self, x: Tensor, start: int, stop: int, attn_mask: Tensor | None = None
    ) -> Tensor:
        for layer in self.blocks[start:stop]:
            x = layer(x, attn_mask)
        return x

    def mask_layers(self, hooks: HookManager, hidden: Tensor) -> None:
        """Add ``-inf`` for the keys of the ``(B, n_patches)`` hidden patches to the
        attention mask of every encoder layer until ``hooks`` exits (prefix keys kept)."""
        self.check_hidden(hidden)
        b, p = hidden.shape
        n = self.n_prefix
        keys = torch.cat([hidden.new_zeros(b, n), hidden], 1)
        mask = torch.zeros(b, 1, n + p, n + p, device=hidden.device)
        mask.masked_fill_(keys[:, None, None, :], float("-inf"))

        def inject(module, args, kwargs):
            x = args[0] if args else kwargs["hidden_states"]
            self.check_batch(x.shape[0], b)
            m = mask.to(dtype=x.dtype, device=x.device)
            if len(args) > 1:
                current = args[1]
                args = (args[0], m if current is None else current + m, *args[2:])
            else:
                current = kwargs.get("attention_mask")
                kwargs["attention_mask"] = m if current is None else current + m
            return args, kwargs

        for block in self.blocks:
            hooks.forward_pre(block, inject, with_kwargs=True)


class HFClipVision(HFVision):
    """Vision tower of a Hugging Face ``CLIPModel``."""

    @property
    def image_size(self) -> tuple[int, int]:
        s = int(self.config.image_size)
        return (s, s)

    @property
    def grid_size(self) -> tuple[int, int]:
        g = int(self.config.image_size) // int(self.config.patch_size)
        return (g, g)

    def embed(self, images: Tensor) -> Tensor:
        dtype = self.module.embeddings.patch_embedding.weight.dtype
        return self.module.pre_layrnorm(self.module.embeddings(images.to(dtype)))

    @property
    def pool_type(self) -> str:
        return "tok"

    #: Dropping = masking: the pooled class token reads no hidden patch.
    can_drop = True

    def token_head(self, tokens: Tensor) -> Tensor:
        return self.clip.visual_projection(self.module.post_layernorm(tokens))

    def head(self, x: Tensor) -> Tensor:
        return self.token_head(x[:, 0])

    @contextmanager
    def hide_patches(self, hidden: Tensor) -> Iterator[None]:
        with HookManager() as hooks:
            self.mask_layers(hooks, hidden)
            yield


class HFText(TextTower):
    """What the Hugging Face text towers share (CLIP, SigLIP): ``text_model`` with its
    embeddings and encoder layers."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        self.t = model.text_model

    @property
    def blocks(self) -> list[nn.Module]:
        return list(self.t.encoder.layers)

    @property
    def context_length(self) -> int:
        return int(self.model.config.text_config.max_position_embeddings)

    @property
    def vocab_size(self) -> int:
        return int(self.t.embeddings.token_embedding.num_embeddings)

    def embed(self, ids: Tensor) -> Tensor:
        return self.t.embeddings(input_ids=ids)


class HFClipText(HFText):
    """Text tower of a Hugging Face ``CLIPModel`` (causal attention, EOS pooling)."""

    def attention_mask(self, ids: Tensor, dtype: torch.dtype) -> Tensor:
        """The causal ``(S, S)`` additive mask (CLIP's text tower is always causal)."""
        s = ids.shape[1]
        return torch.full((s, s), float("-inf"), device=ids.device, dtype=dtype).triu(1)

    def run_blocks(self, x: Tensor, ids: Tensor, start: int, stop: int) -> Tensor:
        causal = self.attention_mask(ids, x.dtype)[None, None]
        for layer in self.blocks[start:stop]:
            x = layer(x, causal)
        return x

    def pool_index(self, ids: Tensor) -> Tensor:
        eos = self.t.eos_token_id
        if eos == 2:  # legacy configs: the EOT token has the largest id
            return ids.argmax(dim=-1)
        return (ids == eos).int().argmax(dim=-1)

    def token_head(self, rows: Tensor) -> Tensor:
        return self.model.text_projection(self.t.final_layer_norm(rows))


class HFTokenizer:
    """Wrap a Hugging Face CLIP tokenizer as ``tok(texts) -> LongTensor (N, context_length)``.

    Args:
        tokenizer: A ``transformers`` tokenizer (``CLIPTokenizer`` / ``CLIPTokenizerFast``).
        context_length: Pad every caption to this length (77 for CLIP).
    """

    def __init__(self, tokenizer: object, context_length: int = 77) -> None:
        self.tokenizer = tokenizer
        self.context_length = context_length

    def __call__(self, texts: str | Sequence[str]) -> Tensor:
        texts = [texts] if isinstance(texts, str) else list(texts)
        out = self.tokenizer(
            texts,
            padding="max_length",
            max_length=self.context_length,
            truncation=False,
            return_tensors="pt",
        )
        ids = out["input_ids"]
        if ids.shape[1] > self.context_length:
            raise ValueError(
                f"a caption has {ids.shape[1]} tokens, more than the context "
                f"length {self.context_length}"
            )
        return ids

    def decode_ids(self, ids: Sequence[int]) -> list[str]:
        return list(self.tokenizer.convert_ids_to_tokens([int(i) for i in ids]))
