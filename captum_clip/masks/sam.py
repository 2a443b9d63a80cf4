"""segment-anything providers: :class:`SamMasker` (detector or CCI boxes) and GroundedSAM."""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from captum_clip._hooks import preserve_model_state
from captum_clip.masks._common import (
    Detector,
    _as_boxes,
    _check_images,
    _check_names,
    _uint8,
    boxes_from_attributions,
    to_unit_images,
)
from captum_clip.metrics import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from captum_clip.models.errors import CheckpointNotFoundError


def _import_sam() -> Any:
    try:
        import segment_anything
    except ImportError as err:
        raise ImportError(
            "SamMasker needs segment-anything: pip install 'captum-clip[sam]'"
        ) from err
    return segment_anything


def _load_sam(checkpoint: Any, model_type: str | Callable, model: nn.Module | None) -> nn.Module:
    sa = _import_sam()
    if model is None:
        if checkpoint is None:
            raise ValueError(
                "SamMasker needs checkpoint= (a SAM .pth file you downloaded, e.g. "
                "sam_vit_b_01ec64.pth) or model= (a built segment_anything Sam); nothing is "
                "downloaded"
            )
        if callable(model_type):
            builder = model_type
        elif model_type in sa.sam_model_registry:
            builder = sa.sam_model_registry[model_type]
        else:
            raise ValueError(
                f"unknown SAM model_type {model_type!r}; expected one of "
                f"{sorted(sa.sam_model_registry)} or a builder callable"
            )
    if checkpoint is not None:
        path = os.fspath(checkpoint)
        if not os.path.isfile(path):
            raise CheckpointNotFoundError(f"SAM checkpoint file not found: {path!r}")
        if model is None:
            model = builder(checkpoint=None)
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and isinstance(state.get("model"), dict):
            state = state["model"]
        try:
            model.load_state_dict(state)
        except (RuntimeError, TypeError, AttributeError) as err:
            raise ValueError(
                f"SAM checkpoint {path!r} does not match model_type {model_type!r}: {err}"
            ) from err
    if not isinstance(model, sa.modeling.Sam):
        raise TypeError(f"model must be a segment_anything Sam, got {type(model).__name__}")
    return model


