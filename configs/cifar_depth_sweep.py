"""The CIFAR-10 depth sweep of Fig. 6 / Table 6: plain and residual nets of 20, 32, 44, 56 layers and ResNet-110.

  python -m src.main --config=configs/cifar_depth_sweep.py                 # CIFAR-10, the paper's recipe
  python -m src.main --config=configs/cifar_depth_sweep.py:resnet1202      # ... and ResNet-1202
  python -m src.main --config=configs/cifar_depth_sweep.py:mnist5k         # offline preset on real digits
  python -m src.main --config=configs/cifar_depth_sweep.py:depths=20-56    # choose the depths
  python -m src.main --config=configs/cifar_depth_sweep.py:image_dir=/tmp/cifar10-jpeg,steps=8000  # image folder

Each run trains in <workdir>/<run name>/ (default workdir runs/cifar_depth_sweep[-arg]); started again, the
sweep skips finished runs and resumes the one it was in. At the end, <workdir>/results.md and results.csv.

Expected result (Table 6 test error): ResNet-20/32/44/56/110 8.75 / 7.51 / 7.17 / 6.97 / 6.43%, plain nets
worse with depth (Fig. 6). Time: 9 runs x 64k steps, roughly 10 GPU-hours on one modern GPU.

The mnist5k preset: plain-20, plain-56, ResNet-20, ResNet-56, 400 steps of batch 64 at lr 0.02 on 4,000 digits
(500 val, 500 test); 7.6 min in all on a 2-core CPU with oneDNN. Expected (seed 0, test error): plain-20 2.4%,
plain-56 55% (training error 60%: the degradation problem), ResNet-20 4.4%, ResNet-56 3.0%. With
--config.num_seeds=3: 2.9 +- 0.4, 51 +- 16, 4.1 +- 0.6, 2.8 +- 0.4% (README, Quick start).

The image_dir preset: the same 9 runs (or `depths=`) on an image folder, <path>/train/<class>/<image> and
<path>/test/<class>/<image> (src/data/image_folder.py), e.g. the CIFAR-10 JPEG copy, with the paper's recipe and
its schedule scaled to `steps` (lr x0.1 at 50% and 75%; default 64000, the paper's): batch 128, 45k/5k split by a
fixed permutation, pad 4 + flip, BN groups of 64; evaluations and checkpoints every 2000 steps, or about 8 per run
in shorter ones (every 1000 of 8000). The path may not contain a comma. results.md shows Table 6 beside a
CIFAR-10 copy, marked: its errors are expected somewhat above the paper's (the images were re-encoded). The time
and errors measured on this 2-core CPU are in the README ("Your own data: image folders"): on the copy, plain-56
trains far worse than plain-20 at 2000 steps already, but ResNet-56 ends above ResNet-20 at 2000 and 4000 steps
(training error 33.4 vs 25.5%, 20.7 vs 17.9%): it starts slower at lr 0.1 and the gap closes only while the lr is
0.1, so Fig. 6's ResNet half needs steps=8000 or more (a prediction from those runs) or the paper's 64k.
"""

from configs.common import cifar_recipe, data_preset, parse_arg

PAPER_DEPTHS = "20-32-44-56"
MNIST5K_DEPTHS = "20-56"


def get_config(arg=None):
  a = parse_arg(arg, mnist5k=False, image_dir="", resnet1202=False, steps=0, depths="")
  c = cifar_recipe()
  depths = [int(d) for d in (a.depths or (MNIST5K_DEPTHS if a.mnist5k else PAPER_DEPTHS)).split("-")]
  runs = [(net, d) for net in ("plain", "resnet") for d in depths]
  if not a.mnist5k and not a.depths:
    runs.append(("resnet", 110))
  if a.resnet1202:
    runs.append(("resnet", 1202))
  c.sweep = [
      {
          "name": f"{net}{d}",
          "model.name": f"cifar_{net}{d}",
          # ResNet-110's warm-up (Sec. 4.2), and 1202's: trained "as described above" (README)
          "schedule.warmup_lr": 0.01 if d in (110, 1202) and net == "resnet" else 0.0,
          "execution.remat": d == 1202,  # recompute its 200-block scanned stages in the backward pass
      }
      for net, d in runs
  ]
  return data_preset(c, a, mnist5k_steps=400)  # steps=0: mnist5k 400, image_dir 64000
