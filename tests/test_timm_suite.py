"""timm's own model test-suite (tests/test_models.py of the installed timm's sdist) on the nepa_* models.

scripts/setup.sh keeps that file in the cache; tests/timm_suite_plugin.py lists NEPA in timm's ViT family lists and
narrows timm's model lists to NEPA names. The default run is timm's own CI selection (its markers) on the smallest
model; the slow run is the whole file (with the tests timm keeps out of its CI) on every registered size.
"""
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import timm

import backbones  # noqa: F401  registers nepa_*

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("NEPA_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
             / "nepa-eval")
SUITE = CACHE / "timm-tests" / timm.__version__ / "tests" / "test_models.py"
TIMM_CI_MARKERS = "base or cfg or forward or backward or torchscript or features or fxforward or fxbackward"
# what timm runs on a ViT family with forward_intermediates: each must run on each model
CI_TESTS = {"test_model_forward", "test_model_backward", "test_model_default_cfgs_non_std",
            "test_model_forward_torchscript", "test_model_forward_intermediates_features",
            "test_model_forward_intermediates", "test_model_forward_fx", "test_model_backward_fx"}
ALL_TESTS = CI_TESTS | {"test_model_forward_fx_torchscript", "test_prune_intermediate_layers_contract"}
FAST = "nepa_tiny_patch14_224"  # patch 14 at timm's 96 and 128 px test sizes: the padded path

if not SUITE.is_file():  # a missing part of the set-up fails, it never skips
    pytest.fail(f"timm's test-suite is missing: no {SUITE} (scripts/setup.sh fetches it from timm's source archive)",
                pytrace=False)


def run_suite(models: list[str], tmp_path: Path, markers: str = "", timeout: int = 3000) -> dict[tuple[str, str], str]:
    """Run timm's test_models.py on `models` in a fresh interpreter: {(test, model): passed/skipped/failed}."""
    junit = tmp_path / "timm-suite.xml"
    env = dict(os.environ, NEPA_TIMM_SUITE=str(SUITE), NEPA_TIMM_MODELS=",".join(models),
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH")])))
    cmd = [sys.executable, "-m", "pytest", str(SUITE), "-p", "timm_suite_plugin", "-k", "nepa_", "-q", "-rfEs",
           "-p", "no:cacheprovider", "--rootdir", str(SUITE.parents[1]), f"--junitxml={junit}"]
    if markers:
        cmd += ["-m", markers]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=tmp_path)
    assert junit.is_file(), proc.stdout[-4000:] + proc.stderr[-4000:]
    outcomes = {}
    for case in ET.parse(junit).iter("testcase"):
        test, _, params = case.get("name").partition("[")
        model = next((p for p in params.rstrip("]").split("-") if p.startswith("nepa_")), "?").split(".")[0]
        kinds = {child.tag for child in case}
        outcomes[test, model] = ("failed" if kinds & {"failure", "error"} else "skipped" if "skipped" in kinds
                                 else "passed")
    failed = sorted(k for k, v in outcomes.items() if v == "failed")
    assert proc.returncode == 0 and not failed, f"{failed}\n{proc.stdout[-6000:]}\n{proc.stderr[-2000:]}"
    return outcomes


def check_every_test_ran(outcomes: dict[tuple[str, str], str], models: list[str], tests: set[str]) -> None:
    """Each expected test ran on each model (so the family lists took effect) and passed or was skipped by timm, and
    on each model at least one passed (a suite whose every test skips has checked nothing)."""
    ran = {(t, m) for t, m in outcomes}
    assert ran == {(t, m) for t in tests for m in models}, sorted(ran ^ {(t, m) for t in tests for m in models})
    assert set(outcomes.values()) <= {"passed", "skipped"}
    for m in models:
        assert any(v == "passed" for (_, mm), v in outcomes.items() if mm == m), f"none of timm's tests ran on {m}"


def test_timm_ci_selection_on_the_tiny_model(tmp_path):
    outcomes = run_suite([FAST], tmp_path, markers=TIMM_CI_MARKERS)
    check_every_test_ran(outcomes, [FAST], CI_TESTS)
    assert set(outcomes.values()) == {"passed"}  # at 224 px nothing is over timm's size limits


@pytest.mark.slow
@pytest.mark.parametrize("model", timm.list_models("nepa_*"))
def test_timm_suite_all_tests(model, tmp_path):
    outcomes = run_suite([model], tmp_path)
    check_every_test_ran(outcomes, [model], ALL_TESTS)
