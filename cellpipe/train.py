"""The training engine shared by ``pretrain`` and ``finetune``.

Plain PyTorch in the spirit of torchvision's detection references: SGD with momentum
and weight decay, linear warm-up then cosine decay, gradient clipping, AMP on CUDA.
Every ``eval_every`` iterations the model predicts the val images and is scored with
the competition metric; ``best.pt`` keeps the best, ``last.pt`` always holds the full
state (model, optimizer, scheduler, iteration), so an interrupted run resumes where it
stopped. Batches and augmentations are drawn from RNGs seeded by (seed, iteration):
a resumed run sees exactly the samples an uninterrupted one would.

Logging goes through hooks (``on_log``/``on_step``) so the engine knows nothing of
dvclive or progress bars.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from cellpipe import checkpoints, metric, postprocess
from cellpipe.atomic import remove_stale
from cellpipe.data import CocoInstances, collate
from cellpipe.errors import CellpipeError
from cellpipe.models import ModelConfig, test_head
from cellpipe.postprocess import PostProcess
from cellpipe.predict import predict_image


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation knobs (the ``pretrain`` / ``finetune`` params sections)."""

    iters: int = 300
    batch_size: int = 2
    lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_iters: int = 50
    warmup_factor: float = 0.001
    clip_grad: float = 10.0
    eval_every: int = 100
    eval_score_threshold: float = 0.5
    seed: int = 0
    hflip: bool = True
    vflip: bool = True
    crop_size: int = 256

    def __post_init__(self) -> None:
        for key in ("iters", "batch_size", "eval_every"):
            if getattr(self, key) <= 0:
                raise CellpipeError(f"{key} must be > 0, got {getattr(self, key)}")
        if self.lr <= 0:
            raise CellpipeError(f"lr must be > 0, got {self.lr}")


@dataclass
class ValImage:
    """A val image with its true instances, for evaluation during training."""

    image_id: str
    cell_type: str
    grey: np.ndarray
    truth: sp.csr_matrix


def lr_factor(it: int, cfg: TrainConfig) -> float:
    """Linear warm-up from ``warmup_factor`` to 1, then cosine to 0 at ``iters``."""
    if it < cfg.warmup_iters:
        alpha = it / max(1, cfg.warmup_iters)
        return cfg.warmup_factor * (1 - alpha) + alpha
    progress = (it - cfg.warmup_iters) / max(1, cfg.iters - cfg.warmup_iters)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def evaluate(model: torch.nn.Module, val: list[ValImage], *, device, score_threshold: float, post: PostProcess,
             mask_threshold: float) -> metric.Report:
    """Competition metric of the model on ``val``, post-processed as the final score is (one threshold)."""
    rows = []
    for v in val:
        inst = predict_image(model, v.grey, device=device, mask_threshold=mask_threshold)
        rows.append((v.image_id, v.cell_type, v.truth, postprocess.final(inst.masks, inst.scores, score_threshold, post)))
    return metric.evaluate(rows)


def _checkpoint(model, optimizer, scheduler, scaler, it: int, best: float, best_it: int, meta: dict) -> dict:
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None, "iteration": it, "best": best,
            "best_iteration": best_it, **meta}


