"""Inputs of the faithfulness benchmark: the testbed zoo, or a user's model and images.

* :func:`run_testbed` -- every available zoo variant (bundled ``default`` and
  ``shortcut``, plus trained variants found in the cache) on the same held-out scenes,
  with exact masks and causal foreground/background labels.
* :func:`run_folder` -- any model spec (open_clip name with a pretrained tag or a local
  checkpoint, ``hf:<folder>``, ``testbed:<variant>``) on an image folder, with optional
  class names and masks.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from captum_clip.benchmark.faithfulness import FaithfulnessResult, MetricSettings, evaluate
from captum_clip.benchmark.methods import MethodSettings

__all__ = ["available_variants", "load_folder", "run_folder", "run_testbed"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
#: Held-out scene seed (training draws its scenes from other seeds).
TESTBED_SEED = 20261123


def available_variants() -> list[str]:
    """Zoo variants whose weights exist (bundled, or trained into the cache)."""
    from captum_clip.testbed.zoo import list_variants, weights_path

    return [v for v in list_variants() if weights_path(v).is_file()]


def run_testbed(
    variants: Sequence[str] | None = None,
    n: int = 48,
    rho: float = 0.5,
    seed: int = TESTBED_SEED,
    *,
    methods: Sequence[str] | None = None,
    method_settings: MethodSettings | None = None,
    metric_settings: MetricSettings | None = None,
    chunk_size: int = 16,
    device: str | torch.device = "cpu",
    show_progress: bool = False,
) -> list[FaithfulnessResult]:
    """Benchmarks every (available) testbed variant on the same scenes.

    Args:
        variants: Zoo variants (default: :func:`available_variants`).
        n: Scenes per model.
        rho: Shortcut strength of the scenes (0.5: half on the class's own background,
            so background- and foreground-driven predictions both occur).
        seed: Scene seed.
        methods, method_settings, metric_settings, chunk_size, show_progress: See
            :func:`~captum_clip.benchmark.faithfulness.evaluate`.
        device: Where to run.

    Returns:
        One :class:`FaithfulnessResult` per variant (model name ``testbed:<variant>``);
        targets are the predicted classes, masks the exact object masks, causal labels
        from :func:`captum_clip.testbed.causal_labels`.
    """
    from captum_clip.models.heads import ClipClassifier
    from captum_clip.testbed import causal_labels, load_testbed, shapes

    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    variants = available_variants() if variants is None else list(variants)
    if not variants:
        raise ValueError("no trained testbed variant found (bundled weights are missing)")
    results = []
    for variant in variants:
        model, _, tokenizer = load_testbed(variant, device=device)
        clf = ClipClassifier(
            model,
            tokenizer,
            list(shapes.CLASS_NAMES),
            templates=(shapes.PROMPT_TEMPLATE.format(pattern="{}"),),
        )
        size = clf.image_size[0]
        scenes = shapes.generate_scenes(n, seed=seed, rho=rho, size=size)
        x = shapes.normalize(scenes.images).to(device)
        truth = causal_labels(clf, scenes, device=device, internal_batch_size=chunk_size)
        results.append(
            evaluate(
                clf,
                x,
                truth.target.to(device),
                scenes.masks.to(device),
                truth,
                methods=methods,
                method_settings=method_settings,
                metric_settings=metric_settings,
                chunk_size=chunk_size,
                model_name=f"testbed:{variant}",
                show_progress=show_progress,
            )
        )
    return results


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def load_folder(
    images_dir: str | Path,
    preprocess: Any,
    masks_dir: str | Path | None = None,
    class_names: Sequence[str] | None = None,
    max_images: int | None = None,
    labels_by: str = "name",
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, list[str], list[str]]:
    """Reads an image folder: flat, or one sub-folder per class (labels from the names).

    Args:
        images_dir: The folder.
        preprocess: The model's transform (PIL image -> ``(3, H, W)``).
        masks_dir: Optional masks with the same relative paths (any image suffix, white =
            object).
        class_names: Class names; default: the sub-folder names (required for a flat
            folder).
        max_images: Keep at most this many images (in sorted order).
        labels_by: ``"name"``: a sub-folder's label is the index of its name among the
            class names; ``"order"``: the ``i``-th sorted sub-folder is class ``i`` (ImageNet
            WordNet-id folders; needs one class name per sub-folder).

    Returns:
        ``(images (B, 3, H, W), labels (B,) or None, masks (B, H, W) or None, class_names,
        paths)``.
    """
    from captum_clip.masks import preprocess_mask
    from captum_clip.storage import read_image

    root = Path(images_dir)
    if not root.is_dir():
        raise ValueError(f"image folder not found: {str(root)!r}")
    subdirs = sorted(p.name for p in root.iterdir() if p.is_dir())
    if labels_by not in ("name", "order"):
        raise ValueError(f"labels_by must be 'name' or 'order', got {labels_by!r}")
    if labels_by == "order":
        if not subdirs or class_names is None or len(class_names) != len(subdirs):
            raise ValueError(
                f"labels_by='order' needs one class name per sub-folder of {str(root)!r} "
                f"({len(subdirs)} sub-folders, "
                f"{'no' if class_names is None else len(class_names)} names)"
            )
        names = list(class_names)
        entries = [(p, i) for i, d in enumerate(subdirs) for p in _image_files(root / d)]
    elif subdirs:
        names = list(class_names) if class_names else subdirs
        extra = [s for s in subdirs if s not in names]
        if extra:
            raise ValueError(f"sub-folders {extra} are not among the class names {names}")
        entries = [(p, names.index(d)) for d in subdirs for p in _image_files(root / d)]
    else:
        if not class_names:
            raise ValueError("a flat image folder needs class names (--classes)")
        names = list(class_names)
        entries = [(p, None) for p in _image_files(root)]
    if max_images is not None:
        entries = entries[:max_images]
    if not entries:
        raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {str(root)!r}")
    images, masks = [], []
    for path, _ in entries:
        images.append(preprocess(read_image(path)))
        if masks_dir is not None:
            rel = path.relative_to(root)
            candidates = [
                p
                for p in (Path(masks_dir) / rel.parent).glob(rel.stem + ".*")
                if p.suffix.lower() in IMAGE_SUFFIXES
            ]
            if not candidates:
                raise ValueError(f"no mask for {path} in {Path(masks_dir) / rel.parent}")
            masks.append(preprocess_mask(read_image(candidates[0], None), preprocess))
    labels = None if entries[0][1] is None else torch.tensor([lab for _, lab in entries])
    return (
        torch.stack(images),
        labels,
        torch.stack(masks) if masks else None,
        names,
        [str(p) for p, _ in entries],
    )


def run_folder(
    model: str,
    images_dir: str | Path,
    class_names: Sequence[str] | None = None,
    masks_dir: str | Path | None = None,
    *,
    templates: Sequence[str] | None = None,
    target: str = "pred",
    max_images: int | None = None,
    labels_by: str = "name",
    methods: Sequence[str] | None = None,
    method_settings: MethodSettings | None = None,
    metric_settings: MetricSettings | None = None,
    chunk_size: int = 8,
    device: str | torch.device = "cpu",
    show_progress: bool = False,
    tokenizer: Any = None,
) -> FaithfulnessResult:
    """Benchmarks any CLIP on an image folder (zero-shot classification over the classes).

    Args:
        model: Model spec: ``"ViT-B-32:openai"`` (open_clip name + pretrained tag),
            ``"ViT-B-32:/path/ckpt.pt"`` (local checkpoint), ``"ViT-B-32"`` (random
            weights), ``"hf:<folder>"`` or ``"testbed:<variant>"``.
        images_dir, class_names, masks_dir, max_images, labels_by: See :func:`load_folder`.
        templates: Prompt templates with one ``{}`` (default: the model's usual ones).
        target: ``"pred"`` (explain the predicted class) or ``"label"`` (the sub-folder's
            class; needs class sub-folders).
        methods, method_settings, metric_settings, chunk_size, device, show_progress: See
            :func:`~captum_clip.benchmark.faithfulness.evaluate`.
        tokenizer: Local tokenizer (a saved Hugging Face tokenizer folder, or a callable)
            used when the model's own one is a hub download (SigLIP family).
    """
    from captum_clip.models import resolve_model
    from captum_clip.models.heads import ClipClassifier
    from captum_clip.models.spec import default_templates

    if target not in ("pred", "label"):
        raise ValueError(f"target must be 'pred' or 'label', got {target!r}")
    entry = resolve_model(model, tokenizer=tokenizer).load(torch.device(device))
    x, labels, masks, names, _ = load_folder(
        images_dir, entry.preprocess, masks_dir, class_names, max_images, labels_by
    )
    clf = ClipClassifier(
        entry.model, entry.tokenizer, names, templates=templates or default_templates(model)
    )
    if target == "label" and labels is None:
        raise ValueError("target='label' needs one sub-folder per class")
    return evaluate(
        clf,
        x.to(device),
        labels.to(device) if target == "label" else None,
        masks.to(device) if masks is not None else None,
        methods=methods,
        method_settings=method_settings,
        metric_settings=metric_settings,
        chunk_size=chunk_size,
        model_name=model,
        show_progress=show_progress,
    )
