"""The two Captum forward functions of a CLIP: :class:`ClipClassifier` and
:class:`ClipSimilarity`, and the text helpers they share (re-exported by
:mod:`captum_clip.models`)."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from captum_clip._validate import check_images
from captum_clip.models.adapter import ClipAdapter
from captum_clip.models.base import VisionTower

__all__ = [
    "DEFAULT_TEMPLATES",
    "ClipClassifier",
    "ClipSimilarity",
    "ZeroShotHead",
    "check_context_length",
    "token_strings",
    "tokenize",
]

DEFAULT_TEMPLATES: tuple[str, ...] = ("a photo of a {}.",)


def _device_of(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def tokenize(tokenizer: Callable, texts: str | Sequence[str], device: Any = None) -> Tensor:
    """Tokenize ``texts`` to a ``(N, S)`` LongTensor, rejecting empty or non-string texts."""
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, Sequence) or len(texts) == 0:
        raise ValueError("expected a non-empty list of texts, got an empty sequence")
    for t in texts:
        if not isinstance(t, str):
            raise TypeError(f"texts must be strings, got {type(t).__name__}")
        if not t.strip():
            raise ValueError("texts must be non-empty strings, got an empty text")
    ids = tokenizer(list(texts))
    if isinstance(ids, dict) or hasattr(ids, "input_ids"):
        ids = ids["input_ids"]
    ids = torch.as_tensor(ids)
    if ids.ndim != 2 or ids.dtype not in (torch.int64, torch.int32):
        raise TypeError(
            f"tokenizer must return an integer (N, S) tensor, got {ids.dtype} {tuple(ids.shape)}"
        )
    return ids.long().to(device) if device is not None else ids.long()


def _n_tokens(tokenizer: Callable, text: str) -> int | None:
    """Tokens of ``text`` before padding or truncation, where the tokenizer can say."""
    if hasattr(tokenizer, "encode") and hasattr(tokenizer, "sot_token_id"):
        return len(tokenizer.encode(text)) + 2  # open_clip SimpleTokenizer: + <sot>, <eot>
    inner = getattr(tokenizer, "tokenizer", None)
    if inner is not None and callable(inner) and not hasattr(tokenizer, "encode"):
        out = inner(text)  # Hugging Face tokenizers (open_clip's HFTokenizer wrapper, ours)
        ids = out["input_ids"] if isinstance(out, dict) or hasattr(out, "input_ids") else None
        if isinstance(ids, list):
            return len(ids)
    return None  # the testbed tokenizer refuses long texts itself


def check_context_length(
    tokenizer: Callable, texts: Sequence[str], context_length: int, what: str = "caption"
) -> None:
    """Refuse texts longer than the model's context length (the one documented behaviour).

    open_clip's tokenizers cut long texts silently (a 184-token caption would score like
    its first 77 tokens); :class:`ClipClassifier`, :class:`ClipSimilarity` and
    ``IntegratedInteractions`` all refuse them instead, through this check.

    Raises:
        ValueError: Names the first text that does not fit, its token count and the
            context length.
    """
    for t in texts:
        if not isinstance(t, str):
            continue
        n = _n_tokens(tokenizer, t)
        if n is not None and n > context_length:
            shown = t if len(t) <= 120 else t[:117] + "..."
            raise ValueError(
                f"{what} {shown!r} needs {n} tokens, more than the model's context length "
                f"{context_length}; shorten it (it is refused rather than silently cut)"
            )


def token_strings(tokenizer: Callable, ids: Sequence[int]) -> list[str]:
    """Human-readable token strings for one row of token ids."""
    ids = [int(i) for i in ids]
    if hasattr(tokenizer, "decode_ids"):
        return list(tokenizer.decode_ids(ids))
    inner = getattr(tokenizer, "tokenizer", tokenizer)
    decoder = getattr(inner, "decoder", None)
    if isinstance(decoder, dict):
        return [decoder.get(i, f"<{i}>").replace("</w>", "") for i in ids]
    if hasattr(inner, "convert_ids_to_tokens"):
        return list(inner.convert_ids_to_tokens(ids))
    return [str(i) for i in ids]


class _ClipHead(nn.Module):
    """Shared part of the two forward functions: adapter, cached text embeddings, checks."""

    def __init__(self, model: nn.Module, tokenizer: Callable) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.adapter = ClipAdapter(model)

    @property
    def vision(self) -> VisionTower:
        """The vision tower adapter (blocks, patch grid, hidden states)."""
        return self.adapter.vision

    @property
    def vision_blocks(self) -> list[nn.Module]:
        return self.adapter.vision.blocks

    @property
    def patch_grid(self) -> tuple[int, int]:
        return self.adapter.vision.grid_size

    @property
    def image_size(self) -> tuple[int, int] | None:
        try:
            return self.adapter.vision.image_size
        except (NotImplementedError, AttributeError):
            return None

    @torch.no_grad()
    def _embed_texts(self, texts: Sequence[str], batch_size: int = 256) -> Tensor:
        """Normalised embeddings of ``texts`` (refused when longer than the context)."""
        device = _device_of(self.model)
        ids = tokenize(self.tokenizer, texts, device)
        context = getattr(self.adapter.text, "context_length", None)
        if context is not None:
            check_context_length(self.tokenizer, list(texts), int(context))
            if ids.shape[1] > context:
                raise ValueError(
                    f"the tokenizer made {ids.shape[1]} tokens per text, more than the "
                    f"model's context length {context}"
                )
        out = [self.adapter.encode_text(c).float() for c in ids.split(batch_size)]
        return F.normalize(torch.cat(out), dim=-1)

    def _image_features(self, images: Tensor) -> Tensor:
        images = check_images(images, self.image_size, dtype=self.adapter.vision.dtype)
        return F.normalize(self.adapter.encode_image(images).float(), dim=-1)


def _warn_duplicates(names: list[str]) -> None:
    first: dict[str, int] = {}
    repeats = []
    for i, name in enumerate(names):
        if name in first:
            repeats.append(f"{name!r} at {first[name]} and {i}")
        first.setdefault(name, i)
    if repeats:
        warnings.warn(
            f"class_names repeat {len(repeats)} name(s): {'; '.join(repeats[:5])}; those "
            "classes get identical logits and the arg-max always picks the first -- give "
            "each class a distinct name to tell them apart",
            UserWarning,
            stacklevel=3,
        )


class ClipClassifier(_ClipHead):
    """Zero-shot classifier: ``forward(images) -> (B, n_classes)`` logits.

    Class text embeddings are a prompt ensemble (mean of the normalised embeddings of every
    template, renormalised), computed once at construction. Logits are
    ``logit_scale * cos(image, class)`` (+ ``logit_bias`` for SigLIP-style models).

    Args:
        model: open_clip CLIP (ViT or ResNet) or ``transformers.CLIPModel``.
        tokenizer: Callable ``texts -> LongTensor (N, S)`` (open_clip's tokenizer, the
            testbed tokenizer, or :class:`captum_clip.models.hf_clip.HFTokenizer`).
        class_names: One name per class. A name given twice warns (``UserWarning`` naming
            the positions): both classes get the same text embedding, so their logits are
            equal and the arg-max always picks the first -- the second is never predicted.
            A warning, not an error, because standard lists repeat names for distinct
            classes (open_clip's ImageNet names have "missile" and "sunglasses" twice,
            for two synsets each) and those runs must stay possible; disambiguate the
            names (``"projectile, missile"``) to tell them apart.
        templates: Prompt templates with one ``{}`` for the class name.
        logit_scale: Override the model's logit scale (e.g. ``1.0`` for plain cosines).
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Callable,
        class_names: Sequence[str],
        templates: Sequence[str] = DEFAULT_TEMPLATES,
        logit_scale: float | None = None,
    ) -> None:
        super().__init__(model, tokenizer)
        if isinstance(class_names, str) or len(class_names) == 0:
            raise ValueError("class_names must be a non-empty list of strings")
        if isinstance(templates, str) or len(templates) == 0:
            raise ValueError("templates must be a non-empty list of strings")
        for t in templates:
            if t.count("{}") != 1:
                raise ValueError(f"each template needs exactly one '{{}}', got {t!r}")
        self.class_names = list(class_names)
        _warn_duplicates(self.class_names)
        self.templates = list(templates)
        weights = []
        for name in self.class_names:
            emb = self._embed_texts([t.format(name) for t in self.templates])
            weights.append(F.normalize(emb.mean(0), dim=-1))
        self.register_buffer("text_embeddings", torch.stack(weights), persistent=False)
        scale = self.adapter.logit_scale if logit_scale is None else torch.tensor(logit_scale)
        self.register_buffer("scale", scale.float().reshape(()), persistent=False)
        bias = self.adapter.logit_bias
        self.register_buffer(
            "bias", None if bias is None else bias.float().reshape(()), persistent=False
        )

    def forward(self, images: Tensor) -> Tensor:
        logits = self.scale * self._image_features(images) @ self.text_embeddings.T
        return logits if self.bias is None else logits + self.bias


