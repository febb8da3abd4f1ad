"""Per-operation knowledge: one rule per op kind, grouped by op family, looked up in one registry.

Importing this package registers the built-in rules. Add support for an op with
``register_rule(key, rule)`` (every IR), or ``PruningIR(model, rules={key: rule})`` (one IR); the
[`Rule`][pruning.registry.Rule] base class lists the hooks a rule may override and shows a complete one.

| module | ops |
|---|---|
| `convolution` | `nn.Conv*d`, `nn.ConvTranspose*d`, `F.conv*d` |
| `linear` | `nn.Linear`, `F.linear`, matmul, einsum, `nn.Bilinear`, embeddings |
| `normalization` | batch, layer, RMS, group, instance norms; norms across channels |
| `elementwise` | arithmetic with broadcasting, comparisons, unary math, activations |
| `reductions` | sums, means, norms, softmax, cumulative ops along a dim |
| `shape_ops` | view/reshape, permute, expand, flip, channel and pixel shuffles |
| `joining` | cat, stack, split, chunk, unbind, repeat, tile |
| `indexing` | `x[...]` reads and writes |
| `sizes` | `x.size()`, `len(x)`, tensors made from sizes, size guards |
| `pooling` | pools, interpolation, padding, roll, grid sampling, im2col, unpooling |
| `attention` | `nn.MultiheadAttention`, `F.scaled_dot_product_attention` |
| `recurrent` | `nn.RNN`, `nn.LSTM`, `nn.GRU` |
| `swin`, `mvit`, `detection`, `timm_ops` | model-specific functions of torchvision (Swin, MViT, detection) and timm |
| `helpers` | opaque helper methods that the tracer wraps |
| `common` | building blocks shared by the rules above |
"""
from ..registry import (
    CONSERVATIVE,
    Rule,
    RuleTable,
    lookup,
    register,
    register_rule,
    rule_for,
)
from . import (  # noqa: F401  (registration side effects)
    attention,
    convolution,
    detection,
    elementwise,
    helpers,
    indexing,
    joining,
    linear,
    mvit,
    normalization,
    pooling,
    recurrent,
    reductions,
    shape_ops,
    sizes,
    swin,
    timm_ops,
)

__all__ = ["CONSERVATIVE", "Rule", "RuleTable", "lookup", "register", "register_rule", "rule_for"]
