"""``PruningIR``: a traced model, its channel labels, and physical pruning."""
from __future__ import annotations

import copy
import hashlib
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from torch import fx, nn
from torch.nn.parameter import is_lazy

from . import rules  # noqa: F401  (registers the built-in rules)
from .channels.propagation import Analysis, Context, ParamSite
from .compensation import method as compensation_method
from .compensation import plan
from .labels import Label, check_selection
from .nodes import get_tensor
from .registry import Rule, RuleTable, local_rules
from .surgery import graph_module, prune_graph_module
from .tracing import TracingError, record_shapes, trace_graph
from .tracing.codegen import hoisted
from .tracing.state import evaluated

__all__ = ["PruningIR", "Snapshot", "Label", "ParamSite"]


class Snapshot:
    """One traced model of an IR with its channel analysis and calibration scores.

    The analysis needs tensor shapes, so it runs on the first forward pass (``run``/``analyze``)
    or at IR construction when ``example_input`` is given. The example is kept so that a pruned IR
    can analyse its own model without asking again.

    ``model`` is a GraphModule, or (with ``graph``) the module whose submodules the graph's targets
    name. In the second case the GraphModule (a code generation and a compile) is built on first
    use of [`model`][]: analysing, selecting and pruning only need the graph, so an IR that is
    only pruned never builds its unpruned GraphModule.

    ``retrace`` (the leaf modules of a graph that soft tracing made partly opaque without an example):
    the first positional-only input that [`analyze`][] sees traces the model again with it, as
    ``PruningIR(example_input=...)`` does, so that branches on sizes (a feature map padded to a multiple
    of the patch size) take the input's way, guarded in the graph, instead of keeping their module whole.
    """

    def __init__(self, name: str, model: nn.Module, example: tuple[tuple, dict] | None = None,
                 graph: fx.Graph | None = None, rules: RuleTable | None = None,
                 retrace: list[type | nn.Module] | None = None) -> None:
        self._uid: str | None = None
        self._retrace = None if retrace is None else (model, retrace)
        #: the IR's own rules (``PruningIR(rules=...)``), ahead of the registry in the analysis
        self.rules = rules
        self.name = name
        self._root = model
        self._graph = model.graph if graph is None else graph
        self._model: fx.GraphModule | None = model if graph is None else None
        self.scores: torch.Tensor | None = None
        #: calibration mean of each input channel per compensable layer (see [`pruning.compensation`][])
        self.input_means: dict[str, torch.Tensor] | None = None
        #: calibration covariance of the input channels per compensable layer that can mix its inputs
        #: (recorded with ``input_covariance=True``; regression compensation)
        self.input_covariances: dict[str, torch.Tensor] | None = None
        #: how many positions (rows) each covariance was estimated from (the regression's shrinkage)
        self.input_samples: dict[str, int] | None = None
        self._example = example
        self._analysis: Analysis | None = None

    @property
    def model(self) -> fx.GraphModule:
        """The traced model (its submodules are those of the model the IR was built from)."""
        if self._model is None:
            model = graph_module(self._root, self._graph, self._root)
            model._pruning_traced = True
            self._model = self._root = model
        return self._model

    @property
    def graph(self) -> fx.Graph:
        return self._graph

    @property
    def root(self) -> nn.Module:
        """The module whose submodules and tensors the graph's targets name: the model the IR was built from
        until [`model`][pruning.ir.Snapshot.model] is first built, then that GraphModule (which holds the same submodules and
        tensors)."""
        return self._root

    @property
    def ir_uid(self) -> str:
        """The id of the IR ([`fingerprint`][] of this model), computed when first needed: when
        labels are made or checked, or the IR is saved. A model changed in place before then (its
        weights trained, say) gets the id of what it is then; after that the id is fixed."""
        if self._uid is None:
            self._uid = fingerprint(self._root, graph=self._graph)
        return self._uid

    # --- analysis --------------------------------------------------------------------------
    @property
    def analyzed(self) -> bool:
        return self._analysis is not None

    def analyze(self, *args: Any, **kwargs: Any) -> None:
        """Record shapes with one forward pass on these inputs and build the labels (once)."""
        if self._analysis is not None:
            return
        if not args and not kwargs:
            if self._example is None:
                raise RuntimeError(
                    f"snapshot {self.name!r} has not seen an input yet: pass example_input= to "
                    "PruningIR, call ir.snapshot().analyze(*inputs), or calibrate with "
                    "LossAwareCriterion first")
            args, kwargs = self._example
        if self._retrace is not None:
            model, leaves = self._retrace
            self._retrace = None
            if not kwargs:  # an example is positional (see PruningIR's example_input)
                with local_rules(self.rules):
                    self._graph = trace_graph(model, leaves, True, example=args)
                self._root, self._model, self._uid = model, None, None
        try:
            with local_rules(self.rules):
                record_shapes(self._root, args, kwargs, self._graph)
        except Exception as error:
            shapes = [tuple(a.shape) if isinstance(a, torch.Tensor) else type(a).__name__ for a in args]
            if self._model is None and _runs(self._root, args, kwargs):  # the root is the traced model itself
                raise ValueError(
                    f"the traced graph of {type(self._root).__name__} fails on the example input (positional shapes "
                    f"{shapes}), on which the model itself runs: {type(error).__name__}: {error}; the trace took "
                    "another way than the model's code takes for this input: library code that behaves otherwise "
                    "while traced (a `hasattr` probe, which a traced value always passes), or a Python test on a "
                    "traced value that the trace could not decide for the example") from error
            raise ValueError(
                f"the model cannot run on the example input (positional shapes {shapes}): "
                f"{type(error).__name__}: {error}; pass inputs the model accepts") from error
        self._example = (_detach(args), _detach(kwargs))
        with local_rules(self.rules):
            analysis = Context(self._root, self._graph).run()
        if not analysis.prunable.any():
            opaque = (f"; ops no rule understands here: {', '.join(analysis.opaque[:5])}"
                      f"{f' and {len(analysis.opaque) - 5} more' if len(analysis.opaque) > 5 else ''}"
                      if analysis.opaque else "")
            raise ValueError(
                f"{type(self._root).__name__} has no prunable channel: every channel reaches a model "
                f"input or output or an op the IR does not understand (see pruning.rules to add one){opaque}")
        self._analysis = analysis

    def run(self, *args: Any, **kwargs: Any) -> Any:
        """Forward through the snapshot's model, analysing on the first call."""
        self.analyze(*args, **kwargs)
        return self.model(*args, **kwargs)

    def example_args(self) -> tuple[torch.Tensor, ...]:
        """The positional tensor inputs the snapshot was analysed with (for cost functions and
        pruning records that rebuild inputs from shapes)."""
        args, kwargs = self._example if self._example is not None else ((), {})
        if kwargs or not args or not all(isinstance(a, torch.Tensor) for a in args):
            raise ValueError(f"snapshot {self.name!r} was not analysed with positional tensor inputs only; "
                             "pass example_input= (a tensor or a tuple of tensors) to PruningIR")
        return tuple(args)

    @property
    def analysis(self) -> Analysis:
        if self._analysis is None:
            self.analyze()
        return self._analysis

    def __getstate__(self) -> dict:
        # A snapshot is saved (and deep-copied) with its GraphModule, whose pickle is its code.
        model, uid = self.model, self.ir_uid
        state = {key: value for key, value in self.__dict__.items()
                 if key not in ("_root", "_graph", "_model", "_retrace")}
        return {**state, "_uid": uid, "model": model}

    def __setstate__(self, state: dict) -> None:
        # Unpickling re-creates the GraphModule from its code; node names normally survive. If they
        # did not, the analysis no longer matches the graph: redo it from the stored example.
        state = dict(state)
        model = hoisted(state.pop("model"))  # fx re-made the unpickled model with its own code generation
        if "ir_uid" in state:  # saved by a version that stored the id eagerly
            state["_uid"] = state.pop("ir_uid")
        state.setdefault("input_means", None)  # saved by a version without mean compensation
        state.setdefault("input_covariances", None)  # saved by a version without regression compensation
        state.setdefault("input_samples", None)
        state.setdefault("rules", None)  # saved by a version without per-IR rules
        state["_retrace"] = None  # a saved graph is analysed as it is
        self.__dict__.update(state)
        self._root, self._graph, self._model = model, model.graph, model
        names = {node.name for node in self._graph.nodes}
        if self._analysis is not None and set(self._analysis.node_ids) != names:
            self._analysis = None
            self.analyze()

    # --- labels ----------------------------------------------------------------------------
    @property
    def num_labels(self) -> int:
        return self.analysis.num_labels

    def label(self, index: int) -> Label:
        return Label(self.ir_uid, self.name, int(index))

    @property
    def labels(self) -> list[Label]:
        """Prunable labels, ascending index."""
        return [self.label(i) for i in np.flatnonzero(self.analysis.prunable)]

    @property
    def groups(self) -> list[list[Label]]:
        """Prunable labels grouped by the tensor and parameter dims they appear in.

        Every group must keep at least one label: emptying one would make a dim zero-sized.
        """
        return [[self.label(i) for i in group] for group in self.analysis.groups]

    @property
    def opaque_ops(self) -> list[str]:
        """Graph nodes that no rule understands (an op without a rule, or a configuration its rule
        does not handle, such as an LSTM with ``proj_size``) and that channels reach or that are
        layers with parameters, as 'node (op)': every channel that reaches one, and the layer's own
        output channels, are unprunable. Register a rule (``pruning.rules.register_rule``) to prune
        through one."""
        return list(getattr(self.analysis, "opaque", []))

    @property
    def param_sites(self) -> list[ParamSite]:
        return self.analysis.sites

    def slices(self, label: Label) -> dict[str, list[tuple[int, np.ndarray]]]:
        """The parameter and buffer elements ``label`` owns: name -> [(dim, indices along dim)]."""
        if label.ir_uid != self.ir_uid or label.snapshot != self.name:
            raise ValueError(f"{label!r} does not belong to snapshot {self.name!r} of this IR")
        owned: dict[str, list[tuple[int, np.ndarray]]] = {}
        for site in self.analysis.sites:
            index = np.flatnonzero(site.label_index == label.index)
            if len(index):
                owned.setdefault(site.name, []).append((site.dim, index))
        return owned


