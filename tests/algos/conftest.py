"""Make `reasonloop` importable from a plain checkout (no `pip install -e .` yet).

Stopgap: once the package is installed in the venv (or pytest's `pythonpath = ["src"]` is set in
pyproject.toml) this does nothing.
"""

import importlib.util
import pathlib
import sys

if importlib.util.find_spec("reasonloop") is None:
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "src"))
