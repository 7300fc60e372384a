"""Training-step and inference cost of the model families: ``python -m benchmarks.families``.

Each family is built as a profile configures it (``profiles/real-maskrcnn.yaml``,
``profiles/real-cellpose.yaml`` applied to the committed ``params.yaml``; detectron2's
Mask R-CNN too when it is installed) and trained with the engine's own optimiser and step
(`cellpipe.training.engine.train_step`) on batches of the profile's size drawn from the same real
images, the families' steps interleaved so that drift on a noisy machine hits all alike.
Flow targets (cellpose) are computed before the timing: the stage computes them once.
With ``--checkpoint LABEL=PATH`` (trained models: an untrained one finds no cells, so its
inference time means nothing) it also times ``predict`` per whole image. Prints a table and
appends to ``benchmarks/families.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import time
from pathlib import Path

import torch
import yaml

from cellpipe import coco, models, params_file, profiles, tables
from cellpipe.config import Params
from cellpipe.images import read_grey
from cellpipe.training.engine import optimisation, train_step

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SAMPLE = REPO.parent / "shared" / "data" / "sartorius-sample"


def profile_params(name: str) -> Params:
    """The committed params with ``profiles/NAME.yaml`` applied (as ``./run.sh profile NAME``)."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    profiles.apply(params, (REPO / "profiles" / f"{name}.yaml").read_text())
    return params_file.validate(params, where=f"profiles/{name}.yaml")


def coco_of(kaggle_dir: Path) -> dict:
    ann, images = tables.build_tables(tables.read_train_csv(kaggle_dir / "train.csv", duplicates="drop"), kaggle_dir / "train")
    return coco.build(images, ann)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kaggle-dir", type=Path, default=SAMPLE, help="Kaggle-layout folder (default: the 6-image fixture)")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--checkpoint", action="append", default=[], metavar="LABEL=PATH", help="time predict with it")
    ap.add_argument("--images", type=int, default=6, help="images predicted per checkpoint (the first untimed)")
    ap.add_argument("--out", type=Path, default=HERE / "families.json", help="JSON list the run is appended to")
    args = ap.parse_args()
    data = coco_of(args.kaggle_dir)
    device = torch.device("cpu")
    runs = {}
    for label, profile, backend in (
        ("maskrcnn-torchvision", "real-maskrcnn", "torchvision"),
        ("maskrcnn-detectron2", "real-maskrcnn", "detectron2"),
        ("cellpose", "real-cellpose", None),
    ):
        params = profile_params(profile)
        cfg = params.model.model_copy(update={"backend": backend}) if backend else params.model
        fam = models.family(cfg)
        try:
            fam.require()
        except Exception as err:  # an optional backend that is not installed
            print(f"{label}: skipped ({str(err).splitlines()[0]})")
            continue
        torch.manual_seed(0)
        model = fam.build(cfg, len(data["categories"])).to(device)
        ds = fam.dataset(data, cfg, params.finetune)
        if hasattr(ds, "load"):  # flow targets: once per image, as in the stage
            for k in range(len(ds)):
                ds.load(k)
        fam.fit_data(model, ds)
        runs[label] = (fam, model, ds, optimisation(model, params.finetune, device), params.finetune, [])
    g = torch.Generator().manual_seed(0)
    for it in range(args.warmup + args.steps):
        for fam, model, ds, opt, cfg, times in runs.values():
            torch.manual_seed(it)
            idx = torch.randint(0, len(ds), (cfg.batch_size,), generator=g).tolist()
            batch = [ds[i] for i in idx]
            t = time.perf_counter()
            train_step(fam, model, [b[0] for b in batch], [b[1] for b in batch], opt, cfg, device, it)
            if it >= args.warmup:
                times.append(time.perf_counter() - t)
    results: dict = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "data": str(args.kaggle_dir),
        "steps": args.steps,
        "train": {},
        "predict": {},
    }
    for label, (_, _, _, _, cfg, times) in runs.items():
        med = statistics.median(times)
        crop = f"{cfg.crop_size}×{cfg.crop_size}" if cfg.crop_size else "whole"
        results["train"][label] = {"batch": cfg.batch_size, "crop": cfg.crop_size, "median_s_per_step": round(med, 3),
                                   "crops_per_s": round(cfg.batch_size / med, 2)}  # fmt: skip
        print(f"train   {label:22s} batch {cfg.batch_size} × {crop}: {med:.2f} s/step, {cfg.batch_size / med:.1f} crops/s")
    images = data["images"][: args.images]
    for spec in args.checkpoint:
        label, _, path = spec.partition("=")
        fam, model, cfg, _ = models.from_checkpoint(path, device)
        times, cells = [], 0
        for k, im in enumerate(images):
            grey = read_grey(im["path"], (im["height"], im["width"]))
            t = time.perf_counter()
            inst = fam.predict(model, grey, device=device, mask_threshold=cfg.mask_threshold)
            if k:
                times.append(time.perf_counter() - t)
                cells += len(inst.scores)
        med = statistics.median(times)
        per_image = cells / len(times)
        results["predict"][label] = {"checkpoint": path, "median_s_per_image": round(med, 3), "cells_per_image": per_image}
        print(f"predict {label:22s} {med * 1000:.0f} ms per {images[0]['width']}×{images[0]['height']} image "
              f"({per_image:.0f} cells per image)")  # fmt: skip
    results["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    out = args.out
    past = json.loads(out.read_text()) if out.is_file() else []
    out.write_text(json.dumps([*past, results], indent=2) + "\n")


if __name__ == "__main__":
    main()