class ClipSimilarity(_ClipHead):
    """Retrieval target: ``forward(images) -> (B, n_texts)`` cosine similarities.

    Args:
        model: open_clip CLIP or ``transformers.CLIPModel``.
        tokenizer: See :class:`ClipClassifier`.
        texts: The captions to compare every image with.
    """

    def __init__(self, model: nn.Module, tokenizer: Callable, texts: str | Sequence[str]) -> None:
        super().__init__(model, tokenizer)
        self.texts = [texts] if isinstance(texts, str) else list(texts)
        self.register_buffer("text_embeddings", self._embed_texts(self.texts), persistent=False)

    def forward(self, images: Tensor) -> Tensor:
        return self._image_features(images) @ self.text_embeddings.T


class ZeroShotHead(ClipClassifier):
    """The testbed's zero-shot classifier: a :class:`~captum_clip.models.ClipClassifier`.

    Normalised images ``(B, 3, H, W)`` → ``(B, 6)`` logits ``100 * cos(image, class
    prompt)`` with the class prompts of :func:`captum_clip.testbed.shapes.class_prompts`
    (averaged over ``templates``). Being a ``ClipClassifier``, it is accepted by CCI,
    ``diagnose`` and every attribution method; it is the same as
    ``ClipClassifier(model, tokenizer, CLASS_NAMES, templates=["a photo of {}"],
    logit_scale=100.0)``.

    Args:
        model: A testbed (or any open_clip) ``CLIP`` model.
        tokenizer: Its tokenizer.
        templates: Prompt templates with a ``{pattern}`` field (default
            :data:`~captum_clip.testbed.shapes.PROMPT_TEMPLATE`).
    """

    def __init__(
        self, model: nn.Module, tokenizer: Callable, templates: tuple[str, ...] | None = None
    ) -> None:
        from captum_clip.testbed.shapes import CLASS_NAMES, PROMPT_TEMPLATE

        templates = (PROMPT_TEMPLATE,) if templates is None else tuple(templates)
        for t in templates:
            if not isinstance(t, str) or "{pattern}" not in t:
                raise ValueError(f"each template needs a '{{pattern}}' field, got {t!r}")
        super().__init__(
            model,
            tokenizer,
            list(CLASS_NAMES),
            templates=[t.format(pattern="{}") for t in templates],
            logit_scale=100.0,
        )

    @property
    def text_features(self) -> torch.Tensor:
        """The class text embeddings ``(6, D)`` (former name of ``text_embeddings``)."""
        return self.text_embeddings
