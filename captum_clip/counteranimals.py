"""CounterAnimals: common vs counter (unusual) backgrounds, and how much of the drop is background.

CounterAnimals (Wang et al., "A Sober Look at the Robustness of CLIPs to Spurious
Features", NeurIPS 2024) photographs each animal class on its *common* background and on
an unusual *counter* one. The dataset's folder layout is::

    <root>/<ImageNet index> <class name>/common-<background>/*.jpg
    <root>/<ImageNet index> <class name>/counter-<background>/*.jpg

(``<root>`` is the folder holding the class folders, e.g. ``.../LAION-final``.)
:class:`CounterAnimals` yields ``(image, class index, group)``; :func:`evaluate` reports
accuracy per group and, with object masks, splits the accuracy drop into background-driven
(BG-Er), fine-grained (Fine-Er) and other foreground (FG-Er) errors with
:func:`captum_clip.diagnosis.diagnose` (region ablation by default, ``method="cci"`` for the
paper's CCI)::

    drop = acc_common - acc_counter = Σ_c (rate_c(counter) - rate_c(common))

where ``rate_c`` is the number of errors of category ``c`` per image of the group. The
background-driven part of the drop is the ``BG-Er`` term.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from captum_clip._validate import check_batch_size
from captum_clip.diagnosis import Diagnosis, diagnose

__all__ = ["GROUPS", "CounterAnimals", "CounterAnimalsResult", "evaluate"]

GROUPS: tuple[str, ...] = ("common", "counter")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
_CLASS_DIR = re.compile(r"^(\d+)\s+(.+)$")


@dataclass
class Sample:
    """One image of the dataset."""

    path: str
    imagenet_index: int
    class_name: str
    group: str
    background: str


class CounterAnimals(Dataset):
    """The CounterAnimals folder as a torch ``Dataset`` of ``(image, class index, group)``.

    Args:
        root: Folder with the ``"<ImageNet index> <name>"`` class folders.
        transform: Applied to the PIL image (e.g. the model's preprocess).
        groups: Which groups to load (``"common"``, ``"counter"`` or both).
        label_space: ``"imagenet"``: the class index is the ImageNet-1k index from the
            folder name (use a 1000-class classifier); ``"dataset"``: ``0..n_classes-1`` in
            ascending ImageNet-index order, matching :attr:`class_names`.

    Attributes:
        samples: One :class:`Sample` per image (sorted by class, group, file name).
        classes: ``(imagenet_index, name)`` per class, ascending.
        class_names: Names in ``label_space="dataset"`` order.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        transform: Callable | None = None,
        groups: Sequence[str] = GROUPS,
        label_space: str = "dataset",
    ) -> None:
        root = Path(root)
        if not root.is_dir():
            raise ValueError(f"CounterAnimals root folder not found: {str(root)!r}")
        groups = (groups,) if isinstance(groups, str) else tuple(groups)
        bad = [g for g in groups if g not in GROUPS]
        if bad or not groups:
            raise ValueError(f"groups must be a non-empty subset of {GROUPS}, got {groups!r}")
        if label_space not in ("imagenet", "dataset"):
            raise ValueError(f"label_space must be 'imagenet' or 'dataset', got {label_space!r}")
        if transform is not None and not callable(transform):
            raise TypeError(f"transform must be callable, got {type(transform).__name__}")
        self.root, self.transform, self.groups, self.label_space = (
            root,
            transform,
            groups,
            label_space,
        )
        classes: dict[int, str] = {}
        samples: list[Sample] = []
        found = []
        for d in root.iterdir():
            match = _CLASS_DIR.match(d.name) if d.is_dir() else None
            if match is not None:
                found.append((int(match.group(1)), match.group(2).strip(), d))
        for idx, name, d in sorted(found, key=lambda t: (t[0], t[1])):
            if idx in classes:
                raise ValueError(f"two class folders with ImageNet index {idx} in {str(root)!r}")
            classes[idx] = name
            for sub in sorted(d.iterdir()):
                group, _, background = sub.name.partition("-")
                if not sub.is_dir() or group not in groups:
                    continue
                for f in sorted(sub.iterdir()):
                    if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES:
                        samples.append(Sample(str(f), idx, name, group, background))
        if not classes:
            hint = (
                " (is the class folder one level down, e.g. LAION-final/?)"
                if any(p.is_dir() for p in root.iterdir())
                else ""
            )
            raise ValueError(f"no '<ImageNet index> <name>' class folders in {str(root)!r}{hint}")
        if not samples:
            raise ValueError(f"no images in the {groups} folders under {str(root)!r}")
        self.classes = sorted(classes.items())
        self.class_names = [name for _, name in self.classes]
        self._dataset_index = {idx: i for i, (idx, _) in enumerate(self.classes)}
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def label(self, i: int) -> int:
        """Class index of sample ``i`` in the chosen ``label_space``."""
        s = self.samples[i]
        return (
            s.imagenet_index
            if self.label_space == "imagenet"
            else self._dataset_index[s.imagenet_index]
        )

    @property
    def targets(self) -> list[int]:
        """Class index of every sample."""
        return [self.label(i) for i in range(len(self))]

    def __getitem__(self, i: int) -> tuple[Any, int, str]:
        from captum_clip.storage import read_image

        s = self.samples[i]
        image = read_image(s.path)
        if self.transform is not None:
            image = self.transform(image)
        return image, self.label(i), s.group

    def frame(self) -> pd.DataFrame:
        """The sample list as a DataFrame (path, class, group, background, label)."""
        df = pd.DataFrame([vars(s) for s in self.samples])
        df["label"] = self.targets
        return df


