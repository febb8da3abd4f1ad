"""The rule registry: one small rule per op kind.

A rule says how the channels of an op's inputs reach its output (``propagate``), and how the op is
kept valid once channels are removed: literal sizes in its arguments (``rewrite``) and attributes of
its module (``update_module``); module rules may also give the module's output shape
(``output_shape``) so that the shape pass need not run it. Parameter slicing itself is generic: a
rule only declares which parameter dimensions carry which channels (``ctx.param_axis``).

Contract of ``propagate``: every channel id that reaches the op must be accounted for: passed on to
the output, merged with other ids, or blocked. Ids that silently vanish could be pruned wrongly, so the
fallback for anything unknown is :class:`Conservative`: block every input channel.
"""
from __future__ import annotations

import dataclasses
import inspect
import types
import warnings
from typing import TYPE_CHECKING, Any, Callable, Iterable

import torch
from torch import fx, nn

if TYPE_CHECKING:  # pragma: no cover
    from ..channels.propagation import Context
    from ..surgery import Rewriter


class Rule:
    """Base class: how channels pass through one kind of op, and how the op is sliced."""

    #: True if ``rewrite`` must run on this node after pruning (it holds literal sizes).
    rewrites = False
    #: True if the rule handles sizes read from tensors among its arguments (see ``SizeOf``);
    #: otherwise the channels such sizes come from are blocked.
    reads_sizes = False

    def propagate(self, ctx: "Context", node: fx.Node) -> Any:
        raise NotImplementedError

    def shaped_by_values(self, node: fx.Node) -> bool:
        """Whether this call's output shape may depend on tensor values (indexing by a boolean mask), which
        the size oracle then checks (:meth:`pruning.tracing.sizes.SizeOracle.data_dependent`; an op
        without a rule is checked too). By default a ruled op is shaped by its inputs' shapes alone."""
        return False

    def rewrite(self, rw: "Rewriter", node: fx.Node) -> None:
        """Update literal sizes in ``node.args``/``node.kwargs`` to the pruned shapes."""

    def update_module(self, module: nn.Module) -> None:
        """Update module attributes (``out_channels``...) after its parameters were sliced."""

    def output_shape(self, module: nn.Module, shape: torch.Size) -> tuple[int, ...] | None:
        """Module rules: the output shape of ``module`` called on one tensor of ``shape``, computed
        without running it, or None to have the shape pass run the module (on fake tensors).

        Optional; it only saves time (fake-tensor dispatch costs about 0.4 ms per convolution).
        Return None for any input the module would reject, so the real error surfaces.
        """
        return None

    def input_channel_dim(self, module: nn.Module, shape: torch.Size) -> int | None:
        """Module rules of layers that are affine in their input (convolution, linear): the dim of an
        input of ``shape`` that holds the input channels (the output holds its channels in the same
        dim), so that pruning can fold the mean of removed input channels into the bias (see
        :mod:`pruning.compensation`). None (the default): the layer is not compensated."""
        return None

    def output_shift(self, module: nn.Module, shift: torch.Tensor) -> torch.Tensor:
        """For a rule with :meth:`input_channel_dim`: the change of each output channel of ``module``
        (unpruned, away from padded borders) when input channel ``c`` is shifted by the constant
        ``shift[c]``."""
        raise NotImplementedError(f"{type(self).__name__} gives an input channel dim but no output_shift")

    def mixes_inputs(self, module: nn.Module) -> bool:
        """For a rule with :meth:`input_channel_dim`: whether :meth:`mixed_weight` works for ``module``
        (regression compensation; a layer that cannot mix its inputs is mean-compensated)."""
        return False

    def mixed_weight(self, module: nn.Module, mix: torch.Tensor) -> torch.Tensor:
        """For a rule whose :meth:`mixes_inputs` is true: the weight with which ``module`` computes on an
        input ``x`` what it computes on ``mix @ x`` (``mix`` a float64 ``(in, in)`` matrix on the weight's device,
        acting on the input channels at every position), in float64."""
        raise NotImplementedError(f"{type(self).__name__} does not mix its inputs")

    def call_shape(self, target: Callable | str, args: tuple, kwargs: dict) -> tuple[int, ...] | None:
        """Function and method rules: the output shape of ``target(*args, **kwargs)`` (for a method,
        ``args[0]`` is the tensor it is called on), computed without running it, or None to have the
        shape pass run it. Tensor arguments may be stand-ins with only ``shape``, ``dtype`` and
        ``device``; the result has the dtype and device of the tensor arguments, which the shape pass
        requires to be all alike. Optional, like :meth:`output_shape`; return None for anything the
        op would reject or that changes the dtype.
        """
        return None


