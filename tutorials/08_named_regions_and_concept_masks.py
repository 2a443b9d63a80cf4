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
# # 8. Concepts, not heatmaps: CCI's regions named in words, and masks without a segmenter
#
# CCI splits a decision into *regions* -- whole concepts hidden together. A region is worth
# most when it has a name: "`dots` is predicted: 80 % from the region that reads as *sky*".
# `captum_clip.concepts.name_regions` embeds every region with a CLIP (the **namer**: the
# explained model, or a reference model as GroundedSAM is a separate model) and compares it
# with a vocabulary's text embeddings. A region named as the class is also an object mask:
# `captum_clip.masks.ConceptMasks` turns names into masks, so the foreground/background
# diagnosis needs no segmenter.
#
# Everything runs offline on the two bundled testbed models: `default` (no shortcut) and
# `shortcut` (class *i* drawn on background *i* 90 % of the time). The scenes come with exact
# masks and causal labels, so every claim below is checked against ground truth.

# %%
# %matplotlib inline
import os
import warnings

import numpy as np
import torch

from captum_clip import ClipClassifier, load_clip
from captum_clip.attr import CCI
from captum_clip.concepts import general_sections, name_regions, shortcut_evidence
from captum_clip.diagnosis import causal_agreement, diagnose
from captum_clip.masks import ConceptMasks
from captum_clip.testbed import (
    BACKGROUND_NAMES,
    CLASS_NAMES,
    causal_labels,
    generate_scenes,
    shapes,
)

FAST = os.environ.get("CAPTUM_CLIP_TUTORIAL_FAST") == "1"  # CI: smaller sizes
N = 12 if FAST else 96  # scenes to name
N_DIAG = 24 if FAST else 200  # scenes to diagnose
torch.manual_seed(0)

models = {v: load_clip("testbed", variant=v) for v in ("default", "shortcut")}
clfs = {
    v: ClipClassifier(m.model, m.tokenizer, CLASS_NAMES, templates=["a photo of {}"])
    for v, m in models.items()
}
vocabulary = list(CLASS_NAMES) + list(BACKGROUND_NAMES)  # the testbed's words
scenes = generate_scenes(N, seed=2024)
x = shapes.normalize(scenes.images)

# %% [markdown]
# ## Name CCI's regions
#
# `CCI(..., return_clusters=True)` gives the regions; `name_regions` names each one. The
# default region embedding (`"context"`) runs the vision tower on the region alone and on
# the region grown by a one-patch ring (its outline), and averages the two; words are
# embedded with a template ensemble (the testbed tokenizer's `concept_templates`).

# %%
clf = clfs["default"]
target = clf(x).argmax(1)
_, regions = CCI(clf, n_clusters=8).attribute(x, target=target, return_clusters=True)
named = name_regions(x, regions, vocabulary, forward_func=clf)  # self-named
print(named.names[0][:3])  # image 0: the first three regions, names best first
named.table().head(8)

# %%
fig = named.plot(x, index=[0, 1, 2])

# %% [markdown]
# **Is a name right?** The region holding the most object pixels should be named as the
# true class, the region holding the most background pixels as the true background.


# %%
def naming_accuracy(named, scenes):
    obj_ok = bg_ok = 0
    for i in range(len(scenes.labels)):
        lab, m = named.labels[i], scenes.masks[i]
        ids = torch.arange(int(lab.max()) + 1)[:, None, None]
        obj = ((lab == ids) & m).flatten(1).sum(1).argmax()
        bg = ((lab == ids) & ~m).flatten(1).sum(1).argmax()
        obj_ok += named.best[i][int(obj)] == CLASS_NAMES[int(scenes.labels[i])]
        bg_ok += named.best[i][int(bg)] == BACKGROUND_NAMES[int(scenes.factors["background"][i])]
    n = len(scenes.labels)
    return obj_ok / n, bg_ok / n


print(
    "default model, self-named:        object {:.2f}, background {:.2f}".format(
        *naming_accuracy(named, scenes)
    )
)

