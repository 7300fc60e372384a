"""Training a model from COCO files: the shared body of the ``pretrain`` and ``finetune`` stages.

Reads and checks the COCO files, builds the model of ``model`` params through its
family, initialises it, fingerprints everything a resume depends on, and runs the
engine (:mod:`cellpipe.training.engine`) with a progress bar and dvclive logs under
``out/live`` (dvclive writes files only, with ``dvcyaml=False``: the stage's outputs are
declared in ``dvc.yaml``).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

import cellpipe
from cellpipe import coco, folds, imports, models, repeat_factors
from cellpipe.atomic import atomic_path
from cellpipe.config import Model, PostProcess, Train
from cellpipe.console import console, log, progress
from cellpipe.errors import CellpipeError
from cellpipe.io import write_json
from cellpipe.training import distributed, engine


def file_digest(paths: list[Path]) -> str:
    """Content hash of the training inputs: resuming is only safe on the same data."""
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


def training_code() -> list[Path]:
    """Every ``cellpipe`` source file training runs, in a stable order: the resume fingerprint's code part.

    The runner's whole import closure (the engine, every model family and the helpers
    they import: mask targets and losses, RoI heads, flow maths, the metric the best
    checkpoint is chosen by), found by the walk ``cellpipe deps`` gives DVC. Anything
    narrower lets an edit that DVC reruns the stage for resume the finished ``last.pt``
    and hand back the old weights under a new hash. The stage modules themselves only
    turn params into the configs, init and inputs, which the fingerprint holds.
    """
    package = Path(cellpipe.__file__).resolve().parent
    return sorted(imports.closure(Path(__file__).resolve(), package.parent, ("cellpipe",)))


class LiveLogger:
    """dvclive sink for the engine's ``on_log`` hook (metrics + plots under ``out/live``)."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.live = None

    def __call__(self, step: int, metrics: dict[str, float]) -> None:
        if self.live is None:
            from dvclive import Live

            folder = self.out / "live"
            resume = step > 1 and folder.is_dir()
            if resume:
                trim_history(folder, step)
            self.live = Live(dir=str(folder), resume=resume, dvcyaml=False, save_dvc_exp=False, report=None)
        self.live.step = step
        for k, v in metrics.items():
            self.live.log_metric(k, v)
        self.live.make_summary()

    def close(self) -> None:
        if self.live is not None:
            self.live.end()


def trim_history(folder: Path, step: int) -> None:
    """Make a killed run's dvclive logs fit a resume at ``step``.

    dvclive writes its summary and its ``.tsv`` histories in place: a run killed while
    writing leaves a truncated ``metrics.json`` (which dvclive cannot read back) or a
    partial last line, and rows logged after the last checkpoint are logged again when
    training resumes from it. So the summary is dropped when it does not parse (dvclive
    rewrites it at the next log) and every history keeps its complete rows before ``step``.
    """
    import json

    summary = folder / "metrics.json"
    try:
        json.loads(summary.read_text(encoding="utf-8"))
    except FileNotFoundError:
        pass
    except (ValueError, UnicodeDecodeError):
        summary.unlink()
    for tsv in folder.rglob("*.tsv"):
        lines = tsv.read_text(encoding="utf-8", errors="replace").split("\n")
        header, rows = lines[0], lines[1:]
        width = header.count("\t")
        kept = [r for r in rows if r.count("\t") == width and r.split("\t", 1)[0].isdigit() and int(r.split("\t", 1)[0]) < step]
        text = "\n".join([header, *kept]) + "\n"
        if text != tsv.read_text(encoding="utf-8", errors="replace"):
            with atomic_path(tsv) as tmp:
                tmp.write_text(text, encoding="utf-8")


def check_frozen_init(model_cfg: Model, init: str) -> None:
    """``model.norm: frozen`` from a checkpoint that was itself trained from random weights would freeze
    statistics nobody computed: refused by name (a pretrained init is what ``frozen`` is for)."""
    if model_cfg.norm != "frozen" or init in ("imagenet", "coco") or not Path(init).is_file() or Path(init).suffix != ".pt":
        return
    meta = models.load_checkpoint(init)
    if meta.get("init") == "random initialisation" and (meta.get("model_config") or {}).get("norm") == "frozen":
        raise CellpipeError(
            "model.norm frozen needs pretrained weights, but this checkpoint was trained with frozen norms from random "
            "weights: pretrain from imagenet/coco, or use model.norm group",
            where=init,
        )


