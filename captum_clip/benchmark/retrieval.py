"""Retrieval faithfulness: deletion/insertion curves of IR@k and TR@k over a caption gallery.

The protocol of Grad-ECLIP and CCI on MS-COCO: every image of the gallery is explained
against its own captions, all images are perturbed by the same fraction at each step
(each by its own map), re-encoded, and recall@k is computed over the whole gallery against
the fixed caption embeddings -- image retrieval (captions query the images, IR@k) and text
retrieval (images query the captions, TR@k). A faithful map makes deletion recall drop
fast (lower AUC is better) and insertion recall rise fast (higher is better).

What a method explains: :class:`CaptionSetSimilarity`, a
:class:`~captum_clip.models.ClipSimilarity` whose output ``j`` is the cosine of an image
with image ``j``'s caption set (the renormalised mean of its captions' embeddings, as
``ClipClassifier`` ensembles prompt templates); image ``i`` is explained at target ``i``.

:func:`evaluate_retrieval` runs batch by batch on the device and writes one part file per
(method, batch) (:class:`captum_clip.storage.TensorParts`): a killed run resumes without
recomputing or losing rows; under ``torchrun`` batch ``b`` belongs to rank
``b % world_size`` and rank 0 scores the gallery when every rank is done.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from captum_clip._hooks import preserve_model_state
from captum_clip._validate import check_batch_size
from captum_clip.benchmark.methods import (
    ALIASES,
    METHODS,
    ForwardCounter,
    MethodSettings,
    build_method,
)
from captum_clip.benchmark.retrieval_score import score_parts
from captum_clip.covar.distributed import DistContext, init_from_env, shard
from captum_clip.datasets import CaptionGallery
from captum_clip.metrics import GRAD_ECLIP, RISE, Protocol
from captum_clip.metrics.retrieval import perturbed_embeddings
from captum_clip.models.adapter import ClipAdapter
from captum_clip.models.heads import ClipSimilarity, check_context_length
from captum_clip.storage import (
    TensorParts,
    identity_hash,
    state_dict_digest,
    text_hash,
    write_table,
)

__all__ = [
    "DEFAULT_METHODS",
    "PROTOCOLS",
    "CaptionSetSimilarity",
    "RetrievalResult",
    "RetrievalSettings",
    "evaluate_retrieval",
]

#: Keys of a retrieval part (one per method and batch), and its tensors with a row per image.
PART_KEYS = (
    "method", "batch", "image_index", "image_ids", "caption_hash", "fractions", "clean",
    "deletion", "insertion", "seconds", "forwards", "autograd",
)  # fmt: skip
ROW_TENSORS = ("clean", "deletion", "insertion")

#: Methods run by default (gradient and attention methods; the perturbation methods of
#: the classification benchmark cost hundreds of forwards per image -- ask for them).
DEFAULT_METHODS = (
    "CCI",
    "GradECLIP",
    "MaskCLIP",
    "vit_gradcam",
    "GradientRollout",
    "Saliency",
    "InputXGradient",
    "IntegratedGradients",
)
#: ``--protocol`` names: Grad-ECLIP/CCI's preset, RISE, or none (the explicit settings).
PROTOCOLS: dict[str, Protocol | None] = {"grad-eclip": GRAD_ECLIP, "rise": RISE, "none": None}


@dataclass(frozen=True)
class RetrievalSettings:
    """Perturbation and scoring settings (part of every part file's identity).

    Attributes:
        protocol: A key of :data:`PROTOCOLS` (default ``"grad-eclip"``: 100 steps up to 50 %
            of the pixels scored every 10, uniform noise deletion, black insertion).
        n_steps, max_fraction, deletion_baseline, insertion_baseline, unit: Override the
            protocol (``None``: the protocol's value; without a protocol 100 steps over all
            pixels, ``"zeros"`` deletion, ``"blur"`` insertion, pixels).
        ks: Recall cut-offs.
        seed: Seed of tie orders and noise baselines (batch ``b`` uses ``seed + b``) and of
            sampling methods.
        max_examples_per_batch: Perturbed images per encoder call.
    """

    protocol: str = "grad-eclip"
    n_steps: int | None = None
    max_fraction: float | None = None
    deletion_baseline: str | None = None
    insertion_baseline: str | None = None
    unit: str | None = None
    ks: tuple[int, ...] = (1, 5, 10)
    seed: int = 0
    max_examples_per_batch: int = 256

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {list(PROTOCOLS)}, got {self.protocol!r}")
        ks = self.ks
        if not ks or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in ks):
            raise ValueError(f"ks must be a non-empty tuple of positive ints, got {ks!r}")

    def plan_kwargs(self, mode: str, patch_size: int) -> dict[str, Any]:
        """Keyword arguments of :func:`~captum_clip.metrics.retrieval.perturbed_embeddings`."""
        base = self.deletion_baseline if mode == "deletion" else self.insertion_baseline
        kw: dict[str, Any] = dict(protocol=PROTOCOLS[self.protocol], patch_size=patch_size)
        for key, value in (("n_steps", self.n_steps), ("max_fraction", self.max_fraction),
                           ("baselines", base), ("unit", self.unit)):  # fmt: skip
            if value is not None:
                kw[key] = value
        return kw

    @property
    def auc_range(self) -> float:
        """The ``max_fraction`` the AUCs are normalised by."""
        if self.max_fraction is not None:
            return float(self.max_fraction)
        proto = PROTOCOLS[self.protocol]
        return float(proto.max_fraction) if proto is not None else 1.0


class CaptionSetSimilarity(ClipSimilarity):
    """``forward(images) -> (B, N)``: cosine of each image with every image's caption set.

    Args:
        model: open_clip CLIP or ``transformers.CLIPModel``.
        tokenizer: Its tokenizer.
        gallery: The :class:`~captum_clip.datasets.CaptionGallery`.

    Attributes:
        text_embeddings: ``(N, D)`` renormalised mean of each image's caption embeddings
            (what MaskCLIP and the targets use).
        caption_embeddings: ``(T, D)`` normalised embeddings of every caption (the
            retrieval queries / candidates).
    """

    def __init__(self, model: nn.Module, tokenizer: Callable, gallery: CaptionGallery) -> None:
        super().__init__(model, tokenizer, gallery.captions)
        caps = self.text_embeddings
        owner = gallery.text_to_image.to(caps.device)
        sums = torch.zeros(len(gallery), caps.shape[1], device=caps.device).index_add_(
            0, owner, caps
        )
        self.register_buffer("caption_embeddings", caps, persistent=False)
        self.text_embeddings = F.normalize(sums, dim=-1)


@dataclass
class RetrievalResult:
    """What :func:`evaluate_retrieval` returns.

    Attributes:
        summary: One row per method x mode x direction x k: ``auc``, ``start`` (recall at
            the first point), ``end`` (at the last point).
        curves: One row per method x mode x direction x k x step: ``fraction``, ``recall``.
        clean: One row per direction x k: recall of the unperturbed gallery.
        cost: One row per method: ``seconds_per_image``, ``forwards_per_image``,
            ``autograd_forwards_per_image`` of the attribution calls.
        skipped: ``{method: reason}`` for methods that cannot run on this model.
        computed: (method, image) pairs this process computed in this call.
        n_images, n_captions: Gallery size.
        out_dir: The output folder.
        device: The device this process ran on.
    """

    summary: pd.DataFrame
    curves: pd.DataFrame
    clean: pd.DataFrame
    cost: pd.DataFrame
    skipped: dict[str, str] = field(default_factory=dict)
    computed: int = 0
    n_images: int = 0
    n_captions: int = 0
    out_dir: Path | None = None
    device: str = "cpu"


def _check_args(gallery: Any, batch_size: Any, methods: Any) -> list[str]:
    if not isinstance(gallery, CaptionGallery):
        raise TypeError(
            f"gallery must be a CaptionGallery (load_captions), got {type(gallery).__name__}"
        )
    check_batch_size(batch_size, "batch_size", allow_none=False)
    names = [ALIASES.get(n, n) for n in (DEFAULT_METHODS if methods is None else methods)]
    unknown = [n for n in names if n not in METHODS]
    if unknown or not names:
        raise ValueError(f"unknown methods {unknown}; known methods: {list(METHODS)}")
    return names


def _run_method(
    name: str, fn: Callable, sim: CaptionSetSimilarity, gallery: CaptionGallery, preprocess: Callable,
    batches: list[list[int]], ctx: DistContext, parts: TensorParts,
    settings: RetrievalSettings, opts: dict,
) -> int:  # fmt: skip
    """Attributes and perturbs this rank's unfinished batches of one method; parts on disk."""
    cap_hash = [text_hash(gallery.captions_of(i)) for i in range(len(gallery))]
    todo = []
    for b in shard(len(batches), ctx.rank, ctx.world_size):
        if parts.exists(name, b):
            part = parts.read(name, b)
            have = dict(zip(part["image_index"], part["caption_hash"]))
            if all(have.get(i) == cap_hash[i] for i in batches[b]):
                continue
        todo.append(b)
    bar = tqdm(total=sum(len(batches[b]) for b in todo), desc=f"retrieval {name}",
               disable=not opts["show_progress"], position=ctx.rank)  # fmt: skip
    grid = sim.vision.grid_size
    computed = 0
    for b in todo:
        idx = batches[b]
        x = gallery.load_images(idx, preprocess).to(ctx.device)
        target = torch.tensor(idx, device=ctx.device)
        with ForwardCounter(sim) as count, warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*required_grads has been set")
            torch.manual_seed(settings.seed + b)
            t0 = time.perf_counter()
            maps = fn(x, target).detach().float().sum(dim=1, keepdim=True)
            seconds = time.perf_counter() - t0
        maps = torch.nan_to_num(maps, nan=0.0, posinf=0.0, neginf=0.0)
        patch = x.shape[-1] // grid[1] if grid else 16
        with torch.no_grad():
            clean = F.normalize(sim.adapter.encode_image(x).float(), dim=-1)
        part: dict[str, Any] = dict(
            method=name, batch=b, image_index=list(idx),
            image_ids=[str(gallery.image_ids[i]) for i in idx],
            caption_hash=[cap_hash[i] for i in idx], clean=clean.cpu(), seconds=seconds,
            forwards=count.images, autograd=count.autograd,
        )  # fmt: skip
        for mode in ("deletion", "insertion"):
            fr, emb = perturbed_embeddings(
                sim.adapter.encode_image, x, maps, mode=mode, seed=settings.seed + b,
                max_examples_per_batch=settings.max_examples_per_batch,
                **settings.plan_kwargs(mode, patch),
            )  # fmt: skip
            part[mode], part["fractions"] = emb.cpu(), fr.cpu()
        path = parts.write(name, b, part)
        computed += len(idx)
        bar.update(len(idx))
        if opts["on_part"] is not None:
            opts["on_part"](path)
    bar.close()
    return computed


def evaluate_retrieval(
    model: Any,
    gallery: CaptionGallery,
    out_dir: str | os.PathLike,
    *,
    methods: Sequence[str] | None = None,
    method_settings: MethodSettings | None = None,
    settings: RetrievalSettings | None = None,
    batch_size: int = 16,
    device: str | torch.device | None = None,
    show_progress: bool = True,
    on_part: Callable[[Path], None] | None = None,
) -> RetrievalResult:
    """Retrieval deletion/insertion of every method on a caption gallery (resumable).

    Args:
        model: A model spec (``"ViT-B-32:openai"``, ``"ViT-B-32:/path/ckpt.pt"``,
            ``"testbed:shortcut"``, ``"hf:<folder>"``) or a
            :class:`captum_clip.covar.ModelEntry`.
        gallery: From :func:`captum_clip.datasets.load_captions`.
        out_dir: Output folder: ``parts/<method>/b<batch>.pt`` (kept; the unit of
            resuming), ``summary.csv``, ``curves.csv``, ``clean.csv``, ``cost.csv``.
        methods: Names from :data:`~captum_clip.benchmark.methods.METHODS` or registered
            names (:mod:`captum_clip.methods`; default :data:`DEFAULT_METHODS`).
        method_settings: See :class:`~captum_clip.benchmark.methods.MethodSettings`.
        settings: See :class:`RetrievalSettings`.
        batch_size: Images per attribution call (fixed batches, whatever the number of
            processes; part of the identity because sampling seeds follow the batches).
        device: ``None``/``"auto"``: CUDA (per rank) when available, else CPU.
        show_progress: tqdm bars.
        on_part: Called with the path of every part written (progress hooks, tests).

    Returns:
        :class:`RetrievalResult` (every rank gets the tables rank 0 wrote).

    Raises:
        ValueError: A caption longer than the model's context length (named), bad
            arguments, unreadable images (named), parts of another model in ``out_dir``.
    """
    from captum_clip.models import resolve_model

    names = _check_args(gallery, batch_size, methods)
    settings = settings or RetrievalSettings()
    ms = method_settings or MethodSettings()
    entry = resolve_model(model)
    out = Path(out_dir)
    ctx = init_from_env(device)
    try:
        entry.load(ctx.device)
        with preserve_model_state(entry.model):
            entry.model.eval()
            context = getattr(ClipAdapter(entry.model).text, "context_length", None)
            if context is not None:
                try:
                    check_context_length(entry.tokenizer, gallery.captions, int(context))
                except ValueError as err:
                    raise ValueError(f"{str(gallery.source)!r}: {err}") from None
            sim = CaptionSetSimilarity(entry.model, entry.tokenizer, gallery)
            scoring = {k: v for k, v in asdict(settings).items() if k != "ks"}
            identity = identity_hash(dict(
                model=state_dict_digest(entry.model), settings=scoring,
                method_settings=asdict(ms), batch_size=batch_size,
            ))  # fmt: skip
            order = list(range(len(gallery)))
            batches = [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
            parts = TensorParts(out / "parts", identity, PART_KEYS, "image_index", ROW_TENSORS)
            built, skipped, computed = {}, {}, 0
            for name in names:
                try:
                    built[name] = build_method(name, sim, ms)
                except (ValueError, TypeError, ImportError) as err:
                    skipped[name] = str(err)
            if not built:
                raise ValueError(f"no method can run on this model: {skipped}")
            opts = dict(show_progress=show_progress, on_part=on_part)
            for name, fn in built.items():
                computed += _run_method(name, fn, sim, gallery, entry.preprocess, batches, ctx,
                                        parts, settings, opts)  # fmt: skip
            ctx.barrier()
            if ctx.is_main:
                tables = score_parts(list(built), gallery, sim.caption_embeddings, batches, parts,
                                     settings.ks, settings.auc_range, ctx.device)  # fmt: skip
                for stem, table in zip(("summary", "curves", "clean", "cost"), tables):
                    write_table(table, out / f"{stem}.csv", index=stem == "cost")
            ctx.barrier()
    finally:
        ctx.close()
    summary, curves, clean = (pd.read_csv(out / f"{s}.csv") for s in ("summary", "curves", "clean"))
    cost = pd.read_csv(out / "cost.csv", index_col="method")
    return RetrievalResult(
        summary, curves, clean, cost, skipped, computed, len(gallery), len(gallery.captions),
        out, str(ctx.device),
    )  # fmt: skip
