"""pytest plugin: run timm's own ``tests/test_models.py`` (from the installed timm's sdist) on NEPA models.

tests/test_timm_suite.py starts ``python -m pytest <timm tests>/test_models.py -p timm_suite_plugin -k nepa_``.
timm's file is not edited. When it is imported, two of its module-level family lists are extended the way timm
lists its own ViTs: ``NON_STD_FILTERS`` (token outputs, not NCHW maps: 'vit_*', 'eva_*', ...) gets 'nepa_*', and
``FEAT_INTER_FILTERS`` (modules with forward_intermediates: 'vision_transformer', 'eva', ...) gets our module.
``timm.list_models`` then answers only the NEPA names in NEPA_TIMM_MODELS (comma-separated patterns), which
keeps collection small; every filter and exclusion of timm's own still applies.
"""
import ast
import fnmatch
import importlib.machinery
import importlib.util
import os
import sys
from typing import Optional, Sequence

import timm

import backbones  # noqa: F401  registers nepa_*

FAMILIES = {"NON_STD_FILTERS": ["nepa_*"], "FEAT_INTER_FILTERS": ["timm_models"]}
SUITE = os.path.realpath(os.environ.get("NEPA_TIMM_SUITE", ""))
PATTERNS = os.environ.get("NEPA_TIMM_MODELS", "nepa_*").split(",")
MARKERS = ("base", "cfg", "cfg_nonstd", "forward", "backward", "torchscript", "features", "fxforward", "fxbackward",
           "timeout")


def extend_family_lists(tree: ast.Module) -> ast.Module:
    """Append our entries to timm's module-level family lists; an error if timm renamed one."""
    found = set()
    for node in tree.body:
        if (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
                and node.targets[0].id in FAMILIES and isinstance(node.value, ast.List)):
            node.value.elts += [ast.Constant(v) for v in FAMILIES[node.targets[0].id]]
            found.add(node.targets[0].id)
    if set(FAMILIES) - found:
        raise RuntimeError(f"timm's test_models.py has no module-level list {sorted(set(FAMILIES) - found)}: "
                           "update FAMILIES in tests/timm_suite_plugin.py for this timm version")
    return ast.fix_missing_locations(tree)


class _Loader(importlib.machinery.SourceFileLoader):
    """Compiles timm's file with the extended lists (never cached as bytecode, so the file on disk stays timm's)."""

    def get_code(self, fullname: str):
        tree = ast.parse(self.get_data(self.path), self.path)
        return compile(extend_family_lists(tree), self.path, "exec", dont_inherit=True)


class _Finder:
    """Finds timm's test_models.py (the file in NEPA_TIMM_SUITE only) and hands it to _Loader."""

    @staticmethod
    def find_spec(fullname: str, path: Optional[Sequence[str]] = None, target=None):
        if fullname.rpartition(".")[2] != "test_models":
            return None
        for d in path or sys.path:
            f = os.path.realpath(os.path.join(d or ".", "test_models.py"))
            if f == SUITE:
                return importlib.util.spec_from_file_location(fullname, f, loader=_Loader(fullname, f))
        return None


_list_models = timm.list_models


def _nepa_models(*args, **kwargs) -> list[str]:
    return [m for m in _list_models(*args, **kwargs) if any(fnmatch.fnmatch(m.split(".")[0], p) for p in PATTERNS)]


timm.list_models = _nepa_models
sys.meta_path.insert(0, _Finder)


def pytest_configure(config) -> None:
    for name in MARKERS:
        config.addinivalue_line("markers", f"{name}: a marker of timm's test-suite")
