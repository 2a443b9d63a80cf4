"""``covar eval``: zero-shot accuracy and diagnosis per model and subset of a COVAR folder.

For each model every composite is classified zero-shot and diagnosed with its exact mask
(:func:`captum_clip.diagnosis.diagnose`): by region ablation (default; ``diagnosis=
"region_ablation"``: the object and the background hidden in turn) or by the paper's CCI
``fg_share`` (``diagnosis="cci"``), giving ``driver`` and, for errors, ``BG-Er`` /
``Fine-Er`` / ``FG-Er``. Output folder::

    <out>/results.parquet    one row per model x image (sorted by model, image_id)
    <out>/summary.parquet    one row per model x subset (transform), plus subset "all"
    <out>/covar_eval.png     accuracy and BG-Er per subset, BG-Er per model
    <out>/parts/             chunk files of an unfinished run (merged, then removed)

(``.csv`` instead of ``.parquet`` without pyarrow.) Rows already present (keyed by model +
image id) are never recomputed, so an interrupted run resumes where it stopped; every row
carries ``model_hash`` (:meth:`ModelEntry.identity`) and ``diagnosis``: stored rows of the
same spec with other weights are refused, not reused, and a folder holds one diagnosis (a
run with another one is refused). The bookkeeping is a
:class:`captum_clip.storage.ResumableTable`: several processes may write one output
folder at once (each writes its own chunk files; reads and merges hold a lock on the
folder), and every stored file is checked (columns, value ranges) before it is trusted.
Under ``torchrun`` each rank evaluates its batches
(:func:`~captum_clip.covar.distributed.shard`) and rank 0 merges after a barrier into the
same table one process writes.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from captum_clip._hooks import preserve_model_state
from captum_clip._validate import check_batch_size
from captum_clip.covar.build import load_manifest
from captum_clip.covar.distributed import DistContext, init_from_env, shard
from captum_clip.covar.summary import summarise_results
from captum_clip.diagnosis.batch import METHODS, PAPER_CCI, REGION_ABLATION
from captum_clip.models import DEFAULT_TEMPLATES, ModelEntry, resolve_model
from captum_clip.storage import ResumableTable, TableSchema, read_image, table_path, write_table

__all__ = ["EvalResult", "TESTBED_FINE_GROUPS", "evaluate", "summarise_results"]

TESTBED_FINE_GROUPS: tuple[tuple[str, ...], ...] = (
    ("horizontal stripes", "vertical stripes", "diagonal stripes"),
)
"""Close relatives among the testbed classes (a Fine-Er confuses two of them)."""
MASKS_TAG = "masks"
"""Stored ``diagnosis`` of rows whose masks came from a provider (``masks=``): ``"<diagnosis>+masks"``."""
UNDECIDED_WARNING = r"\d+ image\(s\) have an? (object mask covering no or every patch|empty)"
"""The per-batch warning of ``diagnose`` that :func:`evaluate` sums up once per model."""

RESULT_COLUMNS = (
    "model", "model_hash", "diagnosis", "image_id", "class_name", "label", "instance",
    "background", "transform", "family", "level", "pred", "pred_name", "correct", "fg_effect",
    "bg_effect", "fg_share", "iou", "mask_area", "driver", "similarity", "category",
)  # fmt: skip
RESULT_SCHEMA = TableSchema(
    columns=RESULT_COLUMNS,
    key=("model", "image_id"),
    ranges={"label": (0, float("inf")), "pred": (0, float("inf")), "fg_share": (0.0, 1.0),
            "iou": (0.0, 1.0), "mask_area": (0.0, 1.0), "similarity": (-1.001, 1.001)},
    choices={"diagnosis": frozenset(METHODS) | {f"{m}+{MASKS_TAG}" for m in METHODS},
             "correct": frozenset({True, False}),
             "driver": frozenset({"foreground", "background"}),
             "category": frozenset({"correct", "BG-Er", "Fine-Er", "FG-Er", "unknown"})},
    not_null=("diagnosis", "class_name", "label", "transform", "pred", "correct", "category"),
)  # fmt: skip
"""Checks applied to every stored results file before a resumed run trusts it."""


@dataclass
class EvalResult:
    """What :func:`evaluate` returns.

    Attributes:
        results: One row per model x image (:data:`RESULT_COLUMNS`).
        summary: One row per model x subset (see :func:`summarise_results`).
        computed: Rows this process computed in this call (0 when all were on disk).
        out_dir: The output folder.
    """

    results: pd.DataFrame
    summary: pd.DataFrame
    computed: int
    out_dir: Path


def _settings(root: Path) -> dict:
    path = root / "covar.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{str(root)!r} is not a COVAR folder (no covar.json); run covar build"
        )
    return json.loads(path.read_text())


def _check_diagnosis(stored: pd.DataFrame, out_dir: Path, diagnosis: str) -> None:
    """Refuses a folder whose stored rows were diagnosed another way."""
    other = sorted(set(stored["diagnosis"].dropna().astype(str)) - {diagnosis})
    if other:
        base, _, provider = other[0].partition("+")
        how = f"--diagnosis {base}" + (" --masks concepts" if provider else "")
        raise ValueError(
            f"{str(out_dir)!r} holds results diagnosed with {other[0]!r}, not with "
            f"{diagnosis!r} as asked; resume it with diagnosis {other[0]!r} ({how}), or use "
            "another --out folder"
        )


def _done_ids(table: ResumableTable, entry: ModelEntry, diagnosis: str) -> set[str]:
    """Image ids stored for this model; refuses rows of another diagnosis (any model) and
    rows of the same key with other weights."""
    stored = table.stored()
    _check_diagnosis(stored, table.out_dir, diagnosis)
    stored = stored[stored["model"] == entry.key]
    ident = entry.identity()
    hashes = set(stored["model_hash"].fillna("").astype(str)) - {""}
    if ident and hashes - {ident}:
        raise ValueError(
            f"{str(table.out_dir)!r} holds results of model {entry.key!r} computed with other "
            f"weights ({sorted(hashes - {ident})[0]}) than it has now ({ident}); use another "
            "--out folder, or move the old results away"
        )
    return set(stored["image_id"])


def _load_batch(
    root: Path, rows: pd.DataFrame, preprocess: Callable
) -> tuple[torch.Tensor, torch.Tensor]:
    images, masks = [], []
    for ipath, mpath in rows[["image_path", "mask_path"]].itertuples(index=False):
        images.append(preprocess(read_image(root / ipath)))
        masks.append(torch.from_numpy(np.asarray(read_image(root / mpath, "L")) > 127))
    x = torch.stack(images)
    m = torch.stack(masks)
    if tuple(m.shape[-2:]) != tuple(x.shape[-2:]):  # square composites: plain resize
        m = F.interpolate(m[:, None].float(), size=x.shape[-2:], mode="bilinear",
                          align_corners=False, antialias=True)[:, 0] >= 0.5  # fmt: skip
    return x, m


def _fine_groups(fine_groups: Any, class_names: list[str]) -> Any:
    if fine_groups is not None:
        return fine_groups
    from captum_clip.testbed.shapes import CLASS_NAMES

    if set(class_names) <= set(CLASS_NAMES):
        groups = [[c for c in g if c in class_names] for g in TESTBED_FINE_GROUPS]
        return [g for g in groups if len(g) > 1]
    return None  # decided by text-embedding cosine


def _method(classifier: Any, diagnosis: str, n_clusters: int, attribution: Any) -> Any:
    if diagnosis == REGION_ABLATION:
        return REGION_ABLATION
    if attribution is not None:
        return attribution(classifier) if isinstance(attribution, type) else attribution
    from captum_clip.attr.cci import CCI

    return CCI.default_for(classifier, n_clusters)


def _evaluate_model(
    entry: ModelEntry, root: Path, table: ResumableTable, batches: list[pd.DataFrame],
    ctx: DistContext, class_names: list[str], opts: dict,
) -> int:  # fmt: skip
    done = _done_ids(table, entry, opts["stored"])
    ctx.barrier()  # every rank has read what is done before anyone writes
    mine = [b for b in shard(len(batches), ctx.rank, ctx.world_size)
            if not batches[b]["image_id"].isin(done).all()]  # fmt: skip
    if not mine:
        return 0
    loaded_here = entry.model is None
    entry.load(ctx.device)
    try:
        with preserve_model_state(entry.model):
            entry.model.eval()
            return _run_batches(entry, root, table, batches, mine, ctx, class_names, opts)
    finally:
        if loaded_here:  # free models this call loaded; the user's own stay as they were
            entry.model = None


def _rows(
    key: str, ident: str, diagnosis: str, rows: pd.DataFrame, t: pd.DataFrame
) -> pd.DataFrame:
    get = lambda df, c, **kw: df[c].to_numpy(**kw)  # noqa: E731
    out = {"model": key, "model_hash": ident, "diagnosis": diagnosis}
    for col in ("image_id", "class_name"):
        out[col] = get(rows, col)
    out["label"] = get(rows, "class_index")
    for col in ("instance", "background", "transform", "family"):
        out[col] = get(rows, col)
    out["level"] = get(rows, "level", dtype=float)
    out["pred"], out["pred_name"] = get(t, "pred"), get(t, "pred_name")
    out["correct"] = get(t, "correct", dtype=bool)
    for col in ("fg_effect", "bg_effect"):  # region ablation only
        out[col] = get(t, col, dtype=float) if col in t else np.full(len(t), np.nan)
    for col in ("fg_share", "iou", "mask_area"):
        out[col] = get(t, col, dtype=float)
    out["driver"] = get(t, "driver")
    out["similarity"] = get(t, "similarity", dtype=float)
    out["category"] = get(t, "category")
    return pd.DataFrame(out, columns=list(RESULT_COLUMNS))


def _run_batches(entry, root, table, batches, mine, ctx, class_names, opts) -> int:
    from captum_clip.diagnosis import diagnose
    from captum_clip.models.heads import ClipClassifier

    templates = entry.templates or opts["templates"] or DEFAULT_TEMPLATES
    clf = ClipClassifier(entry.model, entry.tokenizer, class_names, templates=templates)
    method = _method(clf, opts["diagnosis"], opts["n_clusters"], opts["attribution"])
    fine_groups = _fine_groups(opts["fine_groups"], class_names)
    computed, undecided, pending = 0, 0, []
    bar = tqdm(total=sum(len(batches[b]) for b in mine), desc=f"covar eval {entry.key}",
               disable=not opts["show_progress"], position=ctx.rank)  # fmt: skip
    for i, b in enumerate(mine):
        rows = batches[b]
        x, m = _load_batch(root, rows, entry.preprocess)
        labels = torch.tensor(rows["class_index"].to_numpy(dtype=np.int64))
        with warnings.catch_warnings():  # counted over all batches and warned once below
            warnings.filterwarnings("ignore", message=UNDECIDED_WARNING)
            d = diagnose(clf, x.to(ctx.device),
                         m.to(ctx.device) if opts["masks"] is None else opts["masks"], labels,
                         class_names=class_names, method=method, tau=opts["tau"],
                         fine_groups=fine_groups,
                         fine_threshold=opts["fine_threshold"])  # fmt: skip
        undecided += int(d.table["driver"].isna().sum())
        pending.append(_rows(entry.key, entry.identity(), opts["stored"], rows, d.table))
        computed += len(rows)
        bar.update(len(rows))
        if len(pending) >= opts["chunk_batches"] or i == len(mine) - 1:
            first = mine[i - len(pending) + 1]
            table.write_part(pd.concat(pending, ignore_index=True), group=entry.key,
                             name=f"r{ctx.rank:03d}-b{first:07d}")  # fmt: skip
            pending = []
    bar.close()
    if undecided:
        what = ("an object mask covering no or every patch (or pixel)"
                if opts["diagnosis"] == REGION_ABLATION else "an empty object mask")  # fmt: skip
        warnings.warn(
            f"covar eval {entry.key}: {undecided} of {computed} image(s) have {what}; their "
            "driver and error category are left unknown",
            stacklevel=2,
        )
    return computed


def evaluate(
    root: str | os.PathLike,
    models: Sequence[str | ModelEntry],
    out_dir: str | os.PathLike,
    *,
    batch_size: int = 32,
    chunk_batches: int = 4,
    n_clusters: int = 5,
    tau: float = 0.5,
    fine_groups: Sequence[Any] | Mapping[Any, Any] | None = None,
    fine_threshold: float = 0.8,
    templates: Sequence[str] | None = None,
    diagnosis: str = REGION_ABLATION,
    attribution: Any = None,
    subsets: Sequence[str] | None = None,
    limit: int | None = None,
    device: str | torch.device | None = None,
    plot: bool = True,
    show_progress: bool = True,
    tokenizer: Any = None,
    masks: Any = None,
) -> EvalResult:
    """Evaluates models on a COVAR folder (resumable; sharded under ``torchrun``).

    Args:
        root: Folder written by :func:`~captum_clip.covar.build`.
        models: Specs (``"testbed"``, ``"testbed:shortcut"``, ``"ViT-B-32:openai"``,
            ``"ViT-B-32:/path/ckpt.pt"``, ``"hf:<folder>"``) or
            :class:`captum_clip.covar.ModelEntry` objects (moved to ``device``).
        out_dir: Output folder (created).
        batch_size: Images per forward/attribution batch (fixed batches: the same images
            are batched together whatever the number of processes).
        chunk_batches: Batches per chunk file (the unit of resuming).
        n_clusters: CCI's K (capped at the number of patches; ``diagnosis="cci"`` only).
        tau: ``fg_share`` threshold of a foreground-driven prediction (``diagnosis="cci"``
            only).
        fine_groups: Close class groups for Fine-Er (default: the stripe classes on
            testbed data, else text-embedding cosine above ``fine_threshold``).
        fine_threshold: Cosine threshold of close classes.
        templates: Prompt templates for models without their own (testbed models use
            ``"a photo of {}"``; others default to ``"a photo of a {}."``).
        diagnosis: How the driver is decided (``method=`` of
            :func:`~captum_clip.diagnosis.diagnose`): ``"region_ablation"`` (default; the
            object and the background hidden in turn, two extra rows per image) or
            ``"cci"`` (the paper's: ``fg_share >= tau`` of CCI's map, K + 1 masked rows per
            image). Stored with every row; an output folder holds one diagnosis, and
            resuming it with another is a ``ValueError``.
        masks: A :class:`~captum_clip.masks.MaskProvider` (e.g.
            :class:`~captum_clip.masks.ConceptMasks`) called with each batch and its true
            class names, instead of the folder's exact masks; the rows are stored with
            diagnosis ``"<diagnosis>+masks"`` (a folder holds one mask source too).
        attribution: With ``diagnosis="cci"``, an attribution method instead of CCI: an
            object with ``.attribute(x, target=t)``, a callable ``(x, target)``, or a class
            called with the classifier (its rows are stored as ``"cci"`` too).
        subsets: Only these transforms (default: all).
        limit: Only the first ``limit`` images (sorted by id) — for quick runs.
        device: ``None``/``"auto"``: CUDA per rank if available, else CPU.
        plot: Write ``covar_eval.png``.
        show_progress: tqdm progress bars.
        tokenizer: A folder with a saved Hugging Face tokenizer (or a callable) for the
            models whose own tokenizer is a hub download (SigLIP family; offline they need
            one); the other models keep theirs.

    Returns:
        :class:`EvalResult`.
    """
    for name, v in (
        ("batch_size", batch_size),
        ("chunk_batches", chunk_batches),
        ("n_clusters", n_clusters),
    ):
        check_batch_size(v, name, allow_none=False)
    check_batch_size(limit, "limit")
    if not isinstance(diagnosis, str) or diagnosis not in METHODS:
        raise ValueError(f"diagnosis must be one of {METHODS}, got {diagnosis!r}")
    if attribution is not None and diagnosis != PAPER_CCI:
        raise ValueError(
            f"attribution= replaces CCI's map and needs diagnosis={PAPER_CCI!r}; "
            f"diagnosis={diagnosis!r} computes no map"
        )
    if isinstance(models, (str, ModelEntry)) or len(models) == 0:
        raise ValueError("models must be a non-empty list of specs")
    root, out = Path(root), Path(out_dir)
    settings = _settings(root)
    class_names = list(settings["class_names"])
    order = [t[0] for t in settings["transforms"]]
    manifest = load_manifest(root).sort_values("image_id", kind="stable").reset_index(drop=True)
    if subsets is not None:
        unknown = sorted(set(subsets) - set(order))
        if unknown:
            raise ValueError(f"unknown subsets {unknown}; this folder has {order}")
        manifest = manifest[manifest["transform"].isin(subsets)].reset_index(drop=True)
    if limit is not None:
        manifest = manifest.iloc[:limit]
    if manifest.empty:
        raise ValueError(f"no images to evaluate in {str(root)!r}")
    entries = [resolve_model(m, tokenizer=tokenizer) for m in models]
    keys = [e.key for e in entries]
    if len(set(keys)) != len(keys):
        raise ValueError(f"model keys must be unique, got {keys}")
    batches = [manifest.iloc[s : s + batch_size] for s in range(0, len(manifest), batch_size)]
    ctx = init_from_env(device)
    if masks is not None and not callable(masks):
        raise TypeError(
            f"masks must be a MaskProvider (callable) or None, got {type(masks).__name__}"
        )
    stored = diagnosis if masks is None else f"{diagnosis}+{MASKS_TAG}"
    opts = dict(templates=templates, diagnosis=diagnosis, n_clusters=n_clusters, masks=masks,
                stored=stored,
                attribution=attribution, tau=tau, fine_groups=fine_groups,
                fine_threshold=fine_threshold, chunk_batches=chunk_batches,
                show_progress=show_progress)  # fmt: skip
    table = ResumableTable(out, RESULT_SCHEMA, stem="results")
    try:
        computed = 0
        for entry in entries:
            computed += _evaluate_model(entry, root, table, batches, ctx, class_names, opts)
        ctx.barrier()
        if ctx.is_main:
            with table.lock():  # another process's merge cannot slip between these writes
                results = table.merge()
                summary = summarise_results(
                    results, [s for s in order if s in set(results["transform"])]
                )
                write_table(summary, table_path(out, "summary"))
                if plot and not results.empty:
                    from captum_clip.covar.plots import plot_summary

                    plot_summary(summary, out / "covar_eval.png")
        ctx.barrier()
        if not ctx.is_main:
            with table.lock():
                results = table.stored()
                summary = summarise_results(
                    results, [s for s in order if s in set(results["transform"])]
                )
    finally:
        ctx.close()
    return EvalResult(results, summary, computed, out)