def run_training(
    *,
    stage: str,
    train_json: Path,
    val_source: Path,
    out: Path,
    model_cfg: Model,
    train_cfg: Train,
    init: str,
    post: PostProcess,
    single_class: bool,
    val_images: int | None = None,
    fold: int | None = None,
) -> dict:
    """Train ``stage``'s model from ``init`` ('none', 'imagenet', 'coco' or a checkpoint file).

    Validation images: the last ``val_images`` of ``train_json`` (LIVECell), fold ``fold``
    of a folds file (``train_json`` from the coco stage; the other folds train), or ``val_source``.
    """
    family = models.family(model_cfg)
    family.require()  # fail before any work when an optional backend is not installed
    raw = coco.load_json(train_json)
    if fold is not None:
        raw, held = folds.select(raw, fold, where=str(train_json))
    train_coco = coco.normalise(raw, where=str(train_json), single_class=single_class)
    del raw  # the normalised copy is what training keeps (LIVECell at full size: ≈ 1 GB of dicts less)
    if fold is not None:
        val_source = train_json
        val_coco = coco.normalise(held, where=str(train_json), single_class=single_class)
        del held
    elif val_images is not None:  # hold out the last images (LIVECell)
        ids = [im["id"] for im in train_coco["images"]]
        if len(ids) <= val_images:
            raise CellpipeError(f"{stage}.val_images ({val_images}) leaves no training images of {len(ids)}")
        val_ids, train_ids = set(ids[-val_images:]), ids[:-val_images]
        val_coco = {
            **train_coco,
            "images": [im for im in train_coco["images"] if im["id"] in val_ids],
            "annotations": [a for a in train_coco["annotations"] if a["image_id"] in val_ids],
        }
    if val_images is None:
        train_ids = None
    if val_images is None and fold is None:
        val_coco = coco.normalise(coco.load_json(val_source), where=str(val_source), single_class=single_class)
    for data, source in ((train_coco, train_json), (val_coco, val_source)):
        if not data["images"]:
            raise CellpipeError("COCO file has no images to train or evaluate on", where=str(source))
    if not train_coco["categories"]:
        raise CellpipeError("COCO file has no categories", where=str(train_json))
    class_names = [c["name"] for c in sorted(train_coco["categories"], key=lambda c: c["id"])]
    dataset = family.dataset(train_coco, model_cfg, train_cfg, train_ids)
    val = engine.val_images(val_coco)
    torch.manual_seed(train_cfg.seed)
    model = family.build(model_cfg, len(class_names))
    family.set_classes(model, model_cfg, class_names)
    check_frozen_init(model_cfg, init)
    desc = family.initialise(model, init)
    family.fit_data(model, dataset)
    # resuming is safe only with the same inputs and the same training code: every module the runner imports
    data_fp = file_digest([train_json, val_source, *training_code()] + ([Path(init)] if Path(init).is_file() else []))
    if fold is not None:
        data_fp += f"-fold{fold}"
    world = distributed.from_env()
    device = distributed.setup(world, models.default_device().type)
    if world.main:
        ddp = f", {world.size} processes (DDP), {train_cfg.batch_size // world.size} images each" if world.active else ""
        log(
            f"{stage}: {len(dataset)} train / {len(val)} val images, {len(class_names)} classes, init: {desc}, "
            f"device {device}{ddp}, {train_cfg.iters} iterations"
        )
        if train_cfg.repeat_threshold:
            names = {int(c["id"]): c["name"] for c in train_coco["categories"]}
            log(f"{stage}: {draws(dataset.image_categories(), train_cfg.repeat_threshold, names)}")
    logger = LiveLogger(out)
    with progress(stage, total=train_cfg.iters, enabled=world.main) as bar:

        def on_step(done: int, total: int, loss: float, lr: float) -> None:
            bar(done, info=f"loss {loss:.3f} lr {lr:.4f}")

        def on_log(step: int, metrics: dict[str, float]) -> None:
            logger(step, metrics)
            if "val/map_iou" in metrics:
                console.log(
                    f"{stage} iteration {step}: val MAP-IoU {metrics['val/map_iou']:.4f} (best {metrics['val/best_map_iou']:.4f})"
                )

        try:
            summary = engine.train(
                family,
                model,
                dataset,
                val,
                train_cfg,
                model_cfg,
                out,
                classes=class_names,
                init=desc,
                device=device,
                on_log=on_log,
                on_step=on_step,
                data_fingerprint=data_fp,
                post=post,
                world=world,
            )
        finally:
            logger.close()
            distributed.cleanup(world)
    summary["dropped_tiny_cells"] = dataset.dropped
    if not world.main:  # rank 0 writes the summary and says so
        return summary
    if world.active:
        summary["processes"] = world.size
    write_json(summary, out / "summary.json")
    log(
        f"{stage}: best val MAP-IoU {summary['best_map_iou']:.4f} at iteration {summary['best_iteration']} "
        f"({summary['seconds']} s) → {out}"
    )
    return summary


def draws(categories: list[frozenset[int]], threshold: float, names: dict[int, str]) -> str:
    """Each class's share of the training images and of the draws at ``threshold``, in words."""
    uniform = repeat_factors.category_shares(categories, None)
    weighted = repeat_factors.category_shares(categories, repeat_factors.draw_probabilities(categories, threshold))
    parts = [f"{names.get(c, c)} {uniform[c]:.0%} → {weighted[c]:.0%}" for c in uniform]
    return f"repeat factors at {threshold}: share of images → of draws: " + ", ".join(parts)