def train(
    model: torch.nn.Module,
    dataset: CocoInstances,
    val: list[ValImage],
    cfg: TrainConfig,
    model_cfg: ModelConfig,
    out_dir: Path,
    *,
    classes: list[str],
    init: str,
    device: torch.device | None = None,
    on_log: Callable[[int, dict[str, float]], None] | None = None,
    on_step: Callable[[int, int, float, float], None] | None = None,
    data_fingerprint: str = "",
    post: PostProcess | None = None,
) -> dict[str, Any]:
    """Train ``model`` for ``cfg.iters`` iterations, resuming from ``out_dir/last.pt``.

    A ``last.pt`` is resumed only when it was written with the same model and train
    config, init and ``data_fingerprint`` (a hash of the training inputs): a persisted
    checkpoint of another configuration or other data is ignored, never continued.

    ``post`` is the post-processing the best checkpoint is selected with (the one the
    final score uses). Returns a summary (best val score and iteration, iterations run
    now, seconds).
    """
    post = post or PostProcess()
    device = device or default_device()
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale(out_dir)  # temporaries of a killed run must not end up in the cached folder
    if len(dataset) == 0:
        raise CellpipeError("the training set has no images")
    if not val:
        raise CellpipeError("the val set has no images: evaluation during training needs some")
    model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: lr_factor(it, cfg))
    scaler = torch.amp.GradScaler("cuda") if device.type == "cuda" else None
    meta = {"train_config": asdict(cfg), "model_config": asdict(model_cfg), "classes": classes, "init": init,
            "postprocess": post.to_dict(),
            "fingerprint": f"{model_cfg.fingerprint()}:{hash_config(cfg)}:{init}:{len(classes)}:{data_fingerprint}:"
                           f"{hash_config(post)}"}
    start, best, best_it = 0, -1.0, -1
    last = out_dir / "last.pt"
    if last.is_file():
        try:
            ckpt = checkpoints.load(last, map_location=device)
        except CellpipeError as exc:  # never continue from (or silently replace) a file we cannot trust
            raise CellpipeError(f"{exc}; delete it to start this training afresh") from None
        if ckpt.get("fingerprint") == meta["fingerprint"]:
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
            if scaler is not None and ckpt.get("scaler"):
                scaler.load_state_dict(ckpt["scaler"])
            start, best, best_it = ckpt["iteration"], ckpt["best"], ckpt["best_iteration"]
    if start == 0:  # a fresh run: a best.pt of another configuration must not survive
        (out_dir / "best.pt").unlink(missing_ok=True)
    t0 = time.perf_counter()
    mask_threshold = model_cfg.mask_threshold

    def do_eval(it: int) -> None:
        nonlocal best, best_it
        # boxes under the eval threshold are discarded anyway: don't paste their masks
        head = test_head(model)
        saved = head.score_thresh
        head.score_thresh = max(saved, cfg.eval_score_threshold)
        try:
            report = evaluate(model, val, device=device, score_threshold=cfg.eval_score_threshold, post=post,
                              mask_threshold=mask_threshold)
        finally:
            head.score_thresh = saved
        score = report.score
        logs = {"val/map_iou": score, **{f"val/{k}": v for k, v in report.per_class().items()}}
        if score > best:
            best, best_it = score, it
            checkpoints.save({"model": model.state_dict(), "iteration": it, "best": best, **meta}, out_dir / "best.pt")
        logs["val/best_map_iou"] = best
        checkpoints.save(_checkpoint(model, optimizer, scheduler, scaler, it, best, best_it, meta), last)
        if on_log:
            on_log(it, logs)

    model.train()
    for it in range(start, cfg.iters):
        rng = np.random.default_rng([cfg.seed, it])
        idx = rng.choice(len(dataset), cfg.batch_size, replace=len(dataset) < cfg.batch_size)
        torch.manual_seed(cfg.seed * 1_000_003 + it)
        images, targets = collate([dataset[int(j)] for j in idx])
        images = [im.to(device) for im in images]
        targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
        model.train()
        try:
            with torch.autocast(device_type="cuda", enabled=device.type == "cuda"):
                losses = model(images, targets)
        except torch.OutOfMemoryError:
            raise CellpipeError(f"out of memory at iteration {it + 1} on {device}: lower batch_size or crop_size, "
                                f"or model.min_size/max_size") from None
        loss = sum(losses.values())
        loss_value = float(loss.detach())
        if not torch.isfinite(loss):
            raise CellpipeError(f"loss became non-finite at iteration {it + 1} "
                                f"({ {k: float(v.detach()) for k, v in losses.items()} }); lower the lr or raise warmup_iters")
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params, cfg.clip_grad)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.clip_grad)
            optimizer.step()
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        done = it + 1
        if on_step:
            on_step(done, cfg.iters, loss_value, lr)
        if on_log:
            on_log(done, {"train/loss": loss_value, "train/lr": lr,
                          **{f"train/{k}": float(v.detach()) for k, v in losses.items()}})
        if done % cfg.eval_every == 0 or done == cfg.iters:
            do_eval(done)
    if start >= cfg.iters and not (out_dir / "best.pt").is_file():
        do_eval(cfg.iters)
    return {"best_map_iou": best, "best_iteration": best_it, "iterations": cfg.iters,
            "resumed_from": start, "seconds": round(time.perf_counter() - t0, 1)}


def hash_config(cfg: Any) -> str:
    import hashlib
    import json

    return hashlib.sha256(json.dumps(asdict(cfg), sort_keys=True).encode()).hexdigest()[:16]


def val_images(coco: dict, *, class_agnostic_names: bool = False) -> list[ValImage]:
    """Val images of a COCO dict with their true instances as sparse matrices."""
    from pycocotools import mask as mask_util

    from cellpipe.images import read_grey

    by_image: dict[int, list[dict]] = {}
    for a in coco["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    out = []
    for im in coco["images"]:
        h, w = int(im["height"]), int(im["width"])
        rles = []
        for a in by_image.get(im["id"], []):
            seg = a["segmentation"]
            if isinstance(seg, list):
                rles.append(mask_util.merge(mask_util.frPyObjects(seg, h, w)))
            else:
                rles.append(seg if isinstance(seg["counts"], str | bytes) else mask_util.frPyObjects(seg, h, w))
        if rles:
            dense = mask_util.decode(rles)  # (h, w, n), Fortran order
            truth = sp.csr_matrix(np.ascontiguousarray(dense.transpose(2, 0, 1)).reshape(len(rles), h * w),
                                  dtype=np.float32)
        else:
            truth = sp.csr_matrix((0, h * w), dtype=np.float32)
        name = str(im.get("kaggle_id", im["id"]))
        out.append(ValImage(name, "cell" if class_agnostic_names else str(im.get("cell_type", "cell")),
                            read_grey(im["path"], (h, w)), truth))
    return out
