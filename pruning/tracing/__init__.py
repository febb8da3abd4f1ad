"""Turning a model into a torch.fx graph with recorded tensor shapes."""
from .tracer import TracingError, trace_graph, trace_model
from .shapes import record_shapes

__all__ = ["TracingError", "trace_graph", "trace_model", "record_shapes"]
