"""The model repository format, owned here alone (numpy/stdlib only; export, service, evaluation use it).

```
REPO/NAME/config.pbtxt      Triton's model configuration (version_policy, max_batch_size, batching, tensors)
REPO/NAME/labels.txt        one class name per line (``label_filename`` of the ``logits`` output)
REPO/NAME/N/model.onnx      the graph
REPO/NAME/N/rescom.json     metadata; written last (atomically), so its presence marks a complete version
```

Rules (Triton's): a model name is 1-64 letters, digits, ``_``, ``-`` or ``.``, starting with a letter or digit;
a version is a folder named by a positive integer without leading zeros (``0``, ``01``, ``v1`` are ignored).

``config.pbtxt`` is protobuf text format. :func:`parse_config` reads the fields this project uses into a
:class:`ModelConfig`; :func:`update_config_text` rewrites only named top-level fields and keeps everything
else byte for byte (user comments, an edited ``instance_group``, fields it does not know).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "CONFIG_FILE",
    "LABELS_FILE",
    "METADATA_FILE",
    "MODEL_FORMAT",
    "MODEL_NAME_PATTERN",
    "ConfigError",
    "ModelConfig",
    "VersionPolicy",
    "check_model_name",
    "config_path",
    "is_version_name",
    "latest_version",
    "list_models",
    "list_versions",
    "metadata_path",
    "metrics_summary",
    "next_version",
    "parse_config",
    "parse_version",
    "read_config",
    "read_labels",
    "read_metadata",
    "render_config",
    "update_config_text",
    "version_path",
    "write_labels",
    "write_metadata",
    "write_text_atomic",
]

METADATA_FILE = "rescom.json"
CONFIG_FILE = "config.pbtxt"
LABELS_FILE = "labels.txt"
MODEL_FORMAT = "rescom-model/1"
MODEL_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_VERSION_NAME = re.compile(r"[1-9][0-9]*")
ONNX_TO_TRITON = {"UINT8": "TYPE_UINT8", "FP32": "TYPE_FP32", "FP16": "TYPE_FP16"}


class ConfigError(ValueError):
    """``config.pbtxt`` cannot be read; the message names the file and what is wrong."""


# --- names and versions ------------------------------------------------------------------------------------------


def check_model_name(name: str) -> str:
    """Return ``name`` if it is a valid model name.

    Raises:
        ValueError: one line saying what is allowed.
    """
    if not isinstance(name, str) or not MODEL_NAME_PATTERN.match(name):
        raise ValueError(
            f"model name {name!r} is not allowed: use 1-64 letters, digits, '_', '-' or '.', starting with a "
            "letter or digit"
        )
    return name


def is_version_name(text: str) -> bool:
    """Triton's rule: a positive integer without leading zeros."""
    return bool(_VERSION_NAME.fullmatch(text))


def parse_version(value: str | int) -> int:
    """A version given by a user (``?version=3``, ``NAME:3``, ``--version 3``) as an integer.

    Raises:
        ValueError: not a positive integer without leading zeros.
    """
    text = str(value).strip()
    if isinstance(value, bool) or not is_version_name(text):
        raise ValueError(f"version must be a positive integer without leading zeros, got {value!r}")
    return int(text)


def version_path(repository: str | Path, name: str, version: int) -> Path:
    """``REPO/NAME/N``."""
    return Path(repository) / name / str(version)


def metadata_path(repository: str | Path, name: str, version: int) -> Path:
    """``REPO/NAME/N/rescom.json``."""
    return version_path(repository, name, version) / METADATA_FILE


def config_path(repository: str | Path, name: str) -> Path:
    """``REPO/NAME/config.pbtxt``."""
    return Path(repository) / name / CONFIG_FILE


def list_models(repository: str | Path) -> list[str]:
    """Model folders of the repository whose names are valid, sorted."""
    root = Path(repository)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and MODEL_NAME_PATTERN.match(p.name))


