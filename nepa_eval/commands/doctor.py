"""`nepa-eval doctor [--device D] [--work-dir DIR] [--data DATA] [--data-root ROOT] [--bench]`: check the machine
it runs on and print one table (check, result, fix); exit 1 if a check fails (nepa_eval/doctor.py)."""
from nepa_eval.doctor import add_arguments, main  # noqa: F401
