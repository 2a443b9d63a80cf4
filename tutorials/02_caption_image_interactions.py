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
# # 2. Which words match which regions? Caption–image interactions
#
# A CLIP score compares a whole caption with a whole image. First-order attributions
# (GradCAM, CCI) say which *pixels* matter for it, but not which *word* they match.
# `IntegratedInteractions` attributes the similarity onto **pairs** (caption token `s`,
# image patch `p`): second-order integrated attributions after Möller et al. (arXiv
# 2408.14153), computed exactly. Their sum obeys a completeness identity, so the
# convergence delta tells you how accurate the numbers are.
#
# We use the bundled testbed model and a scene we draw ourselves, with a caption like
# "a red dots on grass" (the testbed's training caption style), and check the word maps
# against the exact object mask.

# %%
# %matplotlib inline
import os

import torch

from captum_clip import load_clip
from captum_clip.attr import IntegratedInteractions
from captum_clip.testbed import shapes
from captum_clip.viz.interactions import plot_interactions

FAST = os.environ.get("CAPTUM_CLIP_TUTORIAL_FAST") == "1"  # set in CI: fewer steps
N_STEPS = 10 if FAST else 20

model, preprocess, tokenizer = load_clip("testbed")
ii = IntegratedInteractions(model, tokenizer)

# %% [markdown]
# ## A scene made to order
#
# Scenes are a pure function of their *factors*; we draw random factors and then set
# the pattern (the class), the colour and the background.

# %%
factors = shapes.sample_factors(1, seed=7)
factors["class"][:] = shapes.CLASS_NAMES.index("dots")
factors["colour"][:] = shapes.COLOUR_NAMES.index("red")
factors["colour2"][:] = shapes.COLOUR_NAMES.index("white")
factors["background"][:] = shapes.BACKGROUND_NAMES.index("grass")
images01, masks = shapes.render(factors)  # (1, 3, 64, 64) in [0, 1], (1, 64, 64) bool
x = preprocess(images01)
caption = "a red dots on grass"
print("object covers", f"{masks.float().mean():.0%}", "of the image")

# %% [markdown]
# ## The interaction matrix
#
# `attribute` returns `A` of shape `(B, S, 1 + P)`: text positions × `[CLS, patches]`
# (here 12 token positions × 1 + 8·8 image tokens) and, on request, the convergence
# delta `sum(A) − (σ(a,b) − σ(a0,b) − σ(a,b0) + σ(a0,b0))` per pair, where `a0`, `b0`
# are the reference caption (`[SOT, PAD…, EOT]`) and reference image (zeros = the
# dataset mean colour).

# %%
A, delta = ii.attribute(x, [caption], n_steps=N_STEPS, return_convergence_delta=True)
print("A:", tuple(A.shape), " sum", round(A.sum().item(), 5), " delta", f"{delta.item():.1e}")

# %% [markdown]
# `explain` returns the same numbers wrapped in an `InteractionResult` with the views you
# need: tokens, the score, per-word image maps, per-region token scores.

# %%
result = ii.explain(x, [caption], n_steps=N_STEPS)
print("tokens:", result.tokens[0][:7])
print(f"similarity σ(a, b) = {result.score[0]:.4f}")
print(f"four-term difference = {result.score_difference[0]:.5f}")
print(f"sum of interactions  = {result.attributions[0].sum():.5f}")
print(f"convergence delta    = {result.delta[0]:.1e}")

# %% [markdown]
# ## Where does a word look?
#
# `image_map("dots")` sums the row of the word "dots" over the patch grid (`(h, w)`;
# `size=True` upsamples to the image). With the object mask we can measure how much of
# the word's positive interaction lies on the object — and compare with the background
# word "grass".

# %%
mask_grid = torch.nn.functional.adaptive_avg_pool2d(masks[:, None].float(), (8, 8))[0, 0]


def object_share(word: str) -> float:
    """Positive interaction mass of ``word`` on the object / all its positive mass."""
    m = result.image_map(word).clamp(min=0)
    return float((m * mask_grid).sum() / m.sum().clamp(min=1e-12))


print("dots map (8x8):", tuple(result.image_map("dots").shape))
print("dots map upsampled:", tuple(result.image_map("dots", size=True).shape))
for word in ("red", "dots", "grass"):
    print(f"{word:6s} share of positive interaction on the object: {object_share(word):.2f}")
print(f"object area (chance level): {mask_grid.mean():.2f}")

# %% [markdown]
# ## Which words interact with a region?
#
# `token_scores(region)` sums each token's interactions over a region — a patch-grid or
# pixel mask. Use the object mask and its complement:

# %%
on_object = result.token_scores(masks[0])
on_background = result.token_scores(~masks[0])
print(f"{'token':8s} {'object':>9s} {'background':>11s}")
for i, tok in enumerate(result.tokens[0]):
    if tok:
        print(f"{tok:8s} {on_object[i]:9.4f} {on_background[i]:11.4f}")

# %% [markdown]
# The first-order marginals come for free: `text_attr` (row sums) are the integrated
# gradients of the caption tokens, `image_attr` (column sums) those of the image tokens;
# both sum to the four-term difference.

# %%
print("text_attr sum :", round(result.text_attr.sum().item(), 5))
print("image_attr sum:", round(result.image_attr.sum().item(), 5))

# %% [markdown]
# ## Convergence
#
# The delta is the quadrature error of the two path integrals (Gauss–Legendre by
# default); it shrinks quickly with `n_steps`:

# %%
for n in (2, 4, N_STEPS):
    _, d = ii.attribute(x, [caption], n_steps=n, return_convergence_delta=True)
    print(f"n_steps={n:2d}  |delta| = {d.abs().item():.1e}")

# %% [markdown]
# ## The figure
#
# `plot_interactions` draws the image, one interaction map per caption word (shared
# colour scale) and a bar chart of every token's interaction with a region — here the
# object.

# %%
fig = plot_interactions(result, images01[0], region=masks[0])
fig  # noqa: B018  (a pyplot-free Figure: a notebook shows the last expression)

# %% [markdown]
# ## A batch of pairs — and what to expect from a tiny model
#
# `attribute`/`explain` take `B` images and `B` captions (one caption per image). On the
# testbed the word maps are coarse: at the default layers (the input of the last block)
# the patch tokens have already mixed over three attention layers, and much of the
# interaction sits on `<eot>`, where the text tower pools. So look at statistics over
# scenes rather than at one map: how often does the pattern word ("dots", "stripes", …)
# interact more with the object than with the background?

# %%
scenes = shapes.generate_scenes(6 if FAST else 24, seed=11, caption_probs=(0, 1, 0, 0))
batch = ii.explain(preprocess(scenes.images), scenes.captions, n_steps=N_STEPS)
wins = 0
for i, cap in enumerate(scenes.captions):
    word = shapes.CLASS_NAMES[int(scenes.labels[i])].split()[-1]  # "stripes", "dots", ...
    idx = batch.token_indices(word, pair=i)
    obj = batch.token_scores(scenes.masks[i], pair=i)[idx].sum().item()
    bg = batch.token_scores(~scenes.masks[i], pair=i)[idx].sum().item()
    wins += obj > bg
    print(f"{cap:40s} '{word}': object {obj:+.4f}  background {bg:+.4f}")
print(f"pattern word interacts more with the object in {wins} of {len(scenes)} scenes")
print("max |delta| over the batch:", f"{batch.delta.abs().max():.1e}")

# %% [markdown]
# For more local maps attribute at the embeddings (`image_layer=0`, `text_layer=0`):
# exact as well, but every tangent then runs through the whole tower (much slower on
# large models, see `docs/interactions.md`).
