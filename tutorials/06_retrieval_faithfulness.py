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
# # 6. Retrieval faithfulness: does the map explain why an image is *found*?
#
# Grad-ECLIP and CCI report their headline number on MS-COCO *retrieval*: explain every
# image of a gallery against its own captions, delete (or insert) its pixels in the order
# of the map, and watch recall@k of the whole gallery:
#
# * **IR@k** — every caption queries the images; a hit when its own image is in the top k;
# * **TR@k** — every image queries the captions; a hit when one of its captions is there.
#
# A faithful map makes deletion recall fall fast (lower AUC is better) and insertion
# recall rise fast (higher is better). Here the gallery is a COCO-format captions file
# written from testbed scenes, so the notebook runs offline in seconds; on real data you
# run the same harness with `captum-clip faithfulness retrieval IMAGES CAPTIONS --model
# ViT-B-16:openai --out DIR` (see `docs/retrieval.md`).

# %%
# %matplotlib inline
import json
import os
import tempfile
from pathlib import Path

import torch
from IPython.display import Markdown, display

from captum_clip.benchmark.retrieval import RetrievalSettings, evaluate_retrieval
from captum_clip.benchmark.retrieval_report import retrieval_markdown, save_retrieval_plots
from captum_clip.datasets import load_captions
from captum_clip.metrics import recall_at_k
from captum_clip.testbed.captions import write_caption_gallery

FAST = os.environ.get("CAPTUM_CLIP_TUTORIAL_FAST") == "1"  # set in CI: a smaller gallery
N_IMAGES = 12 if FAST else 48
METHODS = (
    ["CCI", "GradECLIP", "Saliency"]
    if FAST
    else ["CCI", "GradECLIP", "MaskCLIP", "Saliency", "IntegratedGradients"]
)
torch.set_num_threads(1)
work = Path(tempfile.mkdtemp(prefix="captum_clip_retrieval_"))

# %% [markdown]
# ## A caption gallery in COCO format
#
# A COCO captions file is `{"images": [{"id", "file_name"}], "annotations": [{"image_id",
# "caption"}]}`; `load_captions` also reads Karpathy-split files (`dataset_coco.json`,
# with `split="test"`). Each testbed scene gets three captions in the forms the testbed
# model was trained on.

# %%
images_dir, captions_file = write_caption_gallery(
    work / "gallery", N_IMAGES, seed=7, captions_per_image=3
)
data = json.loads(captions_file.read_text())
print(data["images"][0], data["annotations"][:3], sep="\n")
gallery = load_captions(captions_file, images_dir)
print(
    f"{len(gallery)} images, {len(gallery.captions)} captions;", "image 0:", gallery.captions_of(0)
)

# %% [markdown]
# ## The harness
#
# `evaluate_retrieval` explains image `i` at target `i` of `CaptionSetSimilarity` (a
# `ClipSimilarity` against every image's caption set), perturbs each image by its own
# map with the Grad-ECLIP/CCI preset (100 steps to 50 % of the pixels, scored every 10;
# noise deletion, black insertion) and scores the gallery at every step. It writes one part
# file per method and batch, so a killed run resumes where it stopped.

# %%
settings = RetrievalSettings(protocol="grad-eclip", ks=(1, 5))
result = evaluate_retrieval(
    "testbed",
    gallery,
    work / "run",
    methods=METHODS,
    settings=settings,
    batch_size=8,
    show_progress=False,
)
print(
    result.summary.query("k == 1")
    .pivot_table(index="method", columns=["mode", "direction"], values="auc")
    .round(3)
)

# %% [markdown]
# Every deletion curve starts at the recall of the unperturbed gallery, and running the
# same call again computes nothing: the parts are on disk.

# %%
clean = result.clean.set_index(["direction", "k"])["recall"]
starts = result.summary.query("mode == 'deletion'").set_index(["direction", "k"])["start"]
print(f"unperturbed IR@1 {clean[('image', 1)]:.3f}, TR@1 {clean[('text', 1)]:.3f}")
print("deletion curves start there:", bool((starts == clean.reindex(starts.index)).all()))
again = evaluate_retrieval(
    "testbed",
    gallery,
    work / "run",
    methods=METHODS,
    settings=settings,
    batch_size=8,
    show_progress=False,
)
print("method-image pairs computed on the second call:", again.computed)

# %% [markdown]
# ## recall@k itself
#
# `recall_at_k` is a plain function of image embeddings, caption embeddings and the image
# each caption belongs to. Ties count as a random order would (a gallery of identical
# images gives k/N, not 1), and it refuses arguments that would silently give another
# number.

# %%
img, txt = torch.eye(3), torch.tensor([[1.0, 0.1, 0.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.2]])
print(
    {
        k: round(v.item(), 3)
        for k, v in recall_at_k(img, txt, torch.tensor([0, 1, 2]), ks=(1, 2)).items()
    }
)
print(
    {
        k: round(v.item(), 3)
        for k, v in recall_at_k(torch.ones(3, 3), txt, torch.tensor([0, 1, 2]), ks=(1,)).items()
    }
)
try:
    recall_at_k(img, txt, torch.tensor([0, 1, 2]), direction="images")
except ValueError as err:
    print("ValueError:", err)

# %% [markdown]
# ## The report
#
# The CLI writes the same Markdown table and this figure to `--out`.

# %%
png = save_retrieval_plots(result, work / "run" / "retrieval.png", k=1)
display(Markdown(retrieval_markdown(result, "tutorial", ["testbed gallery"], None)))
from IPython.display import Image as IPImage  # noqa: E402

display(IPImage(filename=str(png)))
