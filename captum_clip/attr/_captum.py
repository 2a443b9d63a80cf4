"""Captum conformance shared by the attribution classes of the package.

Captum's tools call ``attribute`` in ways a plain method does not expect:

- ``NoiseTunnel`` calls ``method.attribute.__wrapped__(method, inputs, **kwargs)`` (the
  function under Captum's ``log_usage`` decorator), so ``attribute`` must carry
  ``__wrapped__``;
- ``sensitivity_max`` and every Captum metric pass ``inputs`` as a tuple of tensors and
  read the explanation back as a tuple.

:class:`CaptumConformance` gives every subclass both, once: the ``attribute`` a subclass
defines is wrapped (when the class is created) so that a 1-tuple ``(images,)`` is
accepted and the attributions come back in the same form (``(attributions,)``, or
``((attributions,), delta)`` with ``return_convergence_delta=True``), under Captum's own
``log_usage`` decorator. A new method gets this by inheriting, with nothing to write.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

from captum.log import log_usage
from torch import Tensor

__all__ = ["EXTRA_OUTPUT_FLAGS", "CaptumConformance", "conformant"]

EXTRA_OUTPUT_FLAGS = ("return_convergence_delta", "return_clusters")
"""Keyword flags that make ``attribute`` return ``(attributions, extra)``."""

_MARK = "_captum_clip_conformant"


def _untuple(method: Any, inputs: Any) -> tuple[Any, bool]:
    """``(images, was_a_tuple)``; a tuple must hold exactly one tensor."""
    if not isinstance(inputs, tuple):
        return inputs, False
    if len(inputs) != 1 or not isinstance(inputs[0], Tensor):
        kinds = ", ".join(type(i).__name__ for i in inputs) or "nothing"
        raise TypeError(
            f"{type(method).__name__}.attribute takes one image tensor, or a 1-tuple holding "
            f"it (Captum's form); got a tuple of {len(inputs)} ({kinds})"
        )
    return inputs[0], True


def conformant(attribute: Callable) -> Callable:
    """``attribute`` accepting ``(images,)`` and returning the inputs' form, under
    Captum's ``log_usage`` (whose ``__wrapped__`` is the tuple-aware function, as
    ``NoiseTunnel`` calls it)."""

    first = list(inspect.signature(attribute).parameters)[1]  # the inputs, after self

    @functools.wraps(attribute)
    def accept_tuples(self: Any, *args: Any, **kwargs: Any) -> Any:
        if args:
            inputs, args = args[0], args[1:]
        elif first in kwargs:  # given by name (``images=`` / ``inputs=``)
            inputs = kwargs.pop(first)
        else:  # missing: the method's own TypeError
            return attribute(self, *args, **kwargs)
        images, was_tuple = _untuple(self, inputs)
        out = attribute(self, images, *args, **kwargs)
        if not was_tuple:
            return out
        if any(kwargs.get(flag) for flag in EXTRA_OUTPUT_FLAGS):
            return (out[0],), out[1]
        return (out,)

    wrapped = log_usage()(accept_tuples)
    setattr(wrapped, _MARK, True)
    return wrapped


class CaptumConformance:
    """Mixin: the ``attribute`` of every subclass is made :func:`conformant`.

    Put it first among the bases (``class M(CaptumConformance, GradientAttribution)``).
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        fn = cls.__dict__.get("attribute")
        if callable(fn) and not getattr(fn, _MARK, False):
            cls.attribute = conformant(fn)  # type: ignore[method-assign]


def texts_or_target(texts: Any, target: Any) -> Any:
    """The captions of a caption-image method, given as ``texts`` or as Captum's ``target``.

    Captum's tools expand ``target`` with the batch (``NoiseTunnel``, ``sensitivity_max``
    repeat it per perturbed copy), so the captions may come under that name.

    Raises:
        ValueError: Both or neither given.
    """
    if (texts is None) == (target is None):
        got = "both" if texts is not None else "neither"
        raise ValueError(
            f"pass the captions once, as texts= or as Captum's target= (one per image); got {got}"
        )
    return texts if texts is not None else target