class SamMasker:
    """Object masks from segment-anything (``SamPredictor``) with box prompts.

    Boxes come from ``detector`` when given; for images where it finds nothing (or without
    a detector) from the bounding box of the top CCI cluster of ``classifier`` for the
    class named in ``class_names`` (its predicted class when ``class_names`` is ``None``)
    — a heuristic that makes the mask depend on the model's own attribution (see the module
    docstring). Each box is segmented separately (the mask SAM scores best is kept) and
    the masks of one image are united. An image without any box gets an empty mask.

    Args:
        checkpoint: Path of a SAM checkpoint (state dict ``.pth``); required unless
            ``model`` is given. A missing file raises
            :class:`~captum_clip.models.CheckpointNotFoundError` (a ``ValueError``).
        model_type: ``"vit_b"``, ``"vit_l"``, ``"vit_h"`` (segment-anything's registry) or
            a builder ``(checkpoint=None) -> Sam`` for other architectures.
        device: Where SAM runs.
        model: An already-built ``segment_anything.modeling.Sam`` (``checkpoint``, if also
            given, is loaded into it).
        detector: Box source, see :data:`Detector`.
        classifier: A :class:`~captum_clip.models.ClipClassifier` for the CCI-box fallback.
        multimask_output: Let SAM propose 3 masks per box and keep the best-scored one.
        mean, std: Normalisation of the images (``mean=None``: images are in ``[0, 1]``).
        cci_kwargs: Arguments of :meth:`captum_clip.attr.CCI.default_for`.
    """

    def __init__(
        self,
        checkpoint: str | os.PathLike | None = None,
        model_type: str | Callable = "vit_b",
        device: str | torch.device = "cpu",
        *,
        model: nn.Module | None = None,
        detector: Detector | None = None,
        classifier: nn.Module | None = None,
        multimask_output: bool = True,
        mean: Sequence[float] | None = OPENAI_DATASET_MEAN,
        std: Sequence[float] | None = OPENAI_DATASET_STD,
        cci_kwargs: dict | None = None,
    ) -> None:
        if detector is None and classifier is None:
            raise ValueError(
                "SamMasker needs box prompts: pass detector= (a callable returning boxes) "
                "or classifier= (boxes of the top CCI cluster, a heuristic)"
            )
        if detector is not None and not callable(detector):
            raise TypeError(f"detector must be callable, got {type(detector).__name__}")
        if (mean is None) != (std is None):
            raise ValueError("give both mean and std, or neither (images in [0, 1])")
        self.sam = _load_sam(checkpoint, model_type, model).to(device)
        self.predictor = _import_sam().SamPredictor(self.sam)
        self.detector = detector
        self.classifier = classifier
        self.multimask_output = bool(multimask_output)
        self.mean, self.std = mean, std
        self.cci_kwargs = dict(cci_kwargs or {})

    def cci_boxes(self, images: Tensor, class_names: Sequence[str] | None) -> Tensor:
        """Boxes ``(B, 4)`` of the top CCI cluster of ``classifier`` (the heuristic)."""
        if self.classifier is None:
            raise ValueError("cci_boxes needs SamMasker(classifier=...)")
        from captum_clip.attr.cci import CCI

        if class_names is None:
            with torch.no_grad():
                target = self.classifier(images).argmax(1)
        else:
            known = list(getattr(self.classifier, "class_names", []))
            unknown = [c for c in class_names if c not in known]
            if unknown:
                raise ValueError(
                    f"class names {unknown} are not classes of the classifier ({known})"
                )
            target = torch.tensor([known.index(c) for c in class_names], device=images.device)
        attr = CCI.default_for(self.classifier, **self.cci_kwargs).attribute(images, target=target)
        return boxes_from_attributions(attr)

    def boxes(
        self, images: Tensor, class_names: Sequence[str] | None = None
    ) -> list[np.ndarray | None]:
        """Box prompts per image: ``None`` or ``(N, 4)`` pixel ``x0, y0, x1, y1``."""
        images = _check_images(images)
        b, h, w = images.shape[0], images.shape[-2], images.shape[-1]
        names = _check_names(class_names, b, required=False)
        out: list[np.ndarray | None] = [None] * b
        if self.detector is not None:
            found = self.detector(to_unit_images(images, self.mean, self.std), names)
            if len(found) != b:
                raise ValueError(f"detector returned {len(found)} entries for {b} images")
            out = [_as_boxes(f, h, w) for f in found]
        missing = [i for i, bx in enumerate(out) if bx is None]
        if missing and self.classifier is not None:
            sub = None if names is None else [names[i] for i in missing]
            cci = self.cci_boxes(images[missing], sub)
            for i, box in zip(missing, cci):
                out[i] = box.numpy()[None].astype(np.float64)
        return out

    def segment(self, images: Tensor, boxes: Sequence[Any]) -> Tensor:
        """SAM masks ``(B, H, W)`` bool for given box prompts (one entry per image)."""
        images = _check_images(images)
        b, h, w = images.shape[0], images.shape[-2], images.shape[-1]
        if len(boxes) != b:
            raise ValueError(f"need one boxes entry per image ({b}), got {len(boxes)}")
        pixels = _uint8(to_unit_images(images, self.mean, self.std))
        out = torch.zeros(b, h, w, dtype=torch.bool)
        with preserve_model_state(self.sam):
            self.sam.eval()
            for i, (img, bx) in enumerate(zip(pixels, boxes)):
                bx = _as_boxes(bx, h, w)
                if bx is None:
                    continue
                self.predictor.set_image(img)
                for box in bx:
                    masks, scores, _ = self.predictor.predict(
                        box=box, multimask_output=self.multimask_output
                    )
                    out[i] |= torch.from_numpy(masks[int(np.argmax(scores))])
            self.predictor.reset_image()
        return out.to(images.device)

    def __call__(self, images: Tensor, class_names: Sequence[str] | None = None) -> Tensor:
        """Masks ``(B, H, W)`` bool for the objects named by ``class_names``."""
        return self.segment(images, self.boxes(images, class_names))


