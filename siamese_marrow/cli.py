"""Command line: argument parsing and wiring only; the work lives in the engine modules."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from .errors import SiameseMarrowError


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", help="YAML file in configs/ overriding the defaults")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one config value, e.g. --set train.epochs=3 (repeatable)",
    )


def _config(args: argparse.Namespace):  # noqa: ANN202
    from .config import load_config

    return load_config(args.config, args.overrides)


def cmd_synth(args: argparse.Namespace) -> int:
    from .data.synth import profile_counts, write_dataset

    counts = profile_counts(
        args.profile, total=args.total, per_class=args.per_class, classes=args.classes
    )
    written = write_dataset(args.out, counts, seed=args.seed, size=args.size, progress=True)
    print(f"wrote {sum(written.values())} images of {len(written)} classes to {args.out}")
    print(json.dumps(written))
    return 0


def cmd_check_data(args: argparse.Namespace) -> int:
    from collections import Counter

    from .data.check import describe_bad, find_bad_images
    from .data.datasets import load_samples

    samples = load_samples(args.data)
    workers = args.workers if args.workers is not None else min(4, os.cpu_count() or 1)
    bad = find_bad_images(samples, workers=workers, progress=not args.quiet)
    counts = Counter(s.label for s in samples)
    report = {
        "data": str(args.data),
        "images": len(samples),
        "bad": [b.__dict__ for b in bad],
        "classes": dict(sorted(counts.items())),
        "single_image_classes": sorted(c for c, n in counts.items() if n == 1),
    }
    if args.json:
        from .utils import atomic_write_json

        atomic_write_json(args.json, report)
    print(f"{len(samples)} images in {len(counts)} classes: "
          + ", ".join(f"{c} {n}" for c, n in sorted(counts.items())))
    if report["single_image_classes"]:
        print("classes with a single image (positives come from augmented views): "
              + ", ".join(report["single_image_classes"]))
    if bad:
        print(f"{len(bad)} bad image(s):\n{describe_bad(bad, shown=50)}", file=sys.stderr)
        return 1
    print("all images decode")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .engine.pipeline import run_demo

    cfg = _config(args)
    summary = run_demo(cfg, Path(args.out), quick=args.quick)
    print(json.dumps(summary, indent=2))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .engine.train import resume_config, train

    if args.resume:
        if args.config or args.overrides:
            from .errors import ConfigError

            raise ConfigError(
                "--resume continues with the run's own config.yaml; drop --config/--set "
                "(start a new --out to change the configuration)"
            )
        cfg, out = resume_config(args.resume), Path(args.resume)
    else:
        if not args.out:
            from .errors import ConfigError

            raise ConfigError("train needs --out RUN (or --resume RUN)")
        cfg, out = _config(args), Path(args.out)
        if args.skip_bad:
            cfg.data.skip_bad = True
        if (out / "last.json").exists():
            from .errors import ConfigError

            raise ConfigError(
                f"{out} already holds a run; continue it with --resume {out} or choose a new --out"
            )
    summary = train(cfg, out, resume=bool(args.resume), progress=not args.quiet)
    print(json.dumps(summary, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="siamese-marrow",
        description="Siamese paired-image classification of bone-marrow cell images.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("synth", help="write the embedded synthetic data set (21 classes)")
    p.add_argument("--out", required=True, help="output folder (ImageFolder layout)")
    p.add_argument("--classes", nargs="+", help="class codes (default: all 21)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--per-class", type=int, help="images per class (uniform profile)")
    g.add_argument("--total", type=int, help="total images (matek profile)")
    p.add_argument("--profile", choices=("uniform", "matek"), default="uniform")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=128, help="image side in pixels")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("check-data", help="decode every image once and list the bad ones")
    p.add_argument("data", help="ImageFolder root or CSV manifest")
    p.add_argument("--workers", type=int, help="decoding processes (default: up to 4)")
    p.add_argument("--json", help="write the findings here as JSON")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_check_data)

    p = sub.add_parser("train", help="train on balanced pairs; checkpoints in --out")
    _add_config_args(p)
    p.add_argument("--skip-bad", action="store_true",
                   help="skip unreadable images (listed in RUN/skipped_images.json)")
    p.add_argument("--out", help="run folder for checkpoints, logs and the resolved config")
    p.add_argument("--resume", metavar="RUN", help="continue RUN exactly where 'last' stopped")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "demo", help="the whole path on the embedded synthetic data, on CPU in minutes"
    )
    _add_config_args(p)
    p.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    p.add_argument("--quick", action="store_true", help="a smaller, faster demo (for tests)")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except SiameseMarrowError as e:
        print(f"siamese-marrow {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"siamese-marrow {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
