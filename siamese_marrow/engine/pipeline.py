"""The main job on the embedded default data: synth -> train -> bank -> classify -> few-shot ->
evaluate -> report, on CPU in minutes."""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

from ..config import Config
from ..data.classes import CLASS_CODES
from ..data.prepare import prepare_data, synth_dir_of
from ..data.synth import write_dataset
from ..index.bank import AnchorBank
from ..models.checkpoint import load_run
from .evaluate import evaluate
from .predict import classify_paths
from .train import train

QUICK = {
    "data": {"synth_per_class": 12, "synth_size": 64},
    "model": {"img_size": 64, "embed_dim": 64},
    "sampler": {"k_per_class": 2},
    "train": {"epochs": 1, "baseline_probe": False, "val_anchors_per_class": 10},
}


def _say(msg: str) -> None:
    print(f"[demo] {msg}", flush=True)


def run_demo(cfg: Config, out: Path, quick: bool = False, progress: bool = True) -> dict[str, Any]:
    """Run the whole path into ``out`` and return a summary (paths and headline figures)."""
    t0 = time.perf_counter()
    cfg = copy.deepcopy(cfg)
    if quick:
        for section, values in QUICK.items():
            for k, v in values.items():
                setattr(getattr(cfg, section), k, v)
    run, bank_dir = out / "run", out / "bank"

    _say(f"1/6 synthetic data and training -> {run}")
    summary = train(cfg, run, resume=(run / "last.json").is_file(), progress=progress)
    _say(f"    best validation: {summary['best_val']}")

    _say(f"2/6 anchor bank of the training split -> {bank_dir}")
    loaded = load_run(run)
    data = prepare_data(cfg.data, synth_dir=synth_dir_of(run))
    bank = AnchorBank.build(loaded, data.train, progress=progress)
    bank.save(bank_dir)

    _say("3/6 classify a few held-out images")
    few = list({s.label: s for s in reversed(data.val)}.values())[:8]  # one image per class
    records = classify_paths(bank, [s.path for s in few])
    for s, r in zip(few, records, strict=True):
        p = r["probabilities"].get(r["prediction"], 0.0)
        _say(f"    {Path(s.path).name}: true {s.label}, predicted {r['prediction']} (g={p:.2f})")

    # an unseen class that looks unlike its neighbours; any absent code otherwise
    novel = next(c for c in ("HAC", "BAS", "KSC", *CLASS_CODES) if c not in data.classes)
    shots, n_query = 5, 10
    _say(f"4/6 few-shot: add {shots} images of an unseen class ({novel}) without retraining")
    novel_dir = out / "novel"
    write_dataset(novel_dir, {novel: shots + n_query}, seed=1, size=cfg.data.synth_size)
    images = sorted(str(p) for p in (novel_dir / novel).glob("*.jpg"))
    bank.add(images[:shots], novel)
    bank.save(bank_dir)
    found = [r["prediction"] for r in classify_paths(bank, images[shots:])]
    fewshot_acc = sum(p == novel for p in found) / len(found)
    _say(f"    {sum(p == novel for p in found)}/{len(found)} new {novel} images called {novel}")

    _say("5/6 evaluate the held-out split against the bank (metrics, figures, report)")
    bank.remove(novel)  # evaluate on the trained classes only
    bank.save(bank_dir)
    ev = evaluate(run, bank=bank_dir, out=out / "eval", progress=progress)
    _say(
        f"    accuracy {ev['accuracy']:.3f}, balanced accuracy {ev['balanced_accuracy']:.3f}, "
        f"weighted F1 {ev['f1_weighted']:.3f}, macro F1 {ev['f1_macro']:.3f}"
    )
    result = {
        "run": str(run),
        "bank": str(bank_dir),
        "classes": data.classes,
        "baseline_probe": summary.get("baseline_probe"),
        "evaluation": {
            k: ev[k] for k in ("accuracy", "balanced_accuracy", "f1_weighted", "f1_macro")
        },
        "retrieval": ev.get("retrieval"),
        "fewshot": {"class": novel, "shots": shots, "queries": n_query, "accuracy": fewshot_acc},
        "report": ev["report"],
        "seconds": round(time.perf_counter() - t0, 1),
    }
    (out / "demo_summary.json").write_text(json.dumps(result, indent=2))
    _say(f"6/6 done in {result['seconds']:.0f} s. Open the report: {ev['report']}")
    return result
