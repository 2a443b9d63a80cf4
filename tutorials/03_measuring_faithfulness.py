# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 3. Measuring faithfulness: deletion, insertion, ROAD, pointing game
#
# A heat map can look right and still not reflect what the model uses. Faithfulness
# metrics *perturb the input in the order the map gives* and watch the score:
#
# * **deletion** — replace the most important pixels first; a faithful map makes the
#   score fall fast (lower AUC is better);
# * **insertion** — start from a blurred image and reveal the most important pixels
#   first; the score should rise fast (higher AUC is better);
# * **ROAD** — remove pixels by noisy linear imputation from their neighbours instead of
#   a constant (which leaks the removal pattern), most- vs least-relevant first;
# * **pointing game / mask share** — localisation against ground-truth object masks.
#
# All of them are plain functions in `captum_clip.metrics`, one value per example, like
# `captum.metrics`. We compare the paper's CCI, GradCAM (`vit_gradcam`), Captum's
# `IntegratedGradients` and a random map on testbed scenes, then CCI's other region
# estimators (including `CCI(clf)`'s default).

# %%
# %matplotlib inline
import os
import time

import pandas as pd
import torch
from captum.attr import IntegratedGradients

from captum_clip import ClipClassifier, load_clip
from captum_clip.attr import CCI, vit_gradcam
from captum_clip.metrics import (
    GRAD_ECLIP,
    curve_auc,
    deletion_auc,
    deletion_curve,
    insertion_auc,
    insertion_curve,
    mask_share,
    plot_curves,
    pointing_game,
    road,
)
from captum_clip.testbed import shapes

FAST = os.environ.get("CAPTUM_CLIP_TUTORIAL_FAST") == "1"  # set in CI: fewer images/steps
N_IMAGES = 6 if FAST else 32
N_STEPS = 10 if FAST else 50  # deletion/insertion steps
IG_STEPS = 8 if FAST else 32
ROAD_PERCENTAGES = (20, 50, 80) if FAST else (10, 20, 30, 40, 50, 60, 70, 80, 90)

model, preprocess, tokenizer = load_clip("testbed")
clf = ClipClassifier(model, tokenizer, list(shapes.CLASS_NAMES), templates=["a photo of {}"])
scenes = shapes.generate_scenes(N_IMAGES, seed=1)
x, masks, target = preprocess(scenes.images), scenes.masks, scenes.labels

# %% [markdown]
# ## Four attribution maps
#
# Every method gives attributions shaped like the inputs `(B, 3, H, W)`; the metrics sum
# over channels. The random map is the floor every method must beat. "CCI" here is the
# paper's: leave-one-out over K=7 regions (`estimator="occlusion"`, what
# `CCI.default_for(clf)` builds).

# %%
ig = IntegratedGradients(clf)
timings = {}


def timed(name, fn):
    t0 = time.perf_counter()
    out = fn()
    timings[name] = time.perf_counter() - t0
    return out


maps = {
    "CCI": timed("CCI", lambda: CCI(clf, estimator="occlusion").attribute(x, target=target)),
    "GradCAM": timed("GradCAM", lambda: vit_gradcam(clf, x, target=target)),
    "IntegratedGradients": timed(
        "IntegratedGradients",
        lambda: ig.attribute(x, target=target, n_steps=IG_STEPS, internal_batch_size=64),
    ),
    "random": torch.rand(x.shape, generator=torch.Generator().manual_seed(0)),
}
for name, t in timings.items():
    print(f"{name:20s} {t:6.2f} s for {N_IMAGES} images")

# %% [markdown]
# ## Deletion and insertion curves
#
# `deletion_curve(forward_func, inputs, attributions, target=..., score=...)` returns
# `(fractions (S,), scores (B, S))`. `score="prob"` reads the softmax probability of the
# target; `score="top1"` whether the target is still the arg-max (the zero-shot protocol
# of the CCI and Grad-ECLIP papers). Defaults: deletion replaces pixels by zeros (the
# dataset mean in normalised space), insertion starts from a blurred image.

