"""Benchmark runner: ``python -m benchmarks [--scale full|tiny]``.

Generates full-scale synthetic data (606 images, ≈ 73.6k cells) once into
``benchmarks/.cache/``, times the public reference and cellpipe on each case in the
same process, checks the results are identical, prints a table and writes
``benchmarks/results.json``. See ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from rich.console import Console
from rich.table import Table

from benchmarks import cases
from cellpipe import synth

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
FULL = {"shsy5y": 155, "astro": 131, "cort": 320}
TINY = {"shsy5y": 2, "astro": 2, "cort": 2}
console = Console()


def dataset(scale: str) -> Path:
    out = HERE / ".cache" / scale
    if not (out / "train.csv").is_file():
        console.print(f"generating {scale}-scale synthetic data into {out} (once)")
        tmp = out.with_name(out.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        synth.write_kaggle(tmp, FULL if scale == "full" else TINY, 3, 1.0, seed=0, images_per_sample=3)
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
    return out


def stratified(df: pd.DataFrame, per_type: int) -> list[str]:
    first = df.drop_duplicates("id")
    return [i for _, g in first.groupby("cell_type") for i in g["id"].head(per_type)]


def decode_peak_rss(kaggle: Path) -> float:
    """Peak RSS (MiB) of the real ``cellpipe decode`` command on the data."""
    out = HERE / ".cache" / "decode-out"
    code = (
        "import resource, sys; from stages.cli import main; sys.argv=['cellpipe','decode','--kaggle-dir',"
        f"'{kaggle}','--annotations-out','{out}/a.parquet','--images-out','{out}/i.parquet'];"
        "\ntry:\n    main()\nexcept SystemExit:\n    pass\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env={**os.environ, "CELLPIPE_NO_PROGRESS": "1"}
    )
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr)
    return int(proc.stdout.strip().splitlines()[-1]) / 1024


def dvc_noop(kaggle: Path) -> cases.Result:
    """``dvc repro`` of an up-to-date decode → coco pipeline vs ``dvc status``, on a temp repo."""
    work = HERE / ".cache" / "dvc-repo"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    shutil.copy(REPO / "params.yaml", work / "params.yaml")
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["data"]["kaggle"]["kaggle-dir"] = str(kaggle)
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for name in ("decode", "coco"):
        stages[name]["deps"] = [d for d in stages[name]["deps"] if not str(d).startswith(("stages/", "cellpipe/"))]
    (work / "dvc.yaml").write_text(yaml.safe_dump({"stages": {k: stages[k] for k in ("decode", "coco")}}))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "CELLPIPE_NO_PROGRESS": "1"}
    dvc = str(Path(sys.executable).parent / "dvc")
    for cmd in (["git", "init", "-q"], [dvc, "init", "-q"], [dvc, "repro", "-q"]):
        subprocess.run(cmd, cwd=work, check=True, env=env, capture_output=True)

    def best_of(cmd: list[str], n: int = 3) -> float:
        times = []
        for _ in range(n):
            t = time.perf_counter()
            subprocess.run(cmd, cwd=work, check=True, env=env, capture_output=True)
            times.append(time.perf_counter() - t)
        return min(times)

    status_s = best_of([dvc, "status"])
    repro_s = best_of([dvc, "repro"])
    files = sum(1 for _ in (kaggle / "train").iterdir())
    return cases.Result(
        "no-op `dvc repro` vs `dvc status`",
        "images",
        files,
        status_s,
        repro_s,
        True,
        f"reference = `dvc status`; repro takes {repro_s / status_s:.2f}× status (target ≤ 1.5×)",
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--scale", choices=["full", "tiny"], default="full")
    ap.add_argument("--out", type=Path, default=HERE / "results.json")
    args = ap.parse_args()
    kaggle = dataset(args.scale)
    df = pd.read_csv(kaggle / "train.csv", dtype=str, keep_default_na=False)
    df["width"] = df["width"].astype(np.int64)
    df["height"] = df["height"].astype(np.int64)
    console.print(f"{df['id'].nunique()} images, {len(df)} cells ({df.groupby('cell_type').size().to_dict()})")
    results = []
    results.append(cases.decode_coco(df))
    results.append(cases.plain_decode(df))
    labels = cases.label_images(df)
    results.append(cases.encode(labels))
    del labels
    preds = cases.perturbed_predictions(df)
    subset = stratified(df, 10) if args.scale == "full" else list(df["id"].unique())
    results.append(cases.metric_case(df, preds, subset))
    results.append(cases.submission_case(preds))
    results.append(dvc_noop(kaggle))
    rss = decode_peak_rss(kaggle)
    table = Table(title=f"cellpipe vs reference ({args.scale} scale)")
    for col in ("case", "size", "reference s", "cellpipe s", "ratio", "identical", "note"):
        table.add_column(col)
    for r in results:
        table.add_row(
            r.name,
            f"{r.size} {r.unit}",
            f"{r.ref_s:.2f}",
            f"{r.cellpipe_s:.3f}",
            f"{r.ratio:.1f}×",
            "yes" if r.identical else "NO",
            r.note,
        )
    console.print(table)
    console.print(f"decode stage peak RSS: {rss:.0f} MiB")
    payload = {
        "scale": args.scale,
        "images": int(df["id"].nunique()),
        "cells": int(len(df)),
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "processor": platform.processor(),
        },
        "decode_peak_rss_mib": round(rss, 1),
        "cases": [
            {
                "name": r.name,
                "size": r.size,
                "unit": r.unit,
                "reference_s": round(r.ref_s, 4),
                "cellpipe_s": round(r.cellpipe_s, 4),
                "ratio": round(r.ratio, 2),
                "identical": r.identical,
                "note": r.note,
            }
            for r in results
        ],
    }
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    lines = ["| case | size | reference | cellpipe | ratio | identical | note |", "|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(
            f"| {r.name} | {r.size} {r.unit} | {r.ref_s:.2f} s | {r.cellpipe_s:.3f} s | {r.ratio:.1f}× | "
            f"{'yes' if r.identical else 'NO'} | {r.note} |"
        )
    lines.append(
        f"\nDecode stage peak RSS: {rss:.0f} MiB. Machine: {payload['machine']['platform']}, "
        f"{payload['machine']['cpus']} CPUs, Python {payload['machine']['python']}."
    )
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    if not all(r.identical for r in results):
        sys.exit("results differ from the reference")


if __name__ == "__main__":
    main()
