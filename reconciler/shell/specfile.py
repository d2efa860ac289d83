"""Reading a spec file: YAML parsed with positions, validated by the models, and every
problem reported at once as ``FILE:LINE:COLUMN: path.to.field: message``.
"""

from __future__ import annotations

import difflib
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, get_args

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from reconciler._files import read_limited
from reconciler.core import yamldoc
from reconciler.core.spec import ClusterSpec, SpecDocument
from reconciler.core.yamldoc import Loc, Position
from reconciler.errors import SpecError


@dataclass(frozen=True)
class LoadedSpec:
    """A valid spec, the file it came from and its text, exactly as read. A spec embedded in
    a saved plan is given the place of the spec file it was made from, as found when the
    plan is applied (see :func:`reconciler.shell.session.saved_spec`)."""

    path: Path  # absolute, so that relative kubeconfigs stay right if the working directory changes
    document: SpecDocument
    text: str = ""  # the spec's text: the bytes read, which are UTF-8

    @property
    def digest(self) -> str:
        """``sha256:`` and the hex digest of the spec's bytes, as a saved plan records it."""
        return spec_text_digest(self.text)

    @property
    def base(self) -> Path:
        """The directory relative paths in the spec are relative to: the spec file's."""
        return self.path.parent

    def kubeconfig_path(self, cluster: ClusterSpec) -> Path | None:
        """The cluster's kubeconfig, '~' expanded; a relative path is taken relative to
        the spec file's directory, so a spec and its kubeconfigs can move together.
        None for a cluster reached with ``inCluster: true``."""
        if cluster.kubeconfig is None:
            return None
        return self.resolve(cluster.kubeconfig)

    def management_kubeconfig_path(self, cluster: ClusterSpec) -> Path | None:
        """The kubeconfig of the cluster's management cluster, resolved the same way; None
        when the cluster names none."""
        return None if cluster.management is None else self.resolve(cluster.management.kubeconfig)

    def resolve(self, path: str) -> Path:
        """A path as the spec writes it: '~' expanded, relative to the spec file's directory."""
        expanded = Path(path).expanduser()
        return expanded if expanded.is_absolute() else self.base / expanded


