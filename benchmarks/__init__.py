"""Benchmarks of the library against itself and against Torch-Pruning (not tests): each module is a script,
run from the repository root as ``python -m benchmarks.NAME --help``; modules share code as ``benchmarks.*``."""
