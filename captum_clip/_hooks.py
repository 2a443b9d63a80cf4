"""Hook handles and model-state guards that always clean up.

Every attribution method in captum_clip that touches a user's model does so inside
:class:`HookManager` (or :func:`preserve_model_state`). On any exit, normal or by exception,
all hooks it registered are removed and every module's train/eval mode and every
parameter's ``requires_grad`` flag are put back exactly as they were.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from torch import nn
from torch.utils.hooks import RemovableHandle

__all__ = ["HookManager", "preserve_model_state"]


def _snapshot(modules: tuple[nn.Module, ...]) -> list[tuple[Any, str, bool]]:
    state: list[tuple[Any, str, bool]] = []
    seen: set[int] = set()
    for root in modules:
        for module in root.modules():
            if id(module) in seen:
                continue
            seen.add(id(module))
            state.append((module, "training", module.training))
            for param in module.parameters(recurse=False):
                state.append((param, "requires_grad", param.requires_grad))
    return state


def _restore(state: list[tuple[Any, str, bool]]) -> None:
    for obj, attr, value in state:
        if attr == "training":
            obj.training = value
        elif obj.requires_grad != value:
            obj.requires_grad_(value)


@contextmanager
def preserve_model_state(*modules: nn.Module) -> Iterator[None]:
    """Restore train/eval mode and ``requires_grad`` of ``modules`` on any exit.

    Args:
        *modules: The modules to guard (all their submodules and parameters are included).
    """
    for module in modules:
        if not isinstance(module, nn.Module):
            raise TypeError(f"preserve_model_state expects nn.Module, got {type(module).__name__}")
    state = _snapshot(modules)
    try:
        yield
    finally:
        _restore(state)


class HookManager:
    """Context manager that owns hook handles and removes them on exit.

    Example:
        >>> with HookManager(model) as hooks:
        ...     hooks.forward(model.visual.transformer.resblocks[-1], save_output)
        ...     model(images)
        # every hook is gone here, and model modes / requires_grad are restored

    Args:
        *modules: Modules whose train/eval mode and ``requires_grad`` flags are restored on
            exit. Hooks may be registered on any module, guarded or not.
    """

    def __init__(self, *modules: nn.Module) -> None:
        for module in modules:
            if not isinstance(module, nn.Module):
                raise TypeError(f"HookManager expects nn.Module, got {type(module).__name__}")
        self._modules = modules
        self._handles: list[RemovableHandle] = []
        self._state: list[tuple[Any, str, bool]] | None = None
        self._attrs: list[tuple[Any, str, Any, bool]] = []

    def __enter__(self) -> HookManager:
        self._state = _snapshot(self._modules)
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def forward(self, module: nn.Module, fn: Callable, **kwargs: Any) -> RemovableHandle:
        """Register a forward hook ``fn(module, args, output)``."""
        return self._add(module.register_forward_hook(fn, **kwargs))

    def forward_pre(self, module: nn.Module, fn: Callable, **kwargs: Any) -> RemovableHandle:
        """Register a forward pre-hook ``fn(module, args)`` (``with_kwargs=True`` allowed)."""
        return self._add(module.register_forward_pre_hook(fn, **kwargs))

    def patch_attr(self, obj: Any, name: str, value: Any) -> None:
        """Set ``obj.name = value`` until exit (the previous attribute is restored)."""
        had = name in getattr(obj, "__dict__", {})
        self._attrs.append((obj, name, obj.__dict__.get(name) if had else None, had))
        setattr(obj, name, value)

    def _add(self, handle: RemovableHandle) -> RemovableHandle:
        self._handles.append(handle)
        return handle

    def remove(self) -> None:
        """Remove every hook, undo attribute patches and restore the guarded modules."""
        while self._handles:
            self._handles.pop().remove()
        while self._attrs:
            obj, name, value, had = self._attrs.pop()
            if had:
                setattr(obj, name, value)
            else:
                delattr(obj, name)
        if self._state is not None:
            _restore(self._state)
            self._state = None
