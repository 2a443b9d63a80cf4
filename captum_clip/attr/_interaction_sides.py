"""The two towers as :class:`~captum_clip.attr.interactions.IntegratedInteractions` sees them.

A :class:`TokenEncoder` turns inputs into token hidden states at a layer and hidden states
back into an embedding. The CLIP text and image towers (open_clip and Hugging Face) are
wrapped here; a custom model (e.g. a toy bilinear dual encoder in a test) subclasses
:class:`TokenEncoder` and goes through exactly the same interaction code.

Two image sides: :class:`ClipImageEncoder` (a ViT: tokens are ``[prefix, patches]`` at a
block) and :class:`PixelPatchEncoder` (any differentiable image tower, convolutional ones
by default: tokens are the input pixels cut into patches -- the cells of the tower's grid,
e.g. 32x32 pixels on RN50 -- and the path is the straight line from the baseline image).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from captum_clip._validate import check_images
from captum_clip.models.blocks import RowPath, row_path
from captum_clip.models.heads import check_context_length, token_strings, tokenize

__all__ = [
    "ClipImageEncoder",
    "ClipTextEncoder",
    "PixelPatchEncoder",
    "TokenEncoder",
    "layer_to_index",
]

Pooled = tuple[RowPath, Tensor, Tensor]


def layer_to_index(layer: int, n_blocks: int, name: str) -> int:
    """``layer`` (``0`` = embeddings, ``i`` = input of block ``i``, ``-1`` = input of the
    last block) as a hidden-state index in ``[0, n_blocks]``."""
    if isinstance(layer, bool) or not isinstance(layer, int):
        raise TypeError(f"{name} must be an int, got {type(layer).__name__}")
    if not -n_blocks <= layer <= n_blocks:
        raise ValueError(
            f"{name} must be in [{-n_blocks}, {n_blocks}] for a tower with {n_blocks} "
            f"blocks (0 = embeddings, -1 = input of the last block), got {layer}"
        )
    return layer if layer >= 0 else n_blocks + layer


class TokenEncoder:
    """One tower of a dual encoder, split at a layer into ``inputs -> x -> embedding``.

    Subclass it to attribute a custom model with
    :meth:`IntegratedInteractions.from_encoders`; override at least :meth:`hidden` and
    :meth:`from_hidden`. ``x`` holds one row of hidden states per token: ``(B, T, d)``.
    """

    n_blocks: int = 0

    def layer_index(self, layer: int, name: str) -> int:
        """The user's ``layer`` as a hidden-state index (see :func:`layer_to_index`)."""
        return layer_to_index(layer, self.n_blocks, name)

    def prepare(self, inputs: Any) -> Tensor:
        """Validate / convert user inputs to a batch tensor."""
        if not isinstance(inputs, Tensor) or inputs.ndim < 2 or inputs.shape[0] == 0:
            raise TypeError(f"expected a non-empty (B, ...) tensor, got {type(inputs).__name__}")
        return inputs

    def baseline(self, inputs: Tensor, spec: Any) -> Tensor:
        """Reference inputs: ``None`` (zeros), a tensor (broadcast to the batch) or a callable."""
        if spec is None:
            return torch.zeros_like(inputs)
        return _user_baseline(inputs, spec)

    def hidden(self, inputs: Tensor, index: int) -> Tensor:
        """Hidden states ``(B, T, d)`` at hidden index ``index``."""
        raise NotImplementedError

    def from_hidden(self, x: Tensor, inputs: Tensor, index: int) -> Tensor:
        """Unnormalised embeddings ``(n, D)`` of hidden states ``x`` ``(n, T, d)``; ``inputs``
        is the one example ``(1, ...)`` they belong to."""
        raise NotImplementedError

    def active(self, inputs: Tensor, index: int) -> Tensor:
        """``(B, T)`` bool: tokens that can reach the embedding (others are exactly 0)."""
        x = self.hidden(inputs, index)
        return torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)

    def pooled(self, inputs: Tensor, index: int) -> Pooled | None:
        """``(RowPath, pooled positions (B,), allowed keys (B, T))`` for the fast route."""
        return None

    def labels(self, inputs: Tensor) -> list[list[str]]:
        """One label per token and example."""
        t = self.hidden(inputs, 0).shape[1]
        return [[str(i) for i in range(t)] for _ in range(inputs.shape[0])]


