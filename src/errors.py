"""Every error class of the project, each with when it is raised, and the two helpers that word a config error.

They depend on nothing, so any module can raise them: the owner of a config field checks it (src/models, src/data,
src/optim.py, src/cpu; src/config_check.py composes the checks), and src/main.py turns each of these into one line,
`error: <message>`, the message saying what to fix.
"""


class ConfigError(ValueError):
  """A config field, a flag or the workdir cannot run: raised before data is loaded or anything is compiled
  (src/config_check.py and the checks it composes), or when a workdir holds another experiment than the config.
  The message names the field (`config.<field>: ...`) and its valid values."""


class DatasetMissingError(RuntimeError):
  """The dataset is not there in a usable form (not prepared and not fetchable; an image folder with a missing
  split, mismatched classes or mixed image sizes); the message says what to put or fix where."""


class DivergedError(FloatingPointError):
  """The train loss is not finite (NaN or inf) at a log step: raised before any later checkpoint is written, so
  the newest checkpoint is from before the divergence."""


class CheckpointWriteError(OSError):
  """A checkpoint could not be written (a full disk, missing permissions); the older checkpoints are intact and
  the same command resumes from them once the cause is fixed."""


class CheckpointReadError(OSError):
  """A checkpoint could not be read, and not because it is damaged: an error that persisted through the retries
  (out of memory, an unavailable network filesystem, too many open files) or one that is neither transient nor
  damage. Nothing was moved: the same command resumes once the cause is gone."""


class CheckpointMismatchError(ValueError):
  """The checkpoint holds a train state of another structure, shape or dtype than the one being restored into:
  another experiment (optimiser, momentum form, model), not damage. Raised before anything is moved or written.

  Attributes: step (int), differences (list of str, e.g. 'opt_state/inner_state/1/... (23 arrays): in this train
  state, not in the checkpoint', see src.checkpoint.tree_differences).
  """

  def __init__(self, step: int, differences):
    self.step, self.differences = step, list(differences)
    shown = "; ".join(self.differences[:4]) + (
        f"; and {len(self.differences) - 4} more" if len(differences) > 4 else ""
    )
    super().__init__(f"checkpoint {step} does not fit this train state: {shown}")


def require(ok, field: str, message: str):
  """Raises ConfigError('config.<field>: <message>') unless `ok`."""
  if not ok:
    raise ConfigError(f"config.{field}: {message}")


def positive_int(value, field: str):
  """Returns `value` if it is a positive int (not a bool); raises ConfigError naming `field` otherwise."""
  require(
      isinstance(value, int) and not isinstance(value, bool) and value > 0,
      field,
      f"must be a positive integer, got {value!r}.",
  )
  return value
