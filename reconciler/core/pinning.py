"""Writing CA fingerprints into a spec's text, keeping everything else as it was written.

``careconcile pin`` records the live cluster CA in the spec, so that after a rotation the
spec in Git says which CA should be live. The spec is a hand-written file: its comments,
key order, quoting, flow mappings, blank lines and line endings belong to its authors.
So the text is never dumped again; :func:`pin_fingerprints` finds, with ruamel.yaml's
round-trip composer, where each cluster's ``authorities.clusterCA.fingerprint`` value is
(or which mapping lacks it) and splices only that spot:

- a value that is present (plain, single- or double-quoted) is replaced in its own
  quoting; a comment after it stays;
- a missing ``fingerprint``, ``clusterCA`` or ``authorities`` key is added as the last key
  of the deepest mapping that exists, with the indentation the file already uses (that
  mapping's own, and the file's usual step for the keys nested under it) and the line
  ending of the line it follows;
- in a flow mapping (``clusterCA: {rotation: 2}``) the new key is added inside the braces
  (``{rotation: 2, fingerprint: sha256:...}``), and whatever is missing below it in flow
  form too; nothing else in the flow mapping moves.

Refused, with a :class:`SpecError` naming ``FILE:LINE:COLUMN``: a cluster that the file
does not hold, a fingerprint written as a block scalar (``|``), an alias (``*name``) where
the edit would go, a place that is not a mapping, and any edit after which the parsed
document differs from the old one in anything but the new fingerprints (the result is
parsed again and compared, so a spec whose clusters share anchors or merge keys is
refused rather than changed in a way nobody asked for).
"""

from __future__ import annotations

import copy
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from reconciler.core.spec import FINGERPRINT
from reconciler.errors import SpecError

# Where the pin goes, below a cluster's mapping (the cluster CA's; pin_path for another's).
PIN_PATH = ("authorities", "clusterCA", "fingerprint")


def pin_path(authority: str) -> tuple[str, str, str]:
    return ("authorities", authority, "fingerprint")
DEFAULT_INDENT_STEP = 2
# The rest of an entry whose value is an alias: the composer gives the anchored node's
# marks, so the alias's own end is found in the text (anchor names hold no spaces or
# flow indicators).
_ALIAS_AFTER_KEY = re.compile(r"[ \t]*:[ \t]*\*[^\s,\[\]{}]+")


@dataclass(frozen=True)
class _Edit:
    start: int  # character offsets into the text; start == end inserts
    end: int
    text: str


def pin_fingerprints(text: str, source: str, fingerprints: dict[str, str], authority: str = "clusterCA") -> str:
    """``text`` with ``spec.clusters[name=N].authorities.<authority>.fingerprint`` set to
    ``fingerprints[N]`` for each N, every other character unchanged. ``source`` names the
    file in errors. A value that is already the same is left exactly as written, so the
    text comes back unchanged when everything is pinned already."""
    keys = pin_path(authority)
    for name, value in fingerprints.items():
        if not re.fullmatch(FINGERPRINT, value):
            raise ValueError(f"cluster {name}: {value!r} is not a fingerprint (sha256:<64 lowercase hex digits>)")
    data, root = _load(text, source)
    clusters_node, names = _clusters(data, root, source)
    step = _indent_step(root)
    edits: list[_Edit] = []
    for name, value in fingerprints.items():
        indexes = [index for index, cluster_name in enumerate(names) if cluster_name == name]
        where = _pos(clusters_node)
        if not indexes:
            known = ", ".join(str(n) for n in names if n is not None) or "none"
            raise _error(source, where, "spec.clusters", f"no cluster named {name!r} (clusters: {known})",
                         title=f"cannot pin cluster {name!r}")
        if len(indexes) > 1:
            raise _error(source, where, "spec.clusters", f"{len(indexes)} clusters are named {name!r}",
                         title=f"cannot pin cluster {name!r}")
        index = indexes[0]
        edit = _edit_for(text, source, clusters_node.value[index], f"spec.clusters[{index}]", value, step, keys)
        if edit is not None:
            edits.append(edit)
    if not edits:
        return text
    result = text
    for edit in sorted(edits, key=lambda e: e.start, reverse=True):
        result = result[:edit.start] + edit.text + result[edit.end:]
    _check(result, source, data, names, fingerprints, edits, text, keys)
    return result


# --- reading ---------------------------------------------------------------------------

def _yaml() -> YAML:
    return YAML(typ="rt")  # the round-trip loader: positions for every node, duplicate keys refused


