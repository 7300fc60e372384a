"""The training engine shared by ``pretrain`` and ``finetune``, for any model family.

Plain PyTorch in the spirit of torchvision's detection references, in small pieces
that each do one thing (and are tested alone), the way detectron2 splits its hooks:

- :class:`Batches` / :func:`loader` — iteration ``it``'s batch, drawn from RNGs seeded by
  ``(seed, it)``, served by a ``DataLoader`` (worker processes, pinned memory on GPU):
  a resumed run sees exactly the batches an uninterrupted one would;
- :func:`train_step` — one optimisation step (SGD with momentum and weight decay,
  gradient clipping, AMP on CUDA), with clear errors for out-of-memory and divergence;
- :func:`evaluate` — the competition metric on val, post-processed as the final score is;
- :class:`WeightAverage` — an exponential moving average of the weights (``ema``), which is
  what gets evaluated and kept when it is on;
- :class:`BestKeeper` — ``best.pt`` holds the best evaluation so far;
- :func:`resume` / :func:`save_last` — ``last.pt`` holds the full state, resumed only
  when it was written by the same configuration, code and data (its fingerprint).

:func:`train` puts them together: linear warm-up then cosine decay, evaluation every
``eval_every`` iterations. Logging goes through hooks (``on_log``/``on_step``), so the
engine knows nothing of dvclive or progress bars.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from torch.utils.data import DataLoader, Dataset

from cellpipe import checkpoints, coco, metric, postprocess, repeat_factors
from cellpipe.atomic import remove_stale
from cellpipe.config import Model, PostProcess, Train
from cellpipe.errors import CellpipeError
from cellpipe.images import read_grey
from cellpipe.models import Family, default_device
from cellpipe.training import distributed
from cellpipe.training.distributed import World


@dataclass
class ValImage:
    """A val image with its true instances, for evaluation during training."""

    image_id: str
    cell_type: str
    grey: np.ndarray
    truth: sp.csr_matrix


def lr_factor(it: int, cfg: Train) -> float:
    """Linear warm-up from ``warmup_factor`` to 1, then cosine to 0 at ``iters``."""
    if it < cfg.warmup_iters:
        alpha = it / max(1, cfg.warmup_iters)
        return cfg.warmup_factor * (1 - alpha) + alpha
    progress = (it - cfg.warmup_iters) / max(1, cfg.iters - cfg.warmup_iters)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


# --------------------------------------------------------------------------- batches


class Batches(Dataset):
    """Iterations ``start..iters-1`` as items: item ``k`` is iteration ``start + k``'s collated batch.

    Which images (``numpy`` RNG seeded by ``(seed, it)``; uniformly, or by repeat factor with
    ``repeat_threshold``: :mod:`cellpipe.repeat_factors`) and the random crop and flips of
    the j-th of them (torch RNG seeded by ``(seed·1000003 + it)·1009 + j``) depend on the
    iteration only, whichever process builds the batch. Under DDP (``world`` processes)
    process ``rank`` takes images ``rank, rank + world, …`` of the same global batch, so N
    processes train on exactly the images and crops one process would.
    """

    def __init__(self, dataset: Dataset, cfg: Train, start: int, rank: int = 0, world: int = 1) -> None:
        if cfg.batch_size % world:
            raise CellpipeError(f"batch_size {cfg.batch_size} does not split over {world} processes (nproc)")
        self.dataset, self.cfg, self.start, self.rank, self.world = dataset, cfg, start, rank, world
        self.p = None  # uniform draws; the dataset is asked its images' categories only for class-balanced ones
        if cfg.repeat_threshold:
            self.p = repeat_factors.draw_probabilities(dataset.image_categories(), cfg.repeat_threshold)

    def __len__(self) -> int:
        return max(0, self.cfg.iters - self.start)

    def __getitem__(self, k: int) -> tuple[int, tuple]:
        it = self.start + k
        rng = np.random.default_rng([self.cfg.seed, it])
        n = len(self.dataset)
        idx = rng.choice(n, self.cfg.batch_size, replace=n < self.cfg.batch_size, p=self.p)
        items = []
        for j in range(self.rank, len(idx), self.world):
            torch.manual_seed((self.cfg.seed * 1_000_003 + it) * 1009 + j)
            items.append(self.dataset[int(idx[j])])
        return it, tuple(zip(*items))  # (images, targets)


def loader(dataset: Dataset, cfg: Train, start: int, device: torch.device, world: World | None = None) -> DataLoader:
    """The batches of iterations ``start..iters-1`` in order, built by ``cfg.workers`` worker processes."""
    world = world or World()
    return DataLoader(
        Batches(dataset, cfg, start, world.rank, world.size),
        batch_size=None,
        shuffle=False,
        num_workers=cfg.workers,
        pin_memory=device.type == "cuda",
        generator=torch.Generator().manual_seed(cfg.seed),
        persistent_workers=False,
    )


# --------------------------------------------------------------------------- one step


@dataclass
class Optimisation:
    """What a training step changes besides the model."""

    params: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler | None


def precision(cfg: Train, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``cfg.amp`` on ``device`` (None: full precision)."""
    if cfg.amp == "off" or (cfg.amp == "auto" and device.type != "cuda"):
        return None
    if cfg.amp == "fp16" and device.type != "cuda":
        raise CellpipeError("amp: fp16 needs a GPU (on CPUs use bf16 or off)")
    return torch.bfloat16 if cfg.amp == "bf16" else torch.float16


