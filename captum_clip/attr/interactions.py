"""Integrated interactions: exact second-order caption-token x image-patch attributions.

For a text hidden state ``x`` (``S x d_t``) and an image hidden state ``y``
(``(1+P) x d_v``) at chosen layers, and references ``x0``, ``y0``::

    sigma(a, b) - sigma(a0, b) - sigma(a, b0) + sigma(a0, b0) = sum_{s,p} A[s, p]
    A = u^T v,  u[k, s] = int_0^1 df_k/dx(x0 + a dx) . dx|_s da   (v likewise for g)

(Moeller et al., arXiv 2408.14153). ``u`` and ``v`` are computed exactly without any dense
Jacobian (see :mod:`captum_clip.attr._interaction_paths`); ``A`` is their ``(S x D)(D x (1+P))``
product. See ``docs/interactions.md``.

The identity holds for any differentiable dual encoder: image towers without patch tokens
(convolutional CLIPs: RN50, ConvNeXt, MobileCLIP) are attributed at the input pixels, cut
into the cells of the tower's feature grid (:class:`~._interaction_sides.PixelPatchEncoder`;
``A`` is then ``(B, S, P)``, no prefix column). ``image_patch_size=`` does the same on any
tower with a chosen patch size.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import ExitStack
from typing import Any

import torch
from captum.attr import GradientAttribution
from torch import Tensor, nn
from tqdm.auto import tqdm

from captum_clip._hooks import preserve_model_state
from captum_clip._validate import check_batch_size
from captum_clip.attr import _interaction_paths as paths
from captum_clip.attr._captum import CaptumConformance, texts_or_target
from captum_clip.attr._interaction_result import InteractionResult
from captum_clip.attr._interaction_sides import (
    ClipImageEncoder,
    PixelPatchEncoder,
    TokenEncoder,
    normalize_embedding,
)
from captum_clip.attr._interaction_text import ClipTextEncoder

__all__ = ["IntegratedInteractions", "InteractionResult", "TokenEncoder"]

ROUTES = ("auto", "fast", "forward", "reverse")
DEFAULT_FAST_CHUNK = 1024  # (step, token) pairs per pass, fast route


def _progress(show: bool, total: int, desc: str) -> Any:
    bar = tqdm(total=total, desc=desc, disable=not show, leave=False)
    return bar


class IntegratedInteractions(CaptumConformance, GradientAttribution):
    """Second-order integrated interactions between caption tokens and image patches.

    Args:
        model: An open_clip ``CLIP`` / ``CustomTextCLIP`` (ViT, ResNet, ConvNeXt, FastViT /
            MobileCLIP image towers) or a ``transformers.CLIPModel``.
        tokenizer: Turns caption strings into ids (needed when ``texts`` are strings).
        image_patch_size: Attribute the image at its input pixels, in patches of this many
            pixels (an int or ``(h, w)`` dividing the image size). Default None: the ViT's
            hidden states (``image_layer``) for a ViT tower; for any other tower the
            pixels, in the cells of its feature grid (32x32 on RN50 / ConvNeXt /
            MobileCLIP).

    Example:
        >>> ii = IntegratedInteractions(model, tokenizer)
        >>> A, delta = ii.attribute(images, ["a red circle"], return_convergence_delta=True)
        >>> result = ii.explain(images, ["a red circle"]); result.image_map("circle")
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Callable | None = None,
        image_patch_size: int | tuple[int, int] | None = None,
    ) -> None:
        from captum_clip.models.adapter import ClipAdapter

        adapter = ClipAdapter(model)
        text = ClipTextEncoder(adapter.text, tokenizer)
        vision = adapter.vision
        image: TokenEncoder
        if image_patch_size is None and vision.is_vit:
            image = ClipImageEncoder(vision)
            self._setup(text, image, model)
            self.patch_grid = tuple(vision.grid_size)
        else:
            image = _pixel_side(adapter, image_patch_size)
            self._setup(text, image, model)
            self.patch_grid = image.grid
        self.image_size = tuple(vision.image_size)

    @classmethod
    def from_encoders(
        cls,
        text: TokenEncoder,
        image: TokenEncoder,
        patch_grid: tuple[int, int] | None = None,
    ) -> IntegratedInteractions:
        """Interactions of a custom dual encoder given as two :class:`TokenEncoder`.

        Args:
            text, image: The two towers.
            patch_grid: ``(h, w)``: the image's last ``h * w`` tokens are patches in
                row-major order (earlier tokens, e.g. a CLS token, are a prefix). None:
                every image token is a patch on a ``1 x L`` grid.
        """
        for name, enc in (("text", text), ("image", image)):
            if not isinstance(enc, TokenEncoder):
                raise TypeError(f"{name} must be a TokenEncoder, got {type(enc).__name__}")
        if patch_grid is not None and (
            not isinstance(patch_grid, (tuple, list))
            or len(patch_grid) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in patch_grid)
        ):
            raise ValueError(
                f"patch_grid must be a pair of positive ints (h, w), got {patch_grid!r}"
            )
        self = cls.__new__(cls)
        self._setup(text, image, None)
        self.patch_grid = None if patch_grid is None else tuple(patch_grid)
        self.image_size = None
        return self

    def _setup(self, text: TokenEncoder, image: TokenEncoder, model: nn.Module | None) -> None:
        self.text_encoder = text
        self.image_encoder = image
        self.model = model

        def score(images: Tensor, texts: Tensor) -> Tensor:
            f = normalize_embedding(text.from_hidden(text.hidden(texts, 0), texts, 0), "cosine")
            g = normalize_embedding(image.from_hidden(image.hidden(images, 0), images, 0), "cosine")
            return (f * g).sum(-1)

        GradientAttribution.__init__(self, score)

    def has_convergence_delta(self) -> bool:
        return True

    def attribute(  # type: ignore[override]
        self,
        images: Tensor,
        texts: Sequence[str] | Tensor | None = None,
        n_steps: int = 20,
        method: str = "gausslegendre",
        text_layer: int = -1,
        image_layer: int = -1,
        text_baseline: Any = None,
        image_baseline: Any = None,
        similarity: str = "cosine",
        internal_batch_size: int | None = None,
        return_convergence_delta: bool = False,
        show_progress: bool = False,
        route: str = "auto",
        target: Sequence[str] | Tensor | None = None,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Interaction matrices ``A`` ``(B, S, 1+P)`` of ``B`` image-caption pairs.

        Args:
            images: ``(B, 3, H, W)`` preprocessed images (or a 1-tuple of them).
            texts: ``B`` captions, or a ``(B, S)`` token-id tensor.
            n_steps: Integration points per tower.
            method: Captum rule: ``"gausslegendre"`` or ``"riemann_{left,right,middle,trapezoid}"``.
            text_layer, image_layer: Hidden-state index to attribute at: ``0`` embeddings,
                ``i`` input of block ``i``, ``-1`` input of the last block (default).
                An image side at the pixels (convolutional towers, ``image_patch_size``)
                takes ``image_layer`` 0 or -1 (both: the pixels).
            text_baseline: None (``[SOT, PAD..., EOT]``, EOT kept in place), ids or a callable.
            image_baseline: None (zeros in normalised space), ``"blur"``, a tensor or callable.
            similarity: ``"cosine"`` (embeddings L2-normalised) or ``"dot"``.
            internal_batch_size: About how many (integration step, tangent or cotangent)
                pairs one vectorised pass evaluates; the result does not depend on it
                beyond float rounding. None = 1024 for the fast route; for the
                forward/reverse routes (layers below the last block) as many as fit a
                memory budget (1 GiB of activations on the CPU, a quarter of the free GPU
                memory up to 8 GiB on CUDA; see ``_interaction_paths.auto_chunk``). Lower
                it to save memory.
            return_convergence_delta: Also return the ``(B,)`` delta.
            show_progress: tqdm bar over the integration steps.
            route: ``"auto"`` (fast route at the last block when available, else the cheaper
                of forward/reverse), ``"fast"``, ``"forward"`` or ``"reverse"``.
            target: The captions under Captum's name (instead of ``texts``), as
                ``NoiseTunnel`` and ``sensitivity_max`` expand it with the batch.

        Returns:
            ``A``, or ``(A, delta)`` with ``return_convergence_delta=True`` (a 1-tuple
            ``(A,)`` in place of ``A`` when ``images`` was a 1-tuple).
        """
        texts = texts_or_target(texts, target)
        res = self.explain(
            images, texts, n_steps=n_steps, method=method, text_layer=text_layer,
            image_layer=image_layer, text_baseline=text_baseline, image_baseline=image_baseline,
            similarity=similarity, internal_batch_size=internal_batch_size,
            show_progress=show_progress, route=route,
        )  # fmt: skip
        if return_convergence_delta:
            return res.attributions, res.delta
        return res.attributions

    def compute_convergence_delta(  # type: ignore[override]
        self, attributions: Tensor, images: Tensor, texts: Sequence[str] | Tensor, **kwargs: Any
    ) -> Tensor:
        """``(B,)`` delta ``sum A - (sigma(a,b) - sigma(a0,b) - sigma(a,b0) + sigma(a0,b0))``.

        Args:
            attributions: ``A`` ``(B, S, 1+P)`` from :meth:`attribute`.
            images, texts: The pairs ``A`` was computed for.
            **kwargs: The layer, baseline and similarity arguments used for ``A``.
        """
        for key in ("n_steps", "method", "internal_batch_size", "route", "show_progress"):
            kwargs.pop(key, None)
        res = self.explain(images, texts, _integrate=False, **kwargs)
        if not isinstance(attributions, Tensor) or attributions.shape != res.attributions.shape:
            raise ValueError(
                f"attributions must have shape {tuple(res.attributions.shape)}, got "
                f"{getattr(attributions, 'shape', type(attributions).__name__)}"
            )
        return attributions.sum((1, 2)) - res.score_difference

    def explain(
        self, images: Tensor, texts: Sequence[str] | Tensor, **kwargs: Any
    ) -> InteractionResult:
        """Like :meth:`attribute` (same keyword arguments) but returns an :class:`InteractionResult`."""
        kwargs.pop("return_convergence_delta", None)
        modules = (self.model,) if isinstance(self.model, nn.Module) else ()
        with ExitStack() as stack:
            stack.enter_context(preserve_model_state(*modules))
            for m in modules:
                m.eval()
            stack.enter_context(torch.no_grad())
            stack.enter_context(paths.forward_ad_mode())
            return self._explain(images, texts, **kwargs)

    def _explain(
        self,
        images: Any,
        texts: Any,
        n_steps: int = 20,
        method: str = "gausslegendre",
        text_layer: int = -1,
        image_layer: int = -1,
        text_baseline: Any = None,
        image_baseline: Any = None,
        similarity: str = "cosine",
        internal_batch_size: int | None = None,
        show_progress: bool = False,
        route: str = "auto",
        _integrate: bool = True,
    ) -> InteractionResult:
        if similarity not in ("cosine", "dot"):
            raise ValueError(f"similarity must be 'cosine' or 'dot', got {similarity!r}")
        if route not in ROUTES:
            raise ValueError(f"route must be one of {ROUTES}, got {route!r}")
        check_batch_size(internal_batch_size)
        te, ie = self.text_encoder, self.image_encoder
        ti = te.layer_index(text_layer, "text_layer")
        vi = ie.layer_index(image_layer, "image_layer")
        ids = te.prepare(texts)
        imgs = ie.prepare(images)
        if ids.shape[0] != imgs.shape[0]:
            raise ValueError(
                f"images and texts must be pairs of the same batch size, got "
                f"{imgs.shape[0]} images and {ids.shape[0]} texts"
            )
        ids0 = te.baseline(ids, text_baseline)
        imgs0 = ie.baseline(imgs, image_baseline)
        x, x0 = te.hidden(ids, ti), te.hidden(ids0, ti)
        y, y0 = ie.hidden(imgs, vi), ie.hidden(imgs0, vi)
        alphas, weights = paths.quadrature(method, n_steps, x.dtype, x.device)
        sides = [
            _Side(te, ids, x, x0, ti, route, internal_batch_size),
            _Side(ie, imgs, y, y0, vi, route, internal_batch_size),
        ]
        b = ids.shape[0]
        bar = _progress(show_progress, 2 * b * n_steps, "integrated interactions")
        attributions, scores, refs = [], [], []
        try:
            for i in range(b):
                u, f, f0 = sides[0].integrate(
                    i, alphas, weights, similarity, bar.update, _integrate
                )
                v, g, g0 = sides[1].integrate(
                    i, alphas, weights, similarity, bar.update, _integrate
                )
                attributions.append(u.T @ v.to(u.dtype))
                scores.append(f @ g)
                refs.append(torch.stack([f0 @ g, f @ g0, f0 @ g0]))
        finally:
            bar.close()
        a = torch.stack(attributions)
        score, ref = torch.stack(scores), torch.stack(refs)
        delta = a.sum((1, 2)) - (score - ref[:, 0] - ref[:, 1] + ref[:, 2])
        # custom encoders: every image token is a "patch" on a 1 x L grid
        grid = self.patch_grid if self.patch_grid is not None else (1, a.shape[2])
        if grid[0] * grid[1] > a.shape[2]:
            raise ValueError(
                f"patch_grid {grid} has {grid[0] * grid[1]} patches but the image encoder "
                f"gives {a.shape[2]} tokens"
            )
        return InteractionResult(
            a, te.labels(ids), grid, score, delta, ref, self.image_size,
            n_prefix=a.shape[2] - grid[0] * grid[1],
        )  # fmt: skip


def _pixel_side(adapter: Any, patch: int | tuple[int, int] | None) -> PixelPatchEncoder:
    """The image side at the input pixels: patches of ``patch`` pixels, or the cells of the
    tower's feature grid."""
    vision = adapter.vision
    try:
        size = tuple(vision.image_size)
    except NotImplementedError:  # a tower of unknown family: its module may say
        size = getattr(vision.module, "image_size", None)
        if size is None:
            raise ValueError(
                f"the image size of the vision tower {type(vision.module).__name__} is "
                "unknown; integrated interactions at the pixels need it: set "
                "model.visual.image_size = (H, W)"
            ) from None
        size = (size, size) if isinstance(size, int) else tuple(size)
    if patch is None:
        try:
            h, w = vision.grid_size
        except NotImplementedError:
            raise ValueError(
                f"the vision tower {type(vision.module).__name__} has no known feature grid; "
                "pass image_patch_size= (pixels per patch, e.g. 32) to attribute it at the "
                "pixels"
            ) from None
        if size[0] % h or size[1] % w:
            raise ValueError(
                f"the {h}x{w} feature grid does not tile the {size[0]}x{size[1]} image; pass "
                "image_patch_size= with a divisor of the image size"
            )
        patch = (size[0] // h, size[1] // w)
    return PixelPatchEncoder(adapter.encode_image, size, patch, vision.dtype)


class _Side:
    """One tower's inputs, hidden states and route for a batch."""

    def __init__(
        self,
        enc: TokenEncoder,
        inputs: Tensor,
        x: Tensor,
        x0: Tensor,
        index: int,
        route: str,
        chunk: int | None,
    ) -> None:
        self.enc, self.inputs, self.x, self.x0, self.index = enc, inputs, x, x0, index
        self.active = enc.active(inputs, index)
        self.pooled = enc.pooled(inputs, index) if route in ("auto", "fast") else None
        if route == "fast" and self.pooled is None:
            raise ValueError(
                "route='fast' needs the attribution layer at the input of the last block "
                f"(layer -1) of a supported tower; got hidden index {index} of "
                f"{enc.n_blocks} blocks for {type(enc).__name__}"
            )
        self.route, self.chunk = route, chunk

    def integrate(
        self,
        i: int,
        alphas: Tensor,
        weights: Tensor,
        similarity: str,
        update: Callable,
        integrate: bool = True,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``(u (D, T), embedding of the input (D,), embedding of the reference (D,))``."""
        enc, index = self.enc, self.index
        one = self.inputs[i : i + 1]

        def fn(z: Tensor) -> Tensor:
            return normalize_embedding(enc.from_hidden(z, one, index), similarity)

        x, x0 = self.x[i], self.x0[i]
        emb = fn(torch.stack([x, x0]))
        tokens = self.active[i].nonzero()[:, 0]
        if not integrate:
            return x.new_zeros(emb.shape[1], x.shape[0]), emb[0], emb[1]
        if self.pooled is not None:
            row, pool, allowed = self.pooled
            u = paths.integrate_pooled(
                row, x, x0, int(pool[i]), allowed[i], tokens, alphas, weights,
                similarity == "cosine", self.chunk or DEFAULT_FAST_CHUNK, update,
            )  # fmt: skip
        else:
            chunk = self.chunk or paths.auto_chunk(x)
            route = self.route
            if route == "auto":
                route = "forward" if tokens.numel() <= emb.shape[1] else "reverse"
            integrate = paths.integrate_forward if route == "forward" else paths.integrate_reverse
            u = integrate(fn, x, x0, tokens, alphas, weights, chunk, update)
        return u, emb[0], emb[1]
