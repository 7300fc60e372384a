"""LIVECell at its real size: ``python -m benchmarks.livecell_scale [--images 5000 --cells 1700000]``.

Generates a LIVECell-sized COCO JSON once (``benchmarks.livecell_data.write_livecell_scale``: the real
layout, dict-form annotations, ≈ 24-vertex polygons, per-image counts up to 2,000) into
``benchmarks/.cache/livecell-scale/``, then measures, each as its own process (wall
time and peak RSS from ``wait4``):

1. ``cellpipe livecell`` on it (the stage: stream → normalised JSON with RLE masks);
2. ``cellpipe pretrain`` with 2 iterations on its output: reading, checking and indexing
   the 1.7 M cells, building the model, 2 steps, one evaluation, checkpoints — the time
   to the first training steps;
3. the loader's memory over a pass: the training dataset built as ``pretrain`` builds it,
   then ``--load`` images decoded into its cache; reports cache bytes per image and RSS,
   and the cache for every image extrapolated from them (labelled so).

Appends the numbers to ``benchmarks/livecell_scale.json``.
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

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

LOADER = """
import json, random, resource, sys, time
from cellpipe import coco, models, params_file
p = params_file.validate(__import__("yaml").safe_load(open(sys.argv[1])), where=sys.argv[1])
t = time.perf_counter()
data = coco.normalise(coco.load_json(sys.argv[2]), where=sys.argv[2], single_class=True)
ds = models.family(p.model).dataset(data, p.model, p.pretrain)
ready = time.perf_counter() - t
rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
idx = random.Random(0).sample(range(len(ds)), int(sys.argv[3]))
t = time.perf_counter()
for i in idx:
    ds.load(i)
per = (time.perf_counter() - t) / len(idx)
print(json.dumps({"images": len(ds), "cells": len(data["annotations"]), "index_s": ready, "rss_indexed_mib": rss0 / 1024,
                  "loaded": len(idx), "load_ms_per_image": 1000 * per, "cache_mib": ds.cache.bytes / 2**20,
                  "rss_loaded_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def peak_rss(cmd: list[str]) -> tuple[float, float, str]:
    """Wall seconds, peak RSS (MiB, GNU time's %M) and stdout of one command."""
    t = time.perf_counter()
    proc = subprocess.run(
        ["/usr/bin/time", "-f", "%M", *cmd], capture_output=True, text=True, env={**os.environ, "CELLPIPE_NO_PROGRESS": "1"}
    )
    wall = time.perf_counter() - t
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd[:3])} failed:\n{proc.stderr[-2000:]}")
    return wall, int(proc.stderr.strip().splitlines()[-1]) / 1024, proc.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--cells", type=int, default=1_900_000, help="asked for; crowded images place fewer, ≈ 1.7 M land")
    ap.add_argument("--load", type=int, default=300, help="images decoded into the loader's cache")
    ap.add_argument("--out", type=Path, default=HERE / "livecell_scale.json")
    args = ap.parse_args()
    from benchmarks import livecell_data

    data = HERE / ".cache" / "livecell-scale"
    src = data / "annotations" / "LIVECell" / "livecell_coco_train.json"
    if not src.is_file():
        print(f"generating {args.images} LIVECell-style images into {data} (once)", flush=True)
        livecell_data.write_livecell_scale(data, args.images, args.cells, seed=0)
    work = HERE / ".cache" / "livecell-scale-run"
    work.mkdir(parents=True, exist_ok=True)
    norm = work / "livecell.json"
    images = data / "images" / "livecell_train_val_images"
    result: dict = {"machine": f"{platform.node()} ({os.cpu_count()} cores)", "date": time.strftime("%Y-%m-%d"),
                    "source_mb": src.stat().st_size / 2**20}  # fmt: skip
    wall, rss, _ = peak_rss(
        ["cellpipe", "livecell", "--livecell-json", str(src), "--livecell-images", str(images), "--out", str(norm)]
    )
    result["livecell_stage"] = {"wall_s": wall, "peak_rss_mib": rss, "out_mb": norm.stat().st_size / 2**20}
    print(json.dumps(result["livecell_stage"]), flush=True)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["pretrain"].update(iters=2, warmup_iters=1, eval_every=1000, val_images=2)
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    wall, rss, _ = peak_rss(
        ["cellpipe", "pretrain", "--livecell", str(norm), "--out", str(work / "model"), "--params", str(work / "params.yaml")]
    )
    result["pretrain_2_iterations"] = {"wall_s": wall, "peak_rss_mib": rss}
    print(json.dumps(result["pretrain_2_iterations"]), flush=True)
    wall, rss, out = peak_rss([sys.executable, "-c", LOADER, str(work / "params.yaml"), str(norm), str(args.load)])
    loader = json.loads(out.strip().splitlines()[-1])
    loader["cache_all_images_mib_extrapolated"] = loader["cache_mib"] / loader["loaded"] * loader["images"]
    result["loader"] = {**loader, "wall_s": wall, "peak_rss_mib": rss}
    print(json.dumps(result["loader"]), flush=True)
    runs = json.loads(args.out.read_text()) if args.out.is_file() else []
    args.out.write_text(json.dumps([*runs, result], indent=2) + "\n")


if __name__ == "__main__":
    main()
