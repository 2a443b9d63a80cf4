"""Can the explanation be trusted? Randomisation, stability and complexity, one value per example.

Quantus' categories that the faithfulness and localisation metrics do not cover, as plain
functions (Captum's metric style; robustness is Captum's own
:func:`captum.metrics.sensitivity_max`, which every registered method supports):

- :func:`model_randomisation` -- cascading model-parameter randomisation (MPRT; Adebayo
  et al., NeurIPS 2018): the tower's blocks are re-initialised top block first, one more
  at a time, on a copy of the model; the rank correlation of each map with the original
  one should fall (an explanation that ignores the model stays high: the edge-detector
  critique);
- :func:`random_logit` -- similarity of the map of the target with the map of a random
  other class (Sixt et al., ICML 2020): it should be low;
- :func:`seed_stability` -- rank correlation between maps of one method built with
  different seeds (stochastic methods: CCI's k-means);
- :func:`sparseness` (Gini index, Chalasani et al., ICML 2020) and :func:`complexity`
  (entropy of the attribution shares, Bhatt et al., IJCAI 2020).

Each agrees with Quantus 0.6 on the same inputs (``tests/test_metrics_trust.py``);
the settings that do so are the defaults here (``abs`` / ``normalise`` as in Quantus).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from captum_clip._validate import check_target

__all__ = [
    "complexity",
    "edge_map",
    "model_randomisation",
    "random_logit",
    "rank_correlation",
    "seed_stability",
    "sparseness",
]

SIMILARITIES = ("spearman", "ssim")


def _flat(attributions: Any, name: str = "attributions") -> Tensor:
    if isinstance(attributions, tuple) and len(attributions) == 1:
        attributions = attributions[0]
    if not isinstance(attributions, Tensor) or attributions.ndim < 2:
        got = tuple(attributions.shape) if isinstance(attributions, Tensor) else type(attributions)
        raise ValueError(f"{name} must be a (B, ...) tensor with B >= 1 examples, got {got}")
    return attributions.detach().double().reshape(attributions.shape[0], -1).cpu()


def _normalise(a: Tensor, use_abs: bool) -> Tensor:
    """Quantus' preprocessing: divide by the largest |value| per example (all-zero rows
    kept), then ``abs``."""
    peak = a.abs().amax(1, keepdim=True)
    a = torch.where(peak > 0, a / torch.where(peak > 0, peak, 1.0), a)
    return a.abs() if use_abs else a


def sparseness(attributions: Any) -> Tensor:
    """Gini index of ``|attributions|`` per example, in ``[0, 1]`` (1: one feature holds
    everything). As Quantus ``Sparseness()`` (``abs``, max-normalised, ``+1e-7``)."""
    a = _normalise(_flat(attributions), True) + 1e-7
    a, _ = a.sort(1)
    n = a.shape[1]
    rank = torch.arange(1, n + 1, dtype=a.dtype)
    return ((2 * rank - n - 1) * a).sum(1) / (n * a.sum(1))


def complexity(attributions: Any) -> Tensor:
    """Entropy of the shares ``|a_i| / sum |a|`` per example (low: few features explain).
    As Quantus ``Complexity()``."""
    a = _normalise(_flat(attributions), True)
    a = a / a.sum(1, keepdim=True).clamp_min(1e-300)
    return -(a * torch.log(a + 1e-12)).sum(1)


def rank_correlation(a: Any, b: Any, use_abs: bool = False) -> Tensor:
    """Spearman correlation per example of two ``(B, ...)`` attributions (average ranks
    for ties, as ``scipy.stats.spearmanr``). NaN where a map is constant."""
    from scipy.stats import rankdata

    x, y = _flat(a, "a"), _flat(b, "b")
    if x.shape != y.shape:
        raise ValueError(
            f"a and b must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    if use_abs:
        x, y = x.abs(), y.abs()
    rx = torch.from_numpy(rankdata(x.numpy(), axis=1))
    ry = torch.from_numpy(rankdata(y.numpy(), axis=1))
    rx, ry = rx - rx.mean(1, keepdim=True), ry - ry.mean(1, keepdim=True)
    return (rx * ry).sum(1) / (rx.norm(dim=1) * ry.norm(dim=1))


def _ssim(a: Tensor, b: Tensor) -> Tensor:
    """Quantus' ``ssim`` of two flattened maps per example (skimage, data range of both)."""
    from skimage.metrics import structural_similarity

    out = []
    for x, y in zip(a.numpy(), b.numpy()):
        both = np.concatenate([x, y])
        rng = float(np.abs(both.max() - both.min()))
        out.append(structural_similarity(x, y, data_range=rng))
    return torch.tensor(out, dtype=torch.float64)


def _similarity(name: str, a: Tensor, b: Tensor) -> Tensor:
    if name not in SIMILARITIES:
        raise ValueError(f"similarity must be one of {SIMILARITIES}, got {name!r}")
    return rank_correlation(a, b) if name == "spearman" else _ssim(a, b)


