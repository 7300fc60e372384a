"""The params schema: every key of ``params.yaml``, its type and its allowed values.

Checked up front by every stage so that a typo (``finetune.lr_rate``) or an
impossible value (``coco.val_fraction: 1.5``) fails at once with the key's name,
instead of hours later or, worse, silently.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cellpipe.errors import CellpipeError

Check = Callable[[Any], str | None]


def positive(v: Any) -> str | None:
    return None if v > 0 else "must be > 0"


def non_negative(v: Any) -> str | None:
    return None if v >= 0 else "must be ≥ 0"


def open_unit(v: Any) -> str | None:
    return None if 0 < v < 1 else "must be in (0, 1)"


def unit(v: Any) -> str | None:
    return None if 0 <= v <= 1 else "must be in [0, 1]"


def one_of(*choices: str) -> Check:
    def check(v: Any) -> str | None:
        return None if v in choices else f"must be one of {', '.join(choices)}"
    return check


def one_of_int(*choices: int) -> Check:
    def check(v: Any) -> str | None:
        return None if v in choices else f"must be one of {', '.join(map(str, choices))}"
    return check


def per_type_counts(v: Any) -> str | None:
    if not isinstance(v, dict):
        return "must be a mapping of cell type to count"
    for k, n in v.items():
        if k not in ("shsy5y", "astro", "cort"):
            return f"unknown cell type {k!r}"
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            return f"count for {k} must be an integer ≥ 0"
    return None


def options(*names: str) -> Check:
    """A mapping of exactly these command-line options to non-empty strings (paths).

    Paths reach ``dvc.yaml`` commands as such mappings (``${data.kaggle}``) because DVC
    shell-quotes the values of a mapping it expands, and nothing else: a path with a
    space, a quote or a ``;`` stays one argument and never becomes shell code.
    """
    def check(v: Any) -> str | None:
        if not isinstance(v, dict) or set(v) != set(names):
            return f"must be a mapping with exactly the key(s) {', '.join(names)}"
        bad = [k for k, x in v.items() if not isinstance(x, str) or not x.strip()]
        return f"{bad[0]} must be a non-empty path" if bad else None
    return check


# section -> key -> (types, check or None)
SCHEMA: dict[str, dict[str, tuple[type | tuple[type, ...], Check | None]]] = {
    "data": {
        "kaggle": (dict, options("kaggle-dir")),
        "livecell": (dict, options("livecell-json", "livecell-images")),
    },
    "synth": {
        "seed": (int, non_negative),
        "images_per_type": (dict, per_type_counts),
        "images_per_sample": (int, positive),
        "cells_scale": ((int, float), positive),
        "test_images": (int, non_negative),
        "livecell_images": (int, non_negative),
        "livecell_cells_scale": ((int, float), positive),
    },
    "decode": {
        "duplicates": (str, one_of("error", "drop")),
    },
    "coco": {
        "val_fraction": ((int, float), open_unit),
        "seed": (int, non_negative),
    },
}


def boolean(v: Any) -> str | None:
    return None


def number(x: Any) -> bool:
    """An int or float, not a bool (YAML's ``true`` is an int to Python)."""
    return isinstance(x, int | float) and not isinstance(x, bool)


def grid(v: Any) -> str | None:
    if not isinstance(v, list) or not v or not all(number(x) and 0 <= x <= 1 for x in v):
        return "must be a non-empty list of numbers in [0, 1]"
    return None


def anchors(v: Any) -> str | None:
    def sizes(x: Any) -> list | None:
        x = x if isinstance(x, list) else [x]
        return x if x and all(number(s) and isinstance(s, int) and s > 0 for s in x) else None

    levels = [sizes(x) for x in v] if isinstance(v, list) else []
    if len(levels) != 5 or any(lv is None for lv in levels) or len({len(lv) for lv in levels}) != 1:
        return ("must list 5 FPN levels, each a positive integer size or a list of them, "
                "with the same number of sizes per level")
    return None


def ratios(v: Any) -> str | None:
    if not isinstance(v, list) or not v or not all(number(x) and x > 0 for x in v):
        return "must be a non-empty list of positive numbers"
    return None


NUM = (int, float)
TRAIN_KEYS: dict[str, tuple[type | tuple[type, ...], Check | None]] = {
    "iters": (int, positive),
    "batch_size": (int, positive),
    "lr": (NUM, positive),
    "momentum": (NUM, unit),
    "weight_decay": (NUM, non_negative),
    "warmup_iters": (int, non_negative),
    "warmup_factor": (NUM, unit),
    "clip_grad": (NUM, positive),
    "eval_every": (int, positive),
    "eval_score_threshold": (NUM, unit),
    "seed": (int, non_negative),
    "hflip": (bool, boolean),
    "vflip": (bool, boolean),
    "crop_size": (int, non_negative),
}
SCHEMA["model"] = {
    "backend": (str, one_of("torchvision", "detectron2")),
    "d2_config": (str, lambda v: None),
    "backbone": (str, one_of("resnet18", "resnet34", "resnet50", "resnet101")),
    "norm": (str, one_of("group", "batch", "frozen")),
    "head_norm": (str, one_of("group", "none")),
    "box_head_convs": (int, non_negative),
    "fpn_channels": (int, positive),
    "box_head_dim": (int, positive),
    "mask_head_channels": (int, positive),
    "mask_head_layers": (int, positive),
    "anchor_sizes": (list, anchors),
    "aspect_ratios": (list, ratios),
    "rpn_fg_iou": (NUM, open_unit),
    "rpn_bg_iou": (NUM, open_unit),
    "mask_geometry": (str, one_of("exact", "torchvision")),
    "mask_resolution": (int, one_of_int(28, 56)),
    "min_size": (int, positive),
    "max_size": (int, positive),
    "detections_per_img": (int, positive),
    "rpn_batch_per_image": (int, positive),
    "roi_batch_per_image": (int, positive),
    "rpn_pre_nms_train": (int, positive),
    "rpn_post_nms_train": (int, positive),
    "rpn_pre_nms_test": (int, positive),
    "rpn_post_nms_test": (int, positive),
    "box_nms_thresh": (NUM, unit),
    "box_score_thresh": (NUM, unit),
    "mask_threshold": (NUM, open_unit),
}
SCHEMA["pretrain"] = {"init": (str, one_of("none", "imagenet", "coco")), **TRAIN_KEYS, "val_images": (int, positive)}
SCHEMA["finetune"] = {"init": (str, one_of("checkpoint", "none", "imagenet", "coco")),
                      "init_checkpoint": (dict, options("init-checkpoint")), **TRAIN_KEYS}
SCHEMA["predict"] = {"tta": (bool, boolean), "tta_iou": (NUM, open_unit), "detections_per_img": (int, non_negative)}
SCHEMA["thresholds"] = {"grid": (list, grid), "fallback": (NUM, unit)}
SCHEMA["postprocess"] = {"min_size": (int, non_negative), "max_lost": (NUM, unit), "mask_nms_iou": (NUM, unit),
                         "vote_min_score": (NUM, unit)}


def validate_params(data: Any, *, where: str) -> dict[str, Any]:
    """Reject unknown sections/keys, wrong types and impossible values, naming the key."""
    if not isinstance(data, dict):
        raise CellpipeError("params must be a mapping of sections", where=where)
    for section, values in data.items():
        if section not in SCHEMA:
            raise CellpipeError(f"unknown params section {section!r}; known: {', '.join(SCHEMA)}", where=where)
        if not isinstance(values, dict):
            raise CellpipeError(f"params section {section!r} must be a mapping", where=where)
        for key, value in values.items():
            spec = SCHEMA[section].get(key)
            if spec is None:
                raise CellpipeError(f"unknown params key {section}.{key}", where=where)
            types, check = spec
            if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
                raise CellpipeError(f"{section}.{key} must be {_name(types)}, got {value!r}", where=where)
            if not isinstance(value, types):
                raise CellpipeError(f"{section}.{key} must be {_name(types)}, got {value!r}", where=where)
            problem = check(value) if check else None
            if problem:
                raise CellpipeError(f"{section}.{key} {problem} (got {value!r})", where=where)
    for section, keys in SCHEMA.items():
        missing = [k for k in keys if k not in data.get(section, {})]
        if section in data and missing:
            raise CellpipeError(f"params key {section}.{missing[0]} is missing", where=where)
    return data


def _name(types: type | tuple[type, ...]) -> str:
    ts = types if isinstance(types, tuple) else (types,)
    return " or ".join({"int": "an integer", "float": "a number", "str": "a string", "dict": "a mapping",
                        "bool": "true/false", "list": "a list"}.get(t.__name__, t.__name__) for t in ts)


# Built-in values of the sections a model can be applied with outside a repository
# (``cellpipe predict --skip-val`` on a folder, without params.yaml). The committed
# params.yaml holds the same values (tests/test_plots_page.py checks it).
BUILTIN: dict[str, dict[str, Any]] = {
    "predict": {"tta": False, "tta_iou": 0.5, "detections_per_img": 0},
}
