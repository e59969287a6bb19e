"""The ``owidth`` console script: ``owidth list`` and ``owidth run NAME``."""

from __future__ import annotations

import argparse
import pathlib
import sys

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="owidth", description="Infinite-width theory vs finite networks: named experiments.")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list the experiments")
    r = sub.add_parser("run", help="run an experiment: writes netCDF/JSON data and a PNG figure")
    r.add_argument("name", help="experiment name (see `owidth list`)")
    r.add_argument("--out", default=None, help="output folder (default: owidth-out/NAME)")
    r.add_argument("--quick", action="store_true", help="small configuration, under a minute on 2 CPU cores")
    r.add_argument("--seed", type=int, default=0, help="base random seed (default 0)")
    return p


def main(argv: list[str] | None = None) -> int:
    from owidth import experiments

    args = _parser().parse_args(argv)
    if args.command == "list":
        width = max(len(n) for n in experiments.names())
        for name in experiments.names():
            print(f"{name:<{width}}  {experiments.REGISTRY[name].description}")
        return 0
    if args.name not in experiments.REGISTRY:
        print(f"owidth: unknown experiment {args.name!r}; available: {', '.join(experiments.names())}", file=sys.stderr)
        return 2
    if args.seed < 0:
        print("owidth: --seed must be >= 0", file=sys.stderr)
        return 2
    out = args.out or f"owidth-out/{args.name}"
    try:  # the output folder, checked (and made) before anything runs
        pathlib.Path(out).mkdir(parents=True, exist_ok=True)
    except OSError as err:
        what = "is an existing file, not a folder" if pathlib.Path(out).is_file() else \
            f"cannot be made a folder ({err.strerror or err})"
        print(f"owidth: --out {out} {what}; give a folder path", file=sys.stderr)
        return 2
    summary = experiments.run(args.name, out=args.out, quick=args.quick, seed=args.seed)
    print(f"wrote {', '.join(summary.get('files', []))} to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