# %%
curves = {
    name: deletion_curve(clf, x, a, target=target, score="prob", n_steps=N_STEPS)
    for name, a in maps.items()
}
plot_curves(curves, title="deletion (lower is better)", ylabel="p(target)")

# %%
ins_curves = {
    name: insertion_curve(clf, x, a, target=target, score="prob", n_steps=N_STEPS)
    for name, a in maps.items()
}
plot_curves(ins_curves, title="insertion (higher is better)", ylabel="p(target)")

# %% [markdown]
# ## How the AUC is normalised
#
# An AUC here is the trapezoid integral of the curve over the fraction of pixels
# *actually* changed, on `[0, max_fraction]`, **divided by `max_fraction`**: the mean
# score over the evaluated range. So a constant curve at 0.7 has AUC 0.7 whatever
# `n_steps` and `max_fraction` are, and protocols that stop at 50 % of the pixels (like
# `GRAD_ECLIP`) stay comparable with full-range ones. Other libraries divide by the
# number of steps or integrate over `[0, 1]`; their numbers differ from these.

# %%
fractions = torch.linspace(0, 0.5, 11)
print("constant 0.7 on [0, 0.5]:", curve_auc(fractions, torch.full((1, 11), 0.7)).item())
line = torch.linspace(1, 0, 5)[None]
print("linear 1 -> 0 on [0, 1]: ", curve_auc(torch.linspace(0, 1, 5), line).item())
f, s = curves["CCI"]
print("CCI deletion AUC from its curve:", curve_auc(f, s).mean().item())
auc = deletion_auc(clf, x, maps["CCI"], target=target, score="prob", n_steps=N_STEPS)
print("deletion_auc (same settings):   ", auc.mean().item())

# %% [markdown]
# ## One table: every metric, every method
#
# `deletion_auc` / `insertion_auc` take the keyword arguments of the curves (for the
# `prob` columns we reuse the curves computed above through `curve_auc`). ROAD returns
# `morf` (most relevant first), `lerf` (least relevant first) and `score` =
# mean of `(lerf − morf) / 2` (higher is better). The pointing game asks whether the
# map's maximum lies on the object, the mask share how much positive mass does.

# %%
rows = []
for name, a in maps.items():
    kw = dict(target=target, n_steps=N_STEPS)
    r = road(clf, x, a, target=target, percentages=ROAD_PERCENTAGES, score="prob")
    rows.append(
        {
            "method": name,
            "deletion prob ↓": curve_auc(*curves[name]).mean().item(),  # curve from above
            "deletion top1 ↓": deletion_auc(clf, x, a, score="top1", **kw).mean().item(),
            "insertion prob ↑": curve_auc(*ins_curves[name]).mean().item(),
            "insertion top1 ↑": insertion_auc(clf, x, a, score="top1", **kw).mean().item(),
            "ROAD ↑": r.score.mean().item(),
            "pointing game ↑": pointing_game(a, masks).mean().item(),
            "mask share ↑": mask_share(a, masks).mean().item(),
        }
    )
table = pd.DataFrame(rows).set_index("method").round(3)
print(f"{N_IMAGES} testbed scenes, object area {masks.float().mean():.2f} of the image")
print(table.to_string())

# %% [markdown]
# ## Pixels or patches?
#
# Pixel deletion ranks single pixels. A region method such as CCI gives every pixel of a
# region the same value (ties are broken in a seeded random order), while a gradient map
# such as Integrated Gradients ranks individual pixels — and deleting a few scattered
# pixels of a fine pattern can break the model's evidence long before a whole region is
# gone. `unit="patch"` ranks and removes whole `patch_size` squares (here the ViT's
# 8-pixel patches), which compares methods at the resolution the model sees:

# %%
for name, a in maps.items():
    px = curve_auc(*curves[name]).mean().item()
    pa = (
        deletion_auc(
            clf, x, a, target=target, score="prob", n_steps=N_STEPS, unit="patch", patch_size=8
        )
        .mean()
        .item()
    )
    print(f"{name:20s} deletion prob AUC: pixels {px:.3f}   8x8 patches {pa:.3f}")

