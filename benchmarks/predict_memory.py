"""Peak memory and time of ``cellpipe predict`` on large images: ``python -m benchmarks.predict_memory``.

For each size (704×520, 4000², 8000² by default) one grey PNG is made by tiling a
synthetic 704×520 Kaggle image (cells at the real densities, so a trained model finds
realistic numbers of cells), and ``cellpipe predict --skip-val`` runs on it as its own
process under GNU time: wall seconds and peak RSS, with the detections it wrote.

The model: ``--checkpoint`` (default ``models/finetune/fold0/best.pt``, the default
pipeline's model) at its own detection cap (``predict.detections_per_img: 0`` = the
checkpoint's ``model.detections_per_img``, 1000 in the default params). Without one,
``--untrained`` builds the default architecture untrained with ``box_score_thresh`` 0,
so every window fills the cap: the worst case for memory (every detection kept).

Memory should grow with the image's pixels, not pixels × detections (the aim: 8000² under
4 GB). Appends to ``benchmarks/predict_memory.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def base_image(cache: Path) -> np.ndarray:
    """A synthetic 704×520 Kaggle image of each type, side by side in one 520 × 2112 strip (made once)."""
    from cellpipe import synth
    from cellpipe.images import read_grey

    folder = cache / "kaggle"
    if not (folder / "train.csv").is_file():
        synth.write_kaggle(folder, {"shsy5y": 1, "astro": 1, "cort": 1}, 0, 1.0, seed=7, images_per_sample=1)
    return np.concatenate([read_grey(p) for p in sorted((folder / "train").glob("*.png"))], axis=1)


def image_of(size: tuple[int, int], strip: np.ndarray) -> np.ndarray:
    reps = (-(-size[0] // strip.shape[0]), -(-size[1] // strip.shape[1]))
    return np.tile(strip, reps)[: size[0], : size[1]]


def untrained_checkpoint(path: Path) -> Path:
    import torch

    from cellpipe import models
    from cellpipe.config import Model

    cfg = Model(box_score_thresh=0.0)
    torch.manual_seed(0)
    model = models.build(cfg, 3)
    torch.save({"model": model.state_dict(), "model_config": cfg.model_dump(mode="json"),
                "classes": ["shsy5y", "astro", "cort"], "iteration": 0}, path)  # fmt: skip
    return path


def measure(checkpoint: Path, folder: Path, out: Path) -> dict:
    params = out.parent / "p.yaml"
    params.write_text("predict: {detections_per_img: 0}\n")
    cmd = [sys.executable, "-m", "stages", "predict", "--checkpoint", str(checkpoint), "--skip-val", "--test-dir",
           str(folder), "--test-out", str(out), "--params", str(params)]  # fmt: skip
    t = time.perf_counter()
    proc = subprocess.run(
        ["/usr/bin/time", "-f", "%M", *cmd], capture_output=True, text=True, env={**os.environ, "CELLPIPE_NO_PROGRESS": "1"}
    )
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-3000:])
    import pyarrow.parquet as pq

    return {"seconds": round(wall, 1), "peak_rss_mib": round(int(proc.stderr.strip().splitlines()[-1]) / 1024, 1),
            "detections": pq.read_metadata(out).num_rows}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, default=REPO / "models/finetune/fold0/best.pt")
    ap.add_argument("--untrained", action="store_true", help="the default architecture untrained, filling the cap")
    ap.add_argument("--sizes", default="520x704,4000x4000,8000x8000", help="height x width, comma-separated")
    ap.add_argument("--out", type=Path, default=HERE / "predict_memory.json")
    args = ap.parse_args()
    cache = HERE / ".cache" / "predict-memory"
    cache.mkdir(parents=True, exist_ok=True)
    checkpoint = untrained_checkpoint(cache / "untrained.pt") if args.untrained else args.checkpoint
    if not checkpoint.is_file():
        raise SystemExit(f"{checkpoint}: no checkpoint (run the default pipeline, or pass --untrained)")
    strip = base_image(cache)
    rows = []
    for text in args.sizes.split(","):
        h, w = (int(v) for v in text.lower().split("x"))
        folder = cache / f"{h}x{w}"
        folder.mkdir(exist_ok=True)
        if not (folder / "img.png").is_file():
            Image.fromarray(image_of((h, w), strip)).save(folder / "img.png")
        result = {"size": f"{h}×{w}", "pixels": h * w, **measure(checkpoint, folder, cache / f"{h}x{w}.parquet")}
        print(json.dumps(result), flush=True)
        rows.append(result)
    run = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "checkpoint": "untrained default architecture (box_score_thresh 0)" if args.untrained else str(checkpoint),
        "results": rows,
    }
    history = json.loads(args.out.read_text()) if args.out.is_file() else []
    args.out.write_text(json.dumps([*history, run], indent=2) + "\n")


if __name__ == "__main__":
    main()
