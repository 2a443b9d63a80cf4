"""Train and evaluate testbed CLIP models.

Usage::

    python -m captum_clip.testbed.train --variant default            # train + save + eval
    python -m captum_clip.testbed.train --eval-only --variant default  # evaluate saved weights

Training draws fresh scenes every step (seeded), uses a CLIP contrastive loss with
duplicate-aware soft targets (identical captions in a batch share the target mass),
AdamW and a cosine learning-rate schedule with linear warmup.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from captum_clip.testbed import shapes, zoo
from captum_clip.testbed.tokenizer import TestbedTokenizer

EVAL_SEED = 424242
"""Held-out seed of the evaluation scenes (training seeds are >= 1,000,000)."""
EVAL_N = 600
CONDITIONS = ("overall", "aligned", "conflicting", "neutral")


def train_seed(seed: int, step: int) -> int:
    """Scene seed of a training step (disjoint from :data:`EVAL_SEED`)."""
    return 1_000_000 * (int(seed) + 1) + int(step)


def soft_clip_loss(img: torch.Tensor, txt: torch.Tensor, scale: torch.Tensor, captions: list[str]):
    """Symmetric contrastive loss; targets spread uniformly over identical captions."""
    logits = scale * img @ txt.t()
    ids = {c: i for i, c in enumerate(dict.fromkeys(captions))}
    key = torch.tensor([ids[c] for c in captions], device=img.device)
    same = (key[:, None] == key[None, :]).float()
    target = same / same.sum(1, keepdim=True)
    loss_i = -(target * F.log_softmax(logits, 1)).sum(1).mean()
    loss_t = -(target * F.log_softmax(logits.t(), 1)).sum(1).mean()
    return (loss_i + loss_t) / 2


def lr_at(step: int, steps: int, lr: float, warmup: int) -> float:
    """Linear warmup to ``lr`` then cosine decay to 2 % of it."""
    if step < warmup:
        return lr * (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * t)))


@torch.no_grad()
def class_text_features(
    model, tokenizer: TestbedTokenizer, templates: tuple[str, ...] = (shapes.PROMPT_TEMPLATE,)
) -> torch.Tensor:
    """Normalised ``(n_classes, D)`` class embeddings, averaged over prompt templates."""
    device = next(model.parameters()).device
    feats = []
    for template in templates:
        t = tokenizer(shapes.class_prompts(template)).to(device)
        feats.append(F.normalize(model.encode_text(t).float(), dim=-1))
    return F.normalize(torch.stack(feats).mean(0), dim=-1)


def condition_backgrounds(factors: dict, condition: str, seed: int) -> torch.Tensor:
    """Background indices for an evaluation condition.

    ``overall``: as sampled (uniform over all backgrounds); ``aligned``: the class's own
    background; ``conflicting``: the own background of a different, random class;
    ``neutral``: uniform over the backgrounds owned by no class.
    """
    cls = factors["class"]
    g = torch.Generator().manual_seed(int(seed) + 7)
    n_cls, n_bg = len(shapes.CLASS_NAMES), len(shapes.BACKGROUND_NAMES)
    if condition == "overall":
        return factors["background"]
    if condition == "aligned":
        return shapes.own_background(cls)
    if condition == "conflicting":
        other = (cls + torch.randint(1, n_cls, cls.shape, generator=g)) % n_cls
        return shapes.own_background(other)
    if condition == "neutral":
        owned = set(shapes.own_background(torch.arange(n_cls)).tolist())
        free = torch.tensor([b for b in range(n_bg) if b not in owned])
        if free.numel() == 0:
            raise ValueError("no neutral background: every background is owned by a class")
        return free[torch.randint(free.numel(), cls.shape, generator=g)]
    raise ValueError(f"unknown condition {condition!r}; expected one of {CONDITIONS}")


@torch.no_grad()
def evaluate(
    model,
    tokenizer: TestbedTokenizer,
    n: int = EVAL_N,
    seed: int = EVAL_SEED,
    size: int = 64,
    templates: tuple[str, ...] = (shapes.PROMPT_TEMPLATE,),
    batch_size: int = 200,
) -> dict[str, float]:
    """Zero-shot class accuracy (in %) on held-out scenes per background condition.

    The same ``n`` objects (factors drawn with ``seed``, rho=0) are rendered under every
    condition of :func:`condition_backgrounds`, so the conditions differ only in the
    background.
    """
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        text = class_text_features(model, tokenizer, templates)
        base = shapes.sample_factors(n, seed=seed, rho=0.0, size=size)
        out = {}
        for cond in CONDITIONS:
            f = dict(base, background=condition_backgrounds(base, cond, seed))
            correct = 0
            for s in range(0, n, batch_size):
                sub = shapes.select(f, slice(s, s + batch_size))
                images, _ = shapes.render(sub, size)
                img = F.normalize(model.encode_image(shapes.normalize(images).to(device)), dim=-1)
                pred = (img.float() @ text.t()).argmax(1).cpu()
                correct += int((pred == sub["class"]).sum())
            out[cond] = 100.0 * correct / n
        out["gap_aligned_minus_conflicting"] = out["aligned"] - out["conflicting"]
        return out
    finally:
        model.train(was_training)


def train(
    config: dict[str, Any],
    steps: int | None = None,
    seed: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    show_progress: bool = True,
    log_every: int = 50,
    eval_every: int = 0,
):
    """Trains a fresh model from a recipe; returns ``(model, tokenizer, history)``."""
    tcfg, dcfg = config["train"], config["data"]
    steps = int(steps if steps is not None else tcfg["steps"])
    seed = int(seed if seed is not None else tcfg["seed"])
    bs = int(batch_size if batch_size is not None else tcfg["batch_size"])
    lr = float(lr if lr is not None else tcfg["lr"])
    if steps < 1 or bs < 2 or lr <= 0:
        raise ValueError(f"need steps >= 1, batch_size >= 2, lr > 0; got {steps}, {bs}, {lr}")
    torch.manual_seed(seed)
    model = zoo.build_model(config)
    tok = zoo.build_tokenizer(config)
    model.train()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    other = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": float(tcfg["weight_decay"])},
            {"params": other, "weight_decay": 0.0},
        ],
        lr=lr,
        betas=(0.9, 0.98),
    )
    size = int(dcfg["image_size"])
    cache: dict[str, torch.Tensor] = {}
    history = []
    bar = tqdm(range(steps), disable=not show_progress, desc=f"train {config.get('name', '')}")
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, lr, int(tcfg["warmup_steps"]))
        f = shapes.sample_factors(
            bs,
            seed=train_seed(seed, step),
            rho=float(dcfg["rho"]),
            size=size,
            radius_range=tuple(dcfg["radius_range"]),
            caption_probs=tuple(dcfg["caption_probs"]),
        )
        images, _ = shapes.render(f, size)
        captions = shapes.captions_for(f)
        for c in set(captions) - cache.keys():
            cache[c] = tok(c)[0]
        tokens = torch.stack([cache[c] for c in captions])
        img = model.encode_image(shapes.normalize(images), normalize=True)
        txt = model.encode_text(tokens, normalize=True)
        loss = soft_clip_loss(img, txt, model.logit_scale.exp(), captions)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        if step % log_every == 0 or step == steps - 1:
            value = loss.item()
            history.append({"step": step, "loss": value})
            bar.set_postfix(loss=f"{value:.3f}")
            if not show_progress:
                print(f"step {step} loss {value:.4f}", flush=True)
        if eval_every and (step + 1) % eval_every == 0 and step + 1 < steps:
            acc = evaluate(model, tok, n=300, seed=EVAL_SEED + 1, size=size)
            history.append({"step": step + 1, "eval": acc})
            print(f"step {step + 1} eval {json.dumps(acc)}", flush=True)
            model.train()
    model.eval()
    return model, tok, history


def markdown_table(metrics: dict[str, float], variant: str) -> str:
    """One-row markdown table of :func:`evaluate` metrics."""
    head = "| variant | overall | aligned | conflicting | neutral | aligned - conflicting |"
    row = (
        f"| {variant} | {metrics['overall']:.1f} | {metrics['aligned']:.1f} | "
        f"{metrics['conflicting']:.1f} | {metrics['neutral']:.1f} | "
        f"{metrics['gap_aligned_minus_conflicting']:.1f} |"
    )
    return "\n".join([head, "| --- | --- | --- | --- | --- | --- |", row])


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point (see the module docstring)."""
    p = argparse.ArgumentParser(
        prog="python -m captum_clip.testbed.train",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--variant", default="default", help=f"one of {zoo.list_variants()}")
    p.add_argument("--config", type=Path, default=None, help="recipe JSON (overrides --variant's)")
    p.add_argument("--steps", type=int, default=None, help="override the recipe's steps")
    p.add_argument("--seed", type=int, default=None, help="override the recipe's seed")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--out", type=Path, default=None, help="weights path (.safetensors)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--eval-only", action="store_true", help="evaluate saved weights")
    p.add_argument(
        "--update-json", action="store_true", help="with --eval-only: store metrics in the JSON"
    )
    p.add_argument("--eval-n", type=int, default=EVAL_N)
    p.add_argument("--eval-seed", type=int, default=EVAL_SEED)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--eval-every", type=int, default=0, help="evaluate every N steps (log)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    config = zoo.load_config(args.variant)
    if args.config is not None:
        config = json.loads(args.config.read_text())
    size = int(config["data"]["image_size"])
    if args.eval_only:
        if args.out is not None:
            from safetensors.torch import load_file

            model, tok = zoo.build_model(config), zoo.build_tokenizer(config)
            model.load_state_dict({k: v.float() for k, v in load_file(str(args.out)).items()})
            model.eval()
        else:
            model, _, tok = zoo.load_testbed(args.variant)
        metrics = evaluate(model, tok, n=args.eval_n, seed=args.eval_seed, size=size)
        print(markdown_table(metrics, args.variant))
        if args.update_json:
            meta_path = Path(args.out or zoo.weights_path(args.variant)).with_suffix(".json")
            meta = json.loads(meta_path.read_text())
            meta["metrics"].update(metrics, eval_n=args.eval_n, eval_seed=args.eval_seed)
            meta_path.write_text(json.dumps(meta, indent=2) + "\n")
            print(f"updated {meta_path}")
        return 0
    t0 = time.time()
    model, tok, history = train(
        config,
        args.steps,
        args.seed,
        args.batch_size,
        args.lr,
        show_progress=not args.no_progress,
        eval_every=args.eval_every,
    )
    minutes = (time.time() - t0) / 60
    # evaluate exactly what is saved: weights rounded to fp16
    model.load_state_dict({k: v.half().float() for k, v in model.state_dict().items()})
    metrics = evaluate(model, tok, n=args.eval_n, seed=args.eval_seed, size=size)
    metrics.update(
        train_minutes=round(minutes, 2),
        eval_n=args.eval_n,
        eval_seed=args.eval_seed,
        final_loss=history[-1]["loss"],
        argv=["python", "-m", "captum_clip.testbed.train"] + list(argv or sys.argv[1:]),
    )
    recipe = json.loads(json.dumps(config))
    for key, val in (
        ("steps", args.steps),
        ("seed", args.seed),
        ("batch_size", args.batch_size),
        ("lr", args.lr),
    ):
        if val is not None:
            recipe["train"][key] = val
    out = args.out or zoo.weights_path(args.variant)
    zoo.save_weights(model, recipe, metrics, out)
    print(markdown_table(metrics, args.variant))
    print(f"saved {out} ({minutes:.1f} min)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
