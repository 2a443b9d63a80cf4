"""Named regions and mask-free diagnosis on the testbed, over seeds.

Two measurements (``docs/concepts.md``), written to ``benchmarks/results/concepts.md`` (mean
± sd over scene seeds; per-seed rows in ``concepts_naming.csv`` / ``concepts_diagnosis.csv``):

* **Naming.** For every scene, CCI's K regions (``CCI(clf, n_clusters=K)``) are named with
  the class names + background names. Scored: the region holding the most object pixels
  is named as the true class (``object``), the region holding the most background pixels
  as the true background (``background``). Settings: explained model × namer (self-named
  default and shortcut models, the shortcut model named by the default one), region
  embedding (``context``, ``isolated``, ``dense``), K.
* **Diagnosis.** The shortcut model's predictions diagnosed (region ablation) with true
  masks, with :class:`~captum_clip.masks.ConceptMasks` from the default model (reference
  namer) and from the shortcut model itself, scored by AUROC against the causal
  foreground/background labels; plus the AUROC of the shortcut-evidence column
  (``shortcut_share``, soft and hard) for causally background-driven predictions::

    python benchmarks/concepts.py                      # 96 naming / 200 diagnosis scenes x 3 seeds
    python benchmarks/concepts.py --n 24 --n-diag 48 --seeds 1   # quick look
    python benchmarks/concepts.py --parts diagnosis   # rerun one part, the other from its CSV
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from cci_regions import _mean_sd as _ms  # the same mean ± sd cells

RESULTS = Path(__file__).parent / "results"
SEEDS = (1101, 1202, 1303)
PAIRS = (("default", "default"), ("shortcut", "shortcut"), ("shortcut", "default"))


def _models():
    from captum_clip import ClipClassifier, load_clip
    from captum_clip.testbed import CLASS_NAMES

    out = {}
    for v in ("default", "shortcut"):
        loaded = load_clip("testbed", variant=v)
        clf = ClipClassifier(
            loaded.model, loaded.tokenizer, CLASS_NAMES, templates=["a photo of {}"]
        )
        out[v] = (loaded, clf)
    return out


def _settings(ks, embeddings):
    """(K, embedding, templates) rows: every K x embedding with the default templates, then
    the template sets compared at the default embedding and the largest K."""
    from captum_clip.concepts import DEFAULT_TEMPLATES
    from captum_clip.testbed import TestbedTokenizer

    rows = [(k, e, None) for k in ks for e in embeddings]
    for t in (("a photo of {}",), DEFAULT_TEMPLATES, TestbedTokenizer.concept_templates):
        rows.append((max(ks), "context", t))
    return rows


def naming(models, seed: int, n: int, ks, embeddings) -> list[dict]:
    from captum_clip.attr import CCI
    from captum_clip.concepts import Namer, name_regions
    from captum_clip.testbed import BACKGROUND_NAMES, CLASS_NAMES, generate_scenes, shapes

    vocab = list(CLASS_NAMES) + list(BACKGROUND_NAMES)
    scenes = generate_scenes(n, seed=seed)
    x = shapes.normalize(scenes.images)
    rows = []
    for explained, namer_v in PAIRS:
        clf = models[explained][1]
        target = clf(x).argmax(1)
        regions = {}
        for k, emb, templates in _settings(ks, embeddings):
            if k not in regions:
                regions[k] = CCI(clf, n_clusters=k).attribute(
                    x, target=target, return_clusters=True
                )
            res = regions[k][1]
            loaded = models[namer_v][0]
            namer = Namer(loaded.model, loaded.tokenizer, loaded.preprocess, embedding=emb,
                          templates=templates)  # fmt: skip
            t0 = time.perf_counter()
            named = name_regions(x, res, vocab, namer=namer)
            sec = time.perf_counter() - t0
            lab, m = named.labels, scenes.masks
            ok_o = ok_b = 0
            for i in range(n):
                ids = torch.arange(int(lab[i].max()) + 1)[:, None, None]
                obj = ((lab[i] == ids) & m[i]).flatten(1).sum(1)
                bg = ((lab[i] == ids) & ~m[i]).flatten(1).sum(1)
                best = named.best[i]
                ok_o += best[int(obj.argmax())] == CLASS_NAMES[int(scenes.labels[i])]
                bg_name = BACKGROUND_NAMES[int(scenes.factors["background"][i])]
                ok_b += best[int(bg.argmax())] == bg_name
            rows.append(
                {"seed": seed, "n": n, "explained": explained, "namer": namer_v, "K": k,
                 "embedding": emb, "templates": "default" if templates is None else
                 " + ".join(f"'{t}'" for t in templates), "object": ok_o / n, "background": ok_b / n,
                 "both": min(ok_o, ok_b) / n, "seconds": sec}
            )  # fmt: skip
            print(rows[-1], flush=True)
    return rows


def diagnosis(models, seed: int, n: int, k: int) -> dict:
    from sklearn.metrics import roc_auc_score

    from captum_clip.diagnosis import causal_agreement, diagnose
    from captum_clip.masks import ConceptMasks
    from captum_clip.testbed import BACKGROUND_NAMES, causal_labels, generate_scenes, shapes

    clf = models["shortcut"][1]
    scenes = generate_scenes(n, seed=seed, rho=0.5)
    x = shapes.normalize(scenes.images)
    truth = causal_labels(clf, scenes, internal_batch_size=64)
    labels = np.asarray(truth.labels)
    keep = np.isin(labels, ["foreground", "background"])
    row: dict = {"seed": seed, "n": n, "K": k, "n_fg": int((labels == "foreground").sum()),
                 "n_bg": int((labels == "background").sum())}  # fmt: skip
    d = diagnose(clf, x, scenes.masks, target=truth.target, internal_batch_size=100)
    row["true_masks"] = causal_agreement(d, truth)["auroc"]
    for name, namer_v in (("reference", "default"), ("self", "shortcut")):
        provider = ConceptMasks(models[namer_v][0], list(BACKGROUND_NAMES), n_clusters=k,
                                evidence=name == "reference")  # fmt: skip
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            d = diagnose(clf, x, provider, labels=scenes.labels, target=truth.target,
                         internal_batch_size=100)  # fmt: skip
        row[f"{name}_seconds"] = time.perf_counter() - t0
        row[name] = causal_agreement(d, truth)["auroc"]
        row[f"{name}_fallback"] = float(d.table["concept_fallback"].mean())
        if name == "reference":
            bg = labels[keep] == "background"
            row["evidence_soft"] = roc_auc_score(bg, d.table["shortcut_share"].to_numpy()[keep])
            from captum_clip.concepts import shortcut_evidence

            ev = shortcut_evidence(clf, x, provider.namer, list(BACKGROUND_NAMES),
                                   target=truth.target)  # fmt: skip
            row["evidence_hard"] = roc_auc_score(bg, ev.hard_share.numpy()[keep])
    print(row, flush=True)
    return row


def report(nam: pd.DataFrame, diag: pd.DataFrame, command: str) -> str:
    seeds = sorted(nam["seed"].unique())
    lines = [
        "# Named regions and mask-free diagnosis (testbed)",
        "",
        f"`{command}`; scene seeds {', '.join(map(str, seeds))}; mean ± sd over seeds.",
        "",
        f"## Naming ({int(nam['n'].iloc[0])} scenes per seed, rho=0)",
        "",
        "Fraction of scenes whose most-object CCI region is named as the true class, whose",
        "most-background region is named as the true background, and both (min of the",
        "counts); vocabulary = 6 class names + 8 background names. Templates `default` = the",
        "testbed tokenizer's `concept_templates` (`'a photo of {}' + '{} pattern'`), what",
        "`Namer` uses for testbed models; the other rows compare template sets.",
        "",
        "| explained | namer | K | embedding | templates | object | background | seconds |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for key, g in nam.groupby(["explained", "namer", "K", "embedding", "templates"], sort=False):
        e, nm, k, emb, tpl = key
        lines.append(
            f"| {e} | {nm} | {k} | {emb} | {tpl} | {_ms(g['object'])} | "
            f"{_ms(g['background'])} | {g['seconds'].mean():.1f} |"
        )
    lines += [
        "",
        f"## Mask-free diagnosis ({int(diag['n'].iloc[0])} scenes per seed, rho=0.5, "
        f"shortcut model, K={int(diag['K'].iloc[0])})",
        "",
        "AUROC of region-ablation diagnosis (`fg_effect - bg_effect`) against the causal",
        "foreground/background labels, with true masks and with `ConceptMasks`; `fallback`",
        "= share of images where no region was named as the class (the closest region was",
        "taken); evidence = AUROC of `shortcut_share` for causally background-driven",
        "predictions.",
        "",
        "| masks | AUROC | fallback | seconds |",
        "| --- | --- | --- | --- |",
        f"| true masks | {_ms(diag['true_masks'])} | – | – |",
        f"| ConceptMasks, reference namer (default model) | {_ms(diag['reference'])} | "
        f"{_ms(diag['reference_fallback'])} | {diag['reference_seconds'].mean():.1f} |",
        f"| ConceptMasks, self-named (shortcut model) | {_ms(diag['self'])} | "
        f"{_ms(diag['self_fallback'])} | {diag['self_seconds'].mean():.1f} |",
        "",
        "| shortcut evidence (reference namer) | AUROC for background-driven |",
        "| --- | --- |",
        f"| `shortcut_share` (soft, the table's column) | {_ms(diag['evidence_soft'])} |",
        f"| `hard_share` (own best name = prediction) | {_ms(diag['evidence_hard'])} |",
        "",
        f"Causal labels per seed: foreground {', '.join(map(str, diag['n_fg']))}; "
        f"background {', '.join(map(str, diag['n_bg']))}.",
    ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=96, help="naming scenes per seed")
    p.add_argument("--n-diag", type=int, default=200, help="diagnosis scenes per seed")
    p.add_argument("--seeds", type=int, default=3, help=f"how many of {SEEDS}")
    p.add_argument("--ks", type=int, nargs="+", default=[6, 8])
    p.add_argument("--embeddings", nargs="+", default=["context", "isolated", "dense"])
    p.add_argument("--diag-k", type=int, default=8)
    p.add_argument(
        "--parts",
        nargs="+",
        choices=("naming", "diagnosis"),
        default=["naming", "diagnosis"],
        help="what to run; the other part is read from its CSV in benchmarks/results",
    )
    args = p.parse_args(argv)
    torch.manual_seed(0)
    models = _models()
    seeds = SEEDS[: args.seeds]
    RESULTS.mkdir(exist_ok=True)
    if "naming" in args.parts:
        rows = [r for s in seeds for r in naming(models, s, args.n, args.ks, args.embeddings)]
        pd.DataFrame(rows).to_csv(RESULTS / "concepts_naming.csv", index=False)
    if "diagnosis" in args.parts:
        rows = [diagnosis(models, s, args.n_diag, args.diag_k) for s in seeds]
        pd.DataFrame(rows).to_csv(RESULTS / "concepts_diagnosis.csv", index=False)
    nam = pd.read_csv(RESULTS / "concepts_naming.csv")
    diag = pd.read_csv(RESULTS / "concepts_diagnosis.csv")
    text = report(
        nam,
        diag,
        "python benchmarks/concepts.py " + " ".join(sys.argv[1:] if argv is None else argv),
    )
    (RESULTS / "concepts.md").write_text(text)
    print(text)
    print(f"wrote {RESULTS / 'concepts.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
