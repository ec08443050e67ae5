"""One ImageNet run of the paper's recipe (Sec. 3.4): ResNet-18/34/50/101/152 or a plain net (Tables 3, 4).

  python -m src.main --config=configs/imagenet_resnet.py:depth=50                  # ResNet-50
  python -m src.main --config=configs/imagenet_resnet.py:depth=34,shortcut=C       # Table 3's options A/B/C
  python -m src.main --config=configs/imagenet_resnet.py:depth=34,net=plain        # plain-34
  python -m src.main --config=configs/imagenet_resnet.py:depth=50,schedule=epochs  # x0.1 at epochs 30, 60; 90 epochs
  python -m src.main --config=configs/imagenet_resnet.py:depth=50 --config.mode=eval   # centre, 10-crop, multi-scale
  python -m src.main --config=configs/imagenet_resnet.py:depth=18,image_dir=/data/imagenette2          # photos
  python -m src.main --config=configs/imagenet_resnet.py:depth=18,image_dir=/data/imagenette2-160,crop=128

`image_dir=<dir>`: the same recipe on a folder of photos of any size, <dir>/train/<class>/<image> and <dir>/val/
(or test/) (src/data/image_folder.py, pipeline 'imagenet'): counts in epochs of its train images (an evaluation about
once an epoch), `crop=` scales the recipe's 224 crop and [256, 480] scales for smaller photos.

Needs ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar in <data_dir>/downloads/manual/ (tfds prepares
them on first use; --config.data.data_dir=... / --config.data.manual_dir=...). Multi-host: see launch/.

Expected (paper, val top-1 / top-5 %): 10-crop (Table 3) plain-34 28.54/10.02, ResNet-34 A 25.03/7.76,
B 24.52/7.46, C 24.19/7.40, ResNet-50 22.85/6.71, 101 21.75/6.05, 152 21.43/5.71; multi-scale (Table 4)
ResNet-34 B 21.84/5.71, 50 20.74/5.25, 101 19.87/4.60, 152 19.38/4.49.

Expected time (an estimate from XLA's FLOP count of the train step at 40% of a TPU v4-8's bf16 peak, with
--config.model.dtype=bfloat16; not measured here): 60e4 iterations of batch 256 take about 1.1 h (ResNet-18),
2.1 h (34), 2.3 h (50), 4.5 h (101), 6.9 h (152); the plateau rule usually stops improving well before the cap.
"""

from configs.common import fixed_epoch_schedule, imagenet_folder_preset, imagenet_recipe, parse_arg


def get_config(arg=None):
  a = parse_arg(arg, depth=50, net="resnet", shortcut="", schedule="plateau", v15=False, image_dir="", crop=224)
  c = imagenet_recipe(f"{a.net}{a.depth}")
  if a.image_dir:  # a folder of photos instead of imagenet2012
    imagenet_folder_preset(c, a.image_dir, a.crop)
  c.model.shortcut = a.shortcut or None  # None: B, the paper's default for its ImageNet ResNets
  c.model.stride_on_3x3 = a.v15  # "v1.5": the stride on the bottleneck's 3x3 conv (paper: 1x1)
  if a.schedule == "epochs":
    fixed_epoch_schedule(c)
  elif a.schedule != "plateau":
    raise ValueError(f"schedule={a.schedule!r}: valid are 'plateau' (paper) and 'epochs' (30/60/90).")
  return c
