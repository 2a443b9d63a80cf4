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
# # 5. A real pretrained open_clip model
#
# Tutorials 1–4 use the bundled testbed model, because it has ground truth. On your own
# photos you want a real CLIP. With internet access,
#
# ```python
# model, preprocess, tokenizer = load_clip("ViT-B-32", pretrained="openai")
# ```
#
# downloads the OpenAI ViT-B/32 weights on first use (about 600 MB, cached by
# open_clip / Hugging Face hub) and everything below gives meaningful maps. Offline,
# download the file elsewhere and pass `load_clip("ViT-B-32", checkpoint="file.pt")`;
# with `HF_HUB_OFFLINE=1` a missing download fails at once instead of after the hub's
# retries (about 30 s).
#
# **In CI and on machines without network this notebook uses random weights**
# (`CAPTUM_CLIP_TUTORIAL_FAST=1`, or when the download fails): the same architecture
# with `pretrained=None`, or in fast mode a much smaller ViT with the same patch size,
# input size, preprocessing and tokenizer. **Maps of a random model are meaningless** —
# the point of running it is the code path: real 224-px photos, open_clip's BPE
# tokenizer, open_clip's preprocessing, the same calls you make with real weights.

# %%
# %matplotlib inline
import os
import time

import open_clip
import torch
from PIL import Image
from skimage import data

from captum_clip import ClipClassifier, load_clip
from captum_clip.attr import CCI, IntegratedInteractions, vit_gradcam
from captum_clip.models import ModelLoadError
from captum_clip.viz.interactions import plot_interactions
from captum_clip.viz.maps import compare_methods, plot_clusters

FAST = os.environ.get("CAPTUM_CLIP_TUTORIAL_FAST") == "1"  # set in CI: tiny random ViT
ARCH, TAG = "ViT-B-32", "openai"
_ = torch.manual_seed(0)


def tiny_vit_b32_like():
    """A small random CLIP with ViT-B/32's input size, patch size and tokenizer."""
    model = open_clip.model.CLIP(
        embed_dim=64,
        vision_cfg=dict(image_size=224, patch_size=32, width=64, layers=2, head_width=32),
        text_cfg=dict(context_length=77, vocab_size=49408, width=64, heads=2, layers=2),
    ).eval()
    preprocess = open_clip.image_transform(224, is_train=False)
    return model, preprocess, open_clip.get_tokenizer(ARCH)


if FAST:
    model, preprocess, tokenizer = tiny_vit_b32_like()
    weights = "random (tiny ViT, fast mode)"
else:
    try:
        model, preprocess, tokenizer = load_clip(ARCH, pretrained=TAG)
        weights = f"{ARCH} / {TAG}"
    except ModelLoadError as err:  # offline: same architecture, random weights
        print("could not download the weights:", str(err)[:200], "...")
        model, preprocess, tokenizer = load_clip(ARCH)  # pretrained=None
        weights = f"{ARCH} / random"
RANDOM = "random" in weights
print("weights:", weights)
print(f"parameters: {sum(p.numel() for p in model.parameters()) / 1e6:.1f} M")

# %% [markdown]
# ## Two photos and a zero-shot head
#
# `skimage.data` ships real photos (no download): a cat and an astronaut. open_clip's
# preprocess resizes and centre-crops to 224 px and normalises.

# %%
photos = [Image.fromarray(data.chelsea()), Image.fromarray(data.astronaut())]
x = torch.stack([preprocess(p) for p in photos])  # (2, 3, 224, 224)
class_names = ["cat", "astronaut", "dog", "rocket", "flower"]
clf = ClipClassifier(model, tokenizer, class_names)  # prompts "a photo of a {}."
with torch.no_grad():
    probs = clf(x).softmax(-1)
for i, name in enumerate(["chelsea (cat)", "astronaut"]):
    top = probs[i].argmax().item()
    print(f"{name:14s} -> {class_names[top]:10s} p={probs[i, top]:.2f}")
if RANDOM:
    print("(random weights: these predictions are arbitrary)")

# %% [markdown]
# ## CCI and GradCAM
#
# The same calls as on the testbed. We run the paper's CCI (leave-one-out,
# `estimator="occlusion"`): ViT-B/32 at 224 px has a 7×7 patch grid, so K=5 regions is
# a reasonable choice here. `CCI(clf)` without arguments now defaults to
# `estimator="sufficiency"` over K=32 regions (capped at the grid's 49 patches), first on
# whole-patch deletion in `benchmarks/results/cci_regions_rank.md`.

# %%
target = torch.tensor([0, 1])  # explain "cat" for the cat, "astronaut" for the astronaut
t0 = time.perf_counter()
cci = CCI(clf, estimator="occlusion", n_clusters=5)  # the paper's CCI with K=5
attr, res = cci.attribute(x, target=target, return_clusters=True)
print(f"CCI: {tuple(attr.shape)} in {time.perf_counter() - t0:.1f} s")
print("cluster weights (cat):", [round(w, 3) for w in res.weights[0].tolist()])
cam = vit_gradcam(clf, x, target=target)
print("GradCAM:", tuple(cam.shape))

# %%
plot_clusters(x[0], res.labels[0], res.weights[0], title=f"CCI regions ({weights})")

# %%
compare_methods(x[1], {"CCI": attr[1], "GradCAM": cam[1]})

# %% [markdown]
# ## Caption–image interactions
#
# `IntegratedInteractions` takes the open_clip model and tokenizer directly. With real
# weights, the word "cat" lights up the cat.

# %%
ii = IntegratedInteractions(model, tokenizer)
t0 = time.perf_counter()
result = ii.explain(x[:1], ["a photo of a cat on a carpet"], n_steps=8 if FAST else 20)
print(f"interactions {tuple(result.attributions.shape)} in {time.perf_counter() - t0:.1f} s")
print("tokens:", [t for t in result.tokens[0] if t])
print(f"score {result.score[0]:.4f}   convergence delta {result.delta[0]:.1e}")
cat_map = result.image_map("cat")  # (7, 7)
print("'cat' map on the patch grid:", tuple(cat_map.shape))

# %%
fig = plot_interactions(result, photos[0].resize((224, 224)), words=["cat", "carpet"])
fig  # noqa: B018  (a pyplot-free Figure: a notebook shows the last expression)

# %% [markdown]
# ## What changes with real weights
#
# Nothing in the code. With `load_clip("ViT-B-32", pretrained="openai")` the predictions
# above are correct, CCI's top region covers the cat, and the "cat" row of the
# interaction matrix concentrates on it. Bigger models (`ViT-B-16`, `ViT-L-14`) have
# finer patch grids (14×14, 16×16): the paper's CCI costs K + 1 forward passes per image
# (the sufficiency default K + 2), the interactions about one block forward per
# integration step at the default layers.
# Hugging Face models load with `load_clip("hf:openai/clip-vit-base-patch32")`.
