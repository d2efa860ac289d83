"""The JSON Schemas careconcile publishes, generated from the pydantic models.

One registry serves both `careconcile schema` and `hack/gen-schemas.py`, which writes
``schemas/*.schema.json``; a new document type is one more entry in ``_MODELS``.
"""

from __future__ import annotations

import json

from pydantic import BaseModel

from reconciler.core.admin import NodeInventory
from reconciler.core.drift import DriftReport
from reconciler.core.plan import PlanDocument
from reconciler.core.spec import SpecDocument

DIALECT = "https://json-schema.org/draft/2020-12/schema"
BASE_ID = "https://careconcile.dev/schemas/"

# Documents careconcile writes (plans, reports) are described as written, computed fields
# included; documents people write (specs, inventories) as careconcile reads them.
_MODELS: dict[str, tuple[type[BaseModel], str]] = {
    "spec.schema.json": (SpecDocument, "validation"),
    "plan.schema.json": (PlanDocument, "serialization"),
    "drift-report.schema.json": (DriftReport, "serialization"),
    "inventory.schema.json": (NodeInventory, "validation"),
}


def schemas() -> dict[str, dict]:
    """File name (``spec.schema.json``) -> JSON Schema of that document type."""
    return {
        name: {"$schema": DIALECT, "$id": BASE_ID + name, **model.model_json_schema(by_alias=True, mode=mode)}
        for name, (model, mode) in _MODELS.items()
    }


def render(schema: dict) -> str:
    """The text of a schema, as checked in and as `careconcile schema` prints it."""
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"
