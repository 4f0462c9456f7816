"""The repository's scripts (recipes, benchmarks: files, not package modules) loaded as modules, for tests."""

import importlib.util
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


def load_script(relative_path: str) -> ModuleType:
    """Executes `ROOT / relative_path` as a fresh module named after the file (it is not put in `sys.modules`)."""
    path = ROOT / relative_path
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
