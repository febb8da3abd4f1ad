"""A torch.fx tracer with leaf modules given by type or instance, and soft tracing.

Soft tracing: when the forward of a submodule cannot be traced symbolically (data-dependent control
flow, unsupported Python), the smallest culprit becomes opaque and a warning names it: a module-level
function called by that forward (a mask builder, say) becomes a leaf function; else, in a module with
parameters, the innermost method it called of a helper object a module holds or of a submodule (not a
forward: torchvision's box decoding and proposal filtering) becomes one opaque call
(:func:`pruning.tracing.recorded.helper_call`); otherwise the submodule becomes a leaf module. The
analysis treats the channels entering an opaque call as unprunable, and those of the modules and
tensors an opaque method reads (:mod:`pruning.rules.helpers`). Without soft tracing the first failure is
raised as a :class:`TracingError` naming the module and the reason.

With example inputs, branches on tensor sizes and ``len()``/unpacking of shapes are decided for them and
guarded in the graph (:mod:`pruning.tracing.sizes`) instead of failing; so are iterating an input list and
None outputs of opaque modules (:mod:`pruning.tracing.structure`).
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import inspect
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch
from torch import fx, nn
from torch.fx._symbolic_trace import _assert_is_none

from ..registry import rule_for
from .composites import TRACED_FORWARDS
from .codegen import hoist_module_lookups
from .recorded import first_proxy, helper_call, recorded_calls, recording
from .shapes import shape_of
from .sizes import GUARD_FUNCTIONS, SizeOracle, negated, size_count
from .state import SavedAttributes, unchanged_attributes
from .structure import MAPPINGS, SEQUENCES, STRUCTURE_GUARDS, is_none, keys_of

#: Modules from outside ``torch.nn`` that the rule registry handles as a whole.
_EXTRA_LEAF_TYPES: tuple[type, ...] = ()
try:  # torchvision is optional; its StochasticDepth keeps its train/eval behaviour as a leaf.
    from torchvision.ops import StochasticDepth

    _EXTRA_LEAF_TYPES = (StochasticDepth,)
except ImportError:  # pragma: no cover - torchvision is installed in development
    pass


_TORCH_DIR = str(Path(torch.__file__).parent) + os.sep  # with the separator: not torchvision
_UNKNOWN = object()
#: The torch dtype that torch's argument parser reads a Python type given as a dtype as.
_PYTHON_DTYPES = {bool: torch.bool, int: torch.int64, float: torch.float64, complex: torch.complex128}


class TracingError(RuntimeError):
    """The model (or one of its submodules) cannot be traced with torch.fx."""


class _Tracer(fx.Tracer):
    #: A buffer read in a traced forward is a ``get_attr`` of it, not a constant copy: it stays one tensor
    #: with the model's, and can be indexed by traced sizes (``self.position_ids[:, :seq_length]``).
    proxy_buffer_attributes = True

    def __init__(self, leaf_types: tuple[type, ...] = (), leaf_ids: set[int] | None = None,
                 leaf_functions: tuple[Callable, ...] = (), example: tuple | None = None) -> None:
        # The guard functions are wrapped in every trace, including the one fx runs on a GraphModule's
        # code when unpickling it (it builds this class with no arguments).
        super().__init__(autowrap_functions=GUARD_FUNCTIONS + STRUCTURE_GUARDS + (helper_call,) + leaf_functions)
        self.leaf_types = leaf_types + _EXTRA_LEAF_TYPES
        self.leaf_ids = leaf_ids or set()
        self.failed_module: str | None = None
        self.example = example  # when given, branches on sizes are decided for it
        self.attributes: SavedAttributes | None = None  # the traced model's, as they were (set by trace_graph)
        self._oracle: SizeOracle | None = None
        self._items: list[fx.Node] = []  # items of opaque outputs handed out one by one (see _like_example)
        self._holders: dict[int, str] | None = None  # helper objects by id: the module attribute holding each

    def trace(self, root: nn.Module | Callable, concrete_args: dict[str, Any] | None = None) -> fx.Graph:
        """fx's trace, with tensor factories and dtype limits given traced values, and item assignment,
        recorded as graph ops (:mod:`pruning.tracing.recorded`), also when fx traces a GraphModule's code
        to unpickle it."""
        with recorded_calls():
            graph = super().trace(root, concrete_args)
        for node in reversed(self._items):  # items the traced code never read
            if not node.users:
                graph.erase_node(node)
        _own_none_guards(graph)
        return graph

    def _example_value(self, obj: fx.Proxy, sizes_only: bool = True) -> Any:
        """The value of a traced value for the example input: by default only of one computed from tensor
        sizes (evaluated on fake tensors); ``_UNKNOWN`` without an example, for other values, or where the
        evaluation fails (fx then fails as usual)."""
        if self.example is None:
            return _UNKNOWN
        if self._oracle is None:
            self._oracle = SizeOracle(self.root, self.graph, self.example,
                                      self.attributes.as_before if self.attributes else contextlib.nullcontext)
        if sizes_only and not self._oracle.from_sizes(obj.node):
            return _UNKNOWN
        try:
            value = self._oracle.value(obj.node)
            if sizes_only and self._oracle.data_dependent(obj.node):
                return _UNKNOWN  # a size of the data, such as the number of boxes kept: not decided
        except Exception:  # noqa: BLE001 - an op without a fake kernel
            return _UNKNOWN
        return value

    def _guard(self, condition: fx.Proxy, what: str) -> None:
        """Assert in the graph that ``condition`` holds, as it did for the example input."""
        where = next(reversed(self.module_stack.values()), ("", None))[0] or "the model's own forward"
        self.create_proxy("call_function", torch._assert, (condition, (
            f"pruning: {what} in {where} differs between this input and the example input the model was "
            "traced with, so the traced graph may not compute what the model's code does for it; give inputs "
            "shaped like that example, or build the IR with an example of this shape (see pruning.tracing.sizes)"
        )), {})

    def to_bool(self, obj: fx.Proxy) -> bool:
        """A branch on a value computed from tensor sizes takes the example input's way, guarded by an
        assert in the graph (see :mod:`pruning.tracing.sizes`); any other branch fails as in torch.fx."""
        value = self._example_value(obj)
        if value is _UNKNOWN:
            return super().to_bool(obj)
        taken = bool(value)
        self._guard(obj if taken else self.create_proxy("call_function", negated, (obj,), {}),
                    f"a condition on tensor sizes or dtypes (here {taken})")
        return taken

    def create_arg(self, a: Any) -> Any:
        """A returned dataclass that is also a dict (a Hugging Face ``ModelOutput``) is rebuilt as its own
        class in the graph, as fx does for other dataclasses, instead of decaying to a plain dict. A numpy
        scalar (``x * np.sqrt(d)``, CTRL) becomes the Python number: the generated code cannot name numpy."""
        if isinstance(a, np.generic):
            return a.item()
        if isinstance(a, dict) and type(a) not in (dict, collections.OrderedDict) and dataclasses.is_dataclass(a):
            return self.create_node("call_function", type(a), (), {
                f.name: self.create_arg(getattr(a, f.name)) for f in dataclasses.fields(a)})
        try:
            return super().create_arg(a)
        except NotImplementedError as error:  # fx: "argument of type: <class ...>"
            if (path := self._holder_path(a)) is not None:  # whose method helper_call calls
                return self.create_node("get_attr", path, (), {})
            raise TracingError(
                f"the traced code passes or returns a {type(a).__module__}.{type(a).__qualname__}, which a graph "
                "cannot hold (only tensors, numbers, strings, and tuples, lists, dicts and dataclasses of them); "
                "have the model return tensors (a Hugging Face model returns its key/value cache: set "
                "model.config.use_cache = False before building the IR)") from error

    def create_proxy(self, kind: str, target: Any, args: tuple, kwargs: dict, *rest: Any, **options: Any) -> fx.Proxy:
        """A Python type given to a torch op as its dtype (``torch.zeros(n, dtype=int)``, Llama 4's mask
        builder; ``x.to(float)``) becomes the torch dtype the op would use (int: int64, float: float64...): a
        graph cannot hold a type. Only for tensor methods and ``torch`` functions, where a type can mean
        nothing else."""
        if kind == "call_method" or getattr(target, "__module__", "").startswith("torch"):
            args = tuple(_PYTHON_DTYPES.get(a, a) if isinstance(a, type) else a for a in args)
            kwargs = {k: _PYTHON_DTYPES.get(v, v) if isinstance(v, type) else v for k, v in kwargs.items()}
        return super().create_proxy(kind, target, args, kwargs, *rest, **options)

    def _holder_path(self, obj: Any) -> str | None:
        """The qualified name of ``obj`` in the traced model: a submodule (not the model itself), or an
        attribute of a module holding a helper object (an instance of a class other than a tensor); None
        elsewhere. The graph reads it with ``get_attr`` where the traced code passes it to a call."""
        if self._holders is None:
            self._holders = {}
            for prefix, module in self.root.named_modules():
                if prefix:
                    self._holders.setdefault(id(module), prefix)
                for name, value in vars(module).items():
                    if not name.startswith("_") and hasattr(value, "__dict__") \
                            and not isinstance(value, (torch.Tensor, nn.Module, type)):
                        self._holders.setdefault(id(value), f"{prefix}.{name}" if prefix else name)
        return self._holders.get(id(obj))

    def helper_method(self, holder: Any, method: str, args: tuple, kwargs: dict) -> Any:
        """A call of a helper object's method kept opaque (see :mod:`pruning.tracing.recorded`), shaped like
        the example's output."""
        return self._like_example(self.create_proxy("call_function", helper_call, (holder, method, *args), kwargs))

    def _installed(self, m: nn.Module) -> bool:
        try:
            self.path_of_module(m)
        except NameError:
            return False
        return True

    def length(self, obj: fx.Proxy) -> int | None:
        """The length of a tuple of sizes (the tensor's rank) or of a tuple or list of values (an input list
        of images) for the example input, guarded by an assert on it; None for any other value."""
        value = self._example_value(obj)
        if value is _UNKNOWN:
            value = self._example_value(obj, sizes_only=False)
        shape = shape_of(value)  # a torch.Size only for a tensor
        if isinstance(shape, torch.Size) and shape and self._top_level() and not self._oracle.data_dependent(obj.node):
            value = range(shape[0])  # see _top_level
        elif type(value) not in (*SEQUENCES, torch.Size):
            return None
        self._guard(self.create_proxy("call_function", size_count, (obj,), {}) == len(value),
                    f"the number of items of a tuple or list (here {len(value)}; for a shape, its number of dims)")
        return len(value)

    def index(self, obj: fx.Proxy) -> int | None:
        """A size used as an integer (``range(scores.size(-1))``) in the model's own forward: the example's,
        asserted in the graph (see ``_top_level``); None elsewhere or for other values."""
        value = self._example_value(obj) if self._top_level() else _UNKNOWN
        if type(value) is not int:
            return None
        self._guard(obj == value, f"a size used as an integer (here {value})")
        return value

    def _top_level(self) -> bool:
        """Whether the model's own forward (not a submodule's) is being traced. Only there is a tensor
        iterated (``for boxes in batch_boxes:``, SSD's postprocessing) over its first size for the example,
        which the graph then asserts, and a size used as an integer is the example's: that pins those sizes,
        worth it only where the alternative is no graph at all. In a submodule, soft tracing keeps the
        module opaque instead."""
        return all(not path for path, _ in self.module_stack.values())

    def iter(self, obj: fx.Proxy) -> Iterator:
        """Unpacking a tuple of sizes (``(*x.shape[:-1], -1)``) or iterating a tuple or list of values
        (``for image in images:``): as many traced items as it had for the example input."""
        n = self.length(obj)
        return super().iter(obj) if n is None else iter([obj[i] for i in range(n)])

    def _like_example(self, output: fx.Proxy) -> Any:
        """An opaque call's output as the traced code should see it: made like the example's output, with
        its tuples, lists, dicts and Nones in place and asserted in the graph (:mod:`pruning.tracing.structure`);
        a Proxy for anything else."""
        value = self._example_value(output, sizes_only=False)
        return output if value is _UNKNOWN else self._shaped(output, value)

    def _shaped(self, proxy: fx.Proxy, value: Any) -> Any:
        kind = type(value)
        if value is None:
            self._guard(self.create_proxy("call_function", is_none, (proxy,), {}),
                        "an output of a module kept opaque being None (as it is here)")
            return None
        if kind in SEQUENCES:
            self._guard(self.create_proxy("call_function", size_count, (proxy,), {}) == len(value),
                        f"the number of items a module kept opaque returns (here {len(value)})")
            keys, values = range(len(value)), list(value)
        elif kind in MAPPINGS:
            self._guard(self.create_proxy("call_function", keys_of, (proxy,), {}) == tuple(value),
                        f"the keys of a dict a module kept opaque returns (here {tuple(value)})")
            keys, values = list(value), list(value.values())
        else:
            return proxy
        items = [proxy[key] for key in keys]
        self._items += [item.node for item in items]
        shaped = [self._shaped(item, v) for item, v in zip(items, values)]
        return kind(zip(keys, shaped)) if kind in MAPPINGS else kind(shaped)

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if id(m) in self.leaf_ids or isinstance(m, self.leaf_types):
            return True
        if type(m) in TRACED_FORWARDS:  # composites of known layers: traced through (see composites)
            return False
        return rule_for(type(m)) is not None or super().is_leaf_module(m, module_qualified_name)

    def call_module(self, m, forward, args, kwargs):
        if not self._installed(m):
            # Made inside a forward (``nn.ReLU()(x)``, as DistilBERT's head does): not a submodule, so not
            # a graph target. Without state it is its forward's functions, traced in place.
            if next(m.parameters(), None) is not None or next(m.buffers(), None) is not None:
                raise TracingError(
                    f"a forward creates a {type(m).__name__} with parameters or buffers on each call instead of "
                    "holding it as a submodule, so it cannot be pruned or saved with the model: assign it to an "
                    "attribute in __init__")
            return forward(*args, **kwargs)
        if TRACED_FORWARDS.get(type(m)) is not None and not self.is_leaf_module(m, ""):
            forward = functools.partial(TRACED_FORWARDS[type(m)], m)
        try:
            output = super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_module is None:  # the innermost module sees the error first
                self.failed_module = self.path_of_module(m)
            raise
        if (isinstance(output, fx.Proxy) and output.node.op == "call_module" and rule_for(type(m)) is None
                and output.node.target == self.path_of_module(m)):
            return self._like_example(output)  # an opaque module (soft tracing's, or the caller's leaf)
        return output