def _load(text: str, source: str) -> tuple[Any, Node]:
    try:
        data = _yaml().load(text)
        root = _yaml().compose(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        position = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        raise _error(source, position, "", exc.problem or exc.context or "invalid YAML",
                     title="invalid YAML") from exc
    except YAMLError as exc:
        raise _error(source, (1, 1), "", str(exc).splitlines()[0], title="invalid YAML") from exc
    return data, root


def _clusters(data: Any, root: Node | None, source: str) -> tuple[SequenceNode, list[Any]]:
    """The ``spec.clusters`` sequence node and each item's name (None where it has none)."""
    spec = _value(root, "spec") if isinstance(root, MappingNode) else None
    clusters = _value(spec, "clusters") if isinstance(spec, MappingNode) else None
    if not isinstance(clusters, SequenceNode):
        where = _pos(spec) if spec is not None else (_pos(root) if root is not None else (1, 1))
        raise _error(source, where, "spec.clusters", "no list of clusters here to pin",
                     title="cannot pin")
    items = data["spec"]["clusters"]  # the loaded data names a cluster even through a merge key
    names = [item.get("name") if isinstance(item, dict) else None for item in items]
    return clusters, names


def _pair(mapping: MappingNode, key: str) -> tuple[Node, Node] | None:
    for key_node, value_node in mapping.value:
        if isinstance(key_node, ScalarNode) and key_node.value == key:
            return key_node, value_node
    return None


def _value(mapping: MappingNode, key: str) -> Node | None:
    pair = _pair(mapping, key)
    return pair[1] if pair else None


def _pos(node: Node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


def _is_alias(key: Node, value: Node) -> bool:
    # The composer hands out the anchored node for an alias: its text starts before the key.
    return value.start_mark.index < key.end_mark.index


def _is_empty(value: Node) -> bool:
    # An empty value (`fingerprint:`) has no text of its own; its mark sits on the next token.
    return isinstance(value, ScalarNode) and value.start_mark.index == value.end_mark.index


def _indent_step(root: Node | None) -> int:
    """How far the file indents a block mapping under its key: the most common step
    between a key and the first key of the block mapping it holds (2 if none)."""
    steps: Counter[int] = Counter()

    def walk(node: Node) -> None:
        if isinstance(node, MappingNode):
            for key, value in node.value:
                if (isinstance(value, MappingNode) and not value.flow_style and value.value
                        and not _is_alias(key, value)):
                    step = value.value[0][0].start_mark.column - key.start_mark.column
                    if step > 0:
                        steps[step] += 1
                walk(value)
        elif isinstance(node, SequenceNode):
            for item in node.value:
                walk(item)

    if root is not None:
        walk(root)
    return steps.most_common(1)[0][0] if steps else DEFAULT_INDENT_STEP


# --- editing ---------------------------------------------------------------------------

def _edit_for(text: str, source: str, cluster: Node, path: str, fingerprint: str, step: int,
              keys: tuple[str, ...] = PIN_PATH) -> _Edit | None:
    """The one splice that pins ``fingerprint`` in ``cluster``; None when it is pinned already."""
    mapping, missing = cluster, list(keys)
    while True:
        if not isinstance(mapping, MappingNode):
            kind = "a list" if isinstance(mapping, SequenceNode) else (
                "empty" if _is_empty(mapping) or mapping.value in ("", "~", "null") else "a scalar")
            raise _error(source, _pos(mapping), path, f"must be a mapping to pin the CA in; it is {kind}")
        pair = _pair(mapping, missing[0])
        if pair is None:
            return _insert(text, source, mapping, missing, fingerprint, step, path)
        key, value = pair
        path = f"{path}.{missing[0]}"
        if _is_alias(key, value):
            raise _error(source, _pos(key), path, "is an alias (*name); pin does not edit through aliases, "
                                                  "write the value here by hand")
        if len(missing) == 1:
            return _replace(text, source, key, value, path, fingerprint)
        mapping, missing = value, missing[1:]


def _replace(text: str, source: str, key: Node, value: Node, path: str, fingerprint: str) -> _Edit | None:
    if _is_empty(value):  # `fingerprint:` with nothing after it: the value goes after the colon
        colon = text.index(":", key.end_mark.index)
        return _Edit(colon + 1, colon + 1, " " + fingerprint)
    if not isinstance(value, ScalarNode):
        raise _error(source, _pos(value), path, "must be a string to pin the CA; it is a "
                     + ("list" if isinstance(value, SequenceNode) else "mapping"))
    if value.style in ("|", ">"):
        raise _error(source, _pos(value), path, "is a block scalar (| or >); write it on one line "
                                                "(fingerprint: sha256:...) and pin again")
    if value.value == fingerprint:
        return None
    quote = value.style if value.style in ("'", '"') else ""
    return _Edit(value.start_mark.index, value.end_mark.index, f"{quote}{fingerprint}{quote}")


def _insert(text: str, source: str, mapping: MappingNode, missing: list[str], fingerprint: str,
            step: int, path: str) -> _Edit:
    """Add ``missing`` (keys, outermost first) as the last entry of ``mapping``."""
    if mapping.flow_style:
        nested = fingerprint
        for key in reversed(missing[1:]):
            nested = f"{{{key}: {nested}}}"
        entry = f"{missing[0]}: {nested}"
        if not mapping.value:  # `{}`: inside the braces
            brace = mapping.end_mark.index - 1
            return _Edit(brace, brace, entry)
        at = _end_after(text, source, *_last_entry(mapping, deep=False), path)
        return _Edit(at, at, ", " + entry)
    indent = mapping.value[0][0].start_mark.column
    lines = [" " * (indent + step * depth) + f"{key}:" for depth, key in enumerate(missing)]
    lines[-1] += f" {fingerprint}"
    at = _end_after(text, source, *_last_entry(mapping, deep=True), path)
    if at > 0 and text[at - 1] in "\r\n":  # after a block scalar, which ends with its line break
        newline = "\r\n" if text[at - 2:at] == "\r\n" else text[at - 1]
        return _Edit(at, at, "".join(line + newline for line in lines))
    end = _line_end(text, at)
    if end < len(text):
        newline = "\r\n" if text.startswith("\r\n", end) else text[end]
    else:  # the last line has no line break: the new lines come after one, and end without one
        newline = "\r\n" if "\r\n" in text else "\n"
    return _Edit(end, end, "".join(newline + line for line in lines))


def _last_entry(mapping: MappingNode, *, deep: bool) -> tuple[int, Node]:
    """The last value written inside a mapping (however deep, for a block mapping) and the
    offset its text must start after (the end of its key, or of the item before it)."""
    key, value = mapping.value[-1]
    floor = key.end_mark.index
    while deep and value.start_mark.index >= floor and not _is_empty(value):
        if isinstance(value, MappingNode) and not value.flow_style and value.value:
            key, value = value.value[-1]
            floor = key.end_mark.index
        elif isinstance(value, SequenceNode) and not value.flow_style and value.value:
            items = value.value
            floor = items[-2].end_mark.index if len(items) > 1 else value.start_mark.index
            value = items[-1]
        else:
            break
    return floor, value


def _end_after(text: str, source: str, floor: int, value: Node, path: str) -> int:
    """Where the text of a value ends; for an empty value (whose marks sit on the next
    token), where its key ends. An alias is refused: its marks are those of its anchor."""
    if _is_empty(value):
        return floor
    if value.start_mark.index < floor:
        alias = _ALIAS_AFTER_KEY.match(text, floor)  # `key: *name`, a merge `<<: *name` too
        if alias is None:
            raise _error(source, _position(text, floor), path,
                         "the new key would follow an alias (*name) that pin cannot place; "
                         "write the fingerprint by hand")
        return alias.end()
    return value.end_mark.index


def _position(text: str, offset: int) -> tuple[int, int]:
    """1-based line and column of an offset (a CRLF counts as one line break)."""
    line_start = max(text.rfind("\n", 0, offset), text.rfind("\r", 0, offset)) + 1
    return text.count("\n", 0, offset) + 1, offset - line_start + 1


def _line_end(text: str, offset: int) -> int:
    """The offset of the line break that ends the line holding ``offset`` (or len(text))."""
    ends = [found for found in (text.find("\n", offset), text.find("\r", offset)) if found >= 0]
    return min(ends) if ends else len(text)


# --- checking --------------------------------------------------------------------------

def _check(result: str, source: str, before: Any, names: list[Any], fingerprints: dict[str, str],
           edits: list[_Edit], text: str, keys: tuple[str, ...] = PIN_PATH) -> None:
    """The edited text must parse to the old document with exactly the new pins."""
    position = _position(text, min(edit.start for edit in edits))
    expected = _plain(before)
    for name, value in fingerprints.items():
        cluster = expected["spec"]["clusters"][names.index(name)]
        for key in keys[:-1]:
            cluster = cluster.setdefault(key, {})
        cluster[keys[-1]] = value
    try:
        after = _plain(_yaml().load(result))
    except YAMLError as exc:
        raise _error(source, position, "", f"pin could not edit this file safely (the result would not parse: "
                                           f"{str(exc).splitlines()[0]}); write the fingerprint by hand",
                     title="cannot pin") from exc
    if after != expected:
        raise _error(source, position, "", "pin could not edit this file safely (the edit would change more "
                                           "than the fingerprint, e.g. through an anchor or merge key); "
                                           "write the fingerprint by hand", title="cannot pin")


def _plain(node: Any) -> Any:
    """ruamel's round-trip values as plain dicts, lists and scalars, compared without order
    or style."""
    if isinstance(node, dict):
        return {_plain(key): _plain(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_plain(item) for item in node]
    if isinstance(node, bool):
        return bool(node)
    for kind in (int, float, str):
        if isinstance(node, kind):
            return kind(node)
    return copy.deepcopy(node)


def _error(source: str, position: tuple[int, int], where: str, message: str, *,
           title: str = "cannot pin") -> SpecError:
    line, column = position
    problem = f"{source}:{line}:{column}: {where}: {message}" if where else f"{source}:{line}:{column}: {message}"
    return SpecError(f"{source}: {title}", problems=[problem])
