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
# # 7. Is the caption grounded? From interaction maps to grounding statistics
#
# Tutorial 2 drew one word map at a time. A map is not an answer: is the word "dots"
# grounded on the dotted object, or does the model read it off the background? Does that
# depend on the object class, on the object's size, on the background? `captum_clip.grounding`
# turns `IntegratedInteractions` results and object masks into one row per image and
# caption word, aggregates them per class and sorts the failures into three categories:
#
# * **coverage** — grounding as a function of the object's area;
# * **unusual scenes** — backgrounds the class was (almost) never seen on in training;
# * **correlated contexts** — the object word grounded on the background, or the
#   background word on the object.
#
# The testbed knows the exact object masks, and its `shortcut` model was trained with a
# planted background shortcut (each class on "its own" background 90 % of the time), so
# we can check each category against ground truth.

# %%
# %matplotlib inline
import os

from captum_clip import grounding, load_clip
from captum_clip.attr import IntegratedInteractions
from captum_clip.grounding import plots

FAST = os.environ.get("CAPTUM_CLIP_TUTORIAL_FAST") == "1"  # set in CI: fewer scenes/steps
N_OBJECTS = 6 if FAST else 24  # objects per seed; each is drawn on 3 backgrounds
SEEDS = (0, 1) if FAST else (0, 1, 2)
N_STEPS = 6 if FAST else 20

# %% [markdown]
# ## Word roles and scenes
#
# A grounding row needs to know which caption word names the object (role `object`),
# which names something outside it (`context`), and which describes it (`attribute`).
# For the testbed's captions `testbed_roles` reads them off:

# %%
print(grounding.testbed_roles("a red dots on grass"))
print(grounding.testbed_roles("a photo of horizontal stripes"))

# %% [markdown]
# `testbed_scenes` draws random objects and renders each on three backgrounds:
# **aligned** (the background its class owns), **conflicting** (the background of another
# class) and **neutral** (snow or lava, owned by no class — the *unusual scenes*). The
# object radius ranges from 10 to 30 px of 64, wider than in training, to get a coverage
# curve.

# %%
scenes = [grounding.testbed_scenes(N_OBJECTS, seed=s) for s in SEEDS]
print(len(scenes[0]), "scenes per seed;", scenes[0].captions[:3])
print(scenes[0].meta[0])

# %% [markdown]
# ## The table
#
# `analyse` runs `IntegratedInteractions.explain` in batches and measures one row per
# (scene, role word). We do it for both testbed models:

# %%
rows, kept = [], {}
for variant in ("default", "shortcut"):
    model, preprocess, tokenizer = load_clip("testbed", variant=variant)
    ii = IntegratedInteractions(model, tokenizer)
    for sc in scenes:
        part, results = grounding.analyse(
            ii, preprocess(sc.images), sc.captions, sc.masks, sc.roles,
            [dict(m, model=variant) for m in sc.meta], n_steps=N_STEPS, keep=1,
        )  # fmt: skip
        rows += part
        kept.setdefault(variant, (results[0], sc))
print(len(rows), "rows; columns:", list(rows[0]))
for row in rows[:3]:
    print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()})

# %% [markdown]
# What the columns mean (exact definitions in `docs/grounding.md`): `object_share` is the
# share of the word's *positive* interaction mass inside the object mask, `area_share`
# the object's share of the image — what a uniform map would give, the chance level;
# `pointing` is 1 when the word map's maximum lies on the object; `total` is the word's
# whole interaction with the image. A row is `misplaced` when an object word has less
# than chance on the object, or a context word more than chance.
#
# ## Per class
#
# `summarise` groups rows; with `spread_over="seed"` each number is the mean over the
# seeds' means ± their standard deviation.

# %%
per_class = grounding.summarise(rows, ("model", "class", "role"), spread_over="seed")
columns = ["model", "class", "role", "n", "area_share", "object_share", "pointing", "misplaced"]
print(grounding.markdown([r for r in per_class if r["role"] == "object"], columns))

# %%
fig = plots.plot_classes(per_class)
fig  # noqa: B018  (a notebook shows the last expression)

# %% [markdown]
# ## Failure category 1: coverage
#
# The object word's share on the object against the object's area, in area bins; the
# dashed diagonal is a uniform map. Above the diagonal the word is drawn to the object.

# %%
curve = grounding.coverage(rows, by=("model",), spread_over="seed")
print(grounding.markdown(curve, ["model", "area_bin", "n", "area_share", "object_share", "misplaced"]))
fig = plots.plot_coverage(curve)
fig  # noqa: B018

# %% [markdown]
# ## Failure categories 2 and 3: unusual scenes and correlated contexts
#
# Per background condition: the object word's share on the object, and the context
# (background) word's share on the background. Read them next to `caption_share`, the
# object share of the whole caption's map: on the shortcut model the caption's map as a
# whole already leans onto the object, so absolute shares overstate every word's object
# grounding there (see `benchmarks/results/grounding_testbed.md`).

# %%
cond = grounding.summarise(rows, ("model", "condition", "role"), spread_over="seed")
print(grounding.markdown(
    [r for r in cond if r["role"] in ("object", "context")],
    ["model", "condition", "role", "object_share", "caption_share", "background_share", "misplaced"],
))  # fmt: skip
fig = plots.plot_groups(cond, "condition", title="grounding by background condition")
fig  # noqa: B018

# %%
for r in grounding.correlated_contexts(rows, by=("model",), spread_over="seed"):
    print(f"{r['model']:9s} {r['role']:8s} misplaced rate {r['misplaced']:.2f} ± {r['misplaced_sd']:.2f}")

# %% [markdown]
# ## Example word maps
#
# The maps behind the numbers: for the first object of seed 0 on its three backgrounds,
# the object word and the context word, on one colour scale (yellow/black outline: the
# object mask).

# %%
result, sc = kept["shortcut"]
fig = plots.plot_examples(result, sc.images[:3], sc.masks[:3], sc.roles[:3], sc.captions[:3])
fig  # noqa: B018

# %% [markdown]
# ## Your own images
#
# `grounding.measure(result, masks, roles)` works on any `InteractionResult`: masks on
# the patch grid or in pixels, roles as `{"object": "dog", "context": "grass"}`
# (multi-token words such as "hot dog" are matched over their tokens). From the command
# line, `captum-clip grounding folder pairs.csv --model SPEC --out DIR` reads images,
# captions, roles and masks from a CSV file, and `captum-clip grounding testbed --out DIR`
# reproduces this notebook with figures and a Markdown report.