def _user_baseline(inputs: Tensor, spec: Any) -> Tensor:
    ref = spec(inputs) if callable(spec) else spec
    if not isinstance(ref, Tensor):
        raise TypeError(
            f"a baseline must be None, a tensor or a callable, got {type(spec).__name__}"
        )
    if ref.ndim == inputs.ndim - 1:
        ref = ref[None]
    if (
        ref.ndim != inputs.ndim
        or ref.shape[1:] != inputs.shape[1:]
        or ref.shape[0]
        not in (
            1,
            inputs.shape[0],
        )
    ):
        raise ValueError(
            f"baseline must have shape {tuple(inputs.shape)} (or a batch of 1), got "
            f"{tuple(ref.shape)}"
        )
    if ref.is_floating_point() and not torch.isfinite(ref).all():
        raise ValueError("baseline contains NaN or infinite values")
    return ref.to(inputs.device, inputs.dtype).expand_as(inputs).clone()


class ClipImageEncoder(TokenEncoder):
    """The image tower of a CLIP ViT: tokens are ``n_prefix`` prefix tokens (class token,
    registers; none for SigLIP), then the patches."""

    def __init__(self, tower: Any) -> None:
        if not getattr(tower, "is_vit", False):
            raise TypeError(
                f"integrated interactions need a ViT image tower (tokens = patches), got "
                f"{type(tower.module).__name__}"
            )
        self.tower = tower
        self.n_blocks = tower.n_blocks

    def prepare(self, inputs: Any) -> Tensor:
        return check_images(inputs, self.tower.image_size, dtype=self.tower.dtype)

    def baseline(self, inputs: Tensor, spec: Any) -> Tensor:
        return image_baseline(inputs, spec)

    def hidden(self, inputs: Tensor, index: int) -> Tensor:
        return self.tower.hidden_state(inputs, index)

    def from_hidden(self, x: Tensor, inputs: Tensor, index: int) -> Tensor:
        return self.tower.from_hidden(x, index)

    def active(self, inputs: Tensor, index: int) -> Tensor:
        n = self.tower.n_prefix + self.tower.n_patches
        return torch.ones(inputs.shape[0], n, dtype=torch.bool, device=inputs.device)

    def pooled(self, inputs: Tensor, index: int) -> Pooled | None:
        tower = self.tower
        if index != self.n_blocks - 1 or tower.pool_type != "tok":
            return None
        row = tower.row_path()  # RoPE towers (EVA-02) add their rotation table
        if row is None:
            return None
        b = inputs.shape[0]
        allowed = self.active(inputs, index)
        return row, torch.zeros(b, dtype=torch.long, device=inputs.device), allowed

    def labels(self, inputs: Tensor) -> list[list[str]]:
        """``n_prefix`` prefix names (the class token first, as timm and open_clip order them,
        then registers ``reg i``; none for SigLIP), then ``patch i``."""
        prefix = ["CLS"] + [f"reg {i}" for i in range(1, self.tower.n_prefix)]
        names = prefix[: self.tower.n_prefix] + [f"patch {i}" for i in range(self.tower.n_patches)]
        return [list(names) for _ in range(inputs.shape[0])]


def image_baseline(inputs: Tensor, spec: Any) -> Tensor:
    """Reference images: None (zeros: the dataset mean in normalised space), ``"blur"``, a
    tensor or a callable."""
    if isinstance(spec, str):
        if spec != "blur":
            raise ValueError(
                f"image_baseline must be None, 'blur', a tensor or a callable, got {spec!r}"
            )
        from torchvision.transforms.functional import gaussian_blur

        sigma = max(inputs.shape[-2:]) / 16.0
        k = 2 * int(3 * sigma) + 1
        return gaussian_blur(inputs, [k, k], [sigma, sigma])
    return torch.zeros_like(inputs) if spec is None else _user_baseline(inputs, spec)


