"""Shared machinery of the metrics: input checks, ranking with random ties, baselines, batching."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from captum_clip._validate import check_batch_size, check_images, check_target

# Same values as open_clip.constants (not imported: that would load open_clip at import).
OPENAI_DATASET_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_DATASET_STD = (0.26862954, 0.26130258, 0.27577711)

BASELINES = ("zeros", "black", "blur", "noise")
SCORES = ("logit", "prob", "top1", "top5", "top10")


def check_inputs(inputs: Any) -> Tensor:
    """Validate an image batch ``(B, C, H, W)`` of finite floats and return it."""
    return check_images(inputs, name="inputs", channels=None)


def pixel_map(attributions: Any, shape: Sequence[int], name: str = "attributions") -> Tensor:
    """Reduce attributions to one value per pixel, ``(B, H, W)``.

    Args:
        attributions: ``(B, C, H, W)`` (summed over channels), ``(B, 1, H, W)`` or ``(B, H, W)``.
        shape: Expected ``(B, C, H, W)`` (``C`` may be ``None`` to accept any channel count).
        name: Argument name used in error messages.
    """
    if not isinstance(attributions, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(attributions).__name__}")
    if attributions.is_complex():
        raise TypeError(f"{name} must be real-valued, got dtype {attributions.dtype}")
    b, c, h, w = shape
    a = attributions
    if a.ndim == 4 and (a.shape[1] == 1 or c is None or a.shape[1] == c):
        a = a.sum(dim=1)
    if a.ndim != 3 or tuple(a.shape) != (b, h, w):
        raise ValueError(
            f"{name} must have shape ({b}, {c}, {h}, {w}), ({b}, 1, {h}, {w}) or ({b}, {h}, {w}), "
            f"got {tuple(attributions.shape)}"
        )
    a = a if a.is_floating_point() else a.double()
    if not torch.isfinite(a).all():
        raise ValueError(f"{name} contain NaN or infinite values")
    return a


def importance_rank(unit_scores: Tensor, seed: int, descending: bool = True) -> Tensor:
    """Rank of each unit (0 = first removed), ties broken by a seeded random order.

    Args:
        unit_scores: ``(B, N)`` importance per unit.
        seed: Seed of the tie-breaking permutation (drawn on the CPU).
        descending: Most important first (``True``) or least important first.

    Returns:
        ``(B, N)`` long tensor of ranks on the device of ``unit_scores``.
    """
    b, n = unit_scores.shape
    gen = torch.Generator().manual_seed(int(seed))
    perm = torch.argsort(torch.rand(b, n, generator=gen), dim=1).to(unit_scores.device)
    permuted = unit_scores.gather(1, perm)
    order = perm.gather(1, torch.argsort(-permuted if descending else permuted, dim=1, stable=True))
    rank = torch.empty_like(order)
    return rank.scatter_(1, order, torch.arange(n, device=order.device).expand(b, n))


def resolve_target(target: Any, n: int, device: torch.device) -> Tensor | None:
    """``target`` (see :mod:`captum_clip._validate`) as a long tensor ``(n,)`` on ``device``
    (None stays None; the range is checked against the forward output later)."""
    t = check_target(target, n, None)
    return None if t is None else t.to(device)


def select_score(out: Tensor, target: Tensor, score: str) -> Tensor:
    """Score of ``target`` in a forward output ``(n, n_outputs)``; see ``SCORES``.

    ``top1``/``top5``: 1 when the target is among the k largest outputs, 0 otherwise; when
    the target's value is tied with others, the expected correctness of a uniformly random
    order among the tied outputs (an all-equal output gives k / n_outputs, not 1).
    """
    if out.ndim == 1:
        out = out[:, None]
    if out.ndim != 2:
        raise ValueError(f"forward_func must return (n, n_outputs), got shape {tuple(out.shape)}")
    check_target(target.cpu(), len(target), out.shape[1])
    col = out.gather(1, target[:, None])[:, 0]
    if score == "logit":
        return col
    if score == "prob":
        return torch.softmax(out, dim=1).gather(1, target[:, None])[:, 0]
    k = int(score[3:])
    if out.shape[1] < k:
        raise ValueError(
            f"score={score!r} needs at least {k} outputs, forward returned {out.shape[1]}"
        )
    above = (out > col[:, None]).sum(dim=1)
    tied = (out == col[:, None]).sum(dim=1)  # includes the target itself
    dtype = out.dtype if out.is_floating_point() else torch.float32
    return ((k - above).clamp(min=0).to(dtype) / tied.to(dtype)).clamp(max=1)


def expand_args(args: Any, index: Tensor, n: int) -> tuple:
    """Captum-style additional forward args; tensors with ``n`` rows are indexed by ``index``."""
    if args is None:
        return ()
    args = args if isinstance(args, tuple) else (args,)
    return tuple(
        a[index.to(a.device)] if isinstance(a, Tensor) and a.ndim and a.shape[0] == n else a
        for a in args
    )


def run_batched(
    forward_func: Callable,
    n_examples: int,
    n_per_example: int,
    build: Callable[[Tensor, Tensor], Tensor],
    reduce: Callable[[Tensor, Tensor], Tensor],
    additional_forward_args: Any = None,
    max_examples_per_batch: int | None = None,
    show_progress: bool = False,
    desc: str = "metric",
) -> Tensor:
    """Evaluate ``forward_func`` on all (example, step) pairs in bounded batches.

    Args:
        forward_func: Callable ``images -> (n, n_outputs)``.
        n_examples: Number of examples ``B``.
        n_per_example: Perturbed inputs per example ``S``.
        build: ``(example_idx (m,), step_idx (m,)) -> images (m, C, H, W)``.
        reduce: ``(outputs, example_idx) -> values (m, ...)``.
        additional_forward_args: Captum-style extra arguments.
        max_examples_per_batch: Maximum perturbed inputs per forward; ``None`` runs all
            ``B * S`` at once (as ``captum.metrics`` does).
        show_progress: Show a tqdm bar over the forward batches.
        desc: Progress bar label.

    Returns:
        Values of shape ``(B, S, ...)``.
    """
    total = n_examples * n_per_example
    max_examples_per_batch = check_batch_size(max_examples_per_batch, "max_examples_per_batch")
    if max_examples_per_batch is None:
        max_examples_per_batch = total
    starts = range(0, total, max_examples_per_batch)
    values = []
    with torch.no_grad():
        for start in tqdm(starts, desc=desc, disable=not show_progress):
            idx = torch.arange(start, min(start + max_examples_per_batch, total))
            ex, step = idx // n_per_example, idx % n_per_example
            out = forward_func(
                build(ex, step), *expand_args(additional_forward_args, ex, n_examples)
            )
            values.append(reduce(out, ex))
    v = torch.cat(values)
    return v.reshape(n_examples, n_per_example, *v.shape[1:])


def make_baseline(
    baselines: str | Tensor | float,
    inputs: Tensor,
    *,
    mean: Sequence[float] = OPENAI_DATASET_MEAN,
    std: Sequence[float] = OPENAI_DATASET_STD,
    seed: int = 0,
    blur_kernel_size: int = 11,
    blur_sigma: float = 5.0,
) -> Tensor:
    """Build the baseline images ``(B, C, H, W)`` in the (normalised) space of ``inputs``.

    Constant baselines are returned as expanded (stride-0) views; do not write into them.

    ``"zeros"``: all zeros (the dataset mean after normalisation). ``"black"``: pixel value 0,
    i.e. ``-mean / std``. ``"blur"``: per-channel convolution with a normalised
    ``blur_kernel_size`` Gaussian of ``blur_sigma`` and zero padding (RISE). ``"noise"``:
    ``(torch.rand(B, C, H, W, generator=torch.Generator().manual_seed(seed), dtype=inputs.dtype)
    - mean) / std``, uniform random colours. A tensor or number is broadcast to the inputs' shape.
    """
    b, c, h, w = inputs.shape
    if isinstance(baselines, (int, float)) and not isinstance(baselines, bool):
        return torch.full(
            (1, c, 1, 1), float(baselines), dtype=inputs.dtype, device=inputs.device
        ).expand(b, c, h, w)
    if isinstance(baselines, Tensor):
        try:
            out = torch.broadcast_to(baselines.to(inputs.device, inputs.dtype), inputs.shape)
        except RuntimeError:
            raise ValueError(
                f"baselines tensor of shape {tuple(baselines.shape)} does not broadcast "
                f"to the inputs' shape {tuple(inputs.shape)}"
            ) from None
        if not torch.isfinite(out).all():
            raise ValueError("baselines contain NaN or infinite values")
        return out
    if baselines not in BASELINES:
        raise ValueError(
            f"baselines must be one of {BASELINES}, a number or a tensor, got {baselines!r}"
        )
    if baselines == "zeros":
        return inputs.new_zeros(1, c, 1, 1).expand(b, c, h, w)
    if baselines == "blur":
        if blur_kernel_size < 1 or blur_kernel_size % 2 == 0 or blur_sigma <= 0:
            raise ValueError(
                f"blur needs an odd blur_kernel_size >= 1 and blur_sigma > 0, got "
                f"{blur_kernel_size} and {blur_sigma}"
            )
        x = (
            torch.arange(blur_kernel_size, dtype=inputs.dtype, device=inputs.device)
            - blur_kernel_size // 2
        )
        g = torch.exp(-(x**2) / (2 * blur_sigma**2))
        k2 = torch.outer(g, g) / torch.outer(g, g).sum()
        weight = k2.expand(c, 1, blur_kernel_size, blur_kernel_size)
        return torch.nn.functional.conv2d(inputs, weight, padding=blur_kernel_size // 2, groups=c)
    m = torch.as_tensor(mean, dtype=inputs.dtype, device=inputs.device)
    s = torch.as_tensor(std, dtype=inputs.dtype, device=inputs.device)
    if m.shape != (c,) or s.shape != (c,) or not (s > 0).all():
        raise ValueError(
            f"mean and std must have {c} entries (one per channel, std > 0), got "
            f"{tuple(mean)} and {tuple(std)}"
        )
    m, s = m.view(1, c, 1, 1), s.view(1, c, 1, 1)
    if baselines == "black":
        return ((0 - m) / s).expand(b, c, h, w)
    u = torch.rand(
        b, c, h, w, generator=torch.Generator().manual_seed(int(seed)), dtype=inputs.dtype
    )
    return (u.to(inputs.device) - m) / s
