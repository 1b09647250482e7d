"""Command line: argument parsing and wiring only; the work lives in the engine modules."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .errors import SiameseMarrowError
from .utils import arg_count, arg_int_list, arg_number, arg_probability, arg_seed, arg_workers


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


def _check_outputs(*targets: str | Path | None, beside: bool = False) -> None:
    """Fail before the work, naming the path, when an output cannot be written (utils)."""
    from .utils import check_writable

    for target in targets:
        if target is not None:
            check_writable(target, beside=beside)


def _config(args: argparse.Namespace):  # noqa: ANN202
    from .config import load_config

    return load_config(args.config, args.overrides)


def cmd_synth(args: argparse.Namespace) -> int:
    from .data.synth import profile_counts, write_dataset

    counts = profile_counts(
        args.profile, total=args.total, per_class=args.per_class, classes=args.classes
    )
    _check_outputs(args.out)
    written = write_dataset(args.out, counts, seed=args.seed, size=args.size, progress=True)
    print(f"wrote {sum(written.values())} images of {len(written)} classes to {args.out}")
    print(json.dumps(written))
    return 0


def cmd_check_data(args: argparse.Namespace) -> int:
    from collections import Counter

    from .data.check import describe_bad, find_bad_images
    from .data.datasets import load_samples

    samples = load_samples(args.data)
    _check_outputs(args.json)
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
    print(
        f"{len(samples)} images in {len(counts)} classes: "
        + ", ".join(f"{c} {n}" for c, n in sorted(counts.items()))
    )
    if report["single_image_classes"]:
        print(
            "classes with a single image (positives come from augmented views): "
            + ", ".join(report["single_image_classes"])
        )
    if bad:
        print(f"{len(bad)} bad image(s):\n{describe_bad(bad, shown=50)}", file=sys.stderr)
        return 1
    print("all images decode")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .engine.pipeline import run_demo

    cfg = _config(args)
    _check_outputs(args.out)
    summary = run_demo(cfg, Path(args.out), quick=args.quick)
    print(json.dumps(summary, indent=2))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .engine.runs import training_plan
    from .engine.train import train

    cfg, out = training_plan(args.out, args.resume, args.config, args.overrides, args.skip_bad)
    _check_outputs(out)
    summary = train(cfg, out, resume=bool(args.resume), progress=not args.quiet)
    print(json.dumps(summary, indent=2))
    return 0


def _print_json(obj: object) -> None:
    print(json.dumps(obj, indent=2))


def cmd_bank(args: argparse.Namespace) -> int:
    from .engine import banks

    if args.bank_command != "info":  # a bank is saved beside itself and renamed into place
        _check_outputs(args.out if args.bank_command == "build" else args.bank, beside=True)
    if args.bank_command == "build":
        _print_json(
            banks.bank_build(
                args.run,
                args.data,
                args.out,
                checkpoint=args.checkpoint,
                factory=args.index,
                num_workers=args.workers,
                progress=not args.quiet,
            )
        )
    elif args.bank_command == "add":
        _print_json(
            banks.bank_add(
                args.bank,
                args.label,
                args.images,
                run=args.run,
                num_workers=args.workers,
                progress=not args.quiet,
            )
        )
    elif args.bank_command == "remove":
        _print_json(banks.bank_remove(args.bank, args.label, run=args.run))
    else:
        _print_json(banks.bank_info(args.bank))
    return 0


def cmd_classify(args: argparse.Namespace) -> int:
    from .engine.banks import open_bank
    from .engine.predict import classify_paths_timed, format_records

    _check_outputs(args.output)
    bank = open_bank(args.bank, run=args.run)
    records, timing = classify_paths_timed(
        bank,
        args.images,
        abstain_below=args.abstain_below,
        top_m=args.top_m,
        num_workers=args.workers,
    )
    text = format_records(records, args.format)
    if args.output:
        from .utils import atomic_write_text

        atomic_write_text(args.output, text)
    else:
        sys.stdout.write(text)
    if args.timing:
        print(json.dumps(timing), file=sys.stderr)
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from .engine.banks import open_bank
    from .engine.predict import search_paths
    from .report import neighbours_gallery_png

    _check_outputs(args.gallery)
    results = search_paths(open_bank(args.bank, run=args.run), [args.image], k=args.k)
    if args.gallery:
        neighbours_gallery_png(results[0]["path"], results[0]["neighbours"], args.gallery)
    _print_json(results[0])
    return 0


def cmd_fewshot_eval(args: argparse.Namespace) -> int:
    from .engine.fewshot import fewshot_eval

    shots = args.k_shot  # a list of positive ints (arg_int_list)
    _check_outputs(args.json)
    result = fewshot_eval(
        args.run,
        args.data,
        args.n_way,
        shots,
        args.n_query,
        args.episodes,
        seed=args.seed,
        checkpoint=args.checkpoint,
        progress=not args.quiet,
    )
    if args.json:
        from .utils import atomic_write_json

        atomic_write_json(args.json, result)
    _print_json(result)
    return 0


def cmd_retrieval_eval(args: argparse.Namespace) -> int:
    from .engine.banks import open_bank
    from .engine.evaluate import retrieval_eval

    _check_outputs(args.json)
    bank = open_bank(args.bank, run=args.run)
    result = retrieval_eval(bank, args.data, progress=not args.quiet)
    if args.json:
        from .utils import atomic_write_json

        atomic_write_json(args.json, result)
    _print_json(result)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .engine.evaluate import evaluate

    _check_outputs(args.out or Path(args.run) / "eval")
    _print_json(
        evaluate(
            args.run,
            data=args.data,
            bank=args.bank,
            out=args.out,
            checkpoint=args.checkpoint,
            progress=not args.quiet,
        )
    )
    return 0


def _add_synth(sub: Any) -> None:
    p = sub.add_parser("synth", help="write the embedded synthetic data set (21 classes)")
    p.add_argument("--out", required=True, help="output folder (ImageFolder layout)")
    p.add_argument("--classes", nargs="+", help="class codes (default: all 21)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--per-class", type=arg_count, help="images per class (uniform profile)")
    g.add_argument("--total", type=arg_count, help="total images (matek profile)")
    p.add_argument(
        "--profile",
        choices=("uniform", "matek"),
        default="uniform",
        help="uniform counts, or the real imbalance of Matek 2021 scaled down",
    )
    p.add_argument("--seed", type=arg_seed, default=0, help="same seed, same images (default 0)")
    p.add_argument(
        "--size", type=arg_number(int, 16, 4096), default=128, help="image side in pixels"
    )
    p.set_defaults(func=cmd_synth)


def _add_check_data(sub: Any) -> None:
    p = sub.add_parser("check-data", help="decode every image once and list the bad ones")
    p.add_argument("data", help="ImageFolder root or CSV manifest")
    p.add_argument("--workers", type=arg_workers, help="decoding processes (default: up to 4)")
    p.add_argument("--json", help="write the findings here as JSON")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_check_data)


def _add_train(sub: Any) -> None:
    p = sub.add_parser("train", help="train on balanced pairs; checkpoints in --out")
    _add_config_args(p)
    p.add_argument(
        "--skip-bad",
        action="store_true",
        help="skip unreadable images (listed in RUN/skipped_images.json)",
    )
    p.add_argument("--out", help="run folder for checkpoints, logs and the resolved config")
    p.add_argument("--resume", metavar="RUN", help="continue RUN exactly where 'last' stopped")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_train)


def _add_bank(sub: Any) -> None:
    p = sub.add_parser("bank", help="build, extend or inspect an anchor bank")
    bank_sub = p.add_subparsers(dest="bank_command", required=True, metavar="ACTION")
    b = bank_sub.add_parser("build", help="embed a data set with a run's model into a bank")
    b.add_argument("--run", required=True)
    b.add_argument("--data", required=True, help="ImageFolder root or CSV manifest")
    b.add_argument("--out", required=True, help="bank directory")
    b.add_argument("--index", help="FAISS factory string (default: the run's bank.index)")
    b.add_argument("--checkpoint", default="best", choices=("best", "last"))
    b.add_argument("--workers", type=arg_workers, default=0, help="DataLoader workers")
    b.add_argument("--quiet", action="store_true")
    b = bank_sub.add_parser("add", help="add images of a (new or rare) class; no retraining")
    b.add_argument("--bank", required=True, help="anchor bank folder")
    b.add_argument("--label", required=True, help="class code of the new anchors")
    b.add_argument("images", nargs="+", help="image files or folders")
    b.add_argument("--run", help="the run whose model built the bank, if it has moved")
    b.add_argument("--workers", type=arg_workers, default=0, help="DataLoader workers")
    b.add_argument("--quiet", action="store_true")
    b = bank_sub.add_parser("remove", help="remove every anchor of a class")
    b.add_argument("--bank", required=True, help="anchor bank folder")
    b.add_argument("--label", required=True)
    b.add_argument("--run", help="the run whose model built the bank, if it has moved")
    b = bank_sub.add_parser("info", help="print a bank's manifest")
    b.add_argument("--bank", required=True, help="anchor bank folder")
    p.set_defaults(func=cmd_bank)


def _add_classify(sub: Any) -> None:
    p = sub.add_parser("classify", help="consensus classification against a bank")
    p.add_argument("--bank", required=True, help="anchor bank folder")
    p.add_argument("images", nargs="+", help="image files or folders")
    p.add_argument(
        "--format",
        choices=("jsonl", "json", "csv"),
        default="jsonl",
        help="jsonl: one JSON object per image (default); json: a list; csv",
    )
    p.add_argument(
        "--abstain-below",
        type=arg_probability,
        metavar="P",
        help="call a prediction 'uncertain' when its probability is below P",
    )
    p.add_argument(
        "--top-m", type=arg_count, help="FAISS candidates per query (default: the bank's)"
    )
    p.add_argument("--output", "-o", help="write here instead of standard output")
    p.add_argument("--timing", action="store_true", help="print the time breakdown to stderr")
    p.add_argument("--run", help="the run whose model built the bank, if it has moved")
    p.add_argument("--workers", type=arg_workers, default=0, help="DataLoader workers")
    p.set_defaults(func=cmd_classify)


def _add_search(sub: Any) -> None:
    p = sub.add_parser("search", help="nearest anchors of an image: the evidence behind a call")
    p.add_argument("--bank", required=True, help="anchor bank folder")
    p.add_argument("image")
    p.add_argument("-k", type=arg_count, default=10, help="neighbours to return (default 10)")
    p.add_argument("--gallery", help="also draw the query and its neighbours to this PNG")
    p.add_argument("--run", help="the run whose model built the bank, if it has moved")
    p.set_defaults(func=cmd_search)


def _add_fewshot_eval(sub: Any) -> None:
    p = sub.add_parser("fewshot-eval", help="seeded N-way K-shot episodes on unseen classes")
    p.add_argument("--run", required=True)
    p.add_argument("--data", required=True)
    p.add_argument(
        "--n-way", type=arg_number(int, 2), default=5, help="classes per episode (default 5)"
    )
    p.add_argument(
        "--k-shot", type=arg_int_list(1), default="1,5", help="comma-separated shots, e.g. 1,5"
    )
    p.add_argument(
        "--n-query",
        type=arg_count,
        default=15,
        help="query images per class per episode (default 15)",
    )
    p.add_argument("--episodes", type=arg_count, default=100, help="seeded episodes (default 100)")
    p.add_argument("--seed", type=arg_seed, default=0, help="episode seed (default 0)")
    p.add_argument("--checkpoint", default="best", choices=("best", "last"))
    p.add_argument("--json", help="write the results here")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_fewshot_eval)


def _add_retrieval_eval(sub: Any) -> None:
    p = sub.add_parser("retrieval-eval", help="precision@1, R-precision, MAP@R, recall@k")
    p.add_argument("--bank", required=True, help="anchor bank folder")
    p.add_argument("--data", required=True)
    p.add_argument("--json", help="write the results here")
    p.add_argument("--run", help="the run whose model built the bank, if it has moved")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_retrieval_eval)


def _add_evaluate(sub: Any) -> None:
    p = sub.add_parser("evaluate", help="metrics.json, figures and report.html for a run")
    p.add_argument("--run", required=True)
    p.add_argument("--data", help="images to classify (default: the run's held-out split)")
    p.add_argument("--bank", help="anchor bank (default: the run's training split, in memory)")
    p.add_argument("--out", help="output folder (default RUN/eval)")
    p.add_argument("--checkpoint", default="best", choices=("best", "last"))
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_evaluate)


def _add_demo(sub: Any) -> None:
    p = sub.add_parser(
        "demo", help="the whole path on the embedded synthetic data, on CPU in minutes"
    )
    _add_config_args(p)
    p.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    p.add_argument("--quick", action="store_true", help="a smaller, faster demo (for tests)")
    p.set_defaults(func=cmd_demo)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="siamese-marrow",
        description="Siamese paired-image classification of bone-marrow cell images.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (
        _add_synth,
        _add_check_data,
        _add_train,
        _add_bank,
        _add_classify,
        _add_search,
        _add_fewshot_eval,
        _add_retrieval_eval,
        _add_evaluate,
        _add_demo,
    ):
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    with contextlib.suppress(AttributeError, ValueError):  # file names that are not UTF-8
        sys.stdout.reconfigure(errors="surrogateescape")  # type: ignore[union-attr]
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except SiameseMarrowError as e:
        command = " ".join(filter(None, (args.command, getattr(args, "bank_command", None))))
        print(f"siamese-marrow {command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"siamese-marrow {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as e:  # a read-only target, a full disk, a missing permission: one line
        from .utils import describe_os_error

        command = " ".join(filter(None, (args.command, getattr(args, "bank_command", None))))
        print(f"siamese-marrow {command}: error: {describe_os_error(e)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