class PixelPatchEncoder(TokenEncoder):
    """An image tower attributed at its input pixels; tokens are non-overlapping patches.

    The hidden state of an image ``(B, C, H, W)`` is ``(B, h * w, C * ph * pw)``: patch
    ``(i, j)`` (row-major) holds the pixels ``[i*ph:(i+1)*ph, j*pw:(j+1)*pw]``. It is a
    rearrangement of the pixels, so the integration path (straight in this space) is the
    straight path from the baseline image, and completeness holds for any differentiable
    tower: nothing about the tower's internals is used.

    Args:
        encode: ``images (n, C, H, W) -> (n, D)`` unnormalised embeddings.
        image_size: ``(H, W)`` the tower takes.
        patch: ``(ph, pw)`` pixels per patch; must divide ``image_size``.
        dtype: The tower's floating dtype (images are cast to it).
    """

    def __init__(
        self,
        encode: Callable[[Tensor], Tensor],
        image_size: tuple[int, int],
        patch: int | tuple[int, int],
        dtype: torch.dtype = torch.float32,
    ) -> None:
        ph, pw = (patch, patch) if isinstance(patch, int) else tuple(patch)
        if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (ph, pw)):
            raise ValueError(f"the pixel patch must be a positive int or (h, w), got {patch!r}")
        height, width = int(image_size[0]), int(image_size[1])
        if height % ph or width % pw:
            raise ValueError(
                f"pixel patches of {ph}x{pw} do not tile the {height}x{width} image; pass "
                "image_patch_size= with a divisor of the image size"
            )
        self.encode, self.dtype = encode, dtype
        self.image_size, self.patch = (height, width), (ph, pw)
        self.grid = (height // ph, width // pw)

    def layer_index(self, layer: int, name: str) -> int:
        if isinstance(layer, bool) or layer not in (0, -1):
            raise ValueError(
                f"this image tower is attributed at its input pixels (pixel patches, no "
                f"blocks): {name} must be 0 or -1 (both mean the pixels), got {layer!r}"
            )
        return 0

    def prepare(self, inputs: Any) -> Tensor:
        return check_images(inputs, self.image_size, dtype=self.dtype)

    def baseline(self, inputs: Tensor, spec: Any) -> Tensor:
        return image_baseline(inputs, spec)

    def hidden(self, inputs: Tensor, index: int) -> Tensor:
        b, c = inputs.shape[:2]
        (h, w), (ph, pw) = self.grid, self.patch
        x = inputs.reshape(b, c, h, ph, w, pw).permute(0, 2, 4, 1, 3, 5)
        return x.reshape(b, h * w, c * ph * pw)

    def images(self, x: Tensor) -> Tensor:
        """The inverse of :meth:`hidden`: ``(n, h * w, C * ph * pw)`` -> ``(n, C, H, W)``."""
        (h, w), (ph, pw) = self.grid, self.patch
        n, c = x.shape[0], x.shape[-1] // (ph * pw)
        x = x.reshape(n, h, w, c, ph, pw).permute(0, 3, 1, 4, 2, 5)
        return x.reshape(n, c, h * ph, w * pw)

    def from_hidden(self, x: Tensor, inputs: Tensor, index: int) -> Tensor:
        return self.encode(self.images(x))

    def labels(self, inputs: Tensor) -> list[list[str]]:
        names = [f"patch {i}" for i in range(self.grid[0] * self.grid[1])]
        return [list(names) for _ in range(inputs.shape[0])]


class ClipTextEncoder(TokenEncoder):
    """The text tower of a CLIP (open_clip or HF): tokens are the caption's token ids."""

    def __init__(self, tower: Any, tokenizer: Callable | None) -> None:
        self.tower = tower
        self.tokenizer = tokenizer
        self.n_blocks = tower.n_blocks

    @property
    def context_length(self) -> int:
        return int(self.tower.context_length)

    def prepare(self, inputs: Any) -> Tensor:
        device = next(self.tower.model.parameters()).device
        if isinstance(inputs, str):
            inputs = [inputs]
        if isinstance(inputs, Tensor):
            ids = inputs
            if ids.ndim != 2 or ids.dtype not in (torch.int64, torch.int32) or ids.shape[0] == 0:
                raise TypeError(
                    f"texts must be a list of strings or a (B, S) integer id tensor, got "
                    f"{ids.dtype} {tuple(ids.shape)}"
                )
            if ids.shape[1] > self.context_length:
                raise ValueError(
                    f"token ids have length {ids.shape[1]}, more than the model's context "
                    f"length {self.context_length}"
                )
            return self._check_vocab(ids, "token ids").long().to(device)
        if self.tokenizer is None:
            raise ValueError("texts are strings but no tokenizer was given; pass tokenizer=")
        if not isinstance(inputs, (list, tuple)):
            raise TypeError(
                f"texts must be a list of strings or an id tensor, got {type(inputs).__name__}"
            )
        self._check_length(inputs)
        ids = tokenize(self.tokenizer, inputs, device)
        if ids.shape[1] > self.context_length:
            raise ValueError(
                f"the tokenizer made {ids.shape[1]} tokens, more than the model's context "
                f"length {self.context_length}"
            )
        return self._check_vocab(ids, "the tokenizer's ids (is it the model's tokenizer?)")

    def _check_length(self, texts: Any) -> None:
        """open_clip's tokenizers truncate silently; refuse captions that do not fit."""
        check_context_length(self.tokenizer, texts, self.context_length)

    def pad_id(self) -> int:
        tok = self.tokenizer
        for holder in (tok, getattr(tok, "tokenizer", None)):
            for name in ("pad_id", "pad_token_id"):
                value = getattr(holder, name, None)
                if isinstance(value, int):
                    return value
        return 0

    def _check_vocab(self, ids: Tensor, name: str) -> Tensor:
        n = self.tower.vocab_size
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= n):
            bad = ids[(ids < 0) | (ids >= n)].unique().tolist()[:5]
            raise ValueError(
                f"{name} must be in [0, {n - 1}] (the model's vocabulary of {n} tokens), got {bad}"
            )
        return ids

    def baseline(self, inputs: Tensor, spec: Any) -> Tensor:
        if spec is not None:
            raw = spec(inputs) if callable(spec) else spec
            # checked before any cast: a float tensor is not silently truncated to ids
            if isinstance(raw, Tensor) and raw.dtype not in (torch.int64, torch.int32):
                raise TypeError(
                    f"text_baseline must hold integer token ids (int64 or int32), got {raw.dtype}"
                )
            return self._check_vocab(_user_baseline(inputs, raw), "text_baseline").long()
        ref = inputs.clone()
        for b, c in enumerate(self._text_end(inputs).tolist()):
            if c >= 2:
                ref[b, 1:c] = self.pad_id()
        return ref

    def hidden(self, inputs: Tensor, index: int) -> Tensor:
        return self.tower.hidden_state(inputs, index)

    def from_hidden(self, x: Tensor, inputs: Tensor, index: int) -> Tensor:
        return self.tower.from_hidden(x, inputs.expand(x.shape[0], -1), index)

    def _text_end(self, inputs: Tensor) -> Tensor:
        """End-of-text position ``(B,)``: the pooled position, or, where the pooled token is
        appended after the ids (CoCa's class token), the last non-padding id."""
        pool = self.tower.pool_index(inputs)
        s = inputs.shape[1]
        if bool((pool < s).all()):
            return pool
        pos = torch.arange(s, device=inputs.device)
        last = ((inputs != self.pad_id()).long() * pos).argmax(dim=-1)
        return torch.where(pool < s, pool, last)

    def _allowed(self, inputs: Tensor) -> Tensor | None:
        """Keys the pooled token reads (causal row), or None for a padding-masked tower."""
        mask = self.tower.attention_mask(inputs, torch.float32)
        if mask is None:  # no mask: every token reads every token
            return torch.ones(inputs.shape, dtype=torch.bool, device=inputs.device)
        if mask.ndim != 2:  # a per-example (padding) mask
            return None
        return torch.isfinite(mask[self.tower.pool_index(inputs)])

    def active(self, inputs: Tensor, index: int) -> Tensor:
        allowed = self._allowed(inputs)
        if allowed is None:  # per-example mask: every token it covers (CoCa: S + 1)
            n = self.tower.attention_mask(inputs, torch.float32).shape[-1]
            return torch.ones(inputs.shape[0], n, dtype=torch.bool, device=inputs.device)
        return allowed

    def pooled(self, inputs: Tensor, index: int) -> Pooled | None:
        if index != self.n_blocks - 1:
            return None
        allowed = self._allowed(inputs)
        if allowed is None:
            return None
        tower = self.tower
        row = row_path(tower.blocks[-1], tower.token_head)
        return None if row is None else (row, tower.pool_index(inputs), allowed)

    def labels(self, inputs: Tensor) -> list[list[str]]:
        out = []
        end = self._text_end(inputs)
        # tokens the tower appends after the ids (CoCa's class token) are labelled "<cls>"
        appended = max(int(self.tower.pool_index(inputs).max()) + 1 - inputs.shape[1], 0)
        for row, c in zip(inputs.tolist(), end.tolist()):
            s = len(row)
            names = None
            if self.tokenizer is not None:
                try:
                    names = token_strings(self.tokenizer, row[: c + 1])
                except (ValueError, KeyError, TypeError):
                    names = None
            if names is None or len(names) != c + 1:
                names = [str(i) for i in row[: c + 1]]
            out.append(list(names) + [""] * (s - c - 1) + ["<cls>"] * appended)
        return out


def normalize_embedding(emb: Tensor, similarity: str) -> Tensor:
    """The embedding the score is a dot product of (L2-normalised for ``"cosine"``)."""
    return F.normalize(emb, dim=-1) if similarity == "cosine" else emb