class GroundingDinoDetector:
    """Text-prompted boxes from a local Grounding DINO folder (``transformers``).

    Args:
        model_dir: A folder saved with ``save_pretrained`` (model + processor), e.g. a
            local copy of ``IDEA-Research/grounding-dino-tiny``; never downloaded.
        box_threshold: Minimum box score.
        text_threshold: Minimum text-token score.
        max_boxes: Keep at most this many best-scored boxes per image.
        prompt: Prompt template with ``{}`` for the class name (lower-cased, ends in ".").
        device: Where the detector runs.
    """

    def __init__(
        self,
        model_dir: str | os.PathLike,
        box_threshold: float = 0.35,
        text_threshold: float = 0.25,
        max_boxes: int = 1,
        prompt: str = "{}.",
        device: str | torch.device = "cpu",
    ) -> None:
        path = os.fspath(model_dir)
        if not os.path.isdir(path):
            raise CheckpointNotFoundError(f"Grounding DINO folder not found: {path!r}")
        if prompt.count("{}") != 1:
            raise ValueError(f"prompt needs exactly one '{{}}', got {prompt!r}")
        for name, v in (("box_threshold", box_threshold), ("text_threshold", text_threshold)):
            if not 0.0 <= float(v) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {v!r}")
        if isinstance(max_boxes, bool) or not isinstance(max_boxes, int) or max_boxes < 1:
            raise ValueError(f"max_boxes must be a positive int, got {max_boxes!r}")
        try:
            from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor
        except ImportError as err:
            raise ImportError(
                "GroundedSamMasker needs transformers: pip install 'captum-clip[sam,hf]'"
            ) from err
        try:
            self.processor = AutoProcessor.from_pretrained(path, local_files_only=True)
            self.model = (
                AutoModelForZeroShotObjectDetection.from_pretrained(path, local_files_only=True)
                .to(device)
                .eval()
            )
        except (OSError, ValueError) as err:
            raise ValueError(f"could not load a Grounding DINO model from {path!r}: {err}") from err
        self.device = device
        self.box_threshold, self.text_threshold = float(box_threshold), float(text_threshold)
        self.max_boxes, self.prompt = max_boxes, prompt
        params = inspect.signature(self.processor.post_process_grounded_object_detection).parameters
        self._thr_key = "threshold" if "threshold" in params else "box_threshold"

    @torch.no_grad()
    def __call__(
        self, images01: Tensor, class_names: Sequence[str] | None
    ) -> list[np.ndarray | None]:
        """Best boxes per image for its class name (``None`` when nothing passes)."""
        from PIL import Image

        names = _check_names(class_names, images01.shape[0], required=True)
        h, w = images01.shape[-2:]
        out: list[np.ndarray | None] = []
        for img, name in zip(_uint8(images01), names):
            text = self.prompt.format(name.lower().strip())
            inputs = self.processor(images=Image.fromarray(img), text=text, return_tensors="pt")
            inputs = inputs.to(self.device)
            res = self.processor.post_process_grounded_object_detection(
                self.model(**inputs),
                inputs["input_ids"],
                text_threshold=self.text_threshold,
                target_sizes=[(h, w)],
                **{self._thr_key: self.box_threshold},
            )[0]
            if res["boxes"].numel() == 0:
                out.append(None)
                continue
            order = res["scores"].argsort(descending=True)[: self.max_boxes]
            out.append(res["boxes"][order].cpu().double().numpy())
        return out


class GroundedSamMasker(SamMasker):
    """GroundedSAM: Grounding DINO boxes for the class name, segmented by SAM.

    Args:
        detector: A Grounding DINO folder (see :class:`GroundingDinoDetector`) or any
            detector callable (:data:`Detector`).
        checkpoint, model_type, device, model, multimask_output, mean, std: As in
            :class:`SamMasker`.
        box_threshold, text_threshold, max_boxes, prompt: As in
            :class:`GroundingDinoDetector` (used when ``detector`` is a folder).
        classifier: Optional CCI-box fallback for images where nothing is detected.
    """

    def __init__(
        self,
        detector: str | os.PathLike | Detector,
        checkpoint: str | os.PathLike | None = None,
        model_type: str | Callable = "vit_b",
        device: str | torch.device = "cpu",
        *,
        model: nn.Module | None = None,
        box_threshold: float = 0.35,
        text_threshold: float = 0.25,
        max_boxes: int = 1,
        prompt: str = "{}.",
        classifier: nn.Module | None = None,
        multimask_output: bool = True,
        mean: Sequence[float] | None = OPENAI_DATASET_MEAN,
        std: Sequence[float] | None = OPENAI_DATASET_STD,
    ) -> None:
        if isinstance(detector, (str, os.PathLike)):
            detector = GroundingDinoDetector(
                detector, box_threshold, text_threshold, max_boxes, prompt, device
            )
        elif not callable(detector):
            raise TypeError(
                f"detector must be a Grounding DINO folder or a callable, got {type(detector).__name__}"
            )
        super().__init__(
            checkpoint,
            model_type,
            device,
            model=model,
            detector=detector,
            classifier=classifier,
            multimask_output=multimask_output,
            mean=mean,
            std=std,
        )

    def __call__(self, images: Tensor, class_names: Sequence[str] | None = None) -> Tensor:
        """Masks ``(B, H, W)`` of the objects named by ``class_names`` (required)."""
        _check_names(class_names, _check_images(images).shape[0], required=True)
        return super().__call__(images, class_names)
