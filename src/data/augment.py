"""Host-side augmentation on uint8 batches (the per-pixel mean is subtracted later, on device)."""

import numpy as np


def random_crop_flip(images: np.ndarray, rng: np.random.Generator, pad: int, flip: bool, fill=0) -> np.ndarray:
  """Pads `pad` pixels per side with `fill` (a value, or one per channel), takes a random HxW crop, flips
  horizontally with prob 0.5.

  One gather of whole pixels for the batch, by flat index (np.take is ~5x faster than 3-d fancy indexing).
  """
  b, h, w, c = images.shape
  hp, wp = h + 2 * pad, w + 2 * pad
  dy, dx = rng.integers(0, 2 * pad + 1, size=(2, b))  # top-left corner of the crop in the padded image
  rows = dy[:, None] + np.arange(h)  # (b, h) row indices into the padded image
  cols = dx[:, None] + np.arange(w)  # (b, w)
  if flip:  # a flipped crop is the same window read right to left
    cols = np.where(rng.random(b)[:, None] < 0.5, cols[:, ::-1], cols)
  padded = np.full((b, hp, wp, c), fill, images.dtype)
  padded[:, pad : pad + h, pad : pad + w] = images
  flat = (np.arange(b)[:, None, None] * hp + rows[:, :, None]) * wp + cols[:, None, :]
  return np.take(padded.reshape(-1, c), flat.ravel(), axis=0).reshape(b, h, w, c)
