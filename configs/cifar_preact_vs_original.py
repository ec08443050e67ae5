"""Original vs pre-activation residual units on CIFAR-10: Table 3 of He, Zhang, Ren, Sun, *Identity Mappings in
Deep Residual Networks* (ECCV 2016), with the CIFAR recipe of Sec. 4.2.

  python -m src.main --config=configs/cifar_preact_vs_original.py              # ResNet-110, both units
  python -m src.main --config=configs/cifar_preact_vs_original.py:preact164    # ... and pre-activation ResNet-164
  python -m src.main --config=configs/cifar_preact_vs_original.py:mnist5k      # offline preset on real digits

Each run trains in <workdir>/<run name>/; then results.md beside that paper's Table 3.

Expected (Identity Mappings, Table 3, CIFAR-10 test error, median of 5 runs): ResNet-110 original 6.61%,
pre-activation 6.37%; pre-activation ResNet-164 (bottleneck) 5.46%. 64k iterations each; on one modern GPU
about 2 h per 110-layer run. The mnist5k preset (400 steps of batch 64 at lr 0.02): 9-24 min per run on one
shared core of a 2-core CPU; seed 0 gave test errors of 2.80% (original) and 2.60% (pre-activation), files in
docs/runs/preact-mnist5k/.
"""

from configs.common import cifar_recipe, data_preset, parse_arg


def get_config(arg=None):
  a = parse_arg(arg, mnist5k=False, image_dir="", steps=0, preact164=False)
  c = cifar_recipe()
  c.schedule.warmup_lr = 0.01  # both papers warm ResNet-110 up at lr 0.01 (Sec. 4.2; "following [1]")
  c.sweep = [
      {"name": "resnet110", "model.name": "cifar_resnet110"},
      {"name": "preact_resnet110", "model.name": "cifar_preact_resnet110"},
  ]
  if a.preact164:  # bottleneck units: projection shortcuts, the stride on the 3x3 (configs/cifar_resnet.py)
    c.sweep.append(
        {
            "name": "preact_resnet164",
            "model.name": "cifar_preact_resnet164",
            "model.shortcut": "B",
            "model.stride_on_3x3": True,
        }
    )
  return data_preset(c, a, mnist5k_steps=400)