def _runs(model: nn.Module, args: tuple, kwargs: dict) -> bool:
    """Whether ``model`` itself runs on these inputs (as the shape pass runs its graph: no gradients, eval
    mode, nothing on the model changed)."""
    try:
        with evaluated(model):
            model(*args, **kwargs)
    except Exception:  # noqa: BLE001 - any failure means no
        return False
    return True


def _detach(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, (tuple, list)):
        return type(value)(_detach(v) for v in value)
    if isinstance(value, dict):
        return {k: _detach(v) for k, v in value.items()}
    return value


def fingerprint(model: nn.Module, values: bool = True, graph: fx.Graph | None = None) -> str:
    """A deterministic hash of the graph's code and the name and shape of every tensor it uses, and
    with ``values`` also their first elements.

    ``model`` is a GraphModule, or with ``graph`` the module whose submodules the graph's targets
    name; both give the same hash for the same graph and tensors. With values it is the IR id: two
    IRs of the same model get the same id (their labels mean the same channels), a pruned model gets
    another, and saved IRs stay byte-identical across runs. Without values it identifies the
    architecture only (``pruning.replay``).
    """
    graph = model.graph if graph is None else graph
    # fx's own code for the graph, without the body transformer (``pruning.tracing.codegen``): a
    # GraphModule unpickled from its code has none, and the hash must not depend on how it was made
    with graph.on_generate_code(lambda _: None):
        code = graph.python_code(root_module="self").src
    digest = hashlib.sha1(code.encode())
    tensors = _graph_tensors(model, graph)
    heads = _heads(list(tensors.values())) if values else None
    for index, (name, tensor) in enumerate(tensors.items()):
        digest.update(f"{name}{tuple(tensor.shape)}".encode())
        if values:
            digest.update(heads[index])
    return digest.hexdigest()