@dataclass
class CounterAnimalsResult:
    """What :func:`evaluate` returns.

    Attributes:
        table: One row per image: path, group, background, label, pred, correct and, with
            masks, the diagnosis columns (``fg_share``, ``driver``, ``category``, ...).
        accuracy: Accuracy per group (``{"common": ..., "counter": ...}``).
        drop: ``accuracy["common"] - accuracy["counter"]``.
        split: With masks: the drop split by error category, keys ``bg``, ``fine``,
            ``fg``, ``unknown`` (per-image error-rate differences; they sum to ``drop``)
            and ``bg_share`` (= ``bg / drop``, ``NaN`` when there is no drop).
        diagnosis: The :class:`~captum_clip.diagnosis.Diagnosis` (with masks).
    """

    table: pd.DataFrame
    accuracy: dict[str, float]
    drop: float
    split: dict[str, float] = field(default_factory=dict)
    diagnosis: Diagnosis | None = None

    def summary(self) -> pd.DataFrame:
        """Diagnosis counts and rates per group (accuracy only without masks)."""
        if self.diagnosis is not None:
            return self.diagnosis.summary(by="group")
        return self.table.groupby("group")["correct"].agg(n="size", accuracy="mean")


def _collate(batch: list) -> tuple[Tensor, Tensor, list[str]]:
    images, labels, groups = zip(*batch)
    if not all(isinstance(x, Tensor) for x in images):
        raise TypeError("dataset images must be tensors: give the dataset a transform (preprocess)")
    return torch.stack(images), torch.tensor(labels), list(groups)


def evaluate(
    forward_func: Callable[[Tensor], Tensor],
    dataset: CounterAnimals,
    masks: Callable | None = None,
    *,
    batch_size: int = 32,
    device: str | torch.device | None = None,
    method: Any = None,
    tau: float = 0.5,
    fine_groups: Any = None,
    fine_threshold: float = 0.8,
    text_embeddings: Tensor | None = None,
    show_progress: bool = False,
) -> CounterAnimalsResult:
    """Accuracy on common vs counter backgrounds, and the diagnosis split of the drop.

    Args:
        forward_func: Images -> ``(B, n_classes)`` scores in the dataset's label space
            (a ``ClipClassifier`` over ``dataset.class_names`` for ``label_space="dataset"``).
        dataset: A :class:`CounterAnimals` whose ``transform`` gives the model's inputs.
        masks: A :class:`~captum_clip.masks.MaskProvider` (called with the true class
            names); ``None`` reports accuracy only.
        batch_size: Images per batch.
        device: Where the images go (default: the images stay on the CPU).
        method: As in :func:`~captum_clip.diagnosis.diagnose`: ``None`` /
            ``"region_ablation"`` (default: the object and the background hidden in turn),
            ``"cci"`` (the paper's CCI ``fg_share >= tau``), or an attribution method.
        tau, fine_groups, fine_threshold, text_embeddings: As in
            :func:`~captum_clip.diagnosis.diagnose`.
        show_progress: tqdm bar over the batches.

    Returns:
        :class:`CounterAnimalsResult`.
    """
    if not isinstance(dataset, CounterAnimals):
        raise TypeError(f"dataset must be a CounterAnimals, got {type(dataset).__name__}")
    check_batch_size(batch_size, "batch_size", allow_none=False)
    if masks is not None and not callable(masks):
        raise TypeError(f"masks must be a MaskProvider (callable), got {type(masks).__name__}")
    names = getattr(forward_func, "class_names", None)
    if names is None and dataset.label_space == "dataset":
        names = dataset.class_names
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=_collate)
    tables, mode = [], None
    for images, labels, _ in tqdm(loader, desc="CounterAnimals", disable=not show_progress):
        images = images.to(device) if device is not None else images
        if masks is None:
            with torch.no_grad():
                out = forward_func(images)
            pred = out.argmax(1).cpu()
            tables.append(
                pd.DataFrame(
                    {
                        "label": labels.numpy(),
                        "pred": pred.numpy(),
                        "correct": (pred == labels).numpy(),
                    }
                )
            )
        else:
            d = diagnose(
                forward_func,
                images,
                masks,
                labels,
                class_names=names,
                method=method,
                tau=tau,
                fine_groups=fine_groups,
                fine_threshold=fine_threshold,
                text_embeddings=text_embeddings,
            )
            tables.append(d.table)
            mode = d.mode
    table = pd.concat(tables, ignore_index=True)
    info = dataset.frame()[["path", "group", "background"]]
    table = pd.concat([info.reset_index(drop=True), table], axis=1)
    correct = table["correct"].astype(bool)
    accuracy = {g: float(correct[table["group"] == g].mean()) for g in dataset.groups}
    drop = accuracy["common"] - accuracy["counter"] if len(dataset.groups) == 2 else float("nan")
    diagnosis = split = None
    if masks is not None:
        diagnosis = Diagnosis(table, float(tau), float(fine_threshold), names, mode)
        split = {}
        if len(dataset.groups) == 2:
            per = {g: table[table["group"] == g]["category"] for g in GROUPS}
            for key, cat in (
                ("bg", "BG-Er"),
                ("fine", "Fine-Er"),
                ("fg", "FG-Er"),
                ("unknown", "unknown"),
            ):
                split[key] = float((per["counter"] == cat).mean() - (per["common"] == cat).mean())
            split["bg_share"] = split["bg"] / drop if drop != 0 else float("nan")
    return CounterAnimalsResult(table, accuracy, drop, split or {}, diagnosis)
