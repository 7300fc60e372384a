"""The DAG under DVC on the shared tiny repo (``conftest.trained_dag``, built once per session): repro from
clean then a no-op, plots, experiments, remotes, the queue, and which stages an edit makes stale.
SIGKILL at random moments, on the same repo, is test_dvc_kills.py's (conftest's ``LONG_FILES`` order hands
the two files to different workers)."""

import csv
import io
import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.conftest import run_cli
from tests.helpers import copy_repo, dvc, git, ran_stages, stale_stages


@pytest.fixture
def dag(trained_dag) -> tuple[Path, str]:
    """The shared tiny DAG (``conftest.trained_dag``), for tests that only read it (or undo what they change)."""
    return trained_dag


@pytest.fixture
def dag_copy(trained_dag, tmp_path) -> Path:
    """A copy of the shared tiny DAG, for a test that changes it (experiments, remotes, queues)."""
    return copy_repo(trained_dag[0], tmp_path / "repo")


@pytest.mark.slow
def test_repro_from_clean_then_noop(dag):
    repo_copy, first = dag
    assert set(ran_stages(first)) == {
        "synth",
        "decode",
        "coco",
        "anchors",
        "livecell",
        "pretrain",
        "finetune@0",
        "predict@0",
        "ensemble",
        "thresholds",
        "score",
        "submit",
        "visualize",
    }
    assert (repo_copy / "data/coco/folds.json").is_file() and (repo_copy / "data/coco/lockbox.json").is_file()
    assert (repo_copy / "data/submission/submission.csv").is_file()
    overlays = sorted(p.name for p in (repo_copy / "plots/overlays").iterdir())
    assert len([o for o in overlays if o.startswith("val_")]) == 3 and len(overlays) == 5
    metrics = json.loads((repo_copy / "metrics/oof.json").read_text())
    assert 0.0 <= metrics["map_iou"] <= 1.0 and set(metrics["per_class"]) == {"shsy5y", "astro", "cort"}
    assert metrics["thresholds_in_sample"] and metrics["images"] == 3  # K=1: labelled, never passed off as held out
    lockbox = json.loads((repo_copy / "metrics/lockbox.json").read_text())
    assert not lockbox["thresholds_in_sample"] and lockbox["images"] == 3 and 0.0 <= lockbox["map_iou"] <= 1.0
    assert lockbox == {**json.loads((repo_copy / "metrics/lockbox_fold0.json").read_text()), "thresholds": lockbox["thresholds"]}
    fixed = json.loads((repo_copy / "metrics/lockbox_fixed.json").read_text())
    assert fixed["thresholds"] == "fixed 0.5 for every class" and fixed["images"] == 3 and not fixed["thresholds_in_sample"]
    for name in ("oof", "oof_fixed", "lockbox", "lockbox_fixed"):  # the per-image tables `cellpipe compare` reads
        per_image = pd.read_csv(repo_copy / f"metrics/{name}_per_image.csv")
        report = json.loads((repo_copy / f"metrics/{name}.json").read_text())
        assert len(per_image) == report["images"] and per_image["score"].mean() == pytest.approx(report["map_iou"], abs=1e-6)
    second = dvc(repo_copy, "repro")
    assert ran_stages(second.stdout) == []
    assert "up to date" in dvc(repo_copy, "status").stdout
    # an edit to drawing code makes only the stage that draws stale; the edit undone, all is up to date
    overlay = repo_copy / "cellpipe/overlay.py"
    original = overlay.read_text()
    overlay.write_text(original + "\n# an edit\n")
    assert stale_stages(repo_copy) == {"visualize"}
    overlay.write_text(original)
    assert stale_stages(repo_copy) == set()
    shown = dvc(repo_copy, "metrics", "show").stdout
    assert "map_iou" in shown and "per_class.cort" in shown


def plots_page(repo: Path, out: Path) -> str:
    dvc(repo, "plots", "show", "-o", str(out))
    return (out / "index.html").read_text()


def declared_plots(repo: Path) -> tuple[int, list[str]]:
    """(number of vega plots declared in dvc.yaml, overlay images on disk)."""
    top = yaml.safe_load((repo / "dvc.yaml").read_text())["plots"]
    return len(top), sorted(p.name for p in (repo / "plots/overlays").glob("*.png"))


