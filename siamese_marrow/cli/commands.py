"""The commands: each takes the parsed arguments, calls the engine and prints; nothing else."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _check_outputs(*targets: str | Path | None, beside: bool = False) -> None:
    """Fail before the work, naming the path, when an output cannot be written (utils)."""
    from ..utils import check_writable

    for target in targets:
        if target is not None:
            check_writable(target, beside=beside)


def _config(args: argparse.Namespace):  # noqa: ANN202
    from ..config import load_config

    return load_config(args.config, args.overrides)


def cmd_synth(args: argparse.Namespace) -> int:
    from ..data.synth import profile_counts, write_dataset

    counts = profile_counts(
        args.profile, total=args.total, per_class=args.per_class, classes=args.classes
    )
    from ..utils import check_own_folder

    check_own_folder(args.out, ("synth.json",), "a synthetic data set", args.force)
    _check_outputs(args.out)
    written = write_dataset(args.out, counts, seed=args.seed, size=args.size, progress=True)
    print(f"wrote {sum(written.values())} images of {len(written)} classes to {args.out}")
    print(json.dumps(written))
    return 0


def cmd_check_data(args: argparse.Namespace) -> int:
    from ..data.check import check_data, describe_bad

    _check_outputs(args.json)
    report, bad = check_data(args.data, args.workers, progress=not args.quiet)
    if args.json:
        from ..utils import atomic_write_json

        atomic_write_json(args.json, report)
    counts = report["classes"]
    print(
        f"{report['images']} images in {len(counts)} classes: "
        + ", ".join(f"{c} {n}" for c, n in counts.items())
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
    from ..engine.pipeline import run_demo
    from ..utils import check_own_folder

    cfg = _config(args)
    check_own_folder(args.out, ("demo_summary.json", "run"), "a demo folder", args.force)
    _check_outputs(args.out)
    summary = run_demo(cfg, Path(args.out), quick=args.quick)
    print(json.dumps(summary, indent=2))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from ..engine.runs import training_plan
    from ..engine.train import train

    cfg, out = training_plan(
        args.out, args.resume, args.config, args.overrides, args.skip_bad, args.force
    )
    _check_outputs(out)
    summary = train(cfg, out, resume=bool(args.resume), progress=not args.quiet, force=args.force)
    print(json.dumps(summary, indent=2))
    return 0


def _print_json(obj: object) -> None:
    print(json.dumps(obj, indent=2))


def cmd_bank(args: argparse.Namespace) -> int:
    from ..engine import banks

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
                force=args.force,
                tta=args.tta,
                adapt_on=args.adapt_on,
                prototypes_per_class=args.prototypes_per_class,
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
    elif args.bank_command == "calibrate":
        from ..engine.calibrate import bank_calibrate

        _print_json(
            bank_calibrate(
                args.bank,
                data=args.data,
                run=args.run,
                num_workers=args.workers,
                progress=not args.quiet,
            )
        )
    else:
        _print_json(banks.bank_info(args.bank))
    return 0


def cmd_classify(args: argparse.Namespace) -> int:
    from ..data.datasets import expand_images
    from ..engine.banks import open_bank
    from ..engine.distributed import is_main
    from ..engine.predict import classify_paths_timed, format_records, write_review_page
    from ..utils import refuse_overwriting_inputs

    _check_outputs(args.output, args.html)
    bank = open_bank(args.bank, run=args.run)
    images = expand_images(args.images)
    for output in (args.output, args.html):
        refuse_overwriting_inputs(output, [*images, *(a["path"] for a in bank.anchors)])
    records, timing = classify_paths_timed(
        bank,
        images,
        abstain_below=args.abstain_below,
        top_m=args.top_m,
        num_workers=args.workers,
    )
    if not is_main():  # under torchrun the other ranks embedded their shares; rank 0 writes
        return 0
    text = format_records(records, args.format)
    if args.output:
        from ..utils import atomic_write_text

        atomic_write_text(args.output, text)
    else:
        sys.stdout.write(text)
    if args.html:
        page = write_review_page(
            bank, records, args.html, bank_dir=args.bank, abstain_below=args.abstain_below
        )
        print(
            f"review page {page['path']}: {page['cells']} cells, "
            f"{page['bytes'] / 1e6:.1f} MB ({page['seconds']:.1f} s)",
            file=sys.stderr,
        )
    if args.timing:
        print(json.dumps(timing), file=sys.stderr)
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from ..engine.banks import open_bank
    from ..engine.predict import search_paths
    from ..report import neighbours_gallery_png
    from ..utils import refuse_overwriting_inputs

    _check_outputs(args.gallery)
    bank = open_bank(args.bank, run=args.run)
    refuse_overwriting_inputs(args.gallery, [args.image, *(a["path"] for a in bank.anchors)])
    results = search_paths(bank, [args.image], k=args.k)
    if args.gallery:
        neighbours_gallery_png(results[0]["path"], results[0]["neighbours"], args.gallery)
    _print_json(results[0])
    return 0


def cmd_fewshot_eval(args: argparse.Namespace) -> int:
    from ..engine.fewshot import fewshot_eval

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
        tta=args.tta,
        centre=args.centre,
        adapt_steps=args.adapt_steps,
        adapt_on=args.adapt_on,
        adapt_lr=args.adapt_lr,
    )
    if args.json:
        from ..utils import atomic_write_json

        atomic_write_json(args.json, result)
    _print_json(result)
    return 0


def cmd_retrieval_eval(args: argparse.Namespace) -> int:
    from ..engine.banks import open_bank
    from ..engine.evaluate import retrieval_eval

    _check_outputs(args.json)
    bank = open_bank(args.bank, run=args.run)
    result = retrieval_eval(bank, args.data, progress=not args.quiet)
    if args.json:
        from ..utils import atomic_write_json

        atomic_write_json(args.json, result)
    _print_json(result)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ..engine.evaluate import evaluate
    from ..utils import check_own_folder

    out = args.out or Path(args.run) / "eval"
    check_own_folder(out, ("metrics.json", "report.html"), "an evaluation folder", args.force)
    _check_outputs(out)
    _print_json(
        evaluate(
            args.run,
            data=args.data,
            bank=args.bank,
            out=args.out,
            checkpoint=args.checkpoint,
            calibrate=args.calibrate,
            progress=not args.quiet,
        )
    )
    return 0
