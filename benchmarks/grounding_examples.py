"""The example figures of ``grounding_testbed.md``, without the full 15-minute run.

``captum-clip grounding testbed`` draws its example figure from the first pairs of the
first seed; this script computes only those pairs (seed 0 of ``--n 24``: one object on its
three backgrounds; 20 Gauss-Legendre steps, default layers, as in the full run) and writes
``benchmarks/results/grounding_testbed_examples_<model>.png``. It prints the grounding
rows of the pairs it draws (object share of each word against the object's area)::

    python benchmarks/grounding_examples.py
"""

from __future__ import annotations

from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"
MODELS = ("testbed:default", "testbed:shortcut")


def main() -> None:
    from captum_clip.attr import IntegratedInteractions
    from captum_clip.grounding import analyse, markdown, plots, testbed_scenes
    from captum_clip.grounding.report import _slug
    from captum_clip.testbed import load_testbed

    torch.set_num_threads(2)
    sc = testbed_scenes(24, 0)
    k = 3
    rows = []
    for spec in MODELS:
        model, preprocess, tok = load_testbed(spec.split(":")[1])
        meta = [dict(m, model=spec) for m in sc.meta[:k]]
        part, kept = analyse(IntegratedInteractions(model, tok), preprocess(sc.images[:k]),
                             sc.captions[:k], sc.masks[:k].float(), sc.roles[:k], meta,
                             batch_size=k, keep=1, n_steps=20)  # fmt: skip
        rows += part
        fig = plots.plot_examples(kept[0], list(sc.images[:k]), list(sc.masks[:k].float()),
                                  sc.roles[:k], sc.captions[:k])  # fmt: skip
        path = RESULTS / f"grounding_testbed_examples_{_slug(spec)}.png"
        fig.savefig(path, dpi=110)
        print(f"wrote {path}")
    cols = ["model", "pair", "role", "word", "area_share", "object_share", "pointing"]
    print(markdown(rows, cols))


if __name__ == "__main__":
    main()