@pytest.mark.slow
def test_plots_page_loads_nothing_from_the_network(dag, tmp_path):
    """``dvc plots show`` uses the repo's template: Vega inlined, no http(s) script or style source."""
    repo, _ = dag
    html = plots_page(repo, tmp_path / "page")
    sources = re.findall(r"<(?:script|link|img)\b[^>]*\b(?:src|href)\s*=\s*[\"']([^\"']+)", html, flags=re.I)
    assert not [s for s in sources if re.match(r"(https?:)?//", s)], sources
    assert "cdn.jsdelivr" not in html and "vega@" not in html
    n_vega, overlays = declared_plots(repo)
    assert html.count("vegaEmbed('#") == n_vega
    for name in overlays:
        assert f"plots_overlays_{name.replace('.', '_')}" in html


RECTS = """<script>
setTimeout(function () {
  var out = [];
  document.querySelectorAll("body > div[id]").forEach(function (div) {
    var el = div.querySelector("canvas, svg:not(.vega-actions svg)") || div.querySelector("img");
    var r = el ? el.getBoundingClientRect() : {x: 0, y: 0, width: 0, height: 0};
    out.push({id: div.id, tag: el ? el.tagName : null, loaded: el && el.tagName === "IMG" ? el.naturalWidth > 0 : true,
              x: r.x + window.scrollX, y: r.y + window.scrollY, w: r.width, h: r.height});
  });
  var pre = document.createElement("pre");
  pre.id = "rects";
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
}, 3000);
</script>"""


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.slow
@pytest.mark.skipif(chromium() is None, reason="no Chromium (Debian package 'chromium') to render the page with")
def test_plots_page_renders_offline_in_a_browser(dag, tmp_path):
    """A headless Chromium with no network draws every plot: non-white pixels inside each plot's area."""
    import numpy as np
    from PIL import Image

    repo, _ = dag
    html = plots_page(repo, tmp_path / "page")
    page = tmp_path / "page" / "probe.html"
    head, tail = html.rsplit("</body>", 1)  # the last one: vega-embed's code holds the string too
    page.write_text(head + RECTS + "</body>" + tail)
    flags = [
        chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-quic",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--hide-scrollbars",
        "--window-size=1600,12000",
        "--virtual-time-budget=15000",
        "--proxy-server=http://127.0.0.1:9",
        "--proxy-bypass-list=<-loopback>",
    ]  # any network request fails
    dom = subprocess.run([*flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=300).stdout
    rects = json.loads(re.search(r'<pre id="rects">(.*?)</pre>', dom, flags=re.S).group(1).replace("&quot;", '"'))
    subprocess.run([*flags, f"--screenshot={tmp_path / 'shot.png'}", page.as_uri()], capture_output=True, timeout=300)
    shot = np.asarray(Image.open(tmp_path / "shot.png").convert("RGB")).astype(int)
    n_vega, overlays = declared_plots(repo)
    assert len(rects) == n_vega + len(overlays), rects
    for r in rects:
        assert r["tag"] in ("CANVAS", "svg", "IMG") and r["loaded"] and r["w"] > 50 and r["h"] > 50, r
        y0, x0 = int(r["y"]), int(r["x"])
        area = shot[y0 : y0 + int(r["h"]), x0 : x0 + int(r["w"])]
        assert area.size, ("plot outside the screenshot", r)
        inked = (area.min(axis=2) < 200).mean()
        assert inked > 0.01, (r["id"], inked)


@pytest.mark.slow
def test_an_experiment_reruns_only_what_it_affects_and_travels_through_git_and_dvc_remotes(dag_copy, tmp_path):
    """An experiment on a thresholds knob reruns thresholds and what follows, nothing upstream — no training or
    prediction (that a fine-tune knob makes every fold's fine-tune stale is test_real_dag's). ``dvc exp push``
    then takes its git ref to a (bare) git remote and its outputs to the DVC remote; a teammate's clone
    ``dvc exp pull``s it, applies it and has its metrics and outputs with nothing to run."""
    repo = dag_copy
    origin, remote = tmp_path / "origin.git", tmp_path / "remote"
    git(tmp_path, "init", "-q", "--bare", str(origin))
    dvc(repo, "remote", "add", "--force", "--default", "shared", str(remote))
    git(repo, "remote", "add", "teammates", str(origin))
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "shared remotes", "--allow-empty")
    git(repo, "push", "-q", "teammates", "HEAD:refs/heads/main")
    exp = dvc(repo, "exp", "run", "-n", "shared-exp", "-S", "thresholds.grid=[0.2,0.6]")
    assert set(ran_stages(exp.stdout)) == {"thresholds", "score", "submit", "visualize"}
    assert "map_iou" in dvc(repo, "exp", "show", "--csv").stdout
    mine = json.loads(dvc(repo, "exp", "show", "--json").stdout)
    # the README's recipe: each run's per-image lockbox table through dvc get, compared image by image
    for rev, name in (("HEAD", "a.csv"), ("shared-exp", "b.csv")):
        dvc(repo, "get", ".", "metrics/lockbox_per_image.csv", "--rev", rev, "-o", str(tmp_path / name))
    compared = run_cli("compare", str(tmp_path / "a.csv"), str(tmp_path / "b.csv"), "--out", str(tmp_path / "c.json"), cwd=repo)
    assert compared.returncode == 0, compared.stderr
    overall = json.loads((tmp_path / "c.json").read_text())["groups"][0]
    assert overall["score_b"] == pytest.approx(json.loads((repo / "metrics/lockbox.json").read_text())["map_iou"], abs=1e-6)
    dvc(repo, "exp", "push", "teammates", "shared-exp")
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", "-b", "main", str(origin), str(clone))
    dvc(clone, "exp", "pull", "origin", "shared-exp")  # the clone knows the shared repo as origin
    assert "shared-exp" in dvc(clone, "exp", "list", "--name-only").stdout
    dvc(clone, "exp", "apply", "shared-exp")
    dvc(clone, "checkout")
    assert yaml.safe_load((clone / "params.yaml").read_text())["thresholds"]["grid"] == [0.2, 0.6]
    assert ran_stages(dvc(clone, "repro").stdout) == []
    theirs = json.loads((clone / "metrics" / "lockbox.json").read_text())
    assert theirs == json.loads((repo / "metrics" / "lockbox.json").read_text()), (theirs, mine)


