"""The two towers as :class:`~captum_clip.attr.interactions.IntegratedInteractions` sees them.

A :class:`TokenEncoder` turns inputs into token hidden states at a layer and hidden states
back into an embedding. The CLIP image towers (open_clip and Hugging Face) are wrapped
here, the text tower in :mod:`captum_clip.attr._interaction_text`; a custom model (e.g. a toy bilinear dual encoder in a test) subclasses
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
from captum_clip.models.blocks import RowPath

__all__ = [
    "ClipImageEncoder",
    "PixelPatchEncoder",
    "TokenEncoder",
    "layer_to_index",
    "normalize_embedding",
    "user_baseline",
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
        return user_baseline(inputs, spec)

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


def user_baseline(inputs: Tensor, spec: Any) -> Tensor:
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
    return torch.zeros_like(inputs) if spec is None else user_baseline(inputs, spec)


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


def normalize_embedding(emb: Tensor, similarity: str) -> Tensor:
    """The embedding the score is a dot product of (L2-normalised for ``"cosine"``)."""
    return F.normalize(emb, dim=-1) if similarity == "cosine" else emb