def spec_text_digest(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


def load_spec(path: Path) -> LoadedSpec:
    """Read, parse and validate a spec file; :class:`SpecError` lists every problem."""
    return _loaded(path, path.absolute(), _read(path))


def load_spec_text(text: str, *, place: Path, source: str) -> LoadedSpec:
    """A spec's text read from elsewhere (a saved plan), validated as :func:`load_spec` does,
    as if it were the file at ``place``; problems name ``source``."""
    try:
        yamldoc.check_size(len(text.encode("utf-8")), yamldoc.SPEC)
    except yamldoc.DocumentError as exc:
        raise _invalid(source, exc.position, exc.problem, title="cannot read the spec") from None
    return _loaded(source, place.absolute(), text)


def _loaded(path: Path | str, place: Path, text: str) -> LoadedSpec:
    data, positions = _parse(path, text)
    try:
        # by_name=False: a spec spells fields as documented (renewBefore), never as the
        # Python attribute (renew_before).
        document = SpecDocument.model_validate(data, by_name=False)
    except ValidationError as exc:
        problems = [(_position_of(positions, error), _dotted(error["loc"]), _message(error)) for error in exc.errors()]
        problems.sort(key=lambda problem: problem[0])
        raise SpecError(f"{path}: invalid spec ({_count(len(problems), 'error')})",
                        problems=[_line(path, *problem) for problem in problems]) from exc
    return LoadedSpec(path=place, document=document, text=text)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _line(path: Path | str, position: Position, where: str, message: str) -> str:
    line, column = position
    return f"{path}:{line}:{column}: {where}: {message}" if where else f"{path}:{line}:{column}: {message}"


def _invalid(path: Path | str, position: Position, message: str, *, title: str = "invalid spec (1 error)") -> SpecError:
    return SpecError(f"{path}: {title}", problems=[_line(path, position, "", message)])


def _read(path: Path) -> str:
    try:
        raw = read_limited(path, yamldoc.SPEC.max_bytes)
    except OSError as exc:
        raise _invalid(path, (1, 1), f"cannot read: {exc.strerror or exc}", title="cannot read the spec") from exc
    try:
        return yamldoc.decode(raw, yamldoc.SPEC)
    except yamldoc.DocumentError as exc:
        raise _invalid(path, exc.position, exc.problem, title="cannot read the spec") from None


def _parse(path: Path | str, text: str) -> tuple[dict, yamldoc.Positions]:
    try:
        document = yamldoc.load(text, yamldoc.SPEC)
    except yamldoc.DocumentError as exc:
        raise _invalid(path, exc.position, exc.problem, title="invalid YAML") from None
    root, positions = document.data, document.positions
    if root is None:
        raise _invalid(path, (1, 1), "the file holds no document; expected a CASpec mapping")
    if not isinstance(root, dict):
        raise _invalid(path, positions.nearest(()), f"the document is {_kind(root)}; expected a CASpec mapping")
    return root, positions


def _kind(value: Any) -> str:
    """What a YAML value is, in the spec's words, with its article."""
    if value is None:
        return "an empty value"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    return "a string" if isinstance(value, str) else f"a {type(value).__name__}"


def _position_of(positions: yamldoc.Positions, error: ErrorDetails) -> Position:
    """Where an error shows: an unknown field at its key, a missing field at the mapping
    that lacks it, anything else at the value at fault (or, where the YAML does not spell
    it out, its nearest parent)."""
    loc = tuple(error["loc"])
    if error["type"] == "extra_forbidden" and loc in positions.keys:
        return positions.keys[loc]
    return positions.nearest(loc[:-1] if error["type"] == "missing" else loc)


def _dotted(loc: Loc) -> str:
    """``("spec", "clusters", 0, "name")`` as ``spec.clusters[0].name``."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _shown(value: Any) -> str:
    """A wrong value, quoted when it is short and one line. A long one, or one that looks
    like a PEM block, is not: a key or token pasted into the wrong field must not be
    printed, not even its first characters."""
    text = repr(value)
    if len(text) > 40 or "\\n" in text or "-----" in text:
        return f"a value of {len(str(value))} characters, not shown"
    return text


def _message(error: ErrorDetails) -> str:
    """pydantic's message, in words closer to the spec where pydantic's are generic."""
    kind, value = error["type"], error.get("input")
    if kind == "extra_forbidden":
        return _unknown_field(tuple(error["loc"]))
    if kind == "missing":
        return "required field is missing"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"must be a mapping; got {_kind(value)}"
    if kind == "list_type":
        return f"must be a list; got {_kind(value)}"
    if kind == "int_type":  # strict: not true, 3.0 or "22"
        return f"must be a whole number; got {_kind(value)}, {_shown(value)}"
    if kind in ("bool_parsing", "bool_type"):
        return f"must be true or false; got {_shown(value)}"
    if kind == "literal_error":
        return f"must be {error['ctx']['expected']}; got {_shown(value)}"
    if kind == "value_error":
        return str(error["ctx"]["error"])
    if kind == "string_pattern_mismatch":
        return f"{error['msg']}; got {_shown(value)}"
    return error["msg"]


def _unknown_field(loc: Loc) -> str:
    known = _field_names(loc[:-1])
    close = difflib.get_close_matches(str(loc[-1]), known, n=1)
    if close:
        return f"unknown field; did you mean {close[0]!r}?"
    return f"unknown field (known here: {', '.join(known)})" if known else "unknown field"


def _field_names(loc: Loc) -> list[str]:
    """The field names a spec may use at ``loc``, found by walking the models."""
    model: type[BaseModel] = SpecDocument
    for part in loc:
        if isinstance(part, int):  # a list item: the list's field already led to its model
            continue
        fields = {info.alias or name: info for name, info in model.model_fields.items()}
        models = list(_models_in(fields[part].annotation)) if part in fields else []
        if not models:
            return []
        model = models[0]
    return [info.alias or name for name, info in model.model_fields.items()]


def _models_in(annotation: Any) -> Iterator[type[BaseModel]]:
    """The models inside a type such as ``list[Annotated[ClusterSpec, ...]]`` or ``Key | None``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
        return
    for argument in get_args(annotation):
        yield from _models_in(argument)