@pytest.mark.slow
def test_a_clone_pulls_every_output_from_a_shared_remote_and_has_nothing_to_run(dag_copy, tmp_path):
    """A teammate's clone: ``dvc pull`` from a shared (here: local-folder) remote brings every output,
    checkpoints included, and ``dvc repro`` then runs nothing; the run-cache travels too."""
    repo = dag_copy
    remote = tmp_path / "remote"
    dvc(repo, "remote", "add", "--force", "--default", "shared", str(remote))
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "results and the shared remote")
    dvc(repo, "push", "--run-cache")
    assert any(remote.rglob("*")) and (remote / "runs").is_dir()
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(repo), str(clone))
    assert not (clone / "models/finetune/fold0/best.pt").exists()
    dvc(clone, "pull")
    assert (clone / "models/finetune/fold0/best.pt").is_file() and (clone / "metrics/oof.json").is_file()
    assert (clone / "data/submission/submission.csv").read_bytes() == (repo / "data/submission/submission.csv").read_bytes()
    assert ran_stages(dvc(clone, "repro").stdout) == []
    assert "up to date" in dvc(clone, "status").stdout


def queue_status(repo: Path, timeout: float = 900) -> dict[str, str]:
    """Experiment name → status once the queue holds nothing queued or running."""

    end = time.monotonic() + timeout
    while True:
        rows = [line.split() for line in dvc(repo, "queue", "status").stdout.splitlines()]
        status = {r[1]: r[-1] for r in rows if len(r) >= 4 and r[-1] in ("Queued", "Running", "Success", "Failed")}
        if not {"Queued", "Running"} & set(status.values()) or time.monotonic() > end:
            return status
        time.sleep(3)


