"""Can the explanation be trusted? Randomisation, stability and complexity, one value per example.

Quantus' categories that the faithfulness and localisation metrics do not cover, as plain
functions (Captum's metric style; max-sensitivity is Captum's own
:func:`captum.metrics.sensitivity_max`, which every registered method supports):

- :func:`model_randomisation` -- cascading model-parameter randomisation (MPRT; Adebayo
  et al., NeurIPS 2018): the tower's blocks are re-initialised top block first, one more
  at a time, on a copy of the model; the rank correlation of each map with the original
  one should fall (an explanation that ignores the model stays high: the edge-detector
  critique);
- :func:`smooth_model_randomisation` (sMPRT) and :func:`efficient_model_randomisation`
  (eMPRT), Hedström et al. 2023: MPRT on maps averaged over noisy copies of the input, and
  the relative rise of the maps' histogram entropy from the original to the fully
  randomised model;
- :func:`random_logit` -- similarity of the map of the target with the map of a random
  other class (Sixt et al., ICML 2020): it should be low;
- :func:`seed_stability` -- rank correlation between maps of one method built with
  different seeds (stochastic methods: CCI's k-means);
- :func:`local_lipschitz` (Alvarez-Melis & Jaakkola 2018) and
  :func:`relative_input_stability` (Agarwal et al. 2022): the largest change of the map
  relative to the change of the input over random perturbations;
- :func:`sparseness` (Gini index, Chalasani et al., ICML 2020) and :func:`complexity`
  (entropy of the attribution shares, Bhatt et al., IJCAI 2020).

Each agrees with Quantus 0.6 on the same inputs, and the noisy ones on the same noise draws
(``tests/test_metrics_trust.py``, ``tests/test_metrics_trust_robust.py``); the settings that
do so are the defaults here (``abs`` / ``normalise`` as in Quantus; ``docs/trust.md`` lists
the differences).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from captum_clip._validate import check_batch_size, check_choice, check_target

__all__ = [
    "complexity",
    "edge_map",
    "efficient_model_randomisation",
    "histogram_entropy",
    "local_lipschitz",
    "model_randomisation",
    "random_logit",
    "rank_correlation",
    "relative_input_stability",
    "seed_stability",
    "smooth_model_randomisation",
    "sparseness",
]

SIMILARITIES = ("spearman", "ssim")
ORDERS = ("top_down", "bottom_up")


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


def _cascade(
    model: nn.Module, layers: Sequence[nn.Module] | None, seed: int, order: str
) -> tuple[int, Iterator[nn.Module]]:
    """Validate, then return the number of steps and a generator that re-initialises
    ``layers`` of one deep copy of ``model`` one more at a time (``order``) and yields the
    copy after each step. Inside a
    layer every module with ``reset_parameters`` is reset, last first, each after
    ``torch.manual_seed(seed + 1)`` (Quantus' generator, so the fully randomised copy is
    the same in either order)."""
    check_choice(order=(order, ORDERS))
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    chosen = _block_layers(model, layers)
    if not chosen:
        raise ValueError("layers must name at least one module of model, got none")
    names = {id(m): n for n, m in model.named_modules()}
    missing = [type(m).__name__ for m in chosen if id(m) not in names]
    if missing:
        raise ValueError(f"layers must be modules of model; not in it: {missing}")
    steps = [names[id(m)] for m in (reversed(chosen) if order == "top_down" else chosen)]

    def run() -> Iterator[nn.Module]:
        twin = copy.deepcopy(model)
        twin_modules = dict(twin.named_modules())
        for name in steps:
            layer = twin_modules[name]
            resettable = [m for _, m in layer.named_modules() if hasattr(m, "reset_parameters")]
            for module in reversed(resettable):
                torch.manual_seed(seed + 1)
                module.reset_parameters()
            yield twin

    return len(steps), run()


def _maps(attributions: Any) -> Tensor:
    """The explain function's output as a detached tensor (a 1-tuple unwrapped)."""
    if isinstance(attributions, tuple) and len(attributions) == 1:
        attributions = attributions[0]
    if not isinstance(attributions, Tensor):
        raise TypeError(f"explain must return a tensor of maps, got {type(attributions).__name__}")
    return attributions.detach()