# %% [markdown]
# ## The paper's CCI vs a redundancy-aware CCI
#
# The paper's CCI values a region by the drop when *that region alone* is hidden
# (leave-one-out, `estimator="occlusion"`). When the object is split into several
# regions that each carry the same evidence, hiding one of them changes little and
# every piece looks unimportant. `estimator=` values regions from *coalitions* of
# hidden regions instead; exact Shapley values over K=7 regions need all 2^7 = 128
# coalitions -- still one batched attention-masked forward
# (`docs/cci.md` explains every estimator and its cost). In the benchmark over three
# seeds and five zoo models (`benchmarks/results/cci_regions.md`) Shapley values of the
# target *probability* rank first or second of nine methods on whole-patch deletion on
# every model, where the paper's CCI ranks 5th to 8th. `CCI(clf)` now defaults to
# `estimator="sufficiency"` over K=32 regions -- the score with only region k visible
# minus the score with nothing visible, 34 forwards per image -- first on whole-patch
# deletion in `benchmarks/results/cci_regions_rank.md` (scored there on the probability).

# %%
configs = {
    "CCI (paper: leave-one-out)": CCI(clf, estimator="occlusion"),
    "CCI (default: sufficiency)": CCI(clf),
    "CCI (Shapley, probability)": CCI(clf, estimator="shapley", score="prob"),
}
results = {}
for name, method in configs.items():
    t0 = time.perf_counter()
    a, res = method.attribute(x, target=target, return_clusters=True, internal_batch_size=256)
    seconds = time.perf_counter() - t0
    results[name] = res
    patch_del = deletion_auc(
        clf, x, a, target=target, score="prob", n_steps=N_STEPS, unit="patch", patch_size=8
    ).mean()
    ins = insertion_auc(clf, x, a, target=target, score="prob", n_steps=N_STEPS).mean()
    print(
        f"{name:32s} patch deletion {patch_del:.3f} ↓  insertion {ins:.3f} ↑  "
        f"{seconds:5.2f} s for {N_IMAGES} images"
    )
# efficiency: the regions' Shapley values add up to the effect of hiding every patch
res = results["CCI (Shapley, probability)"]
with torch.no_grad(), clf.vision.hide_patches(torch.ones(1, 64, dtype=torch.bool)):
    empty = clf(x[:1]).softmax(-1)[0, target[0]]
total = float(res.base_score[0] - empty)
print(f"image 0: Σ_k φ_k = {float(res.values[0].nansum()):.4f}, p(all) - p(none) = {total:.4f}")

# %% [markdown]
# ## A published protocol
#
# `protocol=GRAD_ECLIP` reproduces the settings of the Grad-ECLIP / CCI zero-shot
# evaluation (100 steps up to 50 % of the pixels, random-colour deletion, black-start
# insertion, top-1 correctness scored every 10 steps). Explicit arguments override it.

# %%
for name in ("CCI", "GradCAM", "random"):
    d = deletion_auc(clf, x, maps[name], target=target, protocol=GRAD_ECLIP).mean().item()
    i = insertion_auc(clf, x, maps[name], target=target, protocol=GRAD_ECLIP).mean().item()
    print(f"{name:8s} Grad-ECLIP protocol: deletion top1 {d:.3f}  insertion top1 {i:.3f}")

# %% [markdown]
# ## Reading the numbers
#
# * Compare methods **on the same images, model, target and protocol**; absolute values
#   depend on all of them (and on the baseline: zeros, blur, noise, black).
# * `top1` curves of a confident model stay at 1 until the prediction flips; `prob`
#   curves are smoother and separate methods on fewer images.
# * The random map is the floor; a method that does not beat it is not faithful for this
#   model.
# * No method wins everywhere: on these pattern scenes the per-pixel Integrated Gradients
#   map deletes best of the four maps, pixels and patches alike, and points at the object
#   more often than the paper's CCI, which puts the largest share of its positive mass on
#   the object; CCI's default estimator (sufficiency, previous section) deletes whole
#   patches faster than any map in the table. Measure on your own model before choosing.
# * On large-batch runs pass `max_examples_per_batch=` to bound memory and
#   `show_progress=True` for a tqdm bar.
