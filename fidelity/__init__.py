"""The fidelity report (evaluate.py, and train.py at the end of a LoRA run): how close a tuned model comes
to each person, against its base model.

  - plan: what is evaluated (speakers, held-out moments, reference turns);
  - measure: what one model does there (loss per speaker, the turns it writes, via sampling);
  - report: the figures, comparing base and tuned with the real person, from the pure measures of
    style and calibration, attribution, failures and privacy;
  - markdown: report.md, report.json and the plots (plots);
  - evaluation: all of it in order, for a model with adapters or for two checkpoints.
Nothing here imports a program.
"""

from core.errors import TwinError


class EvaluationError(TwinError):
    """Nothing to evaluate, or a request that cannot be met; the message says which and why."""
