"""A reward a randomly initialised model earns about one time in four (importable by Ray workers)."""

LETTERS = set("abcdefghijklmnopqrstuvwxyz")


def letter_first(prompts, completions, **_):
    return [float(c[:1] in LETTERS) for c in completions]