def _own_none_guards(graph: fx.Graph) -> None:
    """fx's guard on an argument fixed at its None default (``_assert_is_none(targets, msg)``, a detector's
    ``targets=None``) becomes ``torch._assert(is_none(targets), msg)``. fx's own function is named by its
    dotted torch path in the generated code; when fx traces that code again to unpickle the GraphModule
    (torch 2.14), it records the call as wrapped, and the code it then generates registers that dotted name
    for wrapping, after which every later trace in the process fails with a ``KeyError``."""
    for node in list(graph.nodes):
        if node.op == "call_function" and node.target is _assert_is_none:
            with graph.inserting_before(node):
                condition = graph.call_function(is_none, (node.args[0],))
                guard = graph.call_function(torch._assert, (condition, *node.args[1:]), node.kwargs)
            node.replace_all_uses_with(guard)
            graph.erase_node(node)


@contextlib.contextmanager
def _recorded_where_defined(functions: Iterable[Callable]) -> Iterator[None]:
    """Soft tracing's leaf functions also record their calls through their own module, and the packages above
    it that re-export them, for the duration: fx replaces them only in the globals of the forwards it traces,
    which misses a call from a method of another class (torchvision's detection postprocessing calls its
    ``_topk_min`` through its module) and a call through a package (``torchvision.ops.roi_align(...)``)."""
    replaced = []
    for function in functions:
        parts = function.__module__.split(".")
        for depth in range(len(parts), 0, -1):
            module = sys.modules.get(".".join(parts[:depth]))
            if getattr(module, function.__name__, None) is function:
                replaced.append((module, function.__name__, function))
    for module, name, function in replaced:
        setattr(module, name, recording(function, wrapped=True))
    try:
        yield
    finally:
        for module, name, function in replaced:
            setattr(module, name, function)


