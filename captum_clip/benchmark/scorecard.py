"""The method scorecard: every registered method x every kind of evidence, one run.

Faithfulness and localisation come from :func:`~captum_clip.benchmark.faithfulness.evaluate`
(deletion, insertion, ROAD, pointing, mask share, cost); :func:`trust_scores` adds what
asks whether the map can be trusted at all (:mod:`captum_clip.metrics.trust`):

* ``randomisation`` -- cascading model-parameter randomisation: Spearman correlation of
  the map with the original one after every block of the vision tower is re-initialised
  (low is good: the map depends on the weights);
* ``random_logit`` -- Spearman correlation of the map of the target with the map of a
  random other class (low is good: the map depends on the class);
* ``sensitivity`` -- Captum's :func:`~captum.metrics.sensitivity_max` (relative change of
  the map under uniform input noise of radius ``perturb_radius``; low is good);
* ``stability`` -- :func:`~captum_clip.metrics.seed_stability` over seeds for methods whose
  answer depends on one (NaN for the others: they are stable by construction);
* ``sparseness`` -- Gini index of the map (high: few features carry it).

Maps are compared as the user sees them: summed over the colour channels.
:func:`run_scorecard` runs all of it on the bundled testbed models over several scene
seeds; :func:`summarise` gives mean and spread over the seeds; :mod:`benchmarks/scorecard.py`
writes the table and the documents' generated passages (:func:`render_blocks`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from tqdm.auto import tqdm

__all__ = [
    "CONTROL",
    "SCORECARD_COLUMNS",
    "ScorecardSettings",
    "render_blocks",
    "replace_blocks",
    "run_scorecard",
    "summarise",
    "trust_scores",
]

#: The negative control's name (a map that ignores the model: the image's edges).
CONTROL = "edge-map"

#: (column, header, lower is better, digits) of the scorecard, in table order.
SCORECARD_COLUMNS: tuple[tuple[str, str, bool, int], ...] = (
    ("deletion_prob", "deletion ↓", True, 3),
    ("deletion_prob_patch", "deletion, patches ↓", True, 3),
    ("insertion_prob", "insertion ↑", False, 3),
    ("road", "ROAD ↑", False, 3),
    ("pointing", "pointing ↑", False, 2),
    ("mask_share", "mask share ↑", False, 2),
    ("causal_auroc", "fg/bg AUROC ↑", False, 2),
    ("randomisation", "randomisation ↓", True, 2),
    ("random_logit", "random logit ↓", True, 2),
    ("sensitivity", "sensitivity ↓", True, 3),
    ("stability", "seed stability ↑", False, 2),
    ("sparseness", "sparseness ↑", False, 2),
    ("seconds_per_image", "s / image", True, 4),
    ("forwards_per_image", "forwards / image", True, 0),
)
TRUST_COLUMNS = ("randomisation", "random_logit", "sensitivity", "stability", "sparseness")


@dataclass(frozen=True)
class ScorecardSettings:
    """Settings of the scorecard (written at the top of the results file).

    Attributes:
        n: Scenes per model and seed.
        seeds: Scene seeds (each draws new scenes; mean and spread are over them).
        rho: Shortcut strength of the scenes (0.5: half on the class's own background).
        perturb_radius: Radius of Captum's uniform input noise in ``sensitivity_max``
            (normalised input units; Captum's default).
        n_perturb_samples: Noisy copies per image in ``sensitivity_max`` (Captum's default).
        stability_seeds: Method seeds of ``seed_stability`` (stochastic methods).
        logit_seed: Seed of the random other class of ``random_logit``.
        randomisation_seed: Seed of the re-initialisation (Quantus' 42).
        chunk_size: Images per attribution call.
    """

    n: int = 32
    seeds: tuple[int, ...] = (101, 202, 303)
    rho: float = 0.5
    perturb_radius: float = 0.02
    n_perturb_samples: int = 10
    stability_seeds: tuple[int, ...] = (0, 1, 2)
    logit_seed: int = 42
    randomisation_seed: int = 42
    chunk_size: int = 16


def _channel_sum(explain: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """``explain`` taking a tensor or Captum's 1-tuple, returning the channel-summed map in
    the same form (Captum's metrics want a tuple back for a tuple)."""

    def run(inputs: Any, target: Any = None) -> Any:
        x = inputs[0] if isinstance(inputs, tuple) else inputs
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*required_grads has been set")
            out = explain(x, target).detach().float().sum(1, keepdim=True)
        return (out,) if isinstance(inputs, tuple) else out

    return run


def _explainer(
    name: str, clf: Any, call: dict[str, Any] | None = None, **options: Any
) -> Callable[[Tensor, Any], Tensor]:
    """``(images, target) -> (B, 3, H, W)`` of registered method ``name`` (or the control);
    ``call`` goes to ``attribute`` of pixel methods (e.g. ``internal_batch_size``)."""
    from captum_clip.methods import build, get_method, pixel_map
    from captum_clip.metrics.trust import edge_map

    if name == CONTROL:
        return edge_map
    method = build(name, clf, **options)
    kwargs = dict(call or {}) if get_method(name).output == "pixels" else {}
    return lambda x, t: pixel_map(name, method, clf, x, t, **kwargs)


def _rebuilt(clf: Any, model: Any) -> Any:
    """``clf``'s classifier around another copy of its model (same prompts)."""
    from captum_clip.models import ClipClassifier

    return ClipClassifier(model, clf.tokenizer, list(clf.class_names), templates=clf.templates)


def trust_scores(
    clf: Any,
    images: Tensor,
    targets: Tensor,
    name: str,
    settings: ScorecardSettings | None = None,
) -> pd.DataFrame:
    """Randomisation, random logit, sensitivity, seed stability and sparseness of one
    registered method (or :data:`CONTROL`) per image.

    Args:
        clf: A :class:`~captum_clip.models.ClipClassifier` with ``model``, ``tokenizer``,
            ``class_names`` and ``templates`` (it is rebuilt around randomised copies of
            its model; the model itself is never touched).
        images: ``(B, 3, H, W)`` normalised images.
        targets: ``(B,)`` explained classes.
        name: A registered method name (:mod:`captum_clip.methods`) or :data:`CONTROL`.
        settings: See :class:`ScorecardSettings` (images are scored ``chunk_size`` at a
            time, and methods get ``internal_batch_size=chunk_size``: memory stays that of
            a chunk however many images are given).

    Returns:
        One row per image, columns ``randomisation``, ``random_logit``, ``sensitivity``,
        ``stability`` (NaN for methods without a seed) and ``sparseness``.
    """
    from captum_clip._validate import check_target
    from captum_clip.methods import get_method

    s = settings or ScorecardSettings()
    if name != CONTROL:
        get_method(name)  # unknown names: ValueError listing the registered ones
    if not isinstance(images, Tensor) or images.ndim != 4:
        got = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"images must be a (B, 3, H, W) tensor, got {got}")
    targets = check_target(targets, images.shape[0], len(clf.class_names))
    parts = [
        _trust_chunk(clf, images[i : i + s.chunk_size], targets[i : i + s.chunk_size], name, s)
        for i in range(0, images.shape[0], s.chunk_size)
    ]
    return pd.concat(parts, ignore_index=True)


def _trust_chunk(
    clf: Any, images: Tensor, targets: Tensor, name: str, s: ScorecardSettings
) -> pd.DataFrame:
    from captum.metrics import sensitivity_max

    from captum_clip.methods import get_method
    from captum_clip.metrics.trust import (
        model_randomisation,
        random_logit,
        seed_stability,
        sparseness,
    )

    stochastic = name != CONTROL and get_method(name).stochastic
    batch = {"internal_batch_size": s.chunk_size}

    def explainer(c: Any, **options: Any) -> Callable[..., Any]:
        return _channel_sum(_explainer(name, c, batch, **options))

    explain = explainer(clf)
    maps = explain(images, targets)
    steps = model_randomisation(
        lambda m: explain if m is clf.model else explainer(_rebuilt(clf, m)),
        clf.model,
        images,
        targets,
        seed=s.randomisation_seed,
    )
    last = str(len(steps) - 1)
    logit = random_logit(
        explain,
        images,
        targets,
        len(clf.class_names),
        attributions=maps,
        similarity="spearman",
        seed=s.logit_seed,
    )
    b = images.shape[0]
    per_batch = min(s.n_perturb_samples, max(1, s.chunk_size * s.n_perturb_samples // b))
    sens = sensitivity_max(
        explain,
        images,
        perturb_radius=s.perturb_radius,
        n_perturb_samples=s.n_perturb_samples,
        max_examples_per_batch=per_batch * b,  # Captum wants a multiple of the batch
        target=targets,
    )
    stability = torch.full((b,), float("nan"), dtype=torch.float64)
    if stochastic:
        stability = seed_stability(
            lambda seed: explainer(clf, random_state=seed),
            images,
            targets,
            seeds=s.stability_seeds,
        )
    return pd.DataFrame(
        {
            "randomisation": steps[last].numpy(),
            "random_logit": logit.numpy(),
            "sensitivity": sens.detach().double().cpu().numpy(),
            "stability": stability.numpy(),
            "sparseness": sparseness(maps).numpy(),
        }
    )


def run_scorecard(
    settings: ScorecardSettings | None = None,
    variants: Sequence[str] | None = None,
    methods: Sequence[str] | None = None,
    show_progress: bool = False,
) -> pd.DataFrame:
    """Every registered method and the edge-map control on the bundled testbed models.

    For each model and scene seed: the faithfulness and localisation metrics of
    :func:`~captum_clip.benchmark.inputs.run_testbed` (the same scenes, labels and call) (targets: the predicted class, exact object
    masks) and :func:`trust_scores`, averaged over the scenes.

    Args:
        settings: See :class:`ScorecardSettings`.
        variants: Testbed variants (default: every available one).
        methods: Registered names (default: all) -- the control is always added.
        show_progress: A progress bar over (model, seed, method).

    Returns:
        One row per (model, seed, method): the columns of :data:`SCORECARD_COLUMNS` (means
        over the scenes; ``causal_auroc`` is NaN where the scenes hold no causal label of one
        kind) and ``skipped`` (the reason, when the method
        cannot run on the model).
    """
    from captum_clip.benchmark.faithfulness import evaluate
    from captum_clip.benchmark.inputs import available_variants
    from captum_clip.benchmark.methods import MethodSettings
    from captum_clip.methods import METHOD_NAMES, get_method
    from captum_clip.models import ClipClassifier
    from captum_clip.testbed import causal_labels, load_testbed, shapes

    s = settings or ScorecardSettings()
    names = list(METHOD_NAMES if methods is None else methods)
    for n in names:
        get_method(n)  # unknown names fail before any work
    variants = available_variants() if variants is None else list(variants)
    labels = {get_method(n).label: n for n in names}
    bench = [get_method(n).label for n in names] + ["edge-map control"]
    rows = []
    bar = tqdm(total=len(variants) * len(s.seeds) * (len(names) + 1), desc="scorecard",
               disable=not show_progress)  # fmt: skip
    for variant in variants:
        model, _, tokenizer = load_testbed(variant)
        clf = ClipClassifier(model, tokenizer, list(shapes.CLASS_NAMES),
                             templates=(shapes.PROMPT_TEMPLATE.format(pattern="{}"),))  # fmt: skip
        for seed in s.seeds:
            # the scenes and labels of run_testbed, built once for both halves of the row
            scenes = shapes.generate_scenes(s.n, seed=seed, rho=s.rho, size=clf.image_size[0])
            x = shapes.normalize(scenes.images)
            truth = causal_labels(clf, scenes, internal_batch_size=s.chunk_size)
            targets = truth.target
            res = evaluate(
                clf, x, targets, scenes.masks, truth, methods=bench,
                method_settings=MethodSettings(ig_steps=50),  # Captum's default: what `build` gives
                chunk_size=s.chunk_size, model_name=f"testbed:{variant}",
            )  # fmt: skip
            summary = res.summary()
            for label in bench:
                name = labels.get(label, CONTROL)
                row: dict[str, Any] = {"model": f"testbed:{variant}", "seed": seed,
                                       "method": name, "skipped": res.skipped.get(label, "")}  # fmt: skip
                if label in summary.index:
                    for col, *_ in SCORECARD_COLUMNS:
                        if col not in TRUST_COLUMNS:  # NaN: no causal labels of both kinds
                            row[col] = float(summary.loc[label].get(col, math.nan))
                    torch.manual_seed(seed)
                    trust = trust_scores(clf, x, targets, name, s)
                    row |= {c: float(np.nanmean(trust[c])) if trust[c].notna().any() else math.nan
                            for c in TRUST_COLUMNS}  # fmt: skip
                rows.append(row)
                bar.update()
    bar.close()
    return pd.DataFrame(rows)


def summarise(table: pd.DataFrame) -> pd.DataFrame:
    """Mean and standard deviation over the seeds per (model, method): columns
    ``<metric>`` and ``<metric>_sd`` (method order kept)."""
    cols = [c for c, *_ in SCORECARD_COLUMNS if c in table.columns]
    g = table.groupby(["model", "method"], sort=False)[cols]
    mean, sd = g.mean(), g.std(ddof=1)
    return mean.join(sd.add_suffix("_sd"))


# ---------------------------------------------------------------- generated passages
def _cell(mean: float, sd: float, digits: int) -> str:
    if mean is None or math.isnan(mean):
        return "–"
    if digits == 0:
        return f"{mean:.0f}"
    if sd is None or math.isnan(sd):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {sd:.{digits}f}"


def _best(frame: pd.DataFrame, col: str, lower: bool, exclude: Sequence[str] = (CONTROL,)) -> str:
    values = frame[col].drop(index=[e for e in exclude if e in frame.index]).dropna()
    return str(values.idxmin() if lower else values.idxmax()) if len(values) else ""


def _rank(frame: pd.DataFrame, col: str, lower: bool, method: str) -> tuple[int, int]:
    values = frame[col].drop(index=[CONTROL], errors="ignore").dropna()
    order = values.sort_values(ascending=lower).index.tolist()
    return order.index(method) + 1, len(order)


def _models(summary: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(summary.index.get_level_values(0)))


def scorecard_table(summary: pd.DataFrame, model: str, columns: Sequence[str] | None = None) -> str:
    """Markdown table of one model: methods x metrics, mean ± sd over seeds, best bold."""
    frame = summary.loc[model]
    spec = [c for c in SCORECARD_COLUMNS if columns is None or c[0] in columns]
    spec = [c for c in spec if c[0] in frame.columns]
    best = {c: _best(frame, c, lower) for c, _, lower, _ in spec if c != "stability"}
    lines = ["| method | " + " | ".join(h for _, h, _, _ in spec) + " |",
             "| --- |" + " ---: |" * len(spec)]  # fmt: skip
    for method in frame.index:
        cells = []
        for col, _, _, digits in spec:
            text = _cell(frame.loc[method, col], frame.loc[method].get(f"{col}_sd"), digits)
            top = best.get(col)
            tied = (
                bool(top)
                and method != CONTROL
                and np.isclose(frame.loc[method, col], frame.loc[top, col], rtol=0, atol=1e-12)
            )  # every method equal to the best is bold (e.g. one forward per image)
            cells.append(f"**{text}**" if tied and text != "–" else text)
        lines.append(f"| `{method}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _fmt(frame: pd.DataFrame, method: str, col: str, digits: int = 3) -> str:
    return _cell(frame.loc[method, col], frame.loc[method].get(f"{col}_sd"), digits)


#: (question, scorecard columns that answer it) of the guide's table.
QUESTIONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Which pixels does the score rest on?", ("deletion_prob", "insertion_prob", "road")),
    ("Which patches / regions does it rest on?", ("deletion_prob_patch", "insertion_prob")),
    ("Does the map find the object?", ("pointing", "mask_share")),
    ("Does it tell object- from background-driven predictions?", ("causal_auroc",)),
    ("Does the map depend on the model and the class at all?", ("randomisation", "random_logit")),
    ("Does the map survive small input noise?", ("sensitivity",)),
    ("Many images, little time?", ("seconds_per_image", "deletion_prob_patch", "insertion_prob")),
)


def mean_ranks(summary: pd.DataFrame, columns: Sequence[str]) -> pd.Series:
    """Mean rank of every method (the control excluded) over ``columns`` and the models
    where a column has values, 1 = best (each column ranked in its own direction), best
    first."""
    lower = {c: low for c, _, low, _ in SCORECARD_COLUMNS}
    ranks = []
    for model in _models(summary):
        frame = summary.loc[model].drop(index=[CONTROL], errors="ignore")
        for col in columns:
            ranks.append(frame[col].rank(ascending=lower[col], method="average"))
    return pd.concat(ranks, axis=1).mean(axis=1).sort_values(kind="stable")


def question_table(summary: pd.DataFrame) -> str:
    """The guide's table: per question, the methods by mean rank over its columns."""
    headers = {c: h for c, h, _, _ in SCORECARD_COLUMNS}
    lines = ["| question | columns | first | second | third |", "| --- | --- | --- | --- | --- |"]
    for question, columns in QUESTIONS:
        r = mean_ranks(summary, columns)
        top = [f"`{m}` ({v:.1f})" for m, v in r.head(3).items()]
        names = []
        for c in columns:
            have = [m for m in _models(summary) if summary.loc[m][c].notna().any()]
            only = (
                f" ({', '.join(f'`{m}`' for m in have)} only)"
                if len(have) < len(_models(summary))
                else ""
            )
            names.append(headers[c] + only)
        cols = ", ".join(names)
        lines.append(f"| {question} | {cols} | " + " | ".join(top) + " |")
    return "\n".join(lines)


def render_blocks(summary: pd.DataFrame, n_seeds: int, n_scenes: int) -> dict[str, str]:
    """The passages of the README and the docs written from the scorecard (a test checks
    that the documents hold exactly these): ``{block name: markdown}``."""
    models = _models(summary)
    src = "[`benchmarks/results/scorecard.md`](benchmarks/results/scorecard.md)"
    where = (f"{n_scenes} held-out scenes per seed, {n_seeds} scene seeds, mean ± sd over "
             "the seeds")  # fmt: skip

    names = " / ".join(f"`{m}`" for m in models)

    def ranks(method: str, col: str, lower: bool) -> str:
        got = [_rank(summary.loc[m], col, lower, method) for m in models]
        values = " / ".join(_fmt(summary.loc[m], method, col) for m in models)
        return f"{' / '.join(str(r) for r, _ in got)} of {got[0][1]} ({values})"

    def leader(col: str, lower: bool) -> str:
        parts = []
        for m in models:
            frame = summary.loc[m]
            b = _best(frame, col, lower)
            if b:  # a column without values on a model (fg/bg AUROC needs both labels)
                parts.append(f"`{b}` on `{m}` ({_fmt(frame, b, col)})")
        return ", ".join(parts)

    def below_control(frame: pd.DataFrame, col: str) -> str:
        n = sum(frame.loc[k, col] < frame.loc[CONTROL, col] for k in frame.index if k != CONTROL)
        return f"{n} of {len(frame) - 1}"

    control = []
    for m in models:
        frame = summary.loc[m]
        most = _best(frame, "randomisation", True)
        control.append(
            f"on `{m}` the control keeps a correlation of "
            f"{_fmt(frame, CONTROL, 'randomisation', 2)} with itself after every block is "
            f"re-initialised, against {_fmt(frame, most, 'randomisation', 2)} for `{most}` "
            f"({below_control(frame, 'randomisation')} methods below the control)"
        )
    blocks = {}
    cci_ranks = (
        f"ranks {ranks('cci', 'deletion_prob_patch', True)} on whole-patch deletion, "
        f"{ranks('cci', 'insertion_prob', False)} on insertion and "
        f"{ranks('cci', 'deletion_prob', True)} on pixel deletion ({names})"
    )
    blocks["readme"] = (
        f"On the bundled models ({where}; {src}), per question the registered methods "
        "by their mean rank over the columns that answer it (1.0: first in every column on "
        "every model):\n\n"
        + question_table(summary)
        + f"\n\nThe default `CCI(clf)` {cci_ranks}; what only it gives is the region, "
        "a whole concept, named in words ([`docs/concepts.md`](docs/concepts.md)). Which "
        "method when, and why: [`docs/choosing.md`](docs/choosing.md)."
    )
    docs_src = src.replace("](benchmarks", "](../benchmarks")
    blocks["cci"] = (
        f"Among the registered methods at their defaults ({where}; {docs_src}) it {cci_ranks}."
    )
    blocks["peers"] = (
        f"Every registered method at its Python defaults ({where}; {docs_src}; the default "
        "`CCI(clf)`, not the paper's K=7, is the `cci` row):\n\n"
        + "\n\n".join(
            f"`{m}`:\n\n"
            + scorecard_table(
                summary,
                m,
                (
                    "deletion_prob",
                    "deletion_prob_patch",
                    "insertion_prob",
                    "pointing",
                    "mask_share",
                    "seconds_per_image",
                    "forwards_per_image",
                ),
            )  # fmt: skip
            for m in models
        )
    )
    lines = [f"Measured on the bundled models ({where}; {docs_src}):", ""]
    for col, header, lower, _ in SCORECARD_COLUMNS:
        if col in ("stability", "seconds_per_image", "forwards_per_image"):
            continue
        lines.append(f"- **{header.rstrip(' ↑↓')}** -- best: {leader(col, lower)}.")
    stochastic = [k for k in summary.loc[models[0]].index
                  if not math.isnan(summary.loc[models[0]].loc[k, "stability"])]  # fmt: skip
    for k in stochastic:
        lines.append(
            f"- **seed stability** of `{k}` (the only method with a seed): "
            + ", ".join(f"{_fmt(summary.loc[m], k, 'stability', 2)} on `{m}`" for m in models)
            + "."
        )
    lines.append("- **the control** (`edge-map`, ignores the model): " + "; ".join(control) + ".")
    located = []
    for m in models:
        frame = summary.loc[m]
        located.append(
            f"on `{m}` its pointing ({_fmt(frame, CONTROL, 'pointing', 2)}) is above that of "
            f"{below_control(frame, 'pointing')} methods"
        )
    lines.append(
        "- **localisation alone cannot vet a map**: the control finds the object's edges; "
        + "; ".join(located)
        + "."
    )
    cheapest = {m: _best(summary.loc[m], "seconds_per_image", True) for m in models}
    lines.append(
        "- **cost** -- cheapest: "
        + ", ".join(
            f"`{cheapest[m]}` on `{m}` ({_fmt(summary.loc[m], cheapest[m], 'seconds_per_image', 4)} s / image)"  # noqa: E501
            for m in models
        )  # fmt: skip
        + "."
    )
    blocks["guide"] = "\n".join(lines)
    blocks["questions"] = (
        f"Measured on the bundled models ({where}; {docs_src}); a method's mean rank over "
        "the columns and both models (1.0: first everywhere; the control is not ranked):"
        "\n\n" + question_table(summary)
    )
    blocks["tables"] = "\n\n".join(f"### `{m}`\n\n" + scorecard_table(summary, m) for m in models)
    return blocks


def replace_blocks(text: str, blocks: dict[str, str]) -> str:
    """``text`` with every ``<!-- scorecard:NAME -->`` ... ``<!-- /scorecard:NAME -->``
    passage replaced by ``blocks[NAME]`` (passages of other names are left alone).

    Raises:
        ValueError: A passage opens without closing.
    """
    import re

    def sub(match: re.Match) -> str:
        name = match.group(1)
        if name not in blocks:
            return match.group(0)
        return f"<!-- scorecard:{name} -->\n{blocks[name]}\n<!-- /scorecard:{name} -->"

    out, n = re.subn(r"<!-- scorecard:([\w-]+) -->\n(?:.*?\n)?<!-- /scorecard:\1 -->", sub, text,
                     flags=re.S)  # fmt: skip
    opened = len(re.findall(r"<!-- scorecard:[\w-]+ -->", text))
    if opened != n:
        raise ValueError(f"{opened - n} scorecard passage(s) open without a closing marker")
    return out


def settings_dict(settings: ScorecardSettings) -> dict[str, Any]:
    """The settings as plain JSON values."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(settings).items()}
