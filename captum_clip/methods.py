"""The registry of attribution methods: one entry per method, read by every surface.

``captum-clip explain --method NAME``, ``captum-clip faithfulness --methods``, the
faithfulness benchmark (:mod:`captum_clip.benchmark.methods`), the conformance test
(``tests/test_conformance.py``) and the method table of ``docs/methods.md`` all read
:data:`METHODS`, so a new method is registered once, here.

An entry says how the method is built from a zero-shot
:class:`~captum_clip.models.ClipClassifier` (its Python defaults: the registry passes
no setting the user did not give), which vision towers it runs on, what it costs per
image, whether its answer depends on a random seed, and what its output is.

This module imports nothing heavy (the builders import the method when called), so the
command line's parser can read the names.

Example:
    >>> from captum_clip.methods import METHODS, build
    >>> method = build("attnlrp-cp", clf)            # AttnLRP(clf, attention="cp")
    >>> attr = method.attribute(images, target=3)    # (B, 3, H, W)
    >>> pixel_map("interactions", method, clf, images, target=3)  # any method: (B, 3, H, W)
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "METHODS",
    "METHOD_NAMES",
    "Method",
    "build",
    "get_method",
    "markdown_table",
    "pixel_map",
    "refusal",
    "runs_on",
]

TOWERS = ("vit", "lrp", "any")
"""``"vit"``: reads attention (a ViT vision tower); ``"lrp"``: a ViT, or a convolutional tower
whose every layer type has an LRP rule (ResNet, ConvNeXt, FastViT; ``docs/peers.md``);
``"any"``: any tower the adapters know."""
OUTPUTS = ("pixels", "interactions")
"""``"pixels"``: attributions shaped like the images ``(B, 3, H, W)``; ``"interactions"``:
``(B, S, 1+P)`` caption-token x image-patch interactions."""


@dataclass(frozen=True)
class Method:
    """One registered attribution method.

    Attributes:
        name: What users type (``--method NAME``, :func:`build`).
        label: Its name in benchmark tables and results files.
        title: Its name over a figure.
        summary: One line: what it computes.
        towers: One of :data:`TOWERS`.
        cost: Passes per image at the defaults (forwards, backwards), in words.
        forwards: Image forward passes per image at the defaults (on a tower with at
            least 32 patches; ``tests/test_conformance.py`` counts them).
        gradients: The method backpropagates (its forwards record a graph).
        stochastic: The answer depends on a random seed (``random_state``).
        output: One of :data:`OUTPUTS`.
        make: ``(clf, **options) -> attribution object`` (imports the method lazily).
        options: Constructor options the command line passes through (only when given).
        reference: The paper or source.
    """

    name: str
    label: str
    title: str
    summary: str
    towers: str
    cost: str
    forwards: int
    gradients: bool
    stochastic: bool
    output: str
    make: Callable[..., Any] = field(repr=False)
    options: tuple[str, ...] = ()
    reference: str = ""


def _cci(clf: Any, **options: Any) -> Any:
    from captum_clip.attr.cci import CCI

    return CCI(clf, **options)


def _attnlrp(attention: str) -> Callable[..., Any]:
    def make(clf: Any, **options: Any) -> Any:
        from captum_clip.attr.attnlrp import AttnLRP

        return AttnLRP(clf, attention=attention, **options)

    return make


def _attr_class(cls_name: str) -> Callable[..., Any]:
    def make(clf: Any, **options: Any) -> Any:
        import captum_clip.attr as attr

        return getattr(attr, cls_name)(clf, **options)

    return make


def _integrated_gradients(clf: Any, **options: Any) -> Any:
    from captum.attr import IntegratedGradients

    return IntegratedGradients(clf, **options)


def _interactions(clf: Any, **options: Any) -> Any:
    from captum_clip.attr.interactions import IntegratedInteractions

    model, tokenizer = getattr(clf, "model", None), getattr(clf, "tokenizer", None)
    if model is None or tokenizer is None:
        raise ValueError(
            "interactions needs the CLIP model and its tokenizer: pass a ClipClassifier / "
            f"ClipSimilarity, got {type(clf).__name__}"
        )
    return IntegratedInteractions(model, tokenizer, **options)


_ENTRIES = (
    Method(
        "cci", "CCI default", "CCI",
        "CCI(clf): k-means regions of the tower's patch features, each region's value "
        "the logit with only it visible minus the logit with nothing visible (sufficiency)",
        "any", "K+2 masked forwards (K=32), no backward", 34, False, True, "pixels", _cci,
        ("n_clusters", "estimator", "mask_mode"), "Agarwal et al., arXiv 2511.12978",
    ),
    Method(
        "attnlrp", "AttnLRP", "AttnLRP",
        "layer-wise relevance propagation with the AttnLRP rules through attention",
        "lrp", "1 forward + 1 backward", 1, True, False, "pixels", _attnlrp("attnlrp"),
        reference="Achtibat et al., ICML 2024",
    ),
    Method(
        "attnlrp-cp", "AttnLRP cp", "AttnLRP (CP)",
        "LRP with the attention weights held constant (CP-LRP)",
        "lrp", "1 forward + 1 backward", 1, True, False, "pixels", _attnlrp("cp"),
        reference="Ali et al., ICML 2022",
    ),
    Method(
        "legrad", "LeGrad", "LeGrad",
        "gradient of each layer's own score wrt its attention map, summed over layers",
        "vit", "1 forward + 1 backward per layer from start_layer (the last 2)", 1, True, False,
        "pixels", _attr_class("LeGrad"), reference="Bousselham et al., 2024",
    ),
    Method(
        "rollout", "GradientRollout", "gradient rollout",
        "gradient-weighted attention rollout",
        "vit", "1 forward + 1 backward", 1, True, False, "pixels", _attr_class("GradientRollout"),
        reference="Chefer et al., ICCV 2021",
    ),
    Method(
        "grad-eclip", "GradECLIP", "Grad-ECLIP",
        "gradient-weighted values of the last attention layer",
        "vit", "1 forward + 1 backward", 1, True, False, "pixels", _attr_class("GradECLIP"),
        reference="Zhao et al., ICML 2024",
    ),
    Method(
        "maskclip", "MaskCLIP", "MaskCLIP",
        "patch-text cosine through the last block's value path",
        "vit", "1 forward, no backward", 1, False, False, "pixels", _attr_class("MaskCLIP"),
        reference="Zhou et al., ECCV 2022",
    ),
    Method(
        "gradcam", "vit_gradcam", "GradCAM",
        "GradCAM on a ViT block's patch tokens or a convolutional stage",
        "any", "1 forward + 1 backward", 1, True, False, "pixels", _attr_class("ViTGradCam"),
        reference="Selvaraju et al., ICCV 2017",
    ),
    Method(
        "integrated-gradients", "IntegratedGradients", "integrated gradients",
        "Captum's IntegratedGradients at the pixels (zero = mean-colour baseline)",
        "any", "50 forwards + 50 backwards (n_steps)", 50, True, False, "pixels",
        _integrated_gradients, reference="Sundararajan et al., ICML 2017",
    ),
    Method(
        "interactions", "IntegratedInteractions", "integrated interactions",
        "second-order caption-token x image-patch interactions of the class prompt; the "
        "map is each patch's interactions summed over the prompt's tokens",
        "any", "2 forwards, then 20 forward-mode integration steps through the last block of "
        "each tower (n_steps)", 2, False, False,
        "interactions", _interactions, reference="Moeller et al., arXiv 2408.14153",
    ),
)  # fmt: skip

#: name -> :class:`Method`, in the order the docs and the command line list them.
METHODS: dict[str, Method] = {m.name: m for m in _ENTRIES}
METHOD_NAMES: tuple[str, ...] = tuple(METHODS)


def get_method(name: str) -> Method:
    """The entry of ``name``.

    Raises:
        ValueError: Unknown name (the message lists the close ones and all names).
    """
    if name in METHODS:
        return METHODS[name]
    close = difflib.get_close_matches(str(name), METHOD_NAMES, n=3)
    hint = f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""
    raise ValueError(f"unknown method {name!r}{hint}; registered: {', '.join(METHOD_NAMES)}")


def _tower_name(vision: Any) -> str:
    module = getattr(vision, "module", vision)
    trunk = getattr(module, "trunk", None)  # open_clip TimmModel: name the timm net
    return type(trunk if trunk is not None else module).__name__


def _lrp_refusal(vision: Any) -> str | None:
    """Why the LRP rules do not cover a non-ViT tower (None: every layer has a rule)."""
    from captum_clip.attr import check_conv_lrp

    try:
        check_conv_lrp(getattr(vision, "module", vision))
    except ValueError as err:
        return str(err)
    return None


def runs_on(vision: Any) -> tuple[str, ...]:
    """Names of the registered methods whose tower requirement ``vision`` meets."""
    vit = bool(getattr(vision, "is_vit", False))
    lrp = vit or _lrp_refusal(vision) is None
    return tuple(
        m.name for m in _ENTRIES if m.towers == "any" or vit or (m.towers == "lrp" and lrp)
    )


def refusal(name: str, vision: Any) -> str | None:
    """Why method ``name`` cannot run on the vision tower adapter ``vision`` (and what
    can), or None when its tower requirement is met."""
    method = get_method(name)
    if method.towers == "lrp" and not getattr(vision, "is_vit", False):
        why = _lrp_refusal(vision)
        if why is not None:
            return f"{name}: {why}. Registered methods that run on it: {', '.join(runs_on(vision))}"
        return None
    if method.towers == "vit" and not getattr(vision, "is_vit", False):
        return (
            f"{name} reads the attention of a ViT vision tower; {_tower_name(vision)} has none "
            f"(it is not a ViT). Registered methods that run on it: {', '.join(runs_on(vision))}"
        )
    return None


def build(name: str, clf: Any, **options: Any) -> Any:
    """Method ``name`` built on ``clf`` (a ClipClassifier / ClipSimilarity) with its
    Python defaults; ``options`` go to its constructor.

    Raises:
        ValueError: Unknown name, or the classifier's tower cannot run it (the message
            says why and which registered methods run on it).
    """
    method = get_method(name)
    vision = getattr(clf, "vision", None)
    reason = None if vision is None else refusal(name, vision)
    if reason is not None:
        raise ValueError(reason)
    return method.make(clf, **options)


def pixel_map(name: str, method: Any, clf: Any, images: Any, target: Any, **kwargs: Any) -> Any:
    """Attributions ``(B, 3, H, W)`` of a built method, for any output kind.

    ``"pixels"`` methods: ``method.attribute(images, target=target, **kwargs)``.
    ``"interactions"``: the interactions of each image with its target's prompt
    (``clf.templates[0]``; ``kwargs`` go to ``explain``), each patch's row summed over the
    prompt's tokens, upsampled bilinearly and repeated over the channels.
    """
    if get_method(name).output == "pixels":
        return method.attribute(images, target=target, **kwargs)
    import torch

    from captum_clip._validate import check_target

    names = getattr(clf, "class_names", None)
    if names is None:
        raise ValueError(f"{name} maps need a ClipClassifier (class prompts), got {type(clf)}")
    t = check_target(target, images.shape[0], len(names))
    captions = [clf.templates[0].format(names[int(c)]) for c in t.tolist()]
    res = method.explain(images, captions, **kwargs)
    size = tuple(images.shape[-2:])
    maps = torch.stack([res.image_map(pair=i, size=size) for i in range(images.shape[0])])
    return maps[:, None].expand(-1, images.shape[1], -1, -1).to(images.dtype).contiguous()


def markdown_table() -> str:
    """The registry as the Markdown table of ``docs/methods.md`` (a test compares them)."""
    towers = {"vit": "ViT (reads attention)", "lrp": "ViT, ResNet, ConvNeXt, FastViT", "any": "any"}
    lines = [
        "| name | label in tables | what it computes | towers | cost per image | seed | output |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for m in _ENTRIES:
        out = "`(B, 3, H, W)`" if m.output == "pixels" else "`(B, S, 1+P)`"
        seed = "yes" if m.stochastic else "no"
        lines.append(
            f"| `{m.name}` | {m.label} | {m.summary} ({m.reference}) | {towers[m.towers]} "
            f"| {m.cost} | {seed} | {out} |"
        )
    return "\n".join(lines)