@contextlib.contextmanager
def _recorded_methods(methods: Iterable[tuple[Any, str]]) -> Iterator[None]:
    """Soft tracing's opaque helper methods (``(holder, name)``) record their calls as one graph op each
    (:meth:`_Tracer.helper_method`) for the duration: an attribute of the instance shadows the method."""
    def recording_method(holder: Any, name: str) -> Callable:
        bound = getattr(holder, name)

        @functools.wraps(bound)
        def record(*args: Any, **kwargs: Any) -> Any:
            proxy = first_proxy(args, kwargs)
            if proxy is None or not isinstance(proxy.tracer, _Tracer):
                return bound(*args, **kwargs)
            return proxy.tracer.helper_method(holder, name, args, kwargs)

        return record

    for holder, name in methods:
        vars(holder)[name] = recording_method(holder, name)
    try:
        yield
    finally:
        for holder, name in methods:
            vars(holder).pop(name, None)


@contextlib.contextmanager
def _sized_proxies() -> Iterator[None]:
    """``len()`` of a traced value, and its use as an index (``range(n)``), ask our tracer
    (``_Tracer.length``, ``_Tracer.index``) while tracing: ``fx.Proxy`` has no hook for them, so its
    ``__len__`` is replaced and an ``__index__`` added for the duration, deferring to fx for other tracers."""
    original = fx.Proxy.__len__

    def __len__(proxy: fx.Proxy) -> int:
        n = proxy.tracer.length(proxy) if isinstance(proxy.tracer, _Tracer) else None
        return original(proxy) if n is None else n

    def __index__(proxy: fx.Proxy) -> int:
        n = proxy.tracer.index(proxy) if isinstance(proxy.tracer, _Tracer) else None
        if n is None:
            raise TypeError("'Proxy' object cannot be interpreted as an integer")
        return n

    fx.Proxy.__len__ = __len__
    fx.Proxy.__index__ = __index__
    try:
        yield
    finally:
        fx.Proxy.__len__ = original
        del fx.Proxy.__index__


