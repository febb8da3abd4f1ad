"""Label selectors: choose which labels of a calibrated snapshot to prune."""
from .base import LabelSelector
from .global_score import GlobalScoreLabelSelector
from .knapsack import ChannelsConstraint, KnapsackLabelSelector
from .uniform import UniformLabelSelector

__all__ = [
    "ChannelsConstraint",
    "GlobalScoreLabelSelector",
    "KnapsackLabelSelector",
    "LabelSelector",
    "UniformLabelSelector",
]