class Fixed(Rule):
    """An op whose channels stay by design: none of its input channels may be pruned, its outputs carry
    no channels."""

    def propagate(self, ctx: "Context", node: fx.Node) -> Any:
        for value in ctx.input_values(node):
            ctx.block_value(value)
        return None


class Conservative(Fixed):
    """Unknown op (or a configuration a rule does not handle): as :class:`Fixed`, and reported in
    ``Snapshot.opaque_ops``. A submodule passed to it (read by ``get_attr``: a soft-traced function given
    ``self.layer``) keeps the channels of what the op reads of it (:func:`keep_read`)."""

    def propagate(self, ctx: "Context", node: fx.Node) -> Any:
        ctx.report_opaque(node)
        keep_read(ctx, node, (node.args, node.kwargs), names_in_code(node.target))
        return super().propagate(ctx, node)


def keep_read(ctx: "Context", node: fx.Node, args: Any, names: set[str]) -> None:
    """Keep the channels of the model's parameters, buffers and submodules that an opaque call reads: those
    the shape pass saw it read (``module.name`` through ``nn.Module.__getattr__``, recorded in
    ``node.meta["pruning_module_reads"]``; running a module reads its weights), and, of the submodules among
    ``args`` (``get_attr`` nodes), the members named in ``names``, the attribute names its code reads (for
    branches the example did not take). Without a record, every submodule among ``args`` keeps all."""
    reads = node.meta.get("pruning_module_reads")
    for path in reads or ():
        owner, _, name = path.rpartition(".")
        if owner in ctx.modules:
            _keep_member(ctx, ctx.modules[owner], name)
    for a in flatten_args([args]):
        if isinstance(a, fx.Node) and a.op == "get_attr" and isinstance(held := ctx.attribute(a), nn.Module):
            if reads is None:
                ctx.keep_tensors_of(held)
                continue
            for name in names:
                _keep_member(ctx, held, name)


def _keep_member(ctx: "Context", module: nn.Module, name: str) -> None:
    """Keep the channels of ``module``'s submodule, parameter or buffer ``name`` (nothing for another name)."""
    if name in module._modules:
        ctx.keep_tensors_of(module._modules[name])
    elif name in module._parameters or name in module._buffers:
        ctx.keep_tensors_of(module, name)


def names_in_code(function: Any) -> set[str]:
    """Attribute and global names read by a function's code and the code nested in it (comprehensions,
    closures); empty for what has no Python code."""
    names: set[str] = set()
    codes = [getattr(inspect.unwrap(function), "__code__", None)] if callable(function) else []
    while codes:
        code = codes.pop()
        if code is None:
            continue
        names.update(code.co_names)
        codes += [c for c in code.co_consts if isinstance(c, types.CodeType)]
    return names


class Container(Fixed):
    """A dataclass built from traced values (fx's form of a returned dataclass, such as a Hugging Face
    ``ModelOutput``): what it packs leaves the graph as is, so its channels stay, as at the output."""


CONSERVATIVE = Conservative()
CONTAINER = Container()
MODULE_RULES: dict[type, Rule] = {}
FUNCTION_RULES: dict[Callable, Rule] = {}
METHOD_RULES: dict[str, Rule] = {}
#: Rules for functions of other libraries, by qualified name, so that registering needs no import.
#: Rules by qualified name, for functions and module types of packages that need not be installed.
NAMED_RULES: dict[str, Rule] = {}


def register(*keys: type | Callable | str) -> Callable[[type[Rule]], type[Rule]]:
    """Class decorator: register one instance of the rule under each key.

    A key is a module type (for ``call_module``), a method name (``call_method``) or a function
    (``call_function``). Registering a key again replaces its rule, so users can override ours.
    """

    def decorate(cls: type[Rule]) -> type[Rule]:
        rule = cls()
        for key in keys:
            register_rule(key, rule)
        return cls

    return decorate


