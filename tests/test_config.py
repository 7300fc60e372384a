"""The typed params: one definition of every knob, and params.yaml generated from it."""

from __future__ import annotations

import shutil

import pytest
import yaml

from cellpipe import config, params_file
from cellpipe.errors import CellpipeError
from tests.conftest import REPO, params_text, run_cli


def test_params_yaml_is_the_rendered_defaults():
    """The committed params.yaml (values and comments) is exactly what the models document."""
    assert params_text() == params_file.render(), "regenerate it: cellpipe params --defaults > params.yaml"


def test_render_round_trips():
    params = config.Params()
    assert params_file.validate(yaml.safe_load(params_file.render(params)), where="x") == params


def test_every_knob_has_help():
    def fields(model):
        for name, f in type(model).model_fields.items():
            yield f"{type(model).__name__}.{name}", f
            if isinstance(getattr(model, name), config.Section):
                yield from fields(getattr(model, name))

    missing = [name for name, f in fields(config.Params()) if not f.description and not name.startswith("Params.")]
    assert not missing, missing


@pytest.mark.parametrize(
    "data, message",
    [
        ({"finetune": {"lr": -1}}, "finetune.lr must be > 0 (got -1)"),
        ({"cv": {"val_fraction": 1.5}}, "cv.val_fraction must be < 1 (got 1.5)"),
        ({"cv": {"sede": 1}}, "unknown params key cv.sede"),
        ({"cv": {"folds": [0, 2]}}, "cv.folds must be 0..K-1 in order"),
        ({"cv": {"folds": []}}, "cv.folds"),
        ({"coco": {"seed": 1}}, "params key coco was renamed: write cv"),
        ({"bogus": {}}, "unknown params section 'bogus'"),
        ({"thresholds": {"grid": [True, 0.5]}}, "thresholds.grid must be a number (got True)"),
        ({"model": {"backbone": "vgg"}}, "model.backbone must be one of 'resnet18', 'resnet34', 'resnet50', 'resnet101'"),
        ({"predict": {"tta": 1}}, "predict.tta must be true/false (got 1)"),
        ({"model": {"anchor_sizes": [1, 2, 3]}}, "model.anchor_sizes must list 5 FPN levels"),
        ({"model": {"anchor_sizes": [[4, 5], [8], [16], [32], [64]]}}, "same number of sizes per level"),
        ({"data": {"kaggle": {"kaggle-dir": ""}}}, "data.kaggle.kaggle-dir must be a non-empty path"),
        ({"model": {"rpn_bg_iou": 0.8}}, "model.rpn_bg_iou must be ≤ model.rpn_fg_iou"),
        ({"synth": {"images_per_type": {"neuron": 3}}}, "synth.images_per_type key must be one of 'shsy5y', 'astro', 'cort'"),
        ({"model": {"class_scales": {"astra": 2}}}, "model.class_scales key must be one of 'shsy5y', 'astro', 'cort'"),
        ({"model": {"cellpose": {"class_diameters": {"astro": 0}}}}, "model.cellpose.class_diameters.astro must be ≥ 1 (got 0)"),
        ({"synth": {"seed": 1.5}}, "synth.seed must be an integer (got 1.5)"),
        ({"thresholds": {"grows": [0, 33]}}, "thresholds.grows must be ≤ 32 (got 33)"),
        ({"postprocess": {"grow": -1}}, "postprocess.grow must be ≥ 0 (got -1)"),
        ([1, 2], "params must be a mapping of sections"),
        ({"data": {"kaggle_dir": "x"}}, "params key data.kaggle_dir was renamed: write data.kaggle.kaggle-dir instead"),
        ({"thresholds": {"min_size": 3}}, "params key thresholds.min_size was renamed: write postprocess.min_size instead"),
        ({"finetune": {"init": "livecell"}}, "finetune.init: 'livecell' was renamed: write finetune.init: checkpoint"),
    ],
)
def test_bad_values_are_one_line_naming_the_key(data, message):
    with pytest.raises(CellpipeError, match="^p.yaml: ") as err:
        params_file.validate(data, where="p.yaml")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_keys_a_file_leaves_out_take_the_documented_defaults(tmp_path):
    (tmp_path / "p.yaml").write_text("cv: {seed: 3}\nfinetune: {lr: 0.01}\n")
    params = params_file.load(tmp_path / "p.yaml", "cv", "finetune")
    assert params.cv.seed == 3 and params.cv.val_fraction == config.CV().val_fraction and params.cv.folds == [0]
    assert params.finetune.lr == 0.01 and params.finetune.iters == config.Finetune().iters
    with pytest.raises(CellpipeError, match="params section 'model' is missing"):
        params_file.load(tmp_path / "p.yaml", "model")


def test_params_command_shows_the_effective_values(tmp_path):
    (tmp_path / "p.yaml").write_text("cv: {seed: 3}\n")
    proc = run_cli("params", "--params", str(tmp_path / "p.yaml"))
    assert proc.returncode == 0, proc.stderr
    shown = yaml.safe_load(proc.stdout)
    assert (
        shown["cv"] == {"folds": [0], "lockbox_fraction": 0.15, "val_fraction": 0.2, "seed": 3}
        and shown["model"]["backbone"] == "resnet18"
    )
    assert run_cli("params", "--defaults").stdout == params_file.render()


@pytest.mark.parametrize("profile", sorted(p.stem for p in (REPO / "profiles").glob("*.yaml")))
def test_every_profile_is_valid_on_the_committed_params(profile, tmp_path):
    """A profile is `-S key=value` lines: each key must exist and each value pass validation,
    or `./run.sh profile NAME` fails only after minutes of earlier stages."""
    from tests.helpers import apply_profile

    (tmp_path / "profiles").mkdir()
    shutil.copy(REPO / "profiles" / f"{profile}.yaml", tmp_path / "profiles")
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    applied = apply_profile(tmp_path, profile)
    assert applied, f"profiles/{profile}.yaml sets nothing"
    params = params_file.validate(yaml.safe_load((tmp_path / "params.yaml").read_text()), where="params.yaml")
    effective = params.model_dump(by_alias=True)
    for key, value in applied.items():
        node = effective
        for part in key.split("."):
            node = node[part]
        assert node == value, f"{key}: {node!r} != {value!r}"


def test_the_real_profile_is_the_settings_of_its_family():
    """`real` is what a new user runs: the family that scores best on the real lockbox, with that
    family's profile's settings exactly (so a lever measured on one is not missing from the other)."""
    from cellpipe import profiles

    def settings(name: str) -> dict:
        return profiles.values((REPO / "profiles" / f"{name}.yaml").read_text(), where=name)

    real = settings("real")
    family = {"maskrcnn": "real-maskrcnn", "cellpose": "real-cellpose"}[real.get("model.arch", "maskrcnn")]
    assert real == settings(family)