def _check_inputs(inputs: Any) -> Tensor:
    if not isinstance(inputs, Tensor) or inputs.ndim < 2 or not inputs.is_floating_point():
        got = (
            f"{inputs.dtype} tensor of shape {tuple(inputs.shape)}"
            if isinstance(inputs, Tensor)
            else type(inputs).__name__
        )
        raise TypeError(f"inputs must be a floating (B, ...) tensor, got {got}")
    return inputs


def model_randomisation(
    build: Callable[[nn.Module], Callable[[Tensor, Tensor], Tensor]],
    model: nn.Module,
    inputs: Tensor,
    target: Any,
    layers: Sequence[nn.Module] | None = None,
    seed: int = 42,
    use_abs: bool = True,
    order: str = "top_down",
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
        order: ``"top_down"`` (last layer first, MPRT) or ``"bottom_up"`` (first layer
            first, Hedström et al.'s recommendation).

    Returns:
        ``{"original": maps, "<k>": (B,) correlations after randomising k layers}`` with
        ``"<k>"`` for ``k = 1 .. len(layers)`` (the dict is ordered).
    """
    _, steps = _cascade(model, layers, seed, order)
    original = _maps(build(model)(inputs, target))
    out: dict[str, Tensor] = {"original": original}
    for k, twin in enumerate(steps, start=1):
        maps = _maps(build(twin)(inputs, target))
        out[str(k)] = rank_correlation(original, maps, use_abs=use_abs)
    return out


def _smooth(
    explain: Callable[[Tensor, Any], Any], inputs: Tensor, target: Any, noises: list[np.ndarray]
) -> Tensor:
    """The mean of the maps of ``inputs + noise`` for each of ``noises`` and of ``inputs``
    itself, last (Quantus ``SmoothMPRT``: noise added in float64, cast back to the inputs'
    dtype; each map divided by the count before summing)."""
    x = inputs.detach().cpu().numpy()
    n = len(noises) + 1
    total: Tensor | None = None
    for eps in [*noises, None]:
        noisy = (
            inputs
            if eps is None
            else torch.from_numpy(x + eps).to(device=inputs.device, dtype=inputs.dtype)
        )
        a = _maps(explain(noisy, target)) / n
        total = a if total is None else total + a
    assert total is not None
    return total


def smooth_model_randomisation(
    build: Callable[[nn.Module], Callable[[Tensor, Tensor], Tensor]],
    model: nn.Module,
    inputs: Tensor,
    target: Any,
    layers: Sequence[nn.Module] | None = None,
    n_noise: int = 50,
    noise_magnitude: float = 0.1,
    seed: int = 42,
    use_abs: bool = True,
    order: str = "bottom_up",
    last_only: bool = False,
    same_noise: bool = False,
) -> dict[str, Tensor]:
    """Smooth MPRT (sMPRT, Hedström et al. 2023): :func:`model_randomisation` on denoised maps.

    Every map (the original one and the one after each randomisation step) is the mean of
    the maps of ``n_noise`` copies of ``inputs``: ``n_noise - 1`` with Gaussian noise of
    standard deviation ``noise_magnitude * (max - min)`` of each example, and the input
    itself. The noise is drawn from ``numpy.random.RandomState(seed)``, afresh for every
    map, in Quantus ``SmoothMPRT``'s order (so ``numpy.random.seed(seed)`` before Quantus
    gives the same draws), or once for all maps with ``same_noise``; the layers are
    randomised with ``torch.manual_seed(seed + 1)`` as in :func:`model_randomisation`.
    Costs ``n_noise`` explanations per step.

    Args:
        build, model, inputs, target, layers, use_abs: As :func:`model_randomisation`.
        n_noise: Noisy copies per map, the noise-free one included (Quantus'
            ``nr_samples``, 50).
        noise_magnitude: Noise std as a fraction of each example's value range (0.1).
        seed: Seed of the noise (numpy) and of the re-initialisation (torch, ``seed + 1``).
        order: ``"bottom_up"`` (Quantus' default for sMPRT) or ``"top_down"``.
        last_only: Explain only the original and the fully randomised model (Quantus'
            ``skip_layers``): the result has ``"original"`` and ``"<len(layers)>"``.
        same_noise: Reuse the same noisy copies for every model state (common random
            numbers, not Quantus'): the noise then cancels out of the comparison and a
            model-blind map (:func:`edge_map`) correlates exactly 1; with fresh draws its
            correlation is lowered by the noise alone unless ``n_noise`` is large.

    Returns:
        ``{"original": smoothed maps, "<k>": (B,) correlations after randomising k
        layers}``, as :func:`model_randomisation`.
    """
    n_noise = check_batch_size(n_noise, "n_noise", allow_none=False)
    if not isinstance(noise_magnitude, (int, float)) or noise_magnitude < 0:
        raise ValueError(f"noise_magnitude must be a number >= 0, got {noise_magnitude!r}")
    _check_inputs(inputs)
    n_steps, steps = _cascade(model, layers, seed, order)
    rng = np.random.RandomState(seed)
    x = inputs.detach().cpu().numpy()
    dims = tuple(range(1, x.ndim))
    std = noise_magnitude * (x.max(axis=dims, keepdims=True) - x.min(axis=dims, keepdims=True))

    def draw() -> list[np.ndarray]:
        return [rng.randn(*x.shape) * std for _ in range(n_noise - 1)]

    shared = draw() if same_noise else None
    original = _smooth(build(model), inputs, target, shared or draw())
    out: dict[str, Tensor] = {"original": original}
    for k, twin in enumerate(steps, start=1):
        if last_only and k < n_steps:
            continue
        maps = _smooth(build(twin), inputs, target, shared or draw())
        out[str(k)] = rank_correlation(original, maps, use_abs=use_abs)
    return out


def histogram_entropy(attributions: Any, n_bins: int = 100) -> Tensor:
    """Entropy of the histogram of each example's values in ``n_bins`` equal bins between
    its minimum and maximum (Quantus' ``discrete_entropy``, eMPRT's default complexity).
    Scale-free; 0 for a constant map."""
    n_bins = check_batch_size(n_bins, "n_bins", allow_none=False)
    out = []
    for row in _flat(attributions).numpy():
        counts, _ = np.histogram(row, bins=n_bins)
        p = counts[counts > 0] / counts.sum()
        out.append(float(-(p * np.log(p)).sum()))
    return torch.tensor(out, dtype=torch.float64)


def efficient_model_randomisation(
    build: Callable[[nn.Module], Callable[[Tensor, Tensor], Tensor]],
    model: nn.Module,
    inputs: Tensor,
    target: Any,
    layers: Sequence[nn.Module] | None = None,
    seed: int = 42,
    n_bins: int = 100,
    complexity_func: Callable[[Tensor], Tensor] | None = None,
    use_abs: bool = False,
) -> Tensor:
    """Efficient MPRT (eMPRT, Hedström et al. 2023): ``(B,)`` relative rise of the maps'
    complexity from the original model to the fully randomised one,
    ``(c(random) - c(original)) / c(original)``.

    Two explanations instead of one per layer: ``layers`` are all re-initialised on a deep
    copy of ``model`` (as :func:`model_randomisation`; the user's model is never touched).
    High is good: a map that depends on the weights turns into noise; 0 flags a map that
    ignores them (:func:`edge_map`). The complexity is :func:`histogram_entropy` with
    ``n_bins`` (Quantus ``EfficientMPRT``'s default), of the raw maps (Quantus' ``abs`` and
    ``normalise`` are off; a positive scale does not change it). inf / NaN where the
    original map is constant (its entropy is 0).

    Args:
        build, model, inputs, target, layers, seed: As :func:`model_randomisation`.
        n_bins: Bins of the histogram.
        complexity_func: ``(B, ...) maps -> (B,)`` instead of the histogram entropy
            (e.g. :func:`complexity`).
        use_abs: Measure ``|maps|``.
    """
    _, steps = _cascade(model, layers, seed, "bottom_up")
    *_, randomised = steps  # every layer re-initialised
    if complexity_func is None:
        n_bins = check_batch_size(n_bins, "n_bins", allow_none=False)

        def complexity_func(a: Any) -> Tensor:
            return histogram_entropy(a, n_bins)

    def measure(m: nn.Module) -> Tensor:
        maps = _maps(build(m)(inputs, target))
        return complexity_func(maps.abs() if use_abs else maps).double().cpu()

    before = measure(model)
    after = measure(randomised)
    return (after - before) / before


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


def _perturbations(
    perturb_func: Callable[[Tensor], Tensor] | None,
    draw: Callable[[np.random.RandomState, tuple[int, ...]], np.ndarray],
    seed: int,
) -> Callable[[Tensor], Tensor]:
    """``perturb_func``, or additive noise ``draw(rng, (B, n_features))`` from
    ``numpy.random.RandomState(seed)`` (Quantus' batch noise: the same draws after
    ``numpy.random.seed(seed)``), added in float64 and cast back to the inputs' dtype."""
    if perturb_func is not None:
        if not callable(perturb_func):
            raise TypeError(
                f"perturb_func must be callable (inputs -> perturbed inputs), got "
                f"{type(perturb_func).__name__}"
            )
        return perturb_func
    rng = np.random.RandomState(seed)

    def perturb(inputs: Tensor) -> Tensor:
        x = inputs.detach().cpu().numpy()
        noise = draw(rng, (x.shape[0], x[0].size)).reshape(x.shape)
        return torch.from_numpy(x + noise).to(device=inputs.device, dtype=inputs.dtype)

    return perturb


def _worst_case(
    score: Callable[[Tensor, Tensor], Tensor],
    explain: Callable[[Tensor, Any], Any],
    inputs: Tensor,
    target: Any,
    n_samples: int,
    perturb: Callable[[Tensor], Tensor],
    forward_func: Callable[[Tensor], Tensor] | None,
) -> Tensor:
    """``(B,)`` largest ``score(perturbed inputs, their maps)`` over ``n_samples``
    perturbations; with ``forward_func``, perturbations that change an example's predicted
    class are left out (NaN where all are)."""
    if not callable(explain):
        raise TypeError(f"explain must be callable (inputs, target) -> maps, got {explain!r}")
    n_samples = check_batch_size(n_samples, "n_samples", allow_none=False)
    label = None
    if forward_func is not None:
        with torch.no_grad():
            label = forward_func(inputs).argmax(-1).cpu()
    scores = []
    for _ in range(n_samples):
        xp = perturb(inputs)
        if tuple(xp.shape) != tuple(inputs.shape):
            raise ValueError(
                f"perturb_func must keep the inputs' shape {tuple(inputs.shape)}, "
                f"got {tuple(xp.shape)}"
            )
        s = score(xp, _maps(explain(xp, target)))
        if label is not None:
            with torch.no_grad():
                changed = forward_func(xp).argmax(-1).cpu() != label
            s = torch.where(changed, torch.nan, s)
        scores.append(s)
    stacked = torch.stack(scores)
    best = torch.where(stacked.isnan(), -torch.inf, stacked).amax(0)
    return torch.where(best == -torch.inf, torch.nan, best)


def local_lipschitz(
    explain: Callable[[Tensor, Any], Any],
    inputs: Tensor,
    target: Any,
    attributions: Tensor | None = None,
    n_samples: int = 200,
    std: float = 0.1,
    mean: float = 0.0,
    normalise: bool = True,
    forward_func: Callable[[Tensor], Tensor] | None = None,
    perturb_func: Callable[[Tensor], Tensor] | None = None,
    seed: int = 42,
) -> Tensor:
    """Local Lipschitz estimate (Alvarez-Melis & Jaakkola 2018): ``(B,)`` largest
    ``||e(x) - e(x')|| / ||x - x'||`` (Euclidean, ``+1e-10`` below) over ``n_samples``
    Gaussian perturbations ``x' = x + N(mean, std)`` (Quantus ``LocalLipschitzEstimate``'s
    noise and defaults). Low is good.

    Args:
        explain: ``(inputs, target) -> attributions`` (e.g. ``method.attribute``).
        inputs: ``(B, ...)`` floating inputs.
        target: The explained classes, passed to ``explain`` as given.
        attributions: The maps of ``inputs`` if already computed.
        n_samples: Perturbations.
        std, mean: Of the Gaussian noise (in the inputs' units).
        normalise: Divide each map by its largest ``|value|`` first (Quantus' default; Quantus
            divides the whole batch by one maximum, so the two agree per example).
        forward_func: ``inputs -> (B, classes)``: leave out perturbations that change the
            predicted class (Quantus' ``return_nan_when_prediction_changes`` instead makes
            the whole example NaN).
        perturb_func: ``inputs -> perturbed inputs`` instead of the Gaussian noise.
        seed: Seed of the noise (numpy's legacy generator, as Quantus' global one).
    """
    x = _check_inputs(inputs)
    perturb = _perturbations(
        perturb_func, lambda rng, shape: rng.normal(loc=mean, scale=std, size=shape), seed
    )
    a = _flat(explain(x, target) if attributions is None else attributions)
    a = _normalise(a, False) if normalise else a
    xf = _flat(x, "inputs")

    def score(xp: Tensor, ap: Tensor) -> Tensor:
        ap = _normalise(_flat(ap), False) if normalise else _flat(ap)
        return (a - ap).norm(dim=1) / ((xf - _flat(xp, "inputs")).norm(dim=1) + 1e-10)

    return _worst_case(score, explain, x, target, n_samples, perturb, forward_func)


def relative_input_stability(
    explain: Callable[[Tensor, Any], Any],
    inputs: Tensor,
    target: Any,
    attributions: Tensor | None = None,
    n_samples: int = 200,
    low: float = 0.02,
    high: float = 0.2,
    eps_min: float = 1e-6,
    forward_func: Callable[[Tensor], Tensor] | None = None,
    perturb_func: Callable[[Tensor], Tensor] | None = None,
    seed: int = 42,
) -> Tensor:
    """Relative input stability (RIS, Agarwal et al. 2022): ``(B,)`` largest
    ``||(e(x) - e(x')) / e(x)|| / max(||(x - x') / x||, eps_min)`` over ``n_samples``
    perturbations ``x' = x + U(low, high)`` (element-wise relative changes, zeros of ``e(x)``
    and ``x`` replaced by ``eps_min`` below; Quantus ``RelativeInputStability``'s noise
    and defaults). Low is good.

    Args:
        explain, inputs, target, attributions, n_samples, perturb_func, seed: As
            :func:`local_lipschitz`.
        low, high: Bounds of the uniform noise (Quantus: 0.02, 0.2).
        eps_min: Floor of the denominators.
        forward_func: ``inputs -> (B, classes)``: leave out perturbations that change the
            predicted class (Agarwal et al.'s constraint). Quantus (its default
            ``return_nan_when_prediction_changes=True``) makes the whole example NaN
            instead; the two agree where no prediction changes.
    """
    x = _check_inputs(inputs)
    if not high > low:
        raise ValueError(f"high must be larger than low, got low={low!r}, high={high!r}")
    perturb = _perturbations(
        perturb_func, lambda rng, shape: rng.uniform(low=low, high=high, size=shape), seed
    )
    e = _flat(explain(x, target) if attributions is None else attributions)
    xf = _flat(x, "inputs")
    e_safe = e + (e == 0) * eps_min
    x_safe = xf + (xf == 0) * eps_min

    def score(xp: Tensor, ep: Tensor) -> Tensor:
        num = ((e - _flat(ep)) / e_safe).norm(dim=1)
        den = ((xf - _flat(xp, "inputs")) / x_safe).norm(dim=1)
        return num / (den + (den == 0) * eps_min)

    return _worst_case(score, explain, x, target, n_samples, perturb, forward_func)