# %% [markdown]
# ## The shortcut, visible in words
#
# The shortcut model names its own regions badly: it calls backgrounds by the class they
# co-occurred with. Named by the default model (a reference), the same regions are right
# again -- exactly what a separate reference model is for.

# %%
sc = clfs["shortcut"]
t_sc = sc(x).argmax(1)
_, reg_sc = CCI(sc, n_clusters=8).attribute(x, target=t_sc, return_clusters=True)
own = name_regions(x, reg_sc, vocabulary, forward_func=sc)
ref = name_regions(x, reg_sc, vocabulary, namer=models["default"])
print(
    "shortcut model, self-named:       object {:.2f}, background {:.2f}".format(
        *naming_accuracy(own, scenes)
    )
)
print(
    "shortcut model, named by default: object {:.2f}, background {:.2f}".format(
        *naming_accuracy(ref, scenes)
    )
)

# %% [markdown]
# `shortcut_evidence` turns that disagreement into a number per image: the share of the
# decision carried by regions the explained model reads as its prediction while the
# reference reads them as context.

# %%
ev = shortcut_evidence(sc, x, models["default"], list(BACKGROUND_NAMES), target=t_sc)
i = int(ev.share.argmax())
print(f"image {i}: predicted {CLASS_NAMES[int(t_sc[i])]!r}; shortcut share {ev.share[i]:.2f}")
for r, (a, b) in enumerate(zip(ev.own.best[i], ev.reference.best[i])):
    if a is not None:
        print(
            f"  region {r}: own name {a!r:22s} reference {b!r:10s} share {float(ev.own.share[i, r]):+.2f}"
        )

# %% [markdown]
# ## Mask-free diagnosis
#
# `ConceptMasks(namer, vocabulary)` is a mask provider like the SAM ones: it clusters the
# namer's own patch features, names the regions, and the regions named as the class form
# the object mask (when none is, the region closest to the class is taken and reported in
# the table's `concept_fallback`). `diagnose` then works as with true masks; with a
# `ConceptMasks` provider the table also gets `shortcut_share`.

# %%
scenes_d = generate_scenes(N_DIAG, seed=7, rho=0.5)
xd = shapes.normalize(scenes_d.images)
truth = causal_labels(sc, scenes_d)
rows = []
for name, masks in [
    ("true masks", scenes_d.masks),
    ("concepts, reference namer", ConceptMasks(models["default"], list(BACKGROUND_NAMES))),
    (
        "concepts, self-named",
        ConceptMasks(models["shortcut"], list(BACKGROUND_NAMES), evidence=False),
    ),
]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fallbacks are counted in the table
        d = diagnose(sc, xd, masks, labels=scenes_d.labels, target=truth.target)
    fallback = d.table["concept_fallback"].mean() if "concept_fallback" in d.table else float("nan")
    rows.append((name, causal_agreement(d, truth)["auroc"], fallback))
    if name.startswith("concepts, reference"):
        reference_table = d.table
for name, auroc, fb in rows:
    print(f"{name:28s} AUROC vs causal labels {auroc:.3f}   fallback {fb:.2f}")

# %%
labels = np.asarray(truth.labels)
keep = np.isin(labels, ["foreground", "background"])
if len(set(labels[keep])) == 2:
    from sklearn.metrics import roc_auc_score

    auc = roc_auc_score(labels[keep] == "background", reference_table["shortcut_share"][keep])
    print(f"shortcut_share as a score for causally background-driven predictions: AUROC {auc:.3f}")

# %% [markdown]
# ## Vocabularies
#
# Any list of words works; a file (one per line) too; `"general"` is the bundled list of
# visual concepts compiled from public category lists. Words the namer's tokenizer cannot
# encode are skipped with one warning (the testbed tokenizer knows only its own words).

# %%
for section, (source, words) in general_sections().items():
    print(f"{section:13s} {len(words):3d} words  from {source[:70]}")
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    general = name_regions(x, regions, "general", forward_func=clf)
print(caught[0].message if caught else "no word skipped")
print("kept:", general.vocabulary)
