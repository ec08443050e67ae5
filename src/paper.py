"""The paper's reported numbers, in one place, for results tables and plots to stand beside."""

# Table 6: CIFAR-10 test error (%) and parameters. Plain nets have no number in the table (Fig. 6 only).
CIFAR_TEST_ERROR = {
    "cifar_resnet20": 8.75,
    "cifar_resnet32": 7.51,
    "cifar_resnet44": 7.17,
    "cifar_resnet56": 6.97,
    "cifar_resnet110": 6.43,
    "cifar_resnet1202": 7.93,
}
# Table 6 gives ResNet-110 as "best (mean +- std)" over 5 runs: 6.43 (6.61 +- 0.16).
CIFAR_TEST_ERROR_RUNS = {"cifar_resnet110": (6.61, 0.16, 5)}
CIFAR_PARAMS = {
    "cifar_resnet20": "0.27M",
    "cifar_resnet32": "0.46M",
    "cifar_resnet44": "0.66M",
    "cifar_resnet56": "0.85M",
    "cifar_resnet110": "1.7M",
    "cifar_resnet1202": "19.4M",
}

# He, Zhang, Ren, Sun, "Identity Mappings in Deep Residual Networks" (ECCV 2016), Table 3: CIFAR-10 test error (%)
# of the pre-activation units (the original units' column: 6.61, 5.93, 7.61), median of 5 runs; and parameters.
# Its 10.2M for ResNet-1001 counts the conv and FC weights (with BN's scales and biases: 10.33M).
PREACT_CIFAR_TEST_ERROR = {
    "cifar_preact_resnet110": 6.37,
    "cifar_preact_resnet164": 5.46,
    "cifar_preact_resnet1001": 4.92,
}
PREACT_CIFAR_PARAMS = {
    "cifar_preact_resnet110": "1.7M",
    "cifar_preact_resnet164": "1.7M",
    "cifar_preact_resnet1001": "10.2M",
}

# Beside a run on an image-folder copy of CIFAR-10 (src/data/image_folder.py: CIFAR-10's ten class folders,
# 32x32 RGB images, e.g. JPEG re-encoded), Table 6's number carries this note.
CIFAR10_COPY_NOTE = (
    "trained and tested on an image-folder copy of CIFAR-10, not the original: its images were re-encoded "
    "(e.g. as JPEG), so errors are expected somewhat above Table 6"
)

# Tables 2-4: ImageNet val top-1 / top-5 error (%). 10-crop unless marked multi-scale.
IMAGENET_10CROP = {
    "plain18": (27.94, None),
    "resnet18": (27.88, None),
    "plain34": (28.54, 10.02),
    "resnet34:A": (25.03, 7.76),
    "resnet34:B": (24.52, 7.46),
    "resnet34:C": (24.19, 7.40),
    "resnet50": (22.85, 6.71),
    "resnet101": (21.75, 6.05),
    "resnet152": (21.43, 5.71),
}
IMAGENET_MULTISCALE = {
    "resnet34:B": (21.84, 5.71),
    "resnet34:C": (21.53, 5.60),
    "resnet50": (20.74, 5.25),
    "resnet101": (19.87, 4.60),
    "resnet152": (19.38, 4.49),
}


IMAGENET_DEFAULT_SHORTCUT = "B"  # what src/models builds for ImageNet nets when model.shortcut is None


def imagenet_key(model: str, shortcut) -> str:
  """The key of a run in the tables above: ResNet-34 is reported per shortcut option (Table 3; None means the
  default, B), the other nets by name."""
  key = f"{model}:{shortcut or IMAGENET_DEFAULT_SHORTCUT}"
  return key if key in IMAGENET_10CROP or key in IMAGENET_MULTISCALE else model


def cifar10_data(result: dict):
  """How a run's data stands to Table 6's, from its result.json (or a src.analysis.load_runs row).

  Args:
    result: with 'dataset' (config.data.name) and, for image folders, 'data' ({'copy_of': ...}, written by
      src/train.py from src/data/image_folder.py).

  Returns:
    'cifar10' (tfds' CIFAR-10), 'copy' (an image folder holding CIFAR-10: compare with Table 6 under
    CIFAR10_COPY_NOTE), or None (other data, e.g. mnist5k: Table 6 would mislead).
  """
  if result.get("dataset") == "cifar10":
    return "cifar10"
  if result.get("dataset") == "image_folder" and (result.get("data") or {}).get("copy_of") == "cifar10":
    return "copy"
  return None


def net_test_error(model: str):
  """The CIFAR-10 test error (%) the papers report for a net (Table 6, or for a pre-activation net the follow-up
  paper's Table 3), whatever data a run of it used; None for nets they do not list (plain nets, other depths)."""
  return {**CIFAR_TEST_ERROR, **PREACT_CIFAR_TEST_ERROR}.get(model)


def cifar_test_error(result: dict):
  """net_test_error for a run's result (see cifar10_data) on CIFAR-10 or a copy of it; None on other data."""
  return net_test_error(result.get("model")) if cifar10_data(result) else None
