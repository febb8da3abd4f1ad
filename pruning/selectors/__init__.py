"""Label selectors: choose which labels of a calibrated snapshot to prune."""
from .base import LabelSelector
from .global_score import GlobalScoreLabelSelector
from .iterative import IterativeLabelSelector
from .knapsack import ChannelsConstraint, KnapsackLabelSelector
from .uniform import UniformLabelSelector

__all__ = [
    "ChannelsConstraint",
    "GlobalScoreLabelSelector",
    "IterativeLabelSelector",
    "KnapsackLabelSelector",
    "LabelSelector",
    "UniformLabelSelector",
]