def _graph_tensors(root: nn.Module, graph: fx.Graph) -> dict[str, torch.Tensor]:
    """Every parameter and buffer of the modules the graph calls, and every tensor it reads, by
    qualified name, in graph order (the order does not depend on how the modules are nested)."""
    tensors: dict[str, torch.Tensor] = {}
    modules = dict(root.named_modules())
    for node in graph.nodes:
        if node.op == "call_module":
            module = modules[node.target] if node.target in modules else root.get_submodule(node.target)
            owners = module.named_modules(prefix=node.target) if module._modules else ((node.target, module),)
            for prefix, module in owners:
                for table in (module._parameters, module._buffers):
                    for name, tensor in table.items():
                        if tensor is not None:
                            tensors.setdefault(f"{prefix}.{name}", tensor)
        elif node.op == "get_attr":
            tensor = get_tensor(root, node.target)
            if isinstance(tensor, torch.Tensor):
                tensors.setdefault(node.target, tensor)
    return tensors


def _heads(tensors: list[torch.Tensor]) -> list[bytes]:
    """The first 8 elements of every tensor as float64 bytes, converted in one call per dtype and
    device (one conversion per tensor dominated the fingerprint of small models)."""
    # One strided view per contiguous tensor (a reshape and a slice otherwise).
    flat = [tensor.detach().as_strided((min(8, tensor.numel()),), (1,)) if tensor.is_contiguous()
            else tensor.detach().reshape(-1)[:8] for tensor in tensors]
    out: list[bytes] = [b""] * len(flat)
    kinds: dict[tuple, list[int]] = {}
    for index, head in enumerate(flat):
        kinds.setdefault((head.dtype, head.device), []).append(index)
    for indices in kinds.values():
        data = torch.cat([flat[i] for i in indices]).to("cpu", torch.float64).numpy().tobytes()
        offset = 0
        for i in indices:
            out[i] = data[offset:offset + 8 * len(flat[i])]
            offset += 8 * len(flat[i])
    return out


