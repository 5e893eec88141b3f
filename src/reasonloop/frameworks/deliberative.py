"""Deliberative alignment: spec-citing traces generated with the spec in context -> SFT without it -> GRPO with
a judge that sees the spec (the pipeline and where it departs from Guan et al. 2024: frameworks/alignment.py)."""

from reasonloop.frameworks import alignment
from reasonloop.frameworks.alignment import DeliberativeConfig as Config
from reasonloop.frameworks.alignment import run_deliberative as run

__doc__ = alignment.__doc__
__all__ = ["Config", "run"]
