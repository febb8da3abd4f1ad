"""Rules and the registry that finds them: one small rule per op kind.

A rule says how the channels of an op's inputs reach its output, and how the op is kept valid once
channels are removed; [`Rule`][pruning.registry.Rule] lists its hooks. Every layer looks rules up here
(the tracer to decide which calls are leaves, the shape pass, channel propagation), so this module
imports nothing from the package but `pruning.nodes`; the built-in rules register themselves when
`pruning.rules` is imported.

Contract of ``propagate``: every channel id that reaches the op must be accounted for: passed on to
the output, merged with other ids, or blocked. Ids that silently vanish could be pruned wrongly, so the
fallback for anything unknown is [`Conservative`][pruning.registry.Conservative]: block every input channel.
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import inspect
import types
import warnings
from typing import TYPE_CHECKING, Any, Callable, Iterator

import torch
from torch import fx, nn

from .nodes import flatten_args

if TYPE_CHECKING:  # pragma: no cover
    from .channels.propagation import Context
    from .surgery import Rewriter


class Rule:
    """Base class: how channels pass through one kind of op, and how the op is sliced.

    Override only the hooks your op needs: the defaults do nothing or answer "not known", and the
    analysis records a node for `rewrite` or `update_module` only where its rule overrides them
    ([`overrides`][pruning.registry.overrides]):

    | hook | override it when |
    |---|---|
    | `propagate` | always: say which input channels reach the output (pass, merge, block) |
    | `rewrite` | the call holds literal sizes (`x.view(n, 64, -1)`) to update after pruning |
    | `update_module` | a module rule whose module keeps sizes in attributes (`out_channels`) |
    | `output_shape` | a module rule that can give its output shape without running (speed only) |
    | `call_shape` | the same for a function or method rule |
    | `shaped_by_values` | the output shape may depend on tensor values (boolean-mask indexing) |
    | `input_channel_dim`, `output_shift` | the layer is affine in its input (mean compensation of removed inputs) |
    | `mixes_inputs`, `mixed_weight` | the layer mixes its input channels (regression compensation) |

    Parameter slicing is generic: a rule only declares which parameter dims carry which channels
    (``ctx.param_axis``). Set [`reads_sizes`][pruning.registry.Rule.reads_sizes] if ``propagate`` handles
    sizes read from tensors.

    A complete rule, for a function that rolls the last dim and so leaves every channel where it is::

        def roll_last(x):
            return torch.roll(x, 1, dims=-1)
        torch.fx.wrap("roll_last")              # a leaf of the trace

        class PassThrough(Rule):
            def propagate(self, ctx, node):
                return ctx.value(node.args[0])  # the output carries the input's channels

        ir = PruningIR(model, example_input=x, rules={roll_last: PassThrough()})
        ir.snapshot().opaque_ops
        # []   (without the rule: ValueError naming roll_last)

    ``rules=`` applies to one IR; [`register_rule`][pruning.registry.register_rule] applies to every IR
    built afterwards.
    """

    reads_sizes = False
    """True if ``propagate`` handles sizes read from tensors among its arguments (see ``SizeOf``);
    otherwise the channels such sizes come from are blocked."""

    def propagate(self, ctx: "Context", node: fx.Node) -> Any:
        raise NotImplementedError

    def shaped_by_values(self, node: fx.Node) -> bool:
        """Whether this call's output shape may depend on tensor values (indexing by a boolean mask), which
        the size oracle then checks (`SizeOracle.data_dependent`; an op
        without a rule is checked too). By default a ruled op is shaped by its inputs' shapes alone."""
        return False

    def rewrite(self, rw: "Rewriter", node: fx.Node) -> None:
        """Update literal sizes in ``node.args``/``node.kwargs`` to the pruned shapes."""

    def update_module(self, module: nn.Module) -> None:
        """Update module attributes (``out_channels``...) after its parameters were sliced."""

    def output_shape(self, module: nn.Module, shape: torch.Size) -> tuple[int, ...] | None:
        """Module rules: the output shape of ``module`` called on one tensor of ``shape``, computed
        without running it, or None to have the shape pass run the module (on fake tensors).

        Optional; it only saves time (fake-tensor dispatch of a convolution is slow).
        Return None for any input the module would reject, so the real error surfaces.
        """
        return None

    def input_channel_dim(self, module: nn.Module, shape: torch.Size) -> int | None:
        """Module rules of layers that are affine in their input (convolution, linear): the dim of an
        input of ``shape`` that holds the input channels (the output holds its channels in the same
        dim), so that pruning can fold the mean of removed input channels into the bias (see
        [`pruning.compensation`][pruning.compensation]). None (the default): the layer is not compensated."""
        return None

    def output_shift(self, module: nn.Module, shift: torch.Tensor) -> torch.Tensor:
        """For a rule with [`input_channel_dim`][pruning.registry.Rule.input_channel_dim]: the change of
        each output channel of ``module`` (unpruned, away from padded borders) when input channel ``c`` is shifted by the constant
        ``shift[c]``."""
        raise NotImplementedError(f"{type(self).__name__} gives an input channel dim but no output_shift")

    def mixes_inputs(self, module: nn.Module) -> bool:
        """For a rule with [`input_channel_dim`][pruning.registry.Rule.input_channel_dim]: whether
        [`mixed_weight`][pruning.registry.Rule.mixed_weight] works for ``module`` (regression compensation; a layer that cannot mix its inputs is mean-compensated)."""
        return False

    def mixed_weight(self, module: nn.Module, mix: torch.Tensor) -> torch.Tensor:
        """For a rule whose [`mixes_inputs`][pruning.registry.Rule.mixes_inputs] is true: the weight with
        which ``module`` computes on an input ``x`` what it computes on ``mix @ x`` (``mix`` a float64 ``(in, in)`` matrix on the weight's device,
        acting on the input channels at every position), in float64."""
        raise NotImplementedError(f"{type(self).__name__} does not mix its inputs")

    def call_shape(self, target: Callable | str, args: tuple, kwargs: dict) -> tuple[int, ...] | None:
        """Function and method rules: the output shape of ``target(*args, **kwargs)`` (for a method,
        ``args[0]`` is the tensor it is called on), computed without running it, or None to have the
        shape pass run it. Tensor arguments may be stand-ins with only ``shape``, ``dtype`` and
        ``device``; the result has the dtype and device of the tensor arguments, which the shape pass
        requires to be all alike. Optional, like [`output_shape`][pruning.registry.Rule.output_shape];
        return None for anything the op would reject or that changes the dtype.
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
    """Unknown op (or a configuration a rule does not handle): as [`Fixed`][pruning.registry.Fixed], and reported in
    ``Snapshot.opaque_ops``. A submodule passed to it (read by ``get_attr``: a soft-traced function given
    ``self.layer``) keeps the channels of what the op reads of it ([`keep_read`][pruning.registry.keep_read])."""

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


def qualified_name(obj: Any) -> str:
    """``module.qualname`` of a function or class: the key of a rule registered by name."""
    return f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', '')}"


class RuleTable:
    """Rules by key: a module type (``call_module``), a method name (``"view"``, ``call_method``), a
    function (``call_function``), or a function or module type by its qualified name
    (``"timm.layers.padding.pad_same"``: any string with a dot), so that registering needs no import.

    ::

        table = RuleTable({nn.Conv2d: ConvModule(), "view": Reshape()})
        table.get(nn.Conv2d), table.get("view"), table.get(nn.Linear)
        # (<ConvModule>, <Reshape>, None)
    """

    def __init__(self, rules: dict[type | Callable | str, "Rule"] | None = None) -> None:
        self.modules: dict[type, Rule] = {}
        self.functions: dict[Callable, Rule] = {}
        self.methods: dict[str, Rule] = {}
        self.named: dict[str, Rule] = {}
        for key, rule in (rules or {}).items():
            self.add(key, rule)

    def add(self, key: type | Callable | str, rule: "Rule") -> None:
        """Add ``rule`` under ``key``, replacing the rule it had."""
        if not isinstance(rule, Rule):
            raise TypeError(f"the rule for {key!r} is {rule!r}, not a Rule instance: pass an instance "
                            "of a pruning.rules.Rule subclass")
        self._table(key)[key] = rule

    def get(self, key: type | Callable | str, by_name: bool = True) -> "Rule | None":
        """The rule for ``key``, else (with ``by_name``, for functions and module types) the rule
        registered under its qualified name, else None."""
        rule = self._table(key).get(key)
        if rule is None and by_name and not isinstance(key, str):
            rule = self.named.get(qualified_name(key))
        return rule

    def _table(self, key: Any) -> dict:
        if isinstance(key, str):
            return self.named if "." in key else self.methods
        if isinstance(key, type) and issubclass(key, nn.Module):
            return self.modules
        if callable(key):
            return self.functions
        raise TypeError(f"cannot register a rule for {key!r}: expected a module type, a method or qualified "
                        "name, or a function")


#: The rules every IR sees: the built-in ones (registered when `pruning.rules` is imported) and
#: those added with [`register_rule`][pruning.registry.register_rule].
RULES = RuleTable()
_LOCAL: contextvars.ContextVar[RuleTable | None] = contextvars.ContextVar("pruning_local_rules", default=None)


@contextlib.contextmanager
def local_rules(table: RuleTable | None) -> Iterator[None]:
    """Within the block, rules of ``table`` take precedence over the registry (one IR's ``rules=``)."""
    token = _LOCAL.set(table)
    try:
        yield
    finally:
        _LOCAL.reset(token)


def rule_for(key: type | Callable | str, by_name: bool = True) -> "Rule | None":
    """The rule for a module type, method name or function: the IR's own rules first (see
    [`local_rules`][pruning.registry.local_rules]), then the registry; None where neither has one."""
    local = _LOCAL.get()
    return (local is not None and local.get(key, by_name)) or RULES.get(key, by_name)


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
    """Register ``rule`` for every IR built afterwards, under a module type, a method name (``"view"``),
    a function, or a function or module type by its qualified name (any name with a dot). For one IR
    only, pass ``PruningIR(model, rules={key: rule})`` instead.

    A module type with a rule is a leaf of the trace (its forward is not traced into), so its rule is
    what the analysis sees."""
    RULES.add(key, rule)


def registered(node: fx.Node, module: nn.Module | None) -> Rule | None:
    """The rule for a call node's target (exact module type: a subclass may have another forward),
    None where there is none."""
    if node.op == "call_module":
        return rule_for(type(module))
    if node.op in ("call_function", "call_method"):
        return rule_for(node.target)
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


def overrides(rule: Rule, hook: str) -> bool:
    """Whether ``rule``'s class overrides the [`Rule`][pruning.registry.Rule] hook named ``hook`` (an
    optional hook is used only where it is)."""
    return getattr(type(rule), hook) is not getattr(Rule, hook)
