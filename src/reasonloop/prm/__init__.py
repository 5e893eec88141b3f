"""Process (and outcome) reward models: Monte-Carlo step labels, a token-classification head read at each
step's last token, and the metrics that say how good it is. `reasonloop prm` (recipes/prm.py) trains one;
`load_prm(path)` gives the `rewards.process.StepScorer` search and process rewards use."""

from reasonloop.prm.labels import LabelStats, StepExample, mc_labels, read_step_file, step_examples
from reasonloop.prm.metrics import evaluate, first_error_accuracy, roc_auc
from reasonloop.prm.model import ProcessRewardModel, load_prm, new_prm, step_cross_entropy

__all__ = ["LabelStats", "ProcessRewardModel", "StepExample", "evaluate", "first_error_accuracy", "load_prm",
           "mc_labels", "new_prm", "read_step_file", "roc_auc", "step_cross_entropy", "step_examples"]
