"""Tensor factories and dtype limits called with traced sizes or dtypes, recorded as graph ops.

torch.fx records a torch function as a graph op when a Proxy reaches it through ``__torch_function__``,
but torch's argument parser rejects a Proxy before that where it expects plain Python values: sizes
given one by one (``torch.ones(x.shape[0], seq_len, device=x.device)``, Hugging Face's OPT and BART
decoders), a dtype (``torch.finfo(x.dtype).min``, the additive masks of GPT-Neo, Bloom and MPT) or a
scalar (``torch.tensor(x.shape[-1])``). Soft tracing then kept the whole decoder opaque. While our
tracer runs, these functions are replaced by wrappers that record the call when a Proxy is among the
arguments, with the original function as the node's target, so the generated code calls the real
function at run time: ``torch.finfo`` reads the dtype of each call's input, so a model traced in
float32 and run in half precision gets the half-precision limit. Without a Proxy the wrapper calls
the original.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import torch
from torch import fx
from torch.utils import _pytree as pytree

#: ``torch`` functions whose argument parser rejects a Proxy among plain values.
FACTORY_NAMES = ("ones", "zeros", "empty", "rand", "randn", "randint", "tensor", "finfo", "iinfo")


def _recording(original: Callable) -> Callable:
    def factory(*args: Any, **kwargs: Any) -> Any:
        proxy = next((a for a in pytree.tree_leaves((args, kwargs)) if isinstance(a, fx.Proxy)), None)
        if proxy is None:
            return original(*args, **kwargs)
        return proxy.tracer.create_proxy("call_function", original, args, kwargs)

    factory.__name__ = factory.__qualname__ = original.__name__
    factory.__wrapped_factory__ = original  # type: ignore[attr-defined]
    return factory


@contextlib.contextmanager
def recorded_factories() -> Iterator[None]:
    """``torch.ones``, ``torch.finfo``... record their call in the graph when given a Proxy, for the
    duration (restored on exit, also on error)."""
    # A nested trace (fx traces a GraphModule's code again when unpickling it) finds the wrappers.
    originals = {name: getattr(getattr(torch, name), "__wrapped_factory__", getattr(torch, name))
                 for name in FACTORY_NAMES}
    for name, original in originals.items():
        setattr(torch, name, _recording(original))
    try:
        yield
    finally:
        for name, original in originals.items():
            setattr(torch, name, original)
