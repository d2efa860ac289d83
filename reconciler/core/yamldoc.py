"""YAML documents read with limits (pure: bytes in, plain data and positions out).

Specs and kubeconfigs come from people, pull requests, Secrets and nodes, so reading one must
not be a way to exhaust the machine: the document has a size limit, a depth limit and a
budget for what aliases (``*name``) may repeat, and reading takes time linear in its size.
The result is plain dicts, lists and scalars with the line and column of every key and
value, for messages in the form ``FILE:LINE:COLUMN: message``.

How: ruamel's pure parser yields events, and this module builds the data from them with a
stack, not by recursion, so depth is checked before anything deep is built; an alias is the
object its anchor built (never a copy), and each one spends the size of what it repeats from
the budget. ruamel's round-trip loader is not used: it keeps comments, and joins the comments
after a value by copying the text gathered so far, quadratic in the comment lines (5 MB of
comments took 10 s, 50 MB more than 300 s).

Messages never quote the document: a kubeconfig's values are keys and tokens, and YAML
errors inside one (a ``!`` before base64 data makes the data a tag) would otherwise print
them. A message says what is wrong and where, in this module's words or in the parser's with
anything quoted cut out.
"""

from __future__ import annotations

import copy
import functools
import re
from dataclasses import dataclass, field
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.events import (AliasEvent, CollectionStartEvent, DocumentStartEvent, MappingEndEvent,
                                MappingStartEvent, ScalarEvent, SequenceEndEvent, SequenceStartEvent)
from ruamel.yaml.nodes import ScalarNode

MiB = 1024 * 1024

Loc = tuple[str | int, ...]  # a place in the document, as pydantic's error locations
Position = tuple[int, int]  # 1-based line and column


@dataclass(frozen=True)
class Limits:
    """What one kind of document may cost. ``aliases`` is how many nodes aliases may repeat
    in all; 0 refuses aliases (and merge keys) outright."""

    what: str  # the document's kind, for messages: "spec", "kubeconfig"
    max_bytes: int
    max_depth: int
    aliases: int
    # Scalars, mappings and lists in all: the parser takes about 30 us of CPU for each, so
    # this, not the size in bytes, bounds the time (4 MiB of "[{},{},...]" are 2 million).
    max_nodes: int = 100_000


# A spec of a hundred clusters with fifty nodes each is about 1 MiB of YAML, and 80,000
# YAML nodes (with SSH access).
SPEC = Limits("spec", max_bytes=4 * MiB, max_depth=32, aliases=10_000)
# kubeadm's kubeconfigs are 5-6 KiB; one user's kubeconfig of many clusters stays far below
# this. Neither kubeadm nor kubectl write aliases, so a kubeconfig may hold none.
KUBECONFIG = Limits("kubeconfig", max_bytes=4 * MiB, max_depth=16, aliases=0)
# The node inventory of admin mode, a Secret's value (a Secret holds at most 1 MiB).
INVENTORY = Limits("node inventory", max_bytes=1 * MiB, max_depth=16, aliases=10_000)

_STANDARD = "tag:yaml.org,2002:"
_MERGE = _STANDARD + "merge"
# The scalar types a document may hold, implicitly or as an explicit !!tag.
_SCALARS = {_STANDARD + kind for kind in ("null", "bool", "int", "float", "str")}
# What an explicit tag on a collection may say.
_COLLECTIONS = {MappingStartEvent: (None, "!", _STANDARD + "map"), SequenceStartEvent: (None, "!", _STANDARD + "seq")}


def _tag(event: Any) -> str | None:
    """An event's tag as text. ruamel's Tag cannot be compared with None (its __eq__ reads
    ``other.trval``), so a tag on a key or a collection, tested with ``in (None, ...)``,
    raised AttributeError instead of the error that names the place."""
    return None if event.ctag is None else str(event.ctag)


class DocumentError(ValueError):
    """A document that cannot be read: where (1-based line and column) and what is wrong,
    in words that quote nothing from the document."""

    def __init__(self, position: Position, problem: str) -> None:
        super().__init__(f"line {position[0]}, column {position[1]}: {problem}")
        self.position = position
        self.problem = problem


