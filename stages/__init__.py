"""The DVC pipeline: one module per stage (prepare ... evaluate) plus the helpers they share.

Every stage is a click command in `stages.cli`; `dvc.yaml` calls them with `python -m stages.cli`.
"""
