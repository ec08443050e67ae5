"""Plain vs residual nets on ImageNet, 18 and 34 layers: Table 2 and Fig. 4 (ResNets with option A).

  python -m src.main --config=configs/imagenet_plain_vs_resnet.py                 # 4 runs, the paper's recipe
  python -m src.main --config=configs/imagenet_plain_vs_resnet.py:schedule=epochs # x0.1 at epochs 30, 60; 90 epochs
  python -m src.main --config=configs/imagenet_plain_vs_resnet.py:image_dir=/data/imagenette2  # a folder of photos

Each run trains in <workdir>/<run name>/ and is resumed where it stopped; then results.md / results.csv.
10-crop errors (Table 2): evaluate each run with
  python -m src.main --config=configs/imagenet_resnet.py:depth=34,net=plain --config.mode=eval \\
      --config.eval.protocols='("ten_crop",)' --workdir=runs/imagenet_plain_vs_resnet/plain34

Expected (Table 2, val top-1 %, 10-crop): plain-18 27.94, plain-34 28.54, ResNet-18 27.88, ResNet-34 25.03:
the deeper plain net is worse (higher training error throughout, Fig. 4 left), the deeper ResNet better.
Expected time: about 6.4 h in all on a TPU v4-8 in bf16 (FLOP-count estimate, not measured; see
configs/imagenet_resnet.py).
"""

from configs.common import fixed_epoch_schedule, imagenet_folder_preset, imagenet_recipe, parse_arg


def get_config(arg=None):
  a = parse_arg(arg, schedule="plateau", image_dir="", crop=224)
  c = imagenet_recipe("resnet18")
  if a.image_dir:  # a folder of photos instead of imagenet2012
    imagenet_folder_preset(c, a.image_dir, a.crop)
  c.model.shortcut = "A"  # Table 2: "all shortcuts are identity mapping and zero-padding" (no extra parameters)
  c.sweep = [
      {"name": f"{net}{depth}", "model.name": f"{net}{depth}"} for net in ("plain", "resnet") for depth in (18, 34)
  ]
  if a.schedule == "epochs":
    fixed_epoch_schedule(c)
  return c