@dataclass
class Positions:
    """Where each key and each value of the document starts."""

    keys: dict[Loc, Position] = field(default_factory=dict)
    values: dict[Loc, Position] = field(default_factory=dict)

    def nearest(self, loc: Loc) -> Position:
        """The position of ``loc``, or of its nearest parent the document spells out."""
        while loc not in self.values and loc:
            loc = loc[:-1]
        return self.values.get(loc, (1, 1))


@dataclass
class Document:
    data: Any  # None for an empty document
    positions: Positions


def check_size(size: int, limits: Limits) -> None:
    if size > limits.max_bytes:
        raise DocumentError((1, 1), f"{size:,} bytes; a {limits.what} may be at most {limits.max_bytes:,} bytes")


def decode(raw: bytes, limits: Limits) -> str:
    """The document's text; a document over its size limit or not UTF-8 is refused where it goes wrong."""
    check_size(len(raw), limits)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        before = raw[:exc.start]
        position = (before.count(b"\n") + 1, exc.start - (before.rfind(b"\n") + 1) + 1)
        raise DocumentError(position, "not UTF-8 text") from None


def _position_in(text: str, offset: int) -> Position:
    line = text.count("\n", 0, offset) + 1
    return line, offset - (text.rfind("\n", 0, offset) + 1) + 1


def _mark(mark: Any) -> Position:
    return (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)


_QUOTED = re.compile(r"""\s*('[^']*'|"[^"]*")""")
_TOKEN = re.compile(r"""^['"]?<[a-z ]+>['"]?$""")  # the parser's name for a token: '<block end>'
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,63}$")  # a key that can be shown: a field's name, not data


def _unquoted(problem: str) -> str:
    """The parser's words with whatever they quote from the document cut out (a tag, a
    character, a scalar); its names of tokens stay. Anything after a quote that does not
    close goes too."""
    words = _QUOTED.sub(lambda match: f" {match[1][1:-1]}" if _TOKEN.match(match[1]) else "", problem)
    words = re.split(r"""['"`]""", words, maxsplit=1)[0]
    return " ".join(words.split())[:120] or "invalid YAML"


def _key_name(key: str) -> str:
    return f' "{key}"' if _NAME.match(key) else ""


