"""Per-operation knowledge: one rule per op kind, looked up in one registry.

Importing this package registers the built-in rules. Add support for an op with
``register_rule(key, rule)``.
"""
from ..registry import CONSERVATIVE, Rule, lookup, register, register_rule
from . import (  # noqa: F401  (registration side effects)
    attention, detection, helpers, modules, mvit, recurrent, swin, tensor_ops, timm_ops,
)

__all__ = ["CONSERVATIVE", "Rule", "lookup", "register", "register_rule"]
