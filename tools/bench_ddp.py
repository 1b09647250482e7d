"""Data-parallel throughput: N processes under torchrun against 1, with the real commands.

For W = 1 and W = N the same launcher runs the package's own commands on the same synthetic
data and model:

- ``torchrun --standalone --nproc_per_node=W -m siamese_marrow.cli -- train ...``: each rank
  draws its own P x K batch every step (the global batch is W x P x K) and does ``--steps``
  steps an epoch; the figure is ``train_images_per_s`` of the last epoch in ``metrics.jsonl``
  (the first epoch warms up; validation and checkpoints are not in it);
- ``torchrun ... -- bank build``: the sharded embedding of every image (with the W=1 run's
  model for both), images per second from the command's ``seconds``.

The ratio (N processes) / (1 process) is the scaling; N is ideal when every process has cores
(or a GPU) of its own. On the CPU each process gets ``--threads`` torch threads (gloo); with
``--device cuda`` each process gets a GPU (NCCL).

    python tools/bench_ddp.py --nproc 2 --threads 1 --json runs/bench_ddp.json
    python tools/bench_ddp.py --nproc 8 --device cuda --backbone efficientnet_b5 --img-size 456 \\
        --p 16 --k 4 --steps 20 --per-class 200 --json runs/bench_ddp_gpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]


def torchrun(nproc: int, argv: list[str], threads: int) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node=nproc -m siamese_marrow.cli -- ARGV``."""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": str(REPO),
    }
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    cmd += [f"--nproc_per_node={nproc}", "-m", "siamese_marrow.cli", "--", *argv]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env)
    if r.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stderr[-3000:]}")
    return r


def train_run(args: argparse.Namespace, data: Path, out: Path, nproc: int) -> dict[str, Any]:
    sets = [
        f"data.root={data}",
        "data.val_fraction=0",
        f"data.num_workers={args.workers}",
        f"model.backbone={args.backbone}",
        "model.pretrained=none",
        f"model.img_size={args.img_size}",
        f"sampler.p_classes={args.p}",
        f"sampler.k_per_class={args.k}",
        f"sampler.batches_per_epoch={args.steps * nproc}",
        "train.epochs=2",
        "train.baseline_probe=false",
        f"train.threads={args.threads}",
        f"train.device={args.device}",
    ]
    t = time.perf_counter()
    argv = ["train", "--out", str(out), "--quiet", *[a for s in sets for a in ("--set", s)]]
    torchrun(nproc, argv, args.threads)
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    return {
        "processes": nproc,
        "global_batch": nproc * args.p * args.k,
        "steps_per_epoch": args.steps,
        "train_images_per_s": last["train_images_per_s"],
        "train_seconds_last_epoch": last["train_seconds"],
        "wall_seconds": round(time.perf_counter() - t, 1),
    }


def bank_run(args: argparse.Namespace, run: Path, data: Path, out: Path, nproc: int) -> dict:
    argv = ["bank", "build", "--run", str(run), "--data", str(data), "--out", str(out)]
    r = torchrun(nproc, [*argv, "--quiet", "--workers", str(args.workers)], args.threads)
    got = json.loads(r.stdout)
    return {
        "processes": nproc,
        "images": got["anchors"],
        "seconds": got["seconds"],
        "images_per_s": round(got["anchors"] / max(got["seconds"], 1e-9), 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--nproc", type=int, default=2, help="processes to compare with 1")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process")
    ap.add_argument("--backbone", default="tf_efficientnet_lite0")
    ap.add_argument("--img-size", type=int, default=64)
    ap.add_argument("--p", type=int, default=4, help="classes per batch (per rank)")
    ap.add_argument("--k", type=int, default=4, help="images per class (per rank)")
    ap.add_argument("--steps", type=int, default=6, help="steps per epoch (each rank)")
    ap.add_argument("--per-class", type=int, default=24, help="synthetic images per class")
    ap.add_argument("--workers", type=int, default=0, help="DataLoader workers per process")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args()
    if args.device == "cuda" and torch.cuda.device_count() < args.nproc:
        raise SystemExit(
            f"--device cuda --nproc {args.nproc}: this machine has {torch.cuda.device_count()} "
            "CUDA device(s)"
        )
    from siamese_marrow.data.classes import CLASS_CODES
    from siamese_marrow.data.synth import write_dataset

    with tempfile.TemporaryDirectory(prefix="bench_ddp.") as tmp:
        root = Path(tmp)
        classes = CLASS_CODES[: max(args.p, 2)]
        write_dataset(root / "data", dict.fromkeys(classes, args.per_class), seed=0, size=128)
        train = {n: train_run(args, root / "data", root / f"run-{n}", n) for n in (1, args.nproc)}
        bank = {
            n: bank_run(args, root / "run-1", root / "data", root / f"bank-{n}", n)
            for n in (1, args.nproc)
        }
    one, many = train[1], train[args.nproc]
    result = {
        "what": "throughput of N torchrun processes against 1, same per-rank P x K batch",
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "device": args.device,
            "torch": torch.__version__,
            "backend": "nccl" if args.device == "cuda" else "gloo",
        },
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "train": {"1": one, str(args.nproc): many},
        "train_ratio": round(many["train_images_per_s"] / max(one["train_images_per_s"], 1e-9), 3),
        "bank_build": {"1": bank[1], str(args.nproc): bank[args.nproc]},
        "bank_build_ratio": round(
            bank[args.nproc]["images_per_s"] / max(bank[1]["images_per_s"], 1e-9), 3
        ),
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
