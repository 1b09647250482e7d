"""GPU fast path: the siamese embedding and training step against timm's own, same backbone.

For each backbone and input size (EfficientNet-B5 at 456 px and Lite0 at 128 px by default), in
one process on one GPU, with the same batch, bf16 autocast, channels_last and cuDNN autotuning on
both sides, interleaved rounds (median), inputs already on the GPU:

- embed: images/s of the package's embedding (``models.embed.embed_batch``: backbone, pooling,
  projection, L2 norm) against timm's ``model(x)`` with ``num_classes=0``; target >= 0.95;
- train: images/s of the package's training step (``engine.distributed.training_forward`` +
  ``siamese_loss`` over all in-batch pairs + AdamW, gradient clipping, as ``train.py`` does)
  against timm's classifier step (forward + cross-entropy + backward + AdamW, clipping);
  target >= 0.9.

Without a GPU it says so and skips (exit status 0; the JSON records why). ``--device cpu``
runs the same code on the CPU to check the script only: those figures mean nothing.

    python tools/bench_gpu.py --json runs/bench_gpu.json
    python tools/bench_gpu.py --models efficientnet_b5:456:32:32 --compile inductor
    python tools/bench_gpu.py --device cpu --models test_efficientnet:64:8:8 --steps 2 --rounds 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F

from siamese_marrow.config import load_config
from siamese_marrow.engine.distributed import Ranks, training_forward
from siamese_marrow.engine.losses import siamese_loss
from siamese_marrow.engine.optim import build_optimizer
from siamese_marrow.models import build_model
from siamese_marrow.models.embed import embed_batch

#: backbone:img_size:embed_batch:train_batch
DEFAULT_MODELS = ("efficientnet_b5:456:64:32", "tf_efficientnet_lite0:128:512:224")
TARGETS = {"embed": 0.95, "train": 0.9}


def timed_rounds(
    steps: dict[str, Callable[[], None]], n: int, rounds: int, sync: Callable[[], None]
) -> dict[str, float]:
    """Median seconds per call of each step; rounds alternate the order of the steps."""
    for step in steps.values():  # warm-up: autotuning, allocator, compilation
        step()
        step()
    sync()
    times: dict[str, list[float]] = {k: [] for k in steps}
    for r in range(rounds):
        for name in sorted(steps, reverse=bool(r % 2)):
            t = time.perf_counter()
            for _ in range(n):
                steps[name]()
            sync()
            times[name].append((time.perf_counter() - t) / n)
    return {k: statistics.median(v) for k, v in times.items()}


def bench_model(spec: str, args: argparse.Namespace) -> dict[str, Any]:
    name, size, embed_batch_size, train_batch = spec.split(":")
    size, b_embed, b_train = int(size), int(embed_batch_size), int(train_batch)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    fmt = torch.channels_last if cuda else torch.contiguous_format
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    cfg = load_config(
        None,
        [
            f"model.backbone={name}",
            "model.pretrained=none",
            f"model.img_size={size}",
            f"train.device={args.device}",
            f"scale.compile={args.compile}",
        ],
    )
    p = args.classes
    torch.manual_seed(0)
    siamese = build_model(cfg.model).to(device, memory_format=fmt)
    plain = timm.create_model(name, pretrained=False, num_classes=p).to(device, memory_format=fmt)
    pooled = timm.create_model(name, pretrained=False, num_classes=0).to(device, memory_format=fmt)
    if args.compile != "none":
        pooled = torch.compile(pooled, backend=args.compile)
        plain = torch.compile(plain, backend=args.compile)
    amp = dict(device_type=device.type, dtype=torch.bfloat16, enabled=cuda)

    x = torch.randn(b_embed, 3, size, size, device=device).to(memory_format=fmt)
    siamese.eval(), pooled.eval()

    @torch.no_grad()
    def embed_siamese() -> None:
        with torch.autocast(**amp):
            embed_batch(siamese, x)

    @torch.no_grad()
    def embed_timm() -> None:
        with torch.autocast(**amp):
            pooled(x)

    embed = timed_rounds(
        {"siamese": embed_siamese, "timm": embed_timm}, args.steps, args.rounds, sync
    )

    siamese.train(), plain.train()
    xt = torch.randn(b_train, 3, size, size, device=device).to(memory_format=fmt)
    y = torch.arange(p, device=device).repeat_interleave(-(-b_train // p))[:b_train]
    forward = training_forward(siamese, None, Ranks(device=str(device)), cfg)
    s_opt, p_opt = build_optimizer(siamese, cfg), torch.optim.AdamW(plain.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)

    def train_siamese() -> None:
        loss, _ = forward(xt, y, lambda e, t: siamese_loss(siamese, e, t, p, generator=gen))
        s_opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(siamese.parameters(), 5.0)
        s_opt.step()

    def train_timm() -> None:
        with torch.autocast(**amp):
            loss = F.cross_entropy(plain(xt).float(), y)
        p_opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(plain.parameters(), 5.0)
        p_opt.step()

    train = timed_rounds(
        {"siamese": train_siamese, "timm": train_timm}, args.steps, args.rounds, sync
    )
    out: dict[str, Any] = {"backbone": name, "img_size": size}
    for what, secs, batch in (("embed", embed, b_embed), ("train", train, b_train)):
        ratio = secs["timm"] / secs["siamese"]
        out[what] = {
            "batch": batch,
            "siamese_images_per_s": round(batch / secs["siamese"], 1),
            "timm_images_per_s": round(batch / secs["timm"], 1),
            "ratio": round(ratio, 3),
            "target": TARGETS[what],
            "meets_target": ratio >= TARGETS[what],
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), metavar="NAME:PX:B:B")
    ap.add_argument("--device", default="cuda", help="cuda (the measurement) or cpu (a check)")
    ap.add_argument("--classes", type=int, default=16, help="P: classes in a training batch")
    ap.add_argument("--steps", type=int, default=10, help="timed calls per round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--compile", default="none", help="torch.compile backend for both sides")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        result: dict[str, Any] = {
            "skipped": "no CUDA device: bench_gpu.py measures the GPU fast path and was not run"
        }
        print(f"bench_gpu.py: skipped: {result['skipped']}")
    else:
        if args.device.startswith("cuda"):
            torch.backends.cudnn.benchmark = True
        result = {
            "device": torch.cuda.get_device_name() if args.device != "cpu" else "cpu (a check)",
            "torch": torch.__version__,
            "timm": timm.__version__,
            "settings": {k: v for k, v in vars(args).items() if k != "json"},
            "results": [bench_model(m, args) for m in args.models],
        }
        print(json.dumps(result, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