NORMS = (torch.nn.GroupNorm, torch.nn.LayerNorm, torch.nn.modules.batchnorm._NormBase)


def parameter_groups(model: torch.nn.Module, cfg: Train) -> list[dict]:
    """SGD's parameter groups: norm layers' scale and shift at ``weight_decay_norm`` when it is set and differs.

    One group otherwise, as before the knob existed (the same optimiser state and steps).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.weight_decay_norm is None or cfg.weight_decay_norm == cfg.weight_decay:
        return [{"params": params}]
    norm = {id(p) for m in model.modules() if isinstance(m, NORMS) for p in m.parameters(recurse=False)}
    return [
        {"params": [p for p in params if id(p) not in norm]},
        {"params": [p for p in params if id(p) in norm], "weight_decay": cfg.weight_decay_norm},
    ]


def optimisation(model: torch.nn.Module, cfg: Train, device: torch.device) -> Optimisation:
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(parameter_groups(model, cfg), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: lr_factor(it, cfg))
    fp16 = precision(cfg, device) == torch.float16  # bf16 keeps fp32's range: no scaler
    return Optimisation(params, optimizer, scheduler, torch.amp.GradScaler("cuda") if fp16 else None)


def train_step(
    family: Family,
    model: torch.nn.Module,
    images: list[torch.Tensor],
    targets: list[dict],
    opt: Optimisation,
    cfg: Train,
    device: torch.device,
    it: int,
) -> tuple[float, float, dict[str, float]]:
    """One step on one batch: (loss, lr it ran with, each loss term)."""
    model.train()
    dtype = precision(cfg, device)
    try:
        with torch.autocast(device_type=device.type, dtype=dtype, enabled=dtype is not None):
            losses = family.train_step(model, images, targets)
    except torch.OutOfMemoryError:
        raise CellpipeError(
            f"out of memory at iteration {it + 1} on {device}: lower batch_size or crop_size, or model.min_size/max_size"
        ) from None
    loss = sum(losses.values())
    terms = {k: float(v.detach()) for k, v in losses.items()}
    if not torch.isfinite(loss):
        raise CellpipeError(f"loss became non-finite at iteration {it + 1} ({terms}); lower the lr or raise warmup_iters")
    opt.optimizer.zero_grad(set_to_none=True)
    if opt.scaler is not None:
        opt.scaler.scale(loss).backward()
        opt.scaler.unscale_(opt.optimizer)
        torch.nn.utils.clip_grad_norm_(opt.params, cfg.clip_grad)
        opt.scaler.step(opt.optimizer)
        opt.scaler.update()
    else:
        loss.backward()
        torch.nn.utils.clip_grad_norm_(opt.params, cfg.clip_grad)
        opt.optimizer.step()
    lr = opt.optimizer.param_groups[0]["lr"]
    opt.scheduler.step()
    return float(loss.detach()), lr, terms


class WeightAverage:
    """An exponential moving average of a model's weights, updated after every step.

    Why: batches of two small crops make every SGD step noisy, and the model at any one
    iteration carries that noise; the average over the last ≈ 1/(1 − decay) steps does not
    (Polyak averaging; the EMA that YOLO and timm keep). Every floating-point entry of the
    state is averaged — BatchNorm's running statistics too, as they move with the weights —
    and integer entries (BatchNorm's step count) are copied. The decay ramps up as
    ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates, so the first steps of a random
    or pretrained start are not frozen into the average. Drawing no random numbers, it
    leaves the trained model's own path unchanged.
    """

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.decay, self.updates = decay, 0
        pairs = list(zip(self.model.state_dict().values(), model.state_dict().values()))  # views: no copies
        self._floats = ([a for a, _ in pairs if a.is_floating_point()], [m for a, m in pairs if a.is_floating_point()])
        self._integers = [(a, m) for a, m in pairs if not a.is_floating_point()]

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self) -> None:
        """Move the average towards the model's weights as they are now."""
        d = self.current_decay()
        self.updates += 1
        torch._foreach_lerp_(*self._floats, 1.0 - d)
        for a, m in self._integers:
            a.copy_(m)


# --------------------------------------------------------------------------- evaluation and checkpoints


def evaluate(
    family: Family,
    model: torch.nn.Module,
    val: list[ValImage],
    *,
    device,
    score_threshold: float,
    post: PostProcess,
    mask_threshold: float,
) -> metric.Report:
    """Competition metric of the model on ``val``, post-processed as the final score is (one threshold)."""
    saved = family.limits(model)
    # detections under the threshold are dropped anyway: don't paste their masks
    family.set_limits(model, replace(saved, score_thresh=max(saved.score_thresh, score_threshold)))
    try:
        rows = []
        for v in val:
            inst = family.predict(model, v.grey, device=device, mask_threshold=mask_threshold)
            rows.append(
                (
                    v.image_id,
                    v.cell_type,
                    v.truth,
                    postprocess.final(inst.masks, inst.scores, score_threshold, post, v.grey.shape[1]),
                )
            )
    finally:
        family.set_limits(model, saved)
    return metric.evaluate(rows)


class BestKeeper:
    """``best.pt``: the model of the best evaluation so far (the first of ties)."""

    def __init__(self, path: Path, meta: dict[str, Any], best: float = -1.0, iteration: int = -1) -> None:
        self.path, self.meta, self.best, self.iteration = path, meta, best, iteration

    def offer(self, score: float, it: int, model: torch.nn.Module) -> bool:
        if score <= self.best:
            return False
        self.best, self.iteration = score, it
        checkpoints.save({"model": model.state_dict(), "iteration": it, "best": score, **self.meta}, self.path)
        return True


def save_last(
    path: Path, model: torch.nn.Module, opt: Optimisation, it: int, keeper: BestKeeper, average: WeightAverage | None = None
) -> None:
    """``last.pt``: everything needed to continue after iteration ``it`` (the weight average too, when kept)."""
    checkpoints.save(
        {
            "model": model.state_dict(),
            "ema": average.model.state_dict() if average is not None else None,
            "ema_updates": average.updates if average is not None else 0,
            "optimizer": opt.optimizer.state_dict(),
            "scheduler": opt.scheduler.state_dict(),
            "scaler": opt.scaler.state_dict() if opt.scaler is not None else None,
            "iteration": it,
            "best": keeper.best,
            "best_iteration": keeper.iteration,
            **keeper.meta,
        },
        path,
    )


def resume(
    path: Path, model: torch.nn.Module, opt: Optimisation, fingerprint: str, device, average: WeightAverage | None = None
) -> tuple[int, float, int]:
    """(iteration, best, best iteration) of a ``last.pt`` written by this configuration; else a fresh start.

    A ``last.pt`` of another configuration is ignored (and replaced at the first
    evaluation); one that cannot be read as data is an error, never silently replaced.
    """
    if not path.is_file():
        return 0, -1.0, -1
    try:
        ckpt = checkpoints.load(path, map_location=device)
    except CellpipeError as exc:
        raise CellpipeError(f"{exc}; delete it to start this training afresh") from None
    if ckpt.get("fingerprint") != fingerprint:
        return 0, -1.0, -1
    model.load_state_dict(ckpt["model"])
    opt.optimizer.load_state_dict(ckpt["optimizer"])
    opt.scheduler.load_state_dict(ckpt["scheduler"])
    if opt.scaler is not None and ckpt.get("scaler"):
        opt.scaler.load_state_dict(ckpt["scaler"])
    if average is not None:  # the same fingerprint: it was written with the average on
        average.model.load_state_dict(ckpt["ema"])
        average.updates = int(ckpt["ema_updates"])
    return ckpt["iteration"], ckpt["best"], ckpt["best_iteration"]


# --------------------------------------------------------------------------- the loop


def train(
    family: Family,
    model: torch.nn.Module,
    dataset: Dataset,
    val: list[ValImage],
    cfg: Train,
    model_cfg: Model,
    out_dir: Path,
    *,
    classes: list[str],
    init: str,
    device: torch.device | None = None,
    on_log: Callable[[int, dict[str, float]], None] | None = None,
    on_step: Callable[[int, int, float, float], None] | None = None,
    data_fingerprint: str = "",
    post: PostProcess | None = None,
    world: World | None = None,
) -> dict[str, Any]:
    """Train ``model`` for ``cfg.iters`` iterations, resuming from ``out_dir/last.pt``.

    Under DDP (``world``: :mod:`cellpipe.training.distributed`) every process runs this; rank 0
    alone evaluates, writes ``best.pt``/``last.pt`` and calls the hooks.

    ``data_fingerprint`` (a hash of the training inputs and code) and the configs make
    the resume fingerprint. ``post`` is the post-processing the best checkpoint is
    selected with (the one the final score uses). Returns a summary (best val score
    and iteration, iterations run now, seconds).
    """
    post = post or PostProcess()
    world = world or World()
    device = device or default_device()
    out_dir.mkdir(parents=True, exist_ok=True)
    if world.main:
        remove_stale(out_dir)  # temporaries of a killed run must not end up in the cached folder
    distributed.barrier(world)
    if len(dataset) == 0:
        raise CellpipeError("the training set has no images")
    if not val:
        raise CellpipeError("the val set has no images: evaluation during training needs some")
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    opt = optimisation(model, cfg, device)
    meta = {
        "train_config": cfg.model_dump(mode="json"),
        "model_config": model_cfg.model_dump(mode="json"),
        "classes": classes,
        "init": init,
        "postprocess": post.model_dump(mode="json"),
        "fingerprint": f"{model_cfg.fingerprint()}:{cfg.fingerprint()}:{init}:{len(classes)}:{data_fingerprint}:"
        f"{post.fingerprint()}",
    }
    last = out_dir / "last.pt"
    average = WeightAverage(model, cfg.ema) if cfg.ema > 0 else None
    start, best, best_it = resume(last, model, opt, meta["fingerprint"], device, average)  # every process: the same state
    if start == 0 and world.main:  # a fresh run: a best.pt of another configuration must not survive
        (out_dir / "best.pt").unlink(missing_ok=True)
    net = distributed.wrap(model, world, device)
    keeper = BestKeeper(out_dir / "best.pt", meta, best, best_it)
    t0 = time.perf_counter()

    def evaluation(it: int) -> None:
        if not world.main:  # the others wait for rank 0's evaluation and checkpoints
            distributed.barrier(world)
            return
        kept = average.model if average is not None else model  # what is evaluated is what best.pt holds
        report = evaluate(
            family,
            kept,
            val,
            device=device,
            score_threshold=cfg.eval_score_threshold,
            post=post,
            mask_threshold=model_cfg.mask_threshold,
        )
        logs = {"val/map_iou": report.score, **{f"val/{k}": v for k, v in report.per_class().items()}}
        keeper.offer(report.score, it, kept)
        logs["val/best_map_iou"] = keeper.best
        save_last(last, model, opt, it, keeper, average)
        if on_log:
            on_log(it, logs)
        distributed.barrier(world)

    for it, (images, targets) in _iterations(dataset, cfg, start, device, world):
        loss, lr, terms = train_step(family, net, images, targets, opt, cfg, device, it)
        if average is not None:
            average.update()
        loss = distributed.mean(loss, world, device)  # the global batch's loss
        done = it + 1
        if on_step and world.main:
            on_step(done, cfg.iters, loss, lr)
        if on_log and world.main:
            on_log(done, {"train/loss": loss, "train/lr": lr, **{f"train/{k}": v for k, v in terms.items()}})
        if done % cfg.eval_every == 0 or done == cfg.iters:
            evaluation(done)
    if start >= cfg.iters and not keeper.path.is_file():
        evaluation(cfg.iters)
    if world.active:  # a rank that finished early must not see a best.pt of before the last evaluation
        keeper.best, keeper.iteration = _shared_best(keeper, world, device)
    return {
        "best_map_iou": keeper.best,
        "best_iteration": keeper.iteration,
        "iterations": cfg.iters,
        "resumed_from": start,
        "seconds": round(time.perf_counter() - t0, 1),
    }


def _shared_best(keeper: BestKeeper, world: World, device: torch.device) -> tuple[float, int]:
    """Rank 0's best score and iteration, on every process (for the summary)."""
    import torch.distributed as dist

    t = torch.tensor([keeper.best, float(keeper.iteration)], dtype=torch.float64, device=device)
    dist.broadcast(t, src=0)
    return float(t[0]), int(t[1])


def _iterations(
    dataset: Dataset, cfg: Train, start: int, device: torch.device, world: World | None = None
) -> Iterator[tuple[int, tuple[list[torch.Tensor], list[dict]]]]:
    """(iteration, batch on ``device``) from the loader.

    The batches may be drawn elsewhere (worker processes), so the model's own randomness
    (RPN/RoI sampling) is seeded per iteration here, the same with or without workers.
    """
    for it, (images, targets) in loader(dataset, cfg, start, device, world):
        torch.manual_seed(cfg.seed * 1_000_003 + it)
        images = [im.to(device, non_blocking=True) for im in images]
        targets = [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in targets]
        yield it, (list(images), list(targets))


def val_images(data: dict) -> list[ValImage]:
    """Val images of a normalised COCO dict with their true instances as sparse matrices."""
    by_image: dict[int, list[dict]] = {}
    for a in data["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    out = []
    for im in data["images"]:
        h, w = int(im["height"]), int(im["width"])
        truth = coco.instances(by_image.get(im["id"], []), h, w)
        out.append(
            ValImage(
                coco.image_id(im),
                str(im.get("cell_type", "cell")),
                read_grey(im["path"], (h, w)),
                truth,
            )
        )
    return out