@pytest.mark.slow
def test_queued_experiments_run_in_parallel_workers_and_a_failure_stays_its_own(dag_copy):
    """``dvc exp run --queue`` × 2 and ``dvc queue start -j 2``: the two run in parallel workers; one succeeds
    with its params and metrics in ``dvc exp show``, the one with an impossible param fails alone, its log
    says why."""
    repo = dag_copy
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "before queueing", "--allow-empty")
    for name, grid in (("grid-a", "[0.1,0.5]"), ("grid-bad", "[2.0]")):
        dvc(repo, "exp", "run", "--queue", "-n", name, "-S", f"thresholds.grid={grid}")
    dvc(repo, "queue", "start", "-j", "2")
    status = queue_status(repo)
    assert status == {"grid-a": "Success", "grid-bad": "Failed"}, status
    logs = dvc(repo, "queue", "logs", "grid-bad")
    assert "thresholds.grid must be numbers in [0, 1]" in logs.stdout + logs.stderr
    rows = {r["Experiment"]: r for r in csv.DictReader(io.StringIO(dvc(repo, "exp", "show", "--csv").stdout))}
    assert json.loads(rows["grid-a"]["thresholds.grid"]) == [0.1, 0.5], rows["grid-a"]
    assert any(k.endswith("map_iou") and v != "" for k, v in rows["grid-a"].items()), rows["grid-a"]


EVERY = {"synth", "decode", "coco", "anchors", "livecell", "pretrain", "finetune", "predict", "ensemble", "thresholds", "score",
         "submit", "visualize"}  # fmt: skip
# module → the stages an edit to it makes stale (matrix stages by their base name). Training stages never
# import ensembling, submission writing or drawing (an edit there retrains nothing); predict imports no
# training engine. A new import that widens a closure shows up here by name; a new module needs a row.
STALE_WHEN_EDITED = {
    "cellpipe/__init__.py": EVERY,
    "cellpipe/anchors.py": {"anchors"},
    "cellpipe/atomic.py": EVERY,
    "cellpipe/checkpoints.py": {"finetune", "predict", "pretrain"},
    "cellpipe/coco.py": EVERY - {"decode", "ensemble", "synth"},
    "cellpipe/config.py": EVERY,
    "cellpipe/console.py": EVERY,
    "cellpipe/ensemble.py": {"ensemble"},
    "cellpipe/errors.py": EVERY,
    "cellpipe/folds.py": {"coco", "finetune", "predict", "pretrain", "score", "submit", "thresholds", "visualize"},
    "cellpipe/image_types.py": {"finetune", "predict", "pretrain"},
    "cellpipe/images.py": EVERY - {"ensemble"},
    "cellpipe/imports.py": {"finetune", "pretrain"},
    "cellpipe/inference.py": {"predict"},
    "cellpipe/instances.py": {"ensemble", "finetune", "predict", "pretrain", "score", "submit", "thresholds", "visualize"},
    "cellpipe/io.py": EVERY - {"ensemble", "livecell", "synth"},
    "cellpipe/livecell.py": {"livecell"},
    "cellpipe/merging.py": {"ensemble", "predict"},
    "cellpipe/metric.py": {"ensemble", "finetune", "predict", "pretrain", "score", "submit", "thresholds", "visualize"},
    "cellpipe/models/__init__.py": {"finetune", "predict", "pretrain"},
    "cellpipe/models/cellpose_flow.py": {"finetune", "predict", "pretrain"},
    "cellpipe/models/detectron2_maskrcnn.py": {"finetune", "predict", "pretrain"},
    "cellpipe/models/masks.py": {"finetune", "predict", "pretrain"},
    "cellpipe/models/rcnn.py": {"finetune", "predict", "pretrain"},
    "cellpipe/models/torchvision_heads.py": {"finetune", "predict", "pretrain"},
    "cellpipe/models/torchvision_maskrcnn.py": {"finetune", "predict", "pretrain"},
    "cellpipe/overlay.py": {"visualize"},
    "cellpipe/params_file.py": EVERY - {"livecell", "score", "submit", "visualize"},
    "cellpipe/paths.py": EVERY,
    "cellpipe/postprocess.py": {"finetune", "predict", "pretrain", "score", "submit", "thresholds", "visualize"},
    "cellpipe/prediction_table.py": {"ensemble", "predict", "score", "submit", "thresholds", "visualize"},
    "cellpipe/reports.py": {"score"},
    "cellpipe/repeat_factors.py": {"finetune", "predict", "pretrain"},
    "cellpipe/rle.py": EVERY - {"anchors", "finetune", "livecell", "pretrain"},
    "cellpipe/samples.py": {"finetune", "predict", "pretrain"},
    "cellpipe/scoring.py": {"predict", "score", "submit", "thresholds", "visualize"},
    "cellpipe/submission.py": {"predict", "submit"},
    "cellpipe/synth.py": {"synth"},
    "cellpipe/tables.py": {"coco", "decode", "predict", "score", "submit", "synth", "thresholds", "visualize"},
    "cellpipe/thresholds.py": {"predict", "score", "submit", "thresholds", "visualize"},
    "cellpipe/training/__init__.py": {"finetune", "pretrain"},
    "cellpipe/training/distributed.py": {"finetune", "pretrain"},
    "cellpipe/training/engine.py": {"finetune", "pretrain"},
    "cellpipe/training/runner.py": {"finetune", "pretrain"},
    "stages/__init__.py": EVERY,
    "stages/__main__.py": set(),  # the dispatcher every command passes through: computes nothing
    "stages/cli.py": set(),
    "stages/entry.py": set(),
    "stages/check_submission.py": set(),  # commands that are no stage
    "stages/deps.py": set(),
    "stages/params.py": set(),
    "stages/profile.py": set(),
    "cellpipe/profiles.py": set(),
    "stages/compare.py": set(),  # compares two experiments' outputs: no stage of the DAG
    "cellpipe/comparison.py": set(),
    "stages/anchors.py": {"anchors"},
    "stages/coco.py": {"coco"},
    "stages/decode.py": {"decode"},
    "stages/ensemble.py": {"ensemble"},
    "stages/finetune.py": {"finetune"},
    "stages/livecell.py": {"livecell"},
    "stages/predict.py": {"predict"},
    "stages/pretrain.py": {"pretrain"},
    "stages/score.py": {"score"},
    "stages/submit.py": {"submit"},
    "stages/synth.py": {"synth"},
    "stages/thresholds.py": {"thresholds"},
    "stages/visualize.py": {"visualize"},
}


