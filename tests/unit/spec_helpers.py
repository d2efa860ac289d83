"""What the spec tests share."""

from __future__ import annotations

from pathlib import Path

import jsonschema
from ruamel.yaml import YAML

from reconciler.core.schemas import schemas


def schema_accepts(path: Path) -> bool:
    """Whether the checked-in spec schema accepts the spec file, as an editor would check it."""
    try:
        jsonschema.validate(YAML(typ="safe").load(path.read_text()), schemas()["spec.schema.json"])
    except jsonschema.ValidationError:
        return False
    return True
