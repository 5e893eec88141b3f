"""Constitutional AI: critique -> revision -> SFT, then AI preference labels over pairs -> DPO (the pipeline,
its judge and where it departs from Bai et al. 2022 are in frameworks/alignment.py)."""

from reasonloop.frameworks import alignment
from reasonloop.frameworks.alignment import ConstitutionalConfig as Config
from reasonloop.frameworks.alignment import run_constitutional as run

__doc__ = alignment.__doc__
__all__ = ["Config", "run"]
