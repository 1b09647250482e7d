"""Training-step throughput: the siamese step against a plain timm softmax classifier step.

Same backbone, input size, batch size and threads, in one process, interleaved rounds so that
background load affects both alike. The siamese step embeds each image once and scores all
in-batch pairs from the embeddings; the ratio shows what the pair heads and consensus cost.

    python tools/bench_train.py --backbone tf_efficientnet_lite0 --img-size 128 --batch 56 \
        --threads 2 --steps 6 --rounds 3 --json runs/bench_train.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import timm
import torch
import torch.nn.functional as F

from siamese_marrow.config import load_config
from siamese_marrow.engine.losses import siamese_loss
from siamese_marrow.engine.train import build_optimizer
from siamese_marrow.models import build_model


def time_steps(step, n: int) -> float:  # noqa: ANN001
    step()  # warm-up
    t = time.perf_counter()
    for _ in range(n):
        step()
    return (time.perf_counter() - t) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--backbone", default="tf_efficientnet_lite0")
    ap.add_argument("--img-size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=56, help="P x K images per step")
    ap.add_argument("--classes", type=int, default=7, help="P")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=6, help="timed steps per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    cfg = load_config(
        None,
        [
            f"model.backbone={args.backbone}",
            "model.pretrained=none",
            f"model.img_size={args.img_size}",
        ],
    )
    siamese = build_model(cfg.model).train()
    s_opt = build_optimizer(siamese, cfg)
    plain = timm.create_model(args.backbone, pretrained=False, num_classes=args.classes).train()
    p_opt = torch.optim.AdamW(plain.parameters(), lr=1e-3)

    x = torch.randn(args.batch, 3, args.img_size, args.img_size)
    k = args.batch // args.classes
    y = torch.arange(args.classes).repeat_interleave(k)
    y = torch.cat([y, y[: args.batch - len(y)]])

    def siamese_step() -> None:
        loss, _ = siamese_loss(siamese, siamese.embed(x), y, args.classes)
        s_opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(siamese.parameters(), 5.0)
        s_opt.step()

    def plain_step() -> None:
        loss = F.cross_entropy(plain(x), y)
        p_opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(plain.parameters(), 5.0)
        p_opt.step()

    s_times, p_times = [], []
    for _ in range(args.rounds):
        p_times.append(time_steps(plain_step, args.steps))
        s_times.append(time_steps(siamese_step, args.steps))
    s_ips = args.batch / statistics.median(s_times)
    p_ips = args.batch / statistics.median(p_times)
    result = {
        "backbone": args.backbone,
        "img_size": args.img_size,
        "batch": args.batch,
        "threads": args.threads,
        "steps_per_round": args.steps,
        "rounds": args.rounds,
        "siamese_images_per_s": round(s_ips, 2),
        "plain_classifier_images_per_s": round(p_ips, 2),
        "ratio_siamese_to_plain": round(s_ips / p_ips, 3),
        "siamese_step_seconds": [round(t, 4) for t in s_times],
        "plain_step_seconds": [round(t, 4) for t in p_times],
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
