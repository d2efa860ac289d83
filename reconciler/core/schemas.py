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

_MODELS: dict[str, type[BaseModel]] = {
    "spec.schema.json": SpecDocument,
    "plan.schema.json": PlanDocument,
    "drift-report.schema.json": DriftReport,
    "inventory.schema.json": NodeInventory,
}


def schemas() -> dict[str, dict]:
    """File name (``spec.schema.json``) -> JSON Schema of that document type."""
    return {
        name: {"$schema": DIALECT, "$id": BASE_ID + name, **model.model_json_schema(by_alias=True)}
        for name, model in _MODELS.items()
    }


def render(schema: dict) -> str:
    """The text of a schema, as checked in and as `careconcile schema` prints it."""
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"
