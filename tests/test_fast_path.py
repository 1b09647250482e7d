"""The fast path's options on the CPU: what they change, and that one process trains as before."""

from __future__ import annotations

import pytest
import torch
from helpers import TINY_MODEL

from siamese_marrow.config import load_config
from siamese_marrow.engine.distributed import Ranks, training_forward
from siamese_marrow.engine.losses import siamese_loss
from siamese_marrow.models import build_model


def _loss_and_grads(compile_backend: str) -> tuple[float, dict[str, torch.Tensor]]:
    cfg = load_config(None, [*TINY_MODEL, f"scale.compile={compile_backend}"])
    torch.manual_seed(0)
    model = build_model(cfg.model).train()
    forward = training_forward(model, None, Ranks(), cfg)
    x = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 0, 1, 1, 2, 2])

    def batch_loss(emb: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return siamese_loss(model, emb, y, 3, generator=torch.Generator().manual_seed(2))[0]

    loss = forward(x, y, batch_loss)
    loss.backward()
    return float(loss), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("backend", ["eager"])
def test_torch_compile_of_the_embedding_gives_the_same_loss_and_gradients(backend: str) -> None:
    plain_loss, plain = _loss_and_grads("none")
    loss, grads = _loss_and_grads(backend)
    assert abs(loss - plain_loss) <= 1e-6
    for n, g in plain.items():
        assert torch.allclose(grads[n], g, atol=1e-6), n


def test_one_process_keeps_the_plain_module_on_the_cpu() -> None:
    cfg = load_config(None, TINY_MODEL)
    model = build_model(cfg.model)
    forward = training_forward(model, None, Ranks(), cfg)
    assert forward.model is model and not forward.amp  # no DDP, no autocast on the CPU
    assert forward.memory_format == torch.preserve_format
    assert model.backbone.model.conv_stem.weight.is_contiguous()  # not channels_last


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (the fast path)")
def test_cuda_embedding_in_bf16_is_unit_norm_and_close_to_float32() -> None:
    import numpy as np

    from siamese_marrow.models.embed import embed_dataset

    cfg = load_config(None, TINY_MODEL)
    torch.manual_seed(0)
    model = build_model(cfg.model).eval()
    x = torch.randn(10, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    data = list(zip(x, range(10), strict=True))
    on_cpu, _ = embed_dataset(model, data, batch_size=4)
    on_gpu, labels = embed_dataset(model.cuda(), data, batch_size=4)
    assert np.allclose(np.linalg.norm(on_gpu, axis=1), 1.0, atol=1e-5)
    assert np.abs(on_gpu - on_cpu).max() < 0.05  # bf16
    assert labels.tolist() == list(range(10))
