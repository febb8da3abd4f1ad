"""Channel propagation: which channels of which tensors must be pruned together."""