def trace_model(
    model: nn.Module,
    leaf_modules: Iterable[type | nn.Module] | None = None,
    soft_tracing: bool = True,
) -> fx.GraphModule:
    """Trace ``model`` into a GraphModule whose submodules are the model's own (not copies)."""
    return fx.GraphModule(model, trace_graph(model, leaf_modules, soft_tracing), type(model).__name__)


def trace_graph(
    model: nn.Module,
    leaf_modules: Iterable[type | nn.Module] | None = None,
    soft_tracing: bool = True,
    example: tuple | None = None,
) -> fx.Graph:
    """Trace ``model`` into a graph whose ``call_module``/``get_attr`` targets name ``model``'s own
    submodules and tensors (no GraphModule is built: that costs a code generation and a compile).

    ``example``: the positional inputs the model will be called with. The forward's later parameters
    with a plain default (None, a bool, number or string: an optional mask, a flag) are fixed at that
    default, so that ``if mask is not None:`` takes the branch the calls will take, and branches on
    tensor sizes take the example's way, guarded in the graph (:mod:`pruning.tracing.sizes`).
    """
    shim = _positional_forward(model, example)
    concrete = _defaults_after(model, len(example)) if example is not None and shim is None else None
    leaf_types: list[type] = []
    leaf_ids: set[int] = set()
    for item in leaf_modules or ():
        if isinstance(item, type) and issubclass(item, nn.Module):
            leaf_types.append(item)
        elif isinstance(item, nn.Module):
            leaf_ids.add(id(item))
        else:
            raise TypeError(
                f"leaf_modules must hold nn.Module subclasses or instances, got {item!r}"
            )
    modules = dict(model.named_modules())
    leaf_functions: list[Callable] = []
    leaf_methods: list[tuple[Any, str]] = []
    while True:
        tracer = _Tracer(tuple(leaf_types), leaf_ids, tuple(leaf_functions), example)
        try:
            # unchanged_attributes: a forward that caches tensors would keep Proxies
            with unchanged_attributes(model) as tracer.attributes, _sized_proxies(), _class_swapped(model, shim), \
                    _recorded_where_defined(leaf_functions), _recorded_methods(leaf_methods):
                graph = tracer.trace(model, concrete_args=concrete)
            break
        except Exception as error:  # noqa: BLE001 - re-raised with context below
            name = tracer.failed_module
            culprit = _failing_function(error)
            if soft_tracing and culprit is not None and culprit not in leaf_functions:
                leaf_functions.append(culprit)
                if rule_for(culprit) is None:  # with a rule (roi_align), one call is what the rule reads
                    warnings.warn(
                        f"soft tracing: function {culprit.__module__}.{culprit.__qualname__} (called by "
                        f"{name or 'the model'}) cannot be traced ({type(error).__name__}: {error}); it is "
                        "kept as one opaque call and the channels entering it are treated as unprunable",
                        stacklevel=3,
                    )
                continue
            # Only where parameters could prune around it: a module without any loses nothing by staying
            # whole, and tracing around the method could pin its sizes (an image resize) for the example.
            owner = modules[name] if name else model
            method = (_failing_method(error, tracer) if soft_tracing and culprit is None
                      and next(owner.parameters(), None) is not None else None)
            if method is not None and not any(h is method[0] and n == method[1] for h, n in leaf_methods):
                leaf_methods.append(method)
                holder, method_name = method
                warnings.warn(
                    f"soft tracing: method {type(holder).__qualname__}.{method_name} of "
                    f"'{tracer._holder_path(holder)}' "
                    f"(called by {name or 'the model'}) cannot be traced ({type(error).__name__}: {error}); each "
                    "call is kept as one opaque op and the channels entering it are treated as unprunable",
                    stacklevel=3,
                )
                continue
            if name is None or not soft_tracing:
                where = f"submodule '{name}' ({type(modules[name]).__name__})" if name else (
                    f"the forward of {type(model).__name__} itself"
                )
                if isinstance(error, TracingError):  # ours: the message says what to change
                    raise TracingError(f"torch.fx cannot trace {where}: {error}") from error
                hint = (
                    "pass it in leaf_modules or use soft_tracing=True"
                    if name
                    else "make the top-level forward traceable (no control flow on tensor values)"
                )
                raise TracingError(
                    f"torch.fx cannot trace {where}: {type(error).__name__}: {error}; {hint}"
                ) from error
            leaf_ids.add(id(modules[name]))
            warnings.warn(
                f"soft tracing: submodule '{name}' ({type(modules[name]).__name__}) cannot be "
                f"traced ({type(error).__name__}: {error}); it is kept as a leaf and its channels "
                "are treated as unprunable",
                stacklevel=3,
            )
    # Postponed annotations (``from __future__ import annotations``) reach the graph as strings, which the
    # generated code keeps as string globals; pickling such a GraphModule fails on some torch versions
    # (2.11: "'str' object has no attribute '__name__'"). Annotations do not change what the graph computes.
    for node in graph.nodes:
        if isinstance(node.type, str):
            node.type = None
    hoist_module_lookups(graph)
    return graph


