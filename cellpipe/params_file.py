"""``params.yaml`` as a file: reading it into the typed params, one-line messages, the documented defaults.

The schema is :mod:`cellpipe.config`. Here: the YAML reader (anchors and aliases
refused, values echoed at most a line), the message for the first bad key
(``finetune.lr must be > 0 (got -1)``, renamed keys of earlier versions named),
:func:`load` for a stage (the sections it reads must be in the file DVC tracks), and
:func:`render`: the committed ``params.yaml`` is ``render()`` of the defaults — values
and comments — so it cannot drift from the schema (a test compares them); ``cellpipe
params --defaults`` prints it, ``cellpipe params`` the effective values of a params file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from cellpipe.config import SECTIONS, Model, Params, Section
from cellpipe.errors import CellpipeError
from cellpipe.paths import cut, preview

_MESSAGES = {
    "greater_than": "must be > {gt}",
    "greater_than_equal": "must be ≥ {ge}",
    "less_than": "must be < {lt}",
    "less_than_equal": "must be ≤ {le}",
    "int_type": "must be an integer",
    "float_type": "must be a number",
    "bool_type": "must be true/false",
    "string_type": "must be a string",
    "list_type": "must be a list",
    "dict_type": "must be a mapping",
    "model_type": "must be a mapping",
    "too_short": "must not be empty",
    "string_too_short": "must be a non-empty path",
}


# keys of earlier versions, and what to write instead
RENAMED = {
    "data.kaggle_dir": "data.kaggle.kaggle-dir",
    "data.livecell_json": "data.livecell.livecell-json",
    "data.livecell_images": "data.livecell.livecell-images",
    "thresholds.min_size": "postprocess.min_size",
    "pretrain.eval_min_size": "postprocess.min_size",
    "finetune.eval_min_size": "postprocess.min_size",
    "coco": "cv (cv.val_fraction, cv.seed; with cv.folds and cv.lockbox_fraction)",
}
OLD_VALUES = {("finetune.init", "livecell"): "finetune.init: checkpoint (finetune.init_checkpoint names the file)"}


def message(err: dict[str, Any]) -> str:
    """The one-line message of a pydantic error about a params key."""
    loc = [str(x) for x in err["loc"] if not isinstance(x, int) and x not in ("int", "list[int]")]
    key = ".".join(loc)
    if loc[-1:] == ["[key]"]:  # a bad key of a mapping (model.class_scales: {astra: 0.5}): the mapping's name
        key = ".".join(loc[:-2]) + " key"
    kind, ctx = err["type"], err.get("ctx", {})
    got = err.get("input")
    shown = preview(got)  # a 50 MB value is named, never echoed
    if kind == "extra_forbidden":
        if key in RENAMED:
            return f"params key {key} was renamed: write {RENAMED[key]} instead"
        return f"unknown params key {key}" if len(loc) > 1 else f"unknown params section {key!r}; known: {', '.join(SECTIONS)}"
    if kind == "missing":
        return f"params key {key} is missing"
    if kind == "literal_error" and isinstance(got, str) and (key, got) in OLD_VALUES:
        return f"{key}: {shown} was renamed: write {OLD_VALUES[key, got]}"
    if kind == "literal_error":
        return f"{key} must be one of {ctx.get('expected', '').replace(' or ', ', ')} (got {shown})"
    if kind in _MESSAGES:
        bounds = {k: f"{v:g}" if isinstance(v, int | float) else v for k, v in ctx.items()}
        return f"{key} {_MESSAGES[kind].format(**bounds)} (got {shown})"
    msg = cut(str(err["msg"]).removeprefix("Value error, "))
    return f"{key} {msg} (got {shown})" if key else msg


def validate(data: Any, *, where: str) -> Params:
    """``params.yaml`` content → :class:`Params`, or one line naming the first bad key."""
    if not isinstance(data, dict):
        raise CellpipeError("params must be a mapping of sections", where=where)
    try:
        return Params.model_validate(data)
    except ValidationError as exc:
        raise CellpipeError(message(exc.errors()[0]), where=where) from None


_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's C parser: a 50 MB file in a second


def parse_yaml(text: str) -> Any:
    """YAML text → data, refusing anchors and aliases.

    A 3 KB file of nested aliases expands to gigabytes (a "billion laughs") and params
    never need them: the events are scanned for an alias first (cheap, in C), and only
    a file without one is built.
    """
    for event in yaml.parse(text, Loader=_LOADER):
        if isinstance(event, yaml.AliasEvent):
            raise yaml.YAMLError(
                f"line {event.start_mark.line + 1}: YAML alias *{cut(str(event.anchor), 30)} — params files may not use "
                "anchors and aliases (&x / *x): write the values out"
            )
    return yaml.load(text, Loader=_LOADER)  # noqa: S506 - a safe loader


def read(path: str | Path) -> tuple[Params, set[str]]:
    """Load a params file: the typed params and the sections the file itself holds."""
    path = Path(path)
    if not path.is_file():
        raise CellpipeError("params file is missing", where=str(path))
    try:
        data = parse_yaml(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise CellpipeError("params file is not UTF-8 text", where=str(path)) from None
    except yaml.YAMLError as exc:
        raise CellpipeError(f"not valid YAML ({cut(str(exc).splitlines()[0])})", where=str(path)) from None
    data = {} if data is None else data
    return validate(data, where=str(path)), set(data) if isinstance(data, dict) else set()


# --------------------------------------------------------------------------- the documented file

HEADER = """\
# Every knob of the pipeline, one section per stage, with its default. Each stage in dvc.yaml
# lists only the sections it reads, so changing one reruns only what it affects.
# Generated from cellpipe/config.py (`cellpipe params --defaults`); a test keeps the two equal.
"""


def _flow(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=10_000).strip().removesuffix("\n...")


def _lines(model: Section, indent: str) -> list[str]:
    out = []
    for name, field in type(model).model_fields.items():
        key = field.alias or name
        value = getattr(model, name)
        if isinstance(value, Section):
            out.append(f"{indent}{key}:" + (f"  # {field.description}" if field.description else ""))
            out += _lines(value, indent + "  ")
            continue
        text = f"{indent}{key}: {_flow(value if not isinstance(value, tuple) else list(value))}"
        if field.description:
            text = f"{text.ljust(28)}  # {field.description}" if len(text) < 60 else f"{text}  # {field.description}"
        out.append(text)
    return out


def render(params: Params | None = None) -> str:
    """params.yaml text of ``params`` (default: the defaults), with every knob's help as a comment."""
    params = params or Params()
    out = [HEADER]
    for name in SECTIONS:
        section = getattr(params, name)
        doc = " ".join((type(section).__doc__ or "").split())
        if doc:
            out.append("\n".join(f"# {line}" for line in _wrap(doc, 96)))
        out.append(f"{name}:")
        out += _lines(section, "  ")
        out.append("")
    return "\n".join(out)


