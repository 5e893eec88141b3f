"""A reward a randomly initialised model earns about one time in four (importable by Ray workers)."""

import os
import time
from pathlib import Path

LETTERS = set("abcdefghijklmnopqrstuvwxyz")


def letter_first(prompts, completions, **_):
    return [float(c[:1] in LETTERS) for c in completions]


def letter_first_held(prompts, completions, **_):
    """letter_first, but while the file $LETTER_REWARD_HOLD exists it writes `<hold>.waiting` and waits: a
    test holds a run inside a step's reward call, kills workers, then lets it go."""
    hold = Path(os.environ["LETTER_REWARD_HOLD"])
    while hold.exists():
        Path(f"{hold}.waiting").touch()
        time.sleep(0.05)
    return letter_first(prompts, completions)
