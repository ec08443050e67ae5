"""Prints a Table-1-like summary: `python -m src.models resnet18 resnet34 resnet50 cifar_resnet110`.

Flags: --shortcut A|B|C, --no-flops (parameters only: fast even for ResNet-1202), --size H (input side).
"""

import argparse

from src.models.summary import summarize


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument(
      "models",
      nargs="*",
      default=[
          "cifar_resnet20",
          "cifar_resnet56",
          "cifar_resnet110",
          "resnet18",
          "resnet34",
          "resnet50",
          "resnet101",
          "resnet152",
          "vgg19",
      ],
  )
  parser.add_argument("--shortcut", default=None, choices=["A", "B", "C"])
  parser.add_argument("--no-flops", action="store_true")
  parser.add_argument("--size", type=int, default=None, help="input height = width (default: dataset's)")
  args = parser.parse_args(argv)
  fields = {} if args.shortcut is None else {"shortcut": args.shortcut}
  print(f"{'model':<24}{'layers':>7}{'params':>11}{'MACs':>11}{'MACs(XLA)':>11}  input -> output")
  for name in args.models:
    try:
      shape = None if args.size is None else (args.size, args.size, 3)
      r = summarize(name, shape=shape, flops=not args.no_flops, **fields)
    except ValueError as e:
      raise SystemExit(f"error: {e}")
    macs = "" if args.no_flops else f"{r['macs'] / 1e9:>10.3g}G{r['macs_xla'] / 1e9:>10.3g}G"
    print(f"{name:<24}{r['layers']:>7}{r['params'] / 1e6:>10.3g}M{macs:<22}  {r['input']} -> {r['output']}")


if __name__ == "__main__":
  main()
