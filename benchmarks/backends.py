"""Training-step time of the two backends on the same input: ``python -m benchmarks.backends``.

Both backends get the same batch (2 images, synthetic cells, the same targets) and the
same architecture, built from params: the CPU default of ``params.yaml`` and the
reference recipe's R50-FPN (``--arch r50``). Reports the median of ``--steps`` timed
SGD steps after ``--warmup`` untimed ones, in one process with the two backends' steps
interleaved, so that the ratio holds on a noisy machine; writes ``benchmarks/backends.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import yaml

from cellpipe import coco, models, synth, tables
from cellpipe.data import CocoInstances, collate
from cellpipe.models import d2

HERE = Path(__file__).resolve().parent
R50 = {
    "backbone": "resnet50",
    "fpn_channels": 256,
    "box_head_dim": 1024,
    "mask_head_channels": 256,
    "mask_head_layers": 4,
    "head_norm": "none",
    "norm": "batch",
}


def batch(cfg: models.ModelConfig, crop: int, folder: Path):
    synth.write_kaggle(folder, {"shsy5y": 1, "astro": 0, "cort": 1}, 0, 0.35, seed=3, images_per_sample=1)
    ann, images = tables.build_tables(tables.read_train_csv(folder / "train.csv"), folder / "train")
    ds = CocoInstances(coco.build(images, ann), cfg.min_size, cfg.max_size, crop_size=crop)
    torch.manual_seed(0)
    return collate([ds[0], ds[1]])


def sgd_step(model, opt, images, targets) -> float:
    t = time.perf_counter()
    loss = sum(model(list(images), list(targets)).values())
    opt.zero_grad()
    loss.backward()
    opt.step()
    return time.perf_counter() - t


def step_times(cfgs: dict[str, models.ModelConfig], images, targets, steps: int, warmup: int) -> dict[str, list]:
    """Seconds per SGD step of each config, the configs' steps interleaved so drift hits all alike."""
    runs = {}
    for name, cfg in cfgs.items():
        torch.manual_seed(0)
        model = models.build(cfg, 3).train()
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.001, momentum=0.9)
        runs[name] = (model, opt, [])
    for k in range(warmup + steps):
        for model, opt, times in runs.values():
            dt = sgd_step(model, opt, images, targets)
            if k >= warmup:
                times.append(dt)
    return {name: times for name, (_, _, times) in runs.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--arch", choices=["default", "r50"], default="default")
    ap.add_argument("--crop", type=int, default=0, help="training window (0 = whole 520×704 image)")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    args = ap.parse_args()
    params = yaml.safe_load((HERE.parent / "params.yaml").read_text())["model"]
    if args.arch == "r50":
        params = {**params, **R50}
    base = models.ModelConfig.from_params(params)
    images, targets = batch(base, args.crop, HERE / ".cache" / "backends")
    results = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "arch": args.arch,
        "crop": args.crop,
        "input": [list(i.shape) for i in images],
        "steps": args.steps,
    }
    backends = ["torchvision"] + (["detectron2"] if d2.available() else [])
    if len(backends) == 1:
        print("detectron2 is not installed: timing torchvision only")
    timed = step_times({b: dataclasses.replace(base, backend=b) for b in backends}, images, targets, args.steps, args.warmup)
    for backend, times in timed.items():
        results[backend] = {"median_s": round(statistics.median(times), 3), "min_s": round(min(times), 3)}
        print(f"{backend:12s} median {statistics.median(times):.3f} s/step (min {min(times):.3f})")
    out = HERE / "backends.json"
    runs = json.loads(out.read_text()) if out.is_file() else []
    out.write_text(json.dumps([*runs, results], indent=2) + "\n")


if __name__ == "__main__":
    main()