def _wrap(text: str, width: int) -> list[str]:
    import textwrap

    return textwrap.wrap(text, width) or [""]


DEFAULT_FILE = Path("params.yaml")


def load(path: str | Path, *sections: str, builtin: bool = False) -> Params:
    """The params of ``path``, which must hold the ``sections`` a stage reads (DVC tracks them there).

    With ``builtin``, a missing file at the default path gives the built-in defaults,
    said in one log line: a model can be applied outside a repository.
    """
    path = Path(path)
    if builtin and not path.is_file() and path == DEFAULT_FILE:
        from cellpipe.console import log

        params = Params()
        shown = {s: getattr(params, s).model_dump(by_alias=True) for s in sections}
        log(f"no {path} here: built-in params {shown}")
        return params
    params, held = read(path)
    missing = [s for s in sections if s not in held]
    if missing:
        raise CellpipeError(
            f"params section '{missing[0]}' is missing (the file holds {', '.join(sorted(held)) or 'no sections'})",
            where=str(path),
        )
    return params


PARAMS_HELP = "params file (the pipeline's knobs, grouped per stage)"


def checkpoint_model(stored: Any, *, where: str) -> Model:
    """The ``model`` config a checkpoint was trained with (keys of older versions dropped, types from JSON relaxed).

    Checkpoints from before ``mask_geometry`` existed were trained with torchvision's.
    An impossible value (``min_size`` 10⁶) is a one-line error naming the key and the bound.
    """
    if not isinstance(stored, dict):
        raise CellpipeError("its model config is not a mapping", where=where)
    known = {k: v for k, v in {"mask_geometry": "torchvision", **stored}.items() if k in Model.model_fields}
    try:
        return Model.model_validate(known, strict=False)
    except ValidationError as exc:
        raise CellpipeError(f"its model config is not valid: model.{message(exc.errors()[0])}", where=where) from None
