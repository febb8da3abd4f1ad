"""Python operations that torch.fx cannot record by itself, recorded as graph ops while our tracer runs.

**Factories and dtype limits.** fx records a torch function as a graph op when a Proxy reaches it through
``__torch_function__``, but torch's argument parser rejects a Proxy before that where it expects plain
Python values: sizes given one by one (``torch.ones(x.shape[0], seq_len, device=x.device)``, Hugging
Face's OPT and BART decoders), a dtype (``torch.finfo(x.dtype).min``, the additive masks of GPT-Neo,
Bloom and MPT) or a scalar (``torch.tensor(x.shape[-1])``). Soft tracing then kept the whole decoder
opaque. These functions are replaced by wrappers that record the call when a Proxy is among the
arguments, with the original function as the node's target, so the generated code calls the real
function at run time: ``torch.finfo`` reads the dtype of each call's input, so a model traced in
float32 and run in half precision gets the half-precision limit. Without a Proxy the wrapper calls the
original.

**Item assignment.** ``x[mask] = 0`` on a traced tensor (Gemma 3 blanking its image tokens) becomes an
``operator.setitem`` node, which fx's code generation and dead-code elimination already treat as a
statement with an effect. Its rule keeps the channels of the tensor written and of the value written
(:class:`pruning.rules.indexing.Assign`).

**Duck-typing probes.** ``hasattr(proxy, name)`` is always true (a Proxy records attribute reads), so a
library function that asks a tensor ``hasattr(x, "jax")`` and then calls ``x.jax()`` records a call no
tensor can run: transformers' ``is_jax_jitting`` does, for every Hugging Face model, wherever jax is
installed. Such probes (:data:`PROBES`) answer what they answer for a plain tensor while our tracer runs.

**Methods of helper objects.** A module may hold a plain object (not a module) whose methods its forward
calls: torchvision's detectors decode boxes with a ``BoxCoder``, which asserts ``isinstance(rel_codes,
torch.Tensor)``, false for a traced value. When such a method cannot be traced, soft tracing records each
call of it as one :func:`helper_call` op on the object (read by ``get_attr`` from the module holding it),
instead of keeping the whole module opaque.

All hold while :meth:`_Tracer.trace` runs, which includes the trace fx runs on a GraphModule's code to
unpickle it.
"""
from __future__ import annotations

import contextlib
import functools
import operator
import sys
from typing import Any, Callable, Iterator

import torch
from torch import fx
from torch.utils import _pytree as pytree

#: ``torch`` functions whose argument parser rejects a Proxy among plain values.
FACTORY_NAMES = ("ones", "zeros", "empty", "rand", "randn", "randint", "tensor", "finfo", "iinfo")


def first_proxy(args: tuple, kwargs: dict) -> fx.Proxy | None:
    """The first traced value among a call's (nested) arguments, or None."""
    return next((a for a in pytree.tree_leaves((args, kwargs)) if isinstance(a, fx.Proxy)), None)


def recording(original: Callable, wrapped: bool = False) -> Callable:
    """``original``, recording its call as one graph op (with ``original`` as the target) when a Proxy is
    among its arguments, and calling it otherwise. ``wrapped``: mark the node as fx marks its own leaf
    functions' nodes, so that the generated code wraps the function again when fx traces it to unpickle
    the GraphModule (for functions no trace records by itself: soft tracing's leaf functions)."""
    @functools.wraps(original, updated=())  # not a class's namespace (torch.finfo)
    def record(*args: Any, **kwargs: Any) -> Any:
        proxy = first_proxy(args, kwargs)
        if proxy is None:
            return original(*args, **kwargs)
        output = proxy.tracer.create_proxy("call_function", original, args, kwargs)
        if wrapped:
            output.node.meta["is_wrapped"] = True
        return output

    record.__wrapped_factory__ = original  # type: ignore[attr-defined]
    return record


def helper_call(holder: Any, method: str, *args: Any, **kwargs: Any) -> Any:
    """``holder.method(*args, **kwargs)``: a method of a helper object held by a module, as one graph op
    (fx has no node kind for a method of an object other than a traced value). The tracer wraps it in every
    trace, so the graph's code records it again when unpickled."""
    return getattr(holder, method)(*args, **kwargs)


#: Library functions that duck-type a tensor with ``hasattr``, by module and name, and what they return
#: for a plain tensor: replaced while tracing where their module is imported (none is imported here).
PROBES = {("transformers.utils.import_utils", "is_jax_jitting"): lambda x: False}


def _assign(proxy: fx.Proxy, key: Any, value: Any) -> None:
    proxy.tracer.create_proxy("call_function", operator.setitem, (proxy, key, value), {})


@contextlib.contextmanager
def recorded_calls() -> Iterator[None]:
    """``torch.ones``, ``torch.finfo``... record their call in the graph when given a Proxy, and a Proxy
    takes item assignment, for the duration (restored on exit, also on error)."""
    # A nested trace (fx traces a GraphModule's code again when unpickling it) finds the wrappers.
    originals = {name: getattr(getattr(torch, name), "__wrapped_factory__", getattr(torch, name))
                 for name in FACTORY_NAMES}
    setitem = vars(fx.Proxy).get("__setitem__")
    for name, original in originals.items():
        setattr(torch, name, recording(original))
    fx.Proxy.__setitem__ = _assign
    probes = [(sys.modules[module], name, getattr(sys.modules[module], name), answer)
              for (module, name), answer in PROBES.items() if hasattr(sys.modules.get(module), name)]
    for module, name, _, answer in probes:
        setattr(module, name, answer)
    try:
        yield
    finally:
        for module, name, original, _ in probes:
            setattr(module, name, original)
        for name, original in originals.items():
            setattr(torch, name, original)
        if setitem is None:
            del fx.Proxy.__setitem__
        else:
            fx.Proxy.__setitem__ = setitem
