"""`nepa-eval bench [backbone|pretrain|seg ...]`: benchmark tables (see nepa_eval/bench.py)."""
from nepa_eval.bench import add_arguments, main  # noqa: F401