class PruningIR:
    """Intermediate representation of a model for structured (channel) pruning.

    Args:
        model: the model to prune. It is traced with ``torch.fx``; its submodules are shared with
            the IR's ``'main'`` snapshot, so the model is only modified by ``prune(inplace=True)``.
        leaf_modules: module types or instances kept atomic in the graph. A leaf without a rule in
            [`pruning.rules`][] is opaque: its inputs and outputs are unprunable.
        soft_tracing: if True, what cannot be traced becomes opaque, with a warning naming it: the
            module-level function, else (in a module with parameters) the method of a helper object or
            submodule, else the submodule (see ``pruning.tracing.tracer``); if False, tracing fails
            with a ``TracingError`` naming the submodule and the reason.
        example_input: optional tensor or tuple of positional inputs. The channel analysis needs
            one forward pass; with an example it runs now, without one on the first forward pass
            through the criterion (or ``ir.snapshot().analyze(*inputs)``). ENOT's ``pruning_v2``
            interface has no such argument; ``PruningIR(model)`` alone works as there: if tracing without
            an example makes part of the model opaque (soft tracing), the first input the analysis sees,
            when positional only, traces it again as an example would (the graph is then guarded for
            inputs shaped like it). With an example, the
            forward's parameters after these inputs that have a plain default (``mask=None``,
            ``flag=False``) are fixed at it: the traced and pruned models take the branches those
            defaults take, and passing another value to them raises. A positional input may be a list of
            tensors (a torchvision detector's images, ``example_input=([image],)``): the graph then
            takes as many as the example has, and asserts it. Branches on values that the example decides
            (None outputs of opaque modules, sizes) are guarded the same way (``pruning.tracing``).
        rules: rules for this IR only, by the keys that [`register_rule`][pruning.registry.register_rule]
            takes (a module type, a method name, a function, or a qualified name), ahead of the registered
            ones: support for an op of your own, or another rule for one of ours, without changing what
            other IRs see. A pruned IR keeps them, and so does a saved one; key a function defined in
            the script you run by its qualified name (``"__main__.my_op"``), since dill saves such a
            function by value and the loaded key is then another object than the graph calls.

    The pruned model (``ir.prune(...).model``) is a ``torch.fx.GraphModule``: its submodules keep
    their names and classes, parameters are physically smaller, and Python branches on
    ``self.training`` in the model's own forward are fixed as they were at tracing time.

    Serialise only with dill: ``torch.save(ir, path, pickle_module=dill)`` and
    ``torch.load(path, pickle_module=dill, weights_only=False)``. Like every pickle, loading runs
    code: load IR files only from sources you trust (your own pipeline's outputs).
    """

    def __init__(self, model: nn.Module, *, leaf_modules: Iterable[type | nn.Module] | None = None,
                 soft_tracing: bool = True, example_input: Any = None,
                 rules: dict[type | Callable | str, Rule] | None = None) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"PruningIR needs a torch.nn.Module, got {type(model).__name__}: "
                            "pass the model object itself")
        lazy = [name for name, tensor in (*model.named_parameters(), *model.named_buffers()) if is_lazy(tensor)]
        if lazy:
            raise ValueError(f"{type(model).__name__} has uninitialized lazy parameters ({', '.join(lazy[:3])}"
                             f"{', ...' if len(lazy) > 3 else ''}): run the model once on a real input before "
                             "building the IR (lazy modules take their shapes from their first call)")
        self.leaf_modules = list(leaf_modules or [])
        self.soft_tracing = soft_tracing
        self.rules = RuleTable(rules) if rules else None
        args = None if example_input is None else (
            example_input if isinstance(example_input, tuple) else (example_input,))
        if getattr(model, "_pruning_traced", False):
            main = Snapshot("main", model, rules=self.rules)
        else:
            graph, retrace = None, None
            with local_rules(self.rules):
                if args is None and soft_tracing:
                    try:  # a model traced whole without an example needs none
                        graph = trace_graph(model, self.leaf_modules, False)
                    except TracingError:
                        retrace = self.leaf_modules
                if graph is None:
                    graph = trace_graph(model, self.leaf_modules, soft_tracing, example=args)
            main = Snapshot("main", model, graph=graph, rules=self.rules, retrace=retrace)
        self._snapshots = {"main": main}
        if args is not None:
            self._snapshots["main"].analyze(*args)

    @property
    def uid(self) -> str:
        """The IR's id: labels carry it, and an IR accepts only labels with its own id."""
        return self._snapshots["main"].ir_uid

    @property
    def model(self) -> fx.GraphModule:
        """The ``'main'`` snapshot's model."""
        return self._snapshots["main"].model

    @property
    def snapshot_names(self) -> list[str]:
        return list(self._snapshots)

    def snapshot(self, name: str = "main") -> Snapshot:
        if name not in self._snapshots:
            raise KeyError(f"no snapshot {name!r}; this IR has {self.snapshot_names}")
        return self._snapshots[name]

    def prune(self, name: str = "main", *, labels: Sequence[Label], inplace: bool = False,
              skip_label_checking: bool = False, compensate: bool | str | None = None) -> "PruningIR":
        """Remove the channels of ``labels`` from snapshot ``name``'s model.

        Returns a new IR whose ``'main'`` snapshot is the pruned model (the labels of this IR do not
        apply to it). ``inplace=True`` slices the parameters of this IR's model (and so of the
        user's model it shares modules with) instead of copying it, and returns this IR, now
        holding only the pruned model (its earlier labels are refused from then on). With no labels and
        ``inplace=False`` the result is a copy. ``skip_label_checking=True`` skips the checks of
        [`pruning.labels.check_selection`][] (foreign, duplicate, unprunable labels, emptied
        groups): use it only for selections known to be valid.

        ``compensate`` (an addition to ENOT's ``pruning_v2`` interface): make up, in every convolution or linear
        layer that loses input channels, for what those channels carried on the calibration data
        ([`pruning.compensation`][]), so that the pruned model starts closer to the original. ``"mean"``: fold
        each removed channel's calibration mean into the layer's bias (a layer without a bias puts it into the
        running mean of the BatchNorm it feeds, or else gets a bias); ``"regression"``: also fold the part of
        the removed channels that the kept ones predict (least squares) into the kept weights, which needs
        covariances (``LossAwareCriterion(ir, input_covariance=True)``). ``None`` (default): the best the
        snapshot's statistics allow: regression with covariances, mean with means only (``LossAwareCriterion``
        records means, and ``MagnitudeCriterion`` when it was called on inputs), else prune plainly; ``True``:
        the same, but a ``ValueError`` without means; ``False``: never (the pruned model then equals the
        original with those channels zeroed).
        """
        snapshot = self.snapshot(name)
        labels = list(labels)
        if skip_label_checking:
            indices = np.asarray([label.index for label in labels], dtype=np.int64)
        else:
            indices = check_selection(snapshot, labels)
        if len(indices) == 0 and not inplace:
            return copy.deepcopy(self)
        keep = np.ones(snapshot.num_labels, dtype=bool)
        keep[indices] = False
        how = compensation_method(snapshot, compensate)
        compensation = plan(snapshot, keep, how) if how else None  # from the weights before slicing
        pruned = prune_graph_module(snapshot._root, snapshot.graph, snapshot.analysis, keep, inplace, compensation)
        result = self if inplace else PruningIR.__new__(PruningIR)
        result.leaf_modules = self.leaf_modules
        result.soft_tracing = self.soft_tracing
        result.rules = self.rules
        pruned._pruning_traced = True
        result._snapshots = {"main": Snapshot("main", pruned, snapshot._example, rules=self.rules)}
        return result

    def __repr__(self) -> str:
        main = self._snapshots["main"]
        detail = (f"{len(main.labels)} prunable labels in {len(main.analysis.groups)} groups"
                  if main.analyzed else "not analysed yet")
        return f"PruningIR({type(main._root).__name__}, {detail})"