def list_versions(repository: str | Path, name: str, *, complete: bool = False) -> list[int]:
    """Version numbers of ``name``, ascending; with ``complete`` only those that hold a ``rescom.json``."""
    model_dir = Path(repository) / name
    if not model_dir.is_dir():
        return []
    return sorted(
        int(p.name)
        for p in model_dir.iterdir()
        if p.is_dir() and is_version_name(p.name) and (not complete or (p / METADATA_FILE).is_file())
    )


def latest_version(repository: str | Path, name: str) -> int:
    """The highest complete version.

    Raises:
        FileNotFoundError: the model has no complete version.
    """
    versions = list_versions(repository, name, complete=True)
    if not versions:
        raise FileNotFoundError(
            f"{Path(repository) / name} has no complete version (N/{METADATA_FILE} beside the graph)"
        )
    return versions[-1]


def next_version(repository: str | Path, name: str) -> int:
    """One above the highest existing version folder (1 for a new model)."""
    versions = list_versions(repository, name)
    return versions[-1] + 1 if versions else 1


# --- files ------------------------------------------------------------------------------------------------------


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename (readers never see half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_metadata(repository: str | Path, name: str, version: int) -> dict[str, Any]:
    """``rescom.json`` of one version as a dict.

    Raises:
        FileNotFoundError: the version has no metadata.
        ValueError: it is not a JSON object.
    """
    path = metadata_path(repository, name, version)
    data = json.loads(path.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object")
    return data


def write_metadata(version_dir: Path, metadata: Mapping[str, Any]) -> Path:
    """Write ``rescom.json`` atomically (write it last: its presence marks the version complete)."""
    path = Path(version_dir) / METADATA_FILE
    write_text_atomic(path, json.dumps(metadata, indent=2) + "\n")
    return path


def read_labels(repository: str | Path, name: str) -> list[str] | None:
    """Class names of ``labels.txt`` (``None`` when there is none)."""
    path = Path(repository) / name / LABELS_FILE
    if not path.is_file():
        return None
    return path.read_text().splitlines()


def write_labels(repository: str | Path, name: str, class_names: Sequence[str]) -> None:
    """Write ``labels.txt`` (one class name per line)."""
    write_text_atomic(Path(repository) / name / LABELS_FILE, "\n".join(class_names) + "\n")


# --- metrics recorded in rescom.json ----------------------------------------------------------------------------


def metrics_summary(metadata: Mapping[str, Any]) -> dict[str, Any] | None:
    """The accuracy figures of a version in one shape, for old and new ``rescom.json`` alike.

    New files record ``metrics = {"raw": {...}, "served": {...}, "thresholds": {"many", "few"}, ...}`` with
    ``top1`` (plain top-1) and ``balanced_acc`` (mean per-class accuracy) in each; older ones only
    ``{"acc", "many", "medium", "few"}`` (raw argmax at training time), read as ``raw`` with ``served`` unknown.

    Returns:
        ``{"served": dict | None, "raw": dict | None, "thresholds": dict | None, "headline": float | None}``
        where ``headline`` is the served top-1 when recorded, else the raw one; ``None`` without metrics.
    """
    metrics = metadata.get("metrics")
    if not isinstance(metrics, Mapping):
        return None
    if "raw" in metrics or "served" in metrics:
        raw, served = metrics.get("raw"), metrics.get("served")
    else:
        raw = {k: metrics.get(k) for k in ("many", "medium", "few")}
        raw["top1"] = metrics.get("acc")
        served = None
    headline = (served or {}).get("top1")
    if headline is None:
        headline = (raw or {}).get("top1")
    return {
        "served": served,
        "raw": raw,
        "thresholds": metrics.get("thresholds"),
        "headline": headline,
        "headline_kind": "served" if (served or {}).get("top1") is not None else "raw",
    }


# --- config.pbtxt: version policy and the configuration this project reads ------------------------------------


@dataclass(frozen=True)
class VersionPolicy:
    """Triton's ``version_policy``: which versions are served.

    Attributes:
        kind: ``latest`` (the newest ``num_versions``), ``all`` or ``specific`` (exactly ``versions``).
        num_versions: for ``latest``.
        versions: for ``specific``.
    """

    kind: str = "latest"
    num_versions: int = 1
    versions: tuple[int, ...] = ()

    def select(self, available: Iterable[int]) -> list[int]:
        """The versions this policy serves among ``available``, newest first."""
        newest_first = sorted(set(available), reverse=True)
        if self.kind == "all":
            return newest_first
        if self.kind == "specific":
            return [v for v in newest_first if v in self.versions]
        return newest_first[: self.num_versions]

    def to_pbtxt(self) -> str:
        """The ``version_policy`` line."""
        if self.kind == "all":
            return "version_policy: { all: {} }"
        if self.kind == "specific":
            return f"version_policy: {{ specific: {{ versions: [ {', '.join(map(str, self.versions))} ] }} }}"
        return f"version_policy: {{ latest: {{ num_versions: {self.num_versions} }} }}"

    def to_json(self) -> dict[str, Any]:
        """Triton's JSON form (``/v2/models/NAME/config``)."""
        if self.kind == "all":
            return {"all": {}}
        if self.kind == "specific":
            return {"specific": {"versions": list(self.versions)}}
        return {"latest": {"num_versions": self.num_versions}}

    def describe(self) -> str:
        """``latest 2``, ``all``, ``specific [1, 3]``."""
        if self.kind == "specific":
            return f"specific [{', '.join(map(str, self.versions))}]"
        return "all" if self.kind == "all" else f"latest {self.num_versions}"


@dataclass(frozen=True)
class ModelConfig:
    """The fields of ``config.pbtxt`` that this project reads (everything else is kept but not interpreted).

    Attributes:
        name: ``name`` (Triton requires it to equal the folder name when given).
        platform: ``platform``.
        max_batch_size: ``max_batch_size`` (``None`` when absent).
        version_policy: parsed ``version_policy`` (Triton's default ``latest 1`` when absent).
        max_queue_delay_us: ``dynamic_batching.max_queue_delay_microseconds`` (``None`` when absent).
        preferred_batch_sizes: ``dynamic_batching.preferred_batch_size``.
        dynamic_batching: whether a ``dynamic_batching`` block is present.
        instance_group: the ``instance_group`` entries as dicts.
        inputs: ``input`` entries as dicts (``name``, ``data_type``, ``dims``).
        outputs: ``output`` entries as dicts (``name``, ``data_type``, ``dims``, ``label_filename``).
    """

    name: str | None = None
    platform: str | None = None
    max_batch_size: int | None = None
    version_policy: VersionPolicy = field(default_factory=VersionPolicy)
    max_queue_delay_us: int | None = None
    preferred_batch_sizes: tuple[int, ...] = ()
    dynamic_batching: bool = False
    instance_group: tuple[dict[str, Any], ...] = ()
    inputs: tuple[dict[str, Any], ...] = ()
    outputs: tuple[dict[str, Any], ...] = ()

    @property
    def label_filename(self) -> str | None:
        """``label_filename`` of the first output that names one."""
        return next((o["label_filename"] for o in self.outputs if o.get("label_filename")), None)


def read_config(repository: str | Path, name: str) -> ModelConfig | None:
    """``REPO/NAME/config.pbtxt`` parsed (``None`` when the file does not exist).

    Raises:
        ConfigError: the file is not valid text format or a field has the wrong type.
    """
    path = config_path(repository, name)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{name}/{CONFIG_FILE} is not readable: {err}") from None
    return parse_config(text, where=f"{name}/{CONFIG_FILE}")


def parse_config(text: str, where: str = CONFIG_FILE) -> ModelConfig:
    """Parse ``config.pbtxt`` text into a :class:`ModelConfig`.

    Raises:
        ConfigError: one line with ``where`` and the field at fault.
    """
    fields = _fields_to_dict(_Parser(text, where).parse_top())
    try:
        batching = _one(fields, "dynamic_batching")
        return ModelConfig(
            name=_opt_str(_one(fields, "name")),
            platform=_opt_str(_one(fields, "platform")),
            max_batch_size=_opt_int(_one(fields, "max_batch_size"), "max_batch_size", minimum=0),
            version_policy=_version_policy(_one(fields, "version_policy")),
            max_queue_delay_us=None
            if not isinstance(batching, dict)
            else _opt_int(
                _one(batching, "max_queue_delay_microseconds"),
                "dynamic_batching.max_queue_delay_microseconds",
                minimum=0,
            ),
            preferred_batch_sizes=tuple(
                _int(v, "dynamic_batching.preferred_batch_size", minimum=1)
                for v in (_many(batching, "preferred_batch_size") if isinstance(batching, dict) else [])
            ),
            dynamic_batching=batching is not None,
            instance_group=tuple(_message(g, "instance_group") for g in _many(fields, "instance_group")),
            inputs=tuple(_tensor(t, "input") for t in _many(fields, "input")),
            outputs=tuple(_tensor(t, "output") for t in _many(fields, "output")),
        )
    except ValueError as err:
        raise ConfigError(f"{where}: {err}") from None


def render_config(
    name: str,
    inputs: Sequence[Mapping[str, Any]],
    outputs: Sequence[Mapping[str, Any]],
    max_batch_size: int,
    max_queue_delay_us: int = 2000,
    preferred_batch_sizes: Sequence[int] = (),
    label_file: str | None = LABELS_FILE,
    policy: VersionPolicy | None = None,
) -> str:
    """A new ``config.pbtxt`` for an ONNX Runtime model with a dynamic batch axis.

    ``shape`` entries in ``inputs``/``outputs`` include the batch axis (-1), which Triton leaves out of ``dims``
    when ``max_batch_size > 0``.
    """
    preferred = ""
    if preferred_batch_sizes:
        preferred = f"\n  preferred_batch_size: [ {', '.join(str(b) for b in preferred_batch_sizes)} ]"
    return (
        f"{render_owned_fields(name, inputs, outputs, label_file)}"
        f"max_batch_size: {max_batch_size}\n"
        f"dynamic_batching {{\n  max_queue_delay_microseconds: {max_queue_delay_us}{preferred}\n}}\n"
        "instance_group [ { kind: KIND_AUTO, count: 1 } ]\n"
        f"{(policy or VersionPolicy()).to_pbtxt()}\n"
    )


def render_owned_fields(
    name: str,
    inputs: Sequence[Mapping[str, Any]],
    outputs: Sequence[Mapping[str, Any]],
    label_file: str | None = LABELS_FILE,
) -> str:
    """``name``, ``platform``, ``input`` and ``output``: the fields export owns and rewrites at every export."""

    def tensor(t: Mapping[str, Any], with_label: bool) -> str:
        dims = ", ".join(str(d) for d in list(t["shape"])[1:])
        label = f'\n    label_filename: "{label_file}"' if with_label and label_file else ""
        return (
            f'  {{\n    name: "{t["name"]}"\n    data_type: {ONNX_TO_TRITON[t["datatype"]]}\n'
            f"    dims: [ {dims} ]{label}\n  }}"
        )

    ins = ",\n".join(tensor(t, False) for t in inputs)
    outs = ",\n".join(tensor(t, t["name"] == "logits") for t in outputs)
    return f'name: "{name}"\nplatform: "onnxruntime_onnx"\ninput [\n{ins}\n]\noutput [\n{outs}\n]\n'


def update_config_text(text: str, replacements: Mapping[str, str]) -> str:
    """Replace top-level fields of ``config.pbtxt`` text and keep every other byte (comments included).

    Args:
        text: the current file.
        replacements: field name -> its new text (one or more complete field statements, e.g. the output of
            :meth:`VersionPolicy.to_pbtxt`). Every occurrence of the field is removed; the new text takes the
            place of the first one, or is appended when the field is absent. Comments inside a replaced field
            go with it; comments elsewhere stay.

    Raises:
        ConfigError: ``text`` is not valid text format.
    """
    spans = [(fname, start, end) for fname, _, start, end in _Parser(text, CONFIG_FILE).parse_top()]
    out, pos, placed = [], 0, set()
    for fname, start, end in spans:
        if fname not in replacements:
            continue
        out.append(text[pos:start])
        if fname not in placed:
            out.append(replacements[fname].rstrip("\n"))
            placed.add(fname)
        else:  # a repeated occurrence: drop it and the line break that followed it
            while end < len(text) and text[end] in " \t":
                end += 1
            if end < len(text) and text[end] == "\n" and (not out[-1] or out[-1].endswith("\n")):
                end += 1
        pos = end
    out.append(text[pos:])
    result = "".join(out)
    missing = [replacements[f].rstrip("\n") for f in replacements if f not in placed]
    if missing:
        result = result.rstrip("\n") + "\n" + "\n".join(missing) + "\n"
    return result


# --- protobuf text format: a small reader that also reports where each top-level field lies ---------------------

_TOKEN = re.compile(
    r"""(?P<ws>\s+)|(?P<comment>\#[^\n]*)|(?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')"""
    r"""|(?P<punct>[{}\[\]<>:,;])|(?P<word>[A-Za-z0-9_.+\-]+)"""
)


class _Parser:
    """Recursive-descent reader of protobuf text format into ``[(field, value, start, end)]`` per message."""

    def __init__(self, text: str, where: str) -> None:
        self.where = where
        self.tokens: list[tuple[str, str, int, int]] = []
        pos = 0
        while pos < len(text):
            m = _TOKEN.match(text, pos)
            if m is None:
                raise ConfigError(f"{where}: unexpected character {text[pos]!r} at line {_line(text, pos)}")
            if m.lastgroup not in ("ws", "comment"):
                self.tokens.append((m.lastgroup or "", m.group(), m.start(), m.end()))
            pos = m.end()
        self.text = text
        self.i = 0

    def parse_top(self) -> list[tuple[str, Any, int, int]]:
        fields = self._message(closer=None)
        return fields

    def _peek(self) -> tuple[str, str, int, int] | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def _next(self, what: str) -> tuple[str, str, int, int]:
        tok = self._peek()
        if tok is None:
            raise ConfigError(f"{self.where}: unexpected end of file, expected {what}")
        self.i += 1
        return tok

    def _fail(self, tok: tuple[str, str, int, int], what: str) -> ConfigError:
        return ConfigError(
            f"{self.where}: expected {what} at line {_line(self.text, tok[2])}, found {tok[1]!r}"
        )

    def _message(self, closer: str | None) -> list[tuple[str, Any, int, int]]:
        fields: list[tuple[str, Any, int, int]] = []
        while True:
            tok = self._peek()
            if tok is None:
                if closer is not None:
                    raise ConfigError(f"{self.where}: unexpected end of file, expected {closer!r}")
                return fields
            if tok[1] == closer:
                self.i += 1
                return fields
            if tok[0] != "word":
                raise self._fail(tok, "a field name")
            self.i += 1
            colon = self._peek()
            if colon is not None and colon[1] == ":":
                self.i += 1
            value, end = self._value()
            sep = self._peek()
            if sep is not None and sep[1] in (",", ";"):
                self.i += 1
                end = sep[3]
            fields.append((tok[1], value, tok[2], end))

    def _value(self) -> tuple[Any, int]:
        tok = self._next("a value")
        if tok[1] in ("{", "<"):
            inner = self._message("}" if tok[1] == "{" else ">")
            return _fields_to_dict(inner), self.tokens[self.i - 1][3]
        if tok[1] == "[":
            items: list[Any] = []
            while True:
                nxt = self._peek()
                if nxt is not None and nxt[1] == "]":
                    self.i += 1
                    return items, nxt[3]
                value, _ = self._value()
                items.append(value)
                nxt = self._next("',' or ']'")
                if nxt[1] == "]":
                    return items, nxt[3]
                if nxt[1] != ",":
                    raise self._fail(nxt, "',' or ']'")
        if tok[0] == "string":
            return _unquote(tok[1]), tok[3]
        if tok[0] == "word":
            return _scalar(tok[1]), tok[3]
        raise self._fail(tok, "a value")


def _line(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def _unquote(token: str) -> str:
    body = token[1:-1]
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t"}.get(m.group(1), m.group(1)), body)


class _Enum(str):
    """A bare identifier (``KIND_AUTO``, ``TYPE_FP32``, ``true``), as opposed to a quoted string."""


def _scalar(word: str) -> Any:
    for convert in (int, float):
        try:
            return convert(word)
        except ValueError:
            pass
    return _Enum(word)


def _fields_to_dict(fields: list[tuple[str, Any, int, int]]) -> dict[str, list[Any]]:
    """``{field: [values...]}``; a ``[...]`` value is spread (``f: [a, b]`` equals ``f: a f: b``)."""
    out: dict[str, list[Any]] = {}
    for name, value, _, _ in fields:
        out.setdefault(name, []).extend(value if isinstance(value, list) else [value])
    return out


def _one(fields: Mapping[str, list[Any]] | None, name: str) -> Any:
    values = (fields or {}).get(name) or []
    return values[-1] if values else None


def _many(fields: Mapping[str, list[Any]] | None, name: str) -> list[Any]:
    return list((fields or {}).get(name) or [])


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _opt_int(value: Any, what: str, minimum: int) -> int | None:
    return None if value is None else _int(value, what, minimum)


def _int(value: Any, what: str, minimum: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{what} must be an integer >= {minimum}, got {value!r}")
    return value


def _message(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"{what} entries must be messages {{ ... }}, got {value!r}")
    return {k: (v if len(v) != 1 else v[0]) for k, v in value.items()}


def _tensor(value: Any, what: str) -> dict[str, Any]:
    t = _message(value, what)
    dims = value.get("dims", [])
    if not all(isinstance(d, int) for d in dims):
        raise ValueError(f"{what} {t.get('name')!r}: dims must be integers, got {dims}")
    t["dims"] = list(dims)
    return t


def _version_policy(value: Any) -> VersionPolicy:
    if value is None:
        return VersionPolicy()
    allowed = "latest { num_versions: N }, all {} or specific { versions: [...] }"
    if not isinstance(value, dict) or len(value) != 1:
        raise ValueError(f"version_policy must hold exactly one of {allowed}")
    kind, entries = next(iter(value.items()))
    body = entries[-1] if entries else {}
    if not isinstance(body, dict):
        raise ValueError(f"version_policy.{kind} must be a message; allowed: {allowed}")
    if kind == "all":
        return VersionPolicy("all")
    if kind == "latest":
        n = _opt_int(_one(body, "num_versions"), "version_policy.latest.num_versions", minimum=1)
        return VersionPolicy("latest", num_versions=n or 1)
    if kind == "specific":
        versions = _many(body, "versions")
        if not versions or not all(isinstance(v, int) and v >= 1 for v in versions):
            raise ValueError(f"version_policy.specific.versions must list positive integers, got {versions}")
        return VersionPolicy("specific", versions=tuple(sorted(set(versions))))
    raise ValueError(f"version_policy.{kind} is not a policy; allowed: {allowed}")
