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
# # 1. From GradCAM to CCI in an existing Captum workflow
#
# You already explain a CLIP zero-shot classifier with Captum's `LayerGradCam`. This
# tutorial shows
#
# 1. GradCAM done right on a ViT CLIP (`vit_gradcam`: the token sequence laid out as a
#    patch grid, the right block),
# 2. the one-line swap to **Cluster-based Concept Importance** (`CCI`), a Captum
#    `PerturbationAttribution` that hides whole regions of patch tokens,
# 3. the regions behind a CCI map (`return_clusters=True`) and the figure helpers,
# 4. that CCI composes with Captum wrappers such as `NoiseTunnel`.
#
# Everything runs offline on the bundled testbed model: a tiny CLIP trained on
# procedural scenes whose class evidence lies *only* inside a known object mask, so we
# can check where the maps point. Swap in `load_clip("ViT-B-32", pretrained="openai")`
# for a real model (tutorial 5).

# %%
# %matplotlib inline
import os
import time

import torch

from captum_clip import ClipClassifier, load_clip
from captum_clip.attr import CCI, vit_gradcam
from captum_clip.metrics import mask_share, pointing_game
from captum_clip.testbed import shapes
from captum_clip.viz.maps import compare_methods, overlay, plot_clusters

FAST = os.environ.get("CAPTUM_CLIP_TUTORIAL_FAST") == "1"  # set in CI: smaller batches
N_IMAGES = 4 if FAST else 16
_ = torch.manual_seed(0)

# %% [markdown]
# ## The model and the data
#
# `load_clip("testbed")` returns `(model, preprocess, tokenizer)` like open_clip.
# `ClipClassifier` turns it into a Captum forward function: normalised images →
# `(B, n_classes)` zero-shot logits from class prompts.

# %%
model, preprocess, tokenizer = load_clip("testbed")
class_names = list(shapes.CLASS_NAMES)  # the 6 surface patterns, printed below
print(class_names)  # solid; horizontal, vertical, diagonal stripes; dots; checks
clf = ClipClassifier(model, tokenizer, class_names, templates=["a photo of {}"])

scenes = shapes.generate_scenes(N_IMAGES, seed=0)  # images in [0, 1], exact object masks
x = preprocess(scenes.images)  # (B, 3, 64, 64), normalised
labels = scenes.labels
with torch.no_grad():
    pred = clf(x).argmax(1)
print(f"{N_IMAGES} scenes, zero-shot accuracy {(pred == labels).float().mean():.2f}")
print("first captions:", scenes.captions[:2])

# %% [markdown]
# ## Before: GradCAM
#
# Captum's `LayerGradCam` expects a layer output shaped `(B, C, h, w)`. A ViT block
# outputs tokens `(B, 1 + h*w, d)`; handed over directly, the "channels" would be the
# tokens. `vit_gradcam` runs `LayerGradCam` on the patch tokens laid out as a
# `(B, d, h, w)` grid (CLS dropped) of the second-to-last block — in a CLS-pooled CLIP the
# patch tokens *output* by the last block never reach the embedding, so GradCAM there is
# zero — and upsamples to the input shape. Use it like any Captum method:

# %%
gradcam = vit_gradcam(clf)  # reusable, like LayerGradCam(clf, layer)
t0 = time.perf_counter()
cam = gradcam.attribute(x, target=labels)  # (B, 3, H, W), shape of the inputs
t_cam = time.perf_counter() - t0
print("GradCAM attributions:", tuple(cam.shape), f"in {t_cam:.2f} s")

# %% [markdown]
# ## After: CCI — a one-line swap
#
# `CCI(clf, estimator="occlusion").attribute(x, target=t)` has the same contract. This is
# the paper's CCI: it clusters the patch tokens of the last block (k-means, K=7 regions),
# hides each cluster from every attention layer and reads the drop of the target logit
# `Δs_k` (leave-one-out). No gradients; K + 1 forward passes per image, all masked
# variants in one batched forward. `CCI(clf)` without `estimator` now defaults to
# `"sufficiency"` over K=32 regions (the score with only region k visible minus the score
# with nothing visible; K + 2 forwards), ahead of rollout and integrated gradients on whole-patch deletion in
# `benchmarks/results/cci_regions_rank.md`; we compute that map too.

# %%
t0 = time.perf_counter()
attr = CCI(clf, estimator="occlusion").attribute(x, target=labels)  # <- the line that changes
t_cci = time.perf_counter() - t0
print("CCI attributions:", tuple(attr.shape), f"in {t_cci:.2f} s")
suff = CCI(clf).attribute(x, target=labels)  # the library default: sufficiency, K=32

# %% [markdown]
# Both maps have the inputs' shape, so everything downstream in a Captum workflow —
# `visualize_image_attr`, `captum.metrics`, the metrics of `captum_clip.metrics` —
# takes them unchanged. On the testbed we know the object, so we can ask how much of
# each map's positive mass lies on it (`mask_share`) and whether its maximum does
# (`pointing_game`):