def _yaml_problem(text: str, exc: YAMLError) -> DocumentError:
    if isinstance(exc, MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        problem = _unquoted(exc.problem or exc.context or "")
        if exc.problem and exc.context and exc.context_mark:
            problem += (f" ({_unquoted(exc.context)} at line {exc.context_mark.line + 1}, "
                        f"column {exc.context_mark.column + 1})")
        return DocumentError(_mark(mark), problem)
    # The reader's errors (control characters, a NUL byte) carry an offset, not a mark.
    offset = getattr(exc, "position", 0) or 0
    return DocumentError(_position_in(text, offset), "a control character or byte that YAML does not allow")


class _Collection:
    """A mapping or sequence being built: its value, where it starts and, for a mapping, the
    key waiting for its value."""

    def __init__(self, value: dict | list, loc: Loc, start: Position, anchor: str | None) -> None:
        self.value = value
        self.loc = loc
        self.start = start
        self.anchor = anchor
        self.key: str | None = None  # a mapping's key whose value comes next
        self.key_is_merge = False
        self.key_position: Position = start
        self.merges: list[tuple[Any, Position]] = []
        self.size = 1  # the nodes in it, what an alias of it repeats

    def child_loc(self) -> Loc:
        assert self.key is not None or isinstance(self.value, list)
        return (*self.loc, self.key if isinstance(self.value, dict) else len(self.value))


# A document up to this size is parsed once per process and copied for each caller: one
# run of careconcile reads the same kubeconfigs once per authority and once per phase
# check, and the pure parser costs about 7 ms for a kubeadm kubeconfig (5-6 KiB). A parsed
# document with its positions takes about 100 times its text in memory, so few and small.
PARSED_ONCE_MAX_CHARS = 16 * 1024
PARSED_ONCE_DOCUMENTS = 32


def load(raw: bytes | str, limits: Limits) -> Document:
    """Parse one YAML document within ``limits``; :class:`DocumentError` names the line and
    column of the first problem. The result is the caller's own to change."""
    if isinstance(raw, str):
        check_size(len(raw.encode(errors="surrogatepass")), limits)
    text = decode(raw, limits) if isinstance(raw, bytes) else raw
    if len(text) <= PARSED_ONCE_MAX_CHARS:
        return copy.deepcopy(_parsed(text, limits))
    return _parse(text, limits)


@functools.lru_cache(maxsize=PARSED_ONCE_DOCUMENTS)
def _parsed(text: str, limits: Limits) -> Document:
    return _parse(text, limits)  # an error is not kept: parsing again raises it again


def _parse(text: str, limits: Limits) -> Document:
    yaml = YAML(typ="safe", pure=True)
    try:
        return _Builder(yaml, limits).build(yaml.parse(text))
    except YAMLError as exc:
        raise _yaml_problem(text, exc) from None
    except RecursionError:  # not expected (nothing here recurses with the depth), but never a traceback
        raise DocumentError((1, 1), "nested too deep") from None


class _Builder:
    def __init__(self, yaml: YAML, limits: Limits) -> None:
        self.yaml = yaml
        self.limits = limits
        self.positions = Positions()
        self.anchors: dict[str, tuple[Any, int] | None] = {}  # None: its collection is still open
        self.stack: list[_Collection] = []
        self.repeated = 0  # nodes repeated by aliases so far
        self.nodes = 0  # nodes written out so far
        self.documents = 0
        self.root: Any = None

    def build(self, events: Any) -> Document:
        for event in events:
            if isinstance(event, DocumentStartEvent):
                self.documents += 1
                if self.documents > 1:
                    raise DocumentError(_mark(event.start_mark),
                                        f"a second YAML document (after ---); a {self.limits.what} is one document")
            elif isinstance(event, (ScalarEvent, CollectionStartEvent)):
                self.nodes += 1
                if self.nodes > self.limits.max_nodes:
                    raise DocumentError(_mark(event.start_mark), f"more than {self.limits.max_nodes:,} values; a "
                                                                 f"{self.limits.what} need not hold so many")
                if isinstance(event, ScalarEvent):
                    self._scalar(event)
                else:
                    self._start(event)
            elif isinstance(event, (MappingEndEvent, SequenceEndEvent)):
                self._end()
            elif isinstance(event, AliasEvent):
                self._alias(event)
        return Document(self.root, self.positions)

    # --- placing a value -----------------------------------------------------------------

    def _place(self, value: Any, position: Position, size: int) -> None:
        """Put a finished value where the document has it: the root, a list item, a mapping's
        value, or (a scalar in a mapping that has no pending key) a key."""
        if not self.stack:
            self.root = value
            self.positions.values[()] = position
            return
        parent = self.stack[-1]
        parent.size += size
        if isinstance(parent.value, list):
            loc = parent.child_loc()
            self.positions.values[loc] = position
            parent.value.append(value)
            return
        assert parent.key is not None
        loc = parent.child_loc()
        if parent.key == "<<" and parent.key_is_merge:
            parent.merges.append((value, parent.key_position))
        else:
            # An empty value has no start of its own; its key stands for it.
            self.positions.values[loc] = parent.key_position if value is None and size == 1 else position
            parent.value[parent.key] = value
        parent.key = None

    def _key(self, parent: _Collection, event: ScalarEvent, position: Position) -> None:
        if _tag(event) not in (None, "!", _STANDARD + "str"):
            raise DocumentError(position, "a key with a tag; keys are plain text")
        is_merge = _tag(event) is None and event.value == "<<" and event.style is None
        if is_merge and not self.limits.aliases:
            raise DocumentError(position, f"a merge key (<<); a {self.limits.what} may hold none")
        if not is_merge and event.value in parent.value:
            first = self.positions.keys.get((*parent.loc, event.value), position)
            raise DocumentError(position, f"found duplicate key{_key_name(event.value)} "
                                          f"(first at line {first[0]}, column {first[1]})")
        parent.key = event.value
        parent.key_is_merge = is_merge
        parent.key_position = position
        if not is_merge:
            self.positions.keys[(*parent.loc, event.value)] = position

    def _wants_key(self) -> _Collection | None:
        parent = self.stack[-1] if self.stack else None
        return parent if parent is not None and isinstance(parent.value, dict) and parent.key is None else None

    # --- events ---------------------------------------------------------------------------

    def _scalar(self, event: ScalarEvent) -> None:
        position = _mark(event.start_mark)
        parent = self._wants_key()
        if parent is not None:
            self._key(parent, event, position)
            return
        tag = _tag(event)
        if tag is None or tag == "!":
            tag = self.yaml.resolver.resolve(ScalarNode, event.value, event.implicit)
            if str(tag) not in _SCALARS:  # YAML 1.1's timestamps and "=": text, as in YAML 1.2
                tag = _STANDARD + "str"
        if str(tag) not in _SCALARS:
            # Say which tag only when it is a standard one: an unknown "tag" may be a value
            # that a stray "!" turned into one.
            shown = f" ({tag})" if str(tag).startswith(_STANDARD) else ""
            raise DocumentError(position, f"a value with an unsupported tag{shown}; write plain YAML values")
        node = ScalarNode(tag, event.value, event.start_mark, event.end_mark, style=event.style)
        try:
            value = self.yaml.constructor.construct_object(node, deep=True)
        except (YAMLError, ValueError, TypeError):
            raise DocumentError(position, f"a value that is not a valid {str(tag).removeprefix(_STANDARD)}") from None
        self._anchor(event.anchor, value, 1)
        self._place(value, position, 1)

    def _start(self, event: CollectionStartEvent) -> None:
        position = _mark(event.start_mark)
        if self._wants_key() is not None:
            raise DocumentError(position, "a mapping or list used as a key; keys are plain text")
        if _tag(event) not in _COLLECTIONS[type(event)]:
            raise DocumentError(position, "a mapping or list with an unsupported tag; write plain YAML")
        if len(self.stack) >= self.limits.max_depth:
            raise DocumentError(position, f"nested more than {self.limits.max_depth} levels deep; "
                                          f"a {self.limits.what} is not")
        parent = self.stack[-1] if self.stack else None
        loc = parent.child_loc() if parent is not None else ()
        collection = _Collection({} if isinstance(event, MappingStartEvent) else [], loc, position, event.anchor)
        if event.anchor is not None:
            self.anchors[event.anchor] = None
        self.stack.append(collection)

    def _end(self) -> None:
        collection = self.stack.pop()
        if isinstance(collection.value, dict):
            self._merge(collection)
        self._anchor(collection.anchor, collection.value, collection.size)
        self._place(collection.value, collection.start, collection.size)

    def _alias(self, event: AliasEvent) -> None:
        position = _mark(event.start_mark)
        if self._wants_key() is not None:
            raise DocumentError(position, "an alias used as a key; keys are plain text")
        if not self.limits.aliases:
            raise DocumentError(position, f"an alias (*name); a {self.limits.what} may hold none")
        if event.anchor not in self.anchors:
            raise DocumentError(position, "an alias to an anchor (&name) not defined before it")
        target = self.anchors[event.anchor]
        if target is None:
            raise DocumentError(position, "an alias inside the node its anchor names (a loop)")
        value, size = target
        self.repeated += size
        if self.repeated > self.limits.aliases:
            raise DocumentError(position, f"aliases repeat more than {self.limits.aliases:,} nodes; "
                                          f"a {self.limits.what} need not")
        self._place(value, position, size)

    def _anchor(self, anchor: str | None, value: Any, size: int) -> None:
        if anchor is not None:
            self.anchors[anchor] = (value, size)

    def _merge(self, collection: _Collection) -> None:
        """``<<: *base`` or ``<<: [*a, *b]``: keys the mapping does not set itself come from
        the merged mappings, the first that has one winning."""
        for value, position in collection.merges:
            sources = value if isinstance(value, list) else [value]
            if not sources or not all(isinstance(source, dict) for source in sources):
                raise DocumentError(position, "a merge key (<<) needs a mapping or a list of mappings")
            for source in sources:
                for key, item in source.items():
                    if key not in collection.value:
                        collection.value[key] = item