def random_logit(
    explain: Callable[[Tensor, Tensor], Tensor],
    inputs: Tensor,
    target: Any,
    n_classes: int,
    attributions: Tensor | None = None,
    similarity: str = "ssim",
    seed: int = 42,
    use_abs: bool = False,
) -> Tensor:
    """Similarity of each example's map for ``target`` with its map for a random other
    class (Quantus ``RandomLogit``: the same draw for the same ``seed``; maps divided by
    their largest |value|). Low is good: the map depends on the class.

    Args:
        explain: ``(inputs, target) -> attributions`` (e.g. ``method.attribute``).
        inputs: ``(B, ...)`` inputs.
        target: The explained classes (int, list or tensor).
        n_classes: Outputs of the model (the other class is drawn among the rest).
        attributions: The maps of ``target`` if already computed.
        similarity: ``"ssim"`` (Quantus' default) or ``"spearman"``.
        seed: Seed of the draw (numpy's legacy generator, as Quantus).
        use_abs: Compare ``|maps|``.
    """
    b = inputs.shape[0]
    t = check_target(target, b, n_classes)
    if n_classes < 2:
        raise ValueError(f"random_logit needs n_classes >= 2, got {n_classes}")
    rng = np.random.RandomState(seed)
    pick = rng.randint(0, n_classes - 1, b)
    others = [[c for c in range(n_classes) if c != int(t[i])] for i in range(b)]
    off = torch.tensor([others[i][pick[i]] for i in range(b)])
    a = explain(inputs, t) if attributions is None else attributions
    a_off = explain(inputs, off)
    x, y = _normalise(_flat(a), use_abs), _normalise(_flat(a_off), use_abs)
    return _similarity(similarity, x, y)


def edge_map(inputs: Tensor, target: Any = None) -> Tensor:
    """A map that ignores the model: the Sobel gradient magnitude of the grey image,
    ``(B, 3, H, W)`` like the inputs (``target`` unused). The negative control of
    :func:`model_randomisation`: it must stay correlated with itself whatever the weights
    (Adebayo et al.: an edge detector passes visual checks)."""
    import torch.nn.functional as F

    if not isinstance(inputs, Tensor) or inputs.ndim != 4:
        got = tuple(inputs.shape) if isinstance(inputs, Tensor) else type(inputs).__name__
        raise ValueError(f"inputs must be a (B, C, H, W) tensor, got {got}")
    grey = inputs.detach().float().mean(1, keepdim=True)
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], device=grey.device)
    k = torch.stack([kx, kx.T])[:, None]
    g = F.conv2d(F.pad(grey, (1, 1, 1, 1), mode="replicate"), k)
    mag = g.pow(2).sum(1, keepdim=True).sqrt()
    return mag.expand_as(inputs).to(inputs.dtype).contiguous()


def _block_layers(model: nn.Module, layers: Sequence[nn.Module] | None) -> list[nn.Module]:
    if layers is not None:
        return list(layers)
    from captum_clip.models.adapter import ClipAdapter

    return list(ClipAdapter(model).vision.blocks)


def model_randomisation(
    build: Callable[[nn.Module], Callable[[Tensor, Tensor], Tensor]],
    model: nn.Module,
    inputs: Tensor,
    target: Any,
    layers: Sequence[nn.Module] | None = None,
    seed: int = 42,
    use_abs: bool = True,
) -> dict[str, Tensor]:
    """Cascading model-parameter randomisation (MPRT), top layer first.

    On a deep copy of ``model`` (the given one is never touched), ``layers`` are
    re-initialised one more at a time from the last to the first; inside a layer every
    module with ``reset_parameters`` is reset, last first, each after
    ``torch.manual_seed(seed + 1)`` (Quantus ``MPRT``'s generator). After each step the
    maps are recomputed and compared with the original ones by Spearman rank correlation
    (of ``|maps|`` with ``use_abs``, Quantus' default).

    Args:
        build: ``copy_of_model -> explain`` where ``explain(inputs, target)`` returns the
            maps, e.g. ``lambda m: CCI(ClipClassifier(m, tok, names)).attribute``.
        model: The model (a CLIP: its vision tower's blocks are the default ``layers``).
        inputs, target: What is explained.
        layers: Modules of ``model`` in forward order (default: the vision tower's blocks).
        seed: As Quantus.
        use_abs: Correlate absolute maps.

    Returns:
        ``{"original": maps, "<k>": (B,) correlations after randomising the top k layers}``
        with ``"<k>"`` for ``k = 1 .. len(layers)`` (the dict is ordered).
    """
    chosen = _block_layers(model, layers)
    names = {id(m): n for n, m in model.named_modules()}
    missing = [type(m).__name__ for m in chosen if id(m) not in names]
    if missing:
        raise ValueError(f"layers must be modules of model; not in it: {missing}")
    original = build(model)(inputs, target)
    twin = copy.deepcopy(model)
    twin_modules = dict(twin.named_modules())
    out: dict[str, Tensor] = {"original": original}
    for k, layer in enumerate(reversed(chosen), start=1):
        twin_layer = twin_modules[names[id(layer)]]
        resettable = [m for _, m in twin_layer.named_modules() if hasattr(m, "reset_parameters")]
        for module in reversed(resettable):
            torch.manual_seed(seed + 1)
            module.reset_parameters()
        maps = build(twin)(inputs, target)
        out[str(k)] = rank_correlation(original, maps, use_abs=use_abs)
    return out


def seed_stability(
    build: Callable[[int], Callable[[Tensor, Tensor], Tensor]],
    inputs: Tensor,
    target: Any,
    seeds: Sequence[int] = (0, 1, 2),
) -> Tensor:
    """``(B,)`` mean Spearman correlation between the maps of every pair of seeds.

    Args:
        build: ``seed -> explain``, e.g. ``lambda s: CCI(clf, random_state=s).attribute``.
        inputs, target: What is explained.
        seeds: At least two seeds.
    """
    if len(seeds) < 2:
        raise ValueError(f"seed_stability needs at least 2 seeds, got {list(seeds)}")
    maps = [build(s)(inputs, target) for s in seeds]
    pairs = [
        rank_correlation(maps[i], maps[j])
        for i in range(len(maps))
        for j in range(i + 1, len(maps))
    ]
    return torch.stack(pairs).mean(0)