# %%
for name, a in (("GradCAM", cam), ("CCI", attr), ("CCI sufficiency", suff)):
    share = mask_share(a, scenes.masks).mean().item()
    hit = pointing_game(a, scenes.masks).mean().item()
    print(f"{name:15s} mask share {share:.2f}   pointing game {hit:.2f}")
print(f"object area (chance level of mask share): {scenes.masks.float().mean():.2f}")

# %% [markdown]
# ## The regions behind a CCI map
#
# `return_clusters=True` also returns a `CCIResult`: the cluster of every patch
# (`labels`), the masked scores, the deltas `Δs_k` and the normalised weights
# `w_k = Δs_k / Σ|Δs_j|`, and the most important region (`top_cluster()`). (With another
# estimator `values` holds the region values the weights normalise, and `scores` only the
# leave-one-out scores that estimator evaluated.)

# %%
cci = CCI(clf, n_clusters=5, estimator="occlusion", random_state=0)
attr5, res = cci.attribute(x, target=labels, return_clusters=True)
print("patch grid:", tuple(res.labels.shape[1:]), " K =", res.n_clusters)
print("image 0: base logit", round(res.base_score[0].item(), 3))
print("  Δs_k:", [round(v, 3) for v in res.deltas[0].tolist()])
print("  w_k :", [round(v, 3) for v in res.weights[0].tolist()])
# how much of each image's most important region lies on the object
grid = res.labels.shape[1:]
obj = torch.nn.functional.adaptive_avg_pool2d(scenes.masks[:, None].float(), grid)[:, 0]
top = res.top_cluster()  # (B, h, w) bool
inside = (obj * top).flatten(1).sum(1) / top.flatten(1).sum(1)
print("object fraction of the top region per image:", [round(v, 2) for v in inside.tolist()])

# %%
plot_clusters(x[0], res.labels[0], res.weights[0], title=class_names[int(labels[0])])

# %% [markdown]
# `overlay` draws any attribution with Captum's `visualize_image_attr`;
# `compare_methods` puts several side by side with the object mask.

# %%
overlay(x[0], attr[0], title="CCI")

# %%
compare_methods(x[0], {"GradCAM": cam[0], "CCI": attr[0]}, mask=scenes.masks[0])

# %% [markdown]
# ## Options you will reach for
#
# * `estimator=`: how a region is valued — `"occlusion"` (the paper's leave-one-out),
#   `"sufficiency"` (the default), exact `"shapley"` / `"banzhaf"` (K <= 10), or sampled
#   `"sampled_shapley"` / `"owen"` within `budget=` forwards (`docs/cci.md`; tutorial 3).
# * `n_clusters=(3, 5, 7)`: a multi-K ensemble (the maps are averaged; one batch).
# * `score="prob"`: explain the softmax probability instead of the logit.
# * `mask_mode="pixel"` (with `baselines=`): replace the region's pixels by a baseline
#   (all variants in one batch, like attention mode) — the mode for ResNet CLIPs.
# * `internal_batch_size=`: bound memory; `show_progress=True`: a tqdm bar.

# %%
paper = dict(estimator="occlusion")  # the paper's CCI, as above
ens = CCI(clf, n_clusters=(3, 5, 7), **paper).attribute(x, target=labels)
pix = CCI(clf, mask_mode="pixel", **paper).attribute(x, target=labels, internal_batch_size=32)
for name, a in (("CCI K=(3,5,7)", ens), ("CCI pixel mode", pix)):
    print(f"{name:15s} mask share {mask_share(a, scenes.masks).mean():.2f}")

# %% [markdown]
# ## Captum wrappers: NoiseTunnel
#
# CCI is a regular Captum attribution, so Captum's `NoiseTunnel` (SmoothGrad-style
# averaging over noisy copies of the input) wraps it unchanged:

# %%
from captum.attr import NoiseTunnel  # noqa: E402

nt = NoiseTunnel(CCI(clf, n_clusters=5))
smooth = nt.attribute(x, target=labels, nt_type="smoothgrad", nt_samples=3, stdevs=0.1)
print("NoiseTunnel(CCI):", tuple(smooth.shape))
print(f"mask share {mask_share(smooth, scenes.masks).mean():.2f}")

# %% [markdown]
# ## Summary
#
# ```python
# cam = vit_gradcam(clf).attribute(x, target=t)   # before
# attr = CCI(clf).attribute(x, target=t)          # after: same shape, same contract
# paper = CCI(clf, estimator="occlusion")         # the paper's leave-one-out CCI, K=7
# ```
#
# Next: tutorial 2 (which caption words match which regions) and tutorial 3 (is the
# explanation faithful — deletion, insertion, ROAD).
