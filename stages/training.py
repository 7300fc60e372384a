"""Shared body of the ``pretrain`` and ``finetune`` stages."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from cellpipe import coco, models
from cellpipe import train as engine
from cellpipe.data import CocoInstances
from cellpipe.errors import CellpipeError
from cellpipe.postprocess import PostProcess
from stages.common import console, log, write_json

TRAIN_FIELDS = set(engine.TrainConfig.__dataclass_fields__)


def file_digest(paths: list[Path]) -> str:
    """Content hash of the training inputs: resuming is only safe on the same data."""
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


def train_config(p: dict[str, Any]) -> engine.TrainConfig:
    return engine.TrainConfig(**{k: v for k, v in p.items() if k in TRAIN_FIELDS})


class LiveLogger:
    """dvclive sink for the engine's ``on_log`` hook (metrics + plots under ``out/live``)."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.live = None

    def __call__(self, step: int, metrics: dict[str, float]) -> None:
        if self.live is None:
            from dvclive import Live

            resume = (self.out / "live" / "metrics.json").is_file() and step > 1
            self.live = Live(dir=str(self.out / "live"), resume=resume, dvcyaml=False, save_dvc_exp=False,
                             report=None)
        self.live.step = step
        for k, v in metrics.items():
            self.live.log_metric(k, v)
        self.live.make_summary()

    def close(self) -> None:
        if self.live is not None:
            self.live.end()


def run_training(*, stage: str, train_json: Path, val_source: Path, out: Path, params_all: dict[str, Any],
                 single_class: bool, val_images: int | None = None, init_checkpoint: Path | None = None) -> None:
    """Train ``stage``'s model; ``init_checkpoint`` is the file ``init: checkpoint`` loads (a DVC dependency)."""
    p = params_all[stage]
    mcfg = models.ModelConfig.from_params(params_all["model"])
    if mcfg.backend == "detectron2":  # fail before any work when it is not installed
        from cellpipe.models import d2

        d2.require()
    tcfg = train_config(p)
    train_coco = coco.normalise(coco.load_json(train_json), where=str(train_json), single_class=single_class)
    if val_images is not None:  # hold out the last LIVECell images
        ids = [im["id"] for im in train_coco["images"]]
        if len(ids) <= val_images:
            raise CellpipeError(f"{stage}.val_images ({val_images}) leaves no training images of {len(ids)}")
        val_ids, train_ids = set(ids[-val_images:]), ids[:-val_images]
        val_coco = {**train_coco, "images": [im for im in train_coco["images"] if im["id"] in val_ids],
                    "annotations": [a for a in train_coco["annotations"] if a["image_id"] in val_ids]}
    else:
        train_ids = None
        val_coco = coco.normalise(coco.load_json(val_source), where=str(val_source), single_class=single_class)
    for data, source in ((train_coco, train_json), (val_coco, val_source)):
        if not data["images"]:
            raise CellpipeError("COCO file has no images to train or evaluate on", where=str(source))
    if not train_coco["categories"]:
        raise CellpipeError("COCO file has no categories", where=str(train_json))
    class_names = [c["name"] for c in sorted(train_coco["categories"], key=lambda c: c["id"])]
    dataset = CocoInstances(train_coco, mcfg.min_size, mcfg.max_size, hflip=tcfg.hflip, vflip=tcfg.vflip,
                            image_ids=train_ids, crop_size=tcfg.crop_size)
    val = engine.val_images(val_coco)
    torch.manual_seed(tcfg.seed)
    model = models.build(mcfg, len(class_names))
    init = p["init"]
    if init == "checkpoint":
        if init_checkpoint is None:
            raise CellpipeError(f"{stage}.init is 'checkpoint' but no --init-checkpoint was given")
        init = str(init_checkpoint)
    desc = models.initialise(model, init)
    # resuming is safe only with the same inputs and the same training code
    import cellpipe.data
    import cellpipe.models
    import cellpipe.train

    code = [Path(m.__file__) for m in (cellpipe.train, cellpipe.data, cellpipe.models)]
    if mcfg.backend == "detectron2":
        import cellpipe.models.d2

        code.append(Path(cellpipe.models.d2.__file__))
    data_fp = file_digest([train_json, val_source, *code] + ([Path(init)] if Path(init).is_file() else []))
    device = engine.default_device()
    log(f"{stage}: {len(dataset)} train / {len(val)} val images, {len(class_names)} classes, init: {desc}, "
        f"device {device}, {tcfg.iters} iterations")
    logger = LiveLogger(out)
    with Progress(TextColumn(f"[bold]{stage}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                  TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), console=console,
                  disable=os.environ.get("CELLPIPE_NO_PROGRESS") == "1") as bar:
        task = bar.add_task(stage, total=tcfg.iters, info="")

        def on_step(done: int, total: int, loss: float, lr: float) -> None:
            bar.update(task, completed=done, info=f"loss {loss:.3f} lr {lr:.4f}")

        def on_log(step: int, metrics: dict[str, float]) -> None:
            logger(step, metrics)
            if "val/map_iou" in metrics:
                bar.console.log(f"{stage} iteration {step}: val MAP-IoU {metrics['val/map_iou']:.4f} "
                                f"(best {metrics['val/best_map_iou']:.4f})")

        try:
            summary = engine.train(model, dataset, val, tcfg, mcfg, out, classes=class_names, init=desc,
                                   device=device, on_log=on_log, on_step=on_step, data_fingerprint=data_fp,
                                   post=PostProcess.from_dict(params_all["postprocess"]))
        finally:
            logger.close()
    summary["dropped_tiny_cells"] = dataset.dropped
    write_json(summary, out / "summary.json")
    log(f"{stage}: best val MAP-IoU {summary['best_map_iou']:.4f} at iteration {summary['best_iteration']} "
        f"({summary['seconds']} s) → {out}")