# modules whose edit goes through a real ``dvc status`` (each status parses dvc.yaml and dvc.lock again, ≈ 1 s):
# a stage's own module, a model module several stages import, and one no stage imports
PROBED = ("stages/score.py", "cellpipe/models/rcnn.py", "stages/cli.py")


@pytest.mark.slow
def test_an_edit_reruns_only_the_stages_it_can_change(dag):
    """After touching each module of the repo, the stages DVC holds stale are exactly those of its row: for every
    module from the dependencies DVC parsed (a stage is stale when a file it depends on, or a folder holding it,
    changed), and for the ``PROBED`` modules from ``dvc status`` itself, which must agree."""
    from dvc.repo import Repo

    repo, _ = dag
    modules = sorted(p.relative_to(repo).as_posix() for folder in ("cellpipe", "stages") for p in (repo / folder).rglob("*.py"))
    assert sorted(STALE_WHEN_EDITED) == modules, "a module without a row (or a row without a module)"
    wrong = {}
    with Repo(str(repo)) as dvc_repo:
        assert not dvc_repo.status()
        deps: dict[str, set[str]] = {}  # stage (matrix stages by their base name) → the paths it depends on
        for stage in dvc_repo.index.stages:
            paths = deps.setdefault(stage.name.split("@")[0], set())
            paths.update(Path(d.fs_path).relative_to(repo).as_posix() for d in stage.deps)
        for module, expected in STALE_WHEN_EDITED.items():
            stale = {name for name, paths in deps.items() if any(module == d or module.startswith(d + "/") for d in paths)}
            if module in PROBED:
                path = repo / module
                original = path.read_bytes()
                path.write_bytes(original + b"\n# an edit\n")
                try:
                    by_dvc = {name.rsplit(":", 1)[-1].split("@")[0] for name in dvc_repo.status()}
                finally:
                    path.write_bytes(original)
                assert by_dvc == stale, (module, by_dvc, stale)
            if stale != expected:
                wrong[module] = {"more": sorted(stale - expected), "fewer": sorted(expected - stale)}
        assert not dvc_repo.status()
    assert not wrong, wrong
