"""Per-run metrics: one JSON object per line in `metrics.jsonl` (what notebooks read), TensorBoard event
files under `tb/`, and a one-line console progress report. Only process 0 writes."""

import json
import os
import sys
import time


class MetricWriter:

  def __init__(self, workdir: str, *, resume_step: int, enabled: bool = True):
    self.enabled = enabled
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._tb = None
    if not enabled:
      return
    truncate_after(self.path, resume_step)
    self._tb_dir = os.path.join(workdir, "tb")

  def write(self, step: int, scalars):
    """One row of `scalars` (a dict) at `step`; or, for several replicas (src/replicas.py), a list of one dict per
    replica: one row each, with a 'replica' field (a list of one dict is a plain row). TensorBoard: the same
    scalars, a replica's under 'replica<r>/'."""
    if not self.enabled:
      return
    per_replica = [scalars] if isinstance(scalars, dict) else list(scalars)
    several = len(per_replica) > 1
    rows = [
        {"step": int(step), **({"replica": r} if several else {}), **{k: float(v) for k, v in values.items()}}
        for r, values in enumerate(per_replica)
    ]
    with open(self.path, "a") as f:
      f.write("".join(json.dumps(row) + "\n" for row in rows))
      f.flush()
      os.fsync(f.fileno())  # a row on disk before the checkpoint that covers it
    for r, values in enumerate(per_replica):
      self._tensorboard(step, {(f"replica{r}/{k}" if several else k): v for k, v in values.items()})

  def _tensorboard(self, step, scalars):
    import tensorflow as tf  # already loaded by tfds; imported lazily so models/tests need not pay for it

    if self._tb is None:
      self._tb = tf.summary.create_file_writer(self._tb_dir)
    with self._tb.as_default():
      for k, v in scalars.items():
        tf.summary.scalar(k, float(v), step=int(step))
    self._tb.flush()

  def close(self):
    if self._tb is not None:
      self._tb.close()


def read_metrics(path: str) -> list:
  if not os.path.exists(path):
    return []
  rows = []
  with open(path) as f:
    for line in f:
      line = line.strip()
      if line:
        try:
          rows.append(json.loads(line))
        except json.JSONDecodeError:  # a row half-written when the job was killed
          pass
  return rows


def truncate_after(path: str, step: int):
  """On resume from the checkpoint at `step`, drop rows logged after it: they will be logged again,
  so metrics.jsonl ends up with exactly one row per logged step, as in an uninterrupted run."""
  rows = read_metrics(path)
  keep = [r for r in rows if r["step"] <= step]
  if len(keep) == len(rows) and os.path.exists(path) and _ends_clean(path):
    return
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in keep)
  os.replace(tmp, path)


def _ends_clean(path):
  with open(path, "rb") as f:
    f.seek(0, os.SEEK_END)
    if f.tell() == 0:
      return True
    f.seek(-1, os.SEEK_END)
    return f.read(1) == b"\n"


class Progress:
  """'step 1200/64000  loss 0.532  err 18.2%  lr 0.1  11.2 it/s  ETA 1:34:58' on one refreshed line."""

  def __init__(self, total: int, start: int, enabled: bool = True, name: str = ""):
    self.total, self.enabled, self.name = total, enabled, name
    self.tty = sys.stdout.isatty()
    self._mark = (start, time.time())

  def rate(self, step):
    """Steps per second since the previous call (so the first window includes compilation)."""
    s0, t0 = self._mark
    now = time.time()
    self._mark = (step, now)
    return (step - s0) / max(now - t0, 1e-9)

  def restart(self, step):
    """Excludes evaluation and checkpointing from the next window's rate."""
    self._mark = (step, time.time())

  def update(self, step: int, loss: float, error: float, lr: float, rate: float, final=False):
    if not self.enabled:
      return
    eta = (self.total - step) / rate if rate > 0 else 0
    h, rem = divmod(int(eta), 3600)
    line = (
        f"{self.name} step {step}/{self.total}  loss {loss:.4f}  err {100 * error:.2f}%  lr {lr:.3g}  "
        f"{rate:.2f} it/s  ETA {h}:{rem // 60:02d}:{rem % 60:02d}"
    )
    if self.tty:
      print("\r" + line.ljust(100), end="\n" if final else "", flush=True)
    else:
      print(line, flush=True)

  def message(self, text: str):
    if self.enabled:
      print(("\n" if self.tty else "") + text, flush=True)