def _positional_forward(model: nn.Module, example: tuple | None) -> type | None:
    """A subclass of ``model``'s class whose forward takes the example's inputs by name and calls the
    model's own forward, when that forward takes ``*args``/``**kwargs`` or is a decorator's wrapper that
    does (Hugging Face's ``can_return_tuple``, say); None otherwise.

    fx reads the parameters of the wrapped function but calls the wrapper, which fails, and it makes
    ``**kwargs`` an input of the graph; tracing the subclass runs the decorators as a normal call would.
    The graph takes the example's inputs, named after the forward's first parameters; the others keep
    their defaults (as with a plain forward)."""
    cls = type(model)
    forward = cls.forward
    inner = inspect.unwrap(forward)
    wrapper = inner is not forward and _takes_variadics(forward)
    if not wrapper and (example is None or not _takes_variadics(inner)):
        return None
    if example is None:
        raise TracingError(
            f"the forward of {cls.__name__} is wrapped by a decorator that takes (*args, **kwargs), so the inputs "
            "to trace it with cannot be told from its signature: pass example_input= (the positional inputs)")
    parameters = list(inspect.signature(inner).parameters.values())[1:]
    positional = [p.name for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if any(p.kind is p.VAR_POSITIONAL for p in parameters):  # *inputs: the rest are numbered
        positional += [f"input_{i}" for i in range(len(positional), len(example))]
    if len(positional) < len(example):
        raise TracingError(f"the forward of {cls.__name__} takes {len(positional)} positional inputs "
                           f"({', '.join(positional)}), but example_input has {len(example)}")
    names = ", ".join(positional[:len(example)])
    namespace: dict[str, Any] = {"_forward": forward}
    exec(f"def forward(self, {names}):\n    return _forward(self, {names})\n", namespace)  # noqa: S102
    return type(cls.__name__, (cls,), {"forward": namespace["forward"], "__module__": cls.__module__,
                                       "__qualname__": cls.__qualname__})


def _takes_variadics(function: Callable) -> bool:
    code = getattr(function, "__code__", None)
    return code is not None and bool(code.co_flags & (inspect.CO_VARARGS | inspect.CO_VARKEYWORDS))


@contextlib.contextmanager
def _class_swapped(model: nn.Module, cls: type | None) -> Iterator[None]:
    """``model`` is an instance of ``cls`` (when given) for the duration."""
    if cls is None:
        yield
        return
    original = model.__class__
    model.__class__ = cls
    try:
        yield
    finally:
        model.__class__ = original


def _defaults_after(model: nn.Module, given: int) -> dict[str, object] | None:
    """The forward's parameters after the first ``given`` that have a plain default, with it."""
    parameters = list(inspect.signature(model.forward).parameters.values())
    if any(p.kind is p.VAR_POSITIONAL for p in parameters[:given + 1]):
        return None
    plain = (type(None), bool, int, float, str)
    return {p.name: p.default for p in parameters[given:]
            if p.kind is not p.VAR_KEYWORD and p.default is not p.empty and isinstance(p.default, plain)} or None


def _frames_below_forward(error: BaseException) -> list:
    """The frames of ``error``'s traceback from the innermost module forward outside torch on (that forward's
    first); empty if there is none."""
    frames = []
    tb = error.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    forwards = [i for i, frame in enumerate(frames) if frame.f_code.co_name == "forward"
                and isinstance(frame.f_locals.get("self"), nn.Module)
                and not frame.f_code.co_filename.startswith(_TORCH_DIR)]
    return frames[forwards[-1]:] if forwards else []


def _failing_function(error: BaseException) -> Callable | None:
    """The module-level function that the innermost module forward called when tracing failed.

    First a function the forward reaches through its module's globals (decorated functions are
    recognised through ``__wrapped__``); else the outermost module-level function, outside torch, that a
    method called by the forward reached (see ``_recorded_where_defined``).
    """
    frames = _frames_below_forward(error)
    if not frames:
        return None
    functions = {}
    for value in list(frames[0].f_globals.values()):
        if inspect.isfunction(value):
            functions.setdefault(getattr(inspect.unwrap(value), "__code__", None), value)
    for frame in frames[1:]:
        if frame.f_code in functions:
            return functions[frame.f_code]
    # Reached through a method the forward called (torchvision's detection postprocessing calls its
    # mask pasting and NMS helpers): the outermost module-level function of a module outside torch.
    for frame in frames[1:]:
        if frame.f_code.co_filename.startswith(_TORCH_DIR):
            continue
        value = frame.f_globals.get(frame.f_code.co_name)
        if inspect.isfunction(value) and getattr(inspect.unwrap(value), "__code__", None) is frame.f_code:
            return value
    return None


def _failing_method(error: BaseException, tracer: _Tracer) -> tuple[Any, str] | None:
    """``(holder, method)``: the innermost method that the innermost module forward called, directly or not, when
    tracing failed: of a helper object a module holds (torchvision's ``BoxCoder.decode``) or of a submodule
    other than its forward (the proposal filtering of torchvision's ``RegionProposalNetwork``); None if none.
    The method must be a plain function of the object's class."""
    for frame in reversed(_frames_below_forward(error)[1:]):  # the innermost: the smallest culprit
        holder = frame.f_locals.get("self")
        if holder is None or not hasattr(holder, "__dict__") or frame.f_code.co_filename.startswith(_TORCH_DIR) \
                or frame.f_code.co_name == "forward":
            continue
        method = inspect.getattr_static(type(holder), frame.f_code.co_name, None)
        if inspect.isfunction(method) and method.__code__ is frame.f_code and tracer._holder_path(holder):
            return holder, frame.f_code.co_name
    return None
