"""The argument parser: every command, its options and their help, range-checked on parsing."""

from __future__ import annotations

import argparse
from typing import Any

from ..config.bank import ADAPT_ON
from ..utils import arg_count, arg_int_list, arg_number, arg_probability, arg_seed, arg_workers
from .commands import (
    cmd_bank,
    cmd_check_data,
    cmd_classify,
    cmd_demo,
    cmd_evaluate,
    cmd_fewshot_eval,
    cmd_retrieval_eval,
    cmd_search,
    cmd_synth,
    cmd_train,
)


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
    p.add_argument(
        "--force",
        action="store_true",
        help="write into --out even when it holds other files",
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
    p.add_argument(
        "--force",
        action="store_true",
        help="start over in an --out that holds a run (its checkpoints are deleted) or other files",
    )
    p.set_defaults(func=cmd_train)


def _add_bank(sub: Any) -> None:
    p = sub.add_parser("bank", help="build, extend or inspect an anchor bank")
    bank_sub = p.add_subparsers(dest="bank_command", required=True, metavar="ACTION")
    b = bank_sub.add_parser("build", help="embed a data set with a run's model into a bank")
    b.add_argument("--run", required=True)
    b.add_argument("--data", required=True, help="ImageFolder root or CSV manifest")
    b.add_argument("--out", required=True, help="bank directory")
    b.add_argument("--index", help="FAISS factory string or auto (default: the run's bank.index)")
    b.add_argument("--checkpoint", default="best", choices=("best", "last"))
    b.add_argument("--workers", type=arg_workers, default=0, help="DataLoader workers")
    b.add_argument("--quiet", action="store_true")
    b.add_argument(
        "--force", action="store_true", help="replace a bank already at --out (its anchors go)"
    )
    b.add_argument(
        "--tta",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="embed anchors (and later queries) as the mean of their 8 dihedral views "
        "(default: the run's bank.tta)",
    )
    b.add_argument(
        "--adapt-on",
        choices=ADAPT_ON,
        default=None,
        help="adapt the prototypes on each anchor's embedding or on its 8 dihedral views; views "
        "keeps them in the bank (default: the run's bank.adapt_on)",
    )
    b.add_argument(
        "--prototypes-per-class",
        type=int,
        default=None,
        metavar="K",
        help="with model.aggregate=proto: up to K prototypes a class, the k-means centres of its "
        "anchors, one per 10 anchors at most (default: the run's bank.prototypes_per_class)",
    )
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
    b = bank_sub.add_parser(
        "calibrate", help="fit the temperature of g on held-out images; classify then uses it"
    )
    b.add_argument("--bank", required=True, help="anchor bank folder")
    b.add_argument(
        "--data",
        help="labelled images, not anchors (default: the validation split of the bank's run)",
    )
    b.add_argument("--run", help="the run whose model built the bank, if it has moved")
    b.add_argument("--workers", type=arg_workers, default=0, help="DataLoader workers")
    b.add_argument("--quiet", action="store_true")
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
    p.add_argument(
        "--html",
        metavar="FILE",
        help="also write a review page: uncertain calls first, then by class, each cell with g "
        "and its supporting anchors (one self-contained file)",
    )
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
    p.add_argument(
        "--tta",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="embed each image as the mean of its 8 dihedral views (default: the run's bank.tta)",
    )
    p.add_argument(
        "--centre",
        action="store_true",
        help="centre the embeddings on each episode's support mean (SimpleShot)",
    )
    p.add_argument(
        "--adapt-steps",
        type=arg_number(int, 0, 100_000),
        default=None,
        help="with model.aggregate=proto: adapt the prototypes to each support set in this many "
        "steps (default: the run's bank.adapt_steps)",
    )
    p.add_argument(
        "--adapt-on",
        choices=ADAPT_ON,
        default=None,
        help="adapt the prototypes on each support image's embedding or on its 8 dihedral views "
        "(default: the run's bank.adapt_on)",
    )
    p.add_argument(
        "--adapt-lr",
        type=arg_number(float, 0, low_strict=True),
        default=None,
        help="the Adam learning rate of those steps (default: the run's bank.adapt_lr)",
    )
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
    p.add_argument(
        "--no-calibrate",
        dest="calibrate",
        action="store_false",
        help="fit no temperature (report the calibration of the model's own g only)",
    )
    p.add_argument("--quiet", action="store_true")
    p.add_argument(
        "--force",
        action="store_true",
        help="write into --out even when it holds other files",
    )
    p.set_defaults(func=cmd_evaluate)


def _add_demo(sub: Any) -> None:
    p = sub.add_parser(
        "demo", help="the whole path on the embedded synthetic data, on CPU in minutes"
    )
    _add_config_args(p)
    p.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    p.add_argument("--quick", action="store_true", help="a smaller, faster demo (for tests)")
    p.add_argument(
        "--force",
        action="store_true",
        help="write into --out even when it holds other files",
    )
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