def register_rule(key: type | Callable | str, rule: Rule) -> None:
    """Register ``rule`` for a module type, a method name (``"view"``), a function, or a function or
    module type by its qualified name (``"timm.layers.padding.pad_same"``: any name with a dot).

    A module type with a rule is a leaf of the trace (its forward is not traced into), so its rule is
    what the analysis sees."""
    if isinstance(key, str) and "." in key:
        NAMED_RULES[key] = rule
    elif isinstance(key, str):
        METHOD_RULES[key] = rule
    elif isinstance(key, type) and issubclass(key, nn.Module):
        MODULE_RULES[key] = rule
    elif callable(key):
        FUNCTION_RULES[key] = rule
    else:
        raise TypeError(f"cannot register a rule for {key!r}: expected a module type, name or function")


def registered(node: fx.Node, module: nn.Module | None) -> Rule | None:
    """The rule registered for a call node's target (exact module type: a subclass may have another
    forward), None where there is none."""
    if node.op == "call_module":
        return module_rule(type(module))
    if node.op == "call_function":
        return function_rule(node.target)
    if node.op == "call_method":
        return METHOD_RULES.get(node.target)
    raise ValueError(f"no rules for node kind {node.op}")


def lookup(node: fx.Node, module: nn.Module | None) -> Rule:
    """The rule for a graph node: its registered one, ``CONTAINER`` for a dataclass built in the graph,
    else ``CONSERVATIVE``.

    A module with forward hooks is opaque (``CONSERVATIVE``, with a warning): a hook may change what
    enters or leaves it, which no rule can see. Remove such hooks before building the IR to prune it.
    """
    if node.op == "call_module" and (module._forward_hooks or module._forward_pre_hooks):
        warnings.warn(f"module '{node.target}' ({type(module).__name__}) has forward hooks, which may "
                      "change its input or output: it is kept opaque and its channels are unprunable "
                      "(remove the hooks before building the IR to prune it)", stacklevel=2)
        return CONSERVATIVE
    rule = registered(node, module)
    if rule is None and node.op == "call_function" and isinstance(node.target, type) \
            and dataclasses.is_dataclass(node.target):
        rule = CONTAINER
    return rule or CONSERVATIVE


def qualified_name(obj: Any) -> str:
    """``module.qualname`` of a function or class, as ``NAMED_RULES`` keys it."""
    return f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', '')}"


def function_rule(function: Callable) -> Rule | None:
    """The rule registered for a function, by the function itself or by its qualified name."""
    return FUNCTION_RULES.get(function) or NAMED_RULES.get(qualified_name(function))


def module_rule(module_type: type) -> Rule | None:
    """The rule registered for a module type, by the type itself or by its qualified name."""
    return MODULE_RULES.get(module_type) or NAMED_RULES.get(qualified_name(module_type))


def target_name(node: fx.Node) -> str:
    """The name of what a call node calls: a method name, or a function's ``__name__``."""
    return node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "")


def normalize_dim(dim: int | fx.Node, ndim: int) -> int:
    """A non-negative dimension index; a dim computed at run time (``torch.stack(xs, dim=x.dim())``) is the
    example input's, which pruning does not change (the shape pass records it)."""
    if isinstance(dim, fx.Node):
        if "pruning_int" not in dim.meta:
            raise TypeError(f"the dim argument {dim.name} has no recorded value: run the shape pass first")
        dim = dim.meta["pruning_int"]
    return dim + ndim if dim < 0 else dim


def arg(node: fx.Node, index: int, name: str, default: Any = None) -> Any:
    """Positional-or-keyword argument of a call node."""
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def flatten_args(values: Iterable[Any]) -> list[Any]:
    """All leaves of nested tuples/lists/dicts of arguments."""
    out: list[Any] = []
    for v in values:
        if isinstance(v, (tuple, list)):
            out.extend(flatten_args(v))
        elif isinstance(v, dict):
            out.extend(flatten_args(v.values()))
        else:
            out.append(v)
    return out


def is_size(shape: Any) -> bool:
    """True if a recorded shape is a tensor's shape."""
    return isinstance(shape, torch.Size)
