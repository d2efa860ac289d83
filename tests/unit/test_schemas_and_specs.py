import importlib.util
import json
from pathlib import Path

import jsonschema
import pytest
from ruamel.yaml import YAML

from reconciler.core.spec import SpecDocument

ROOT = Path(__file__).resolve().parents[2]


def _generator():
    spec = importlib.util.spec_from_file_location("gen_schemas", ROOT / "hack/gen-schemas.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_checked_in_schemas_are_generated_from_the_models():
    for name, text in _generator().generated().items():
        assert (ROOT / "schemas" / name).read_text() == text, \
            f"schemas/{name} is stale: run .venv/bin/python hack/gen-schemas.py"


@pytest.mark.parametrize("spec_file", sorted((ROOT / "specs").glob("*.yaml")), ids=lambda p: p.name)
def test_example_specs_validate_against_model_and_schema(spec_file):
    document = YAML(typ="safe").load(spec_file.read_text())
    SpecDocument.model_validate(document)
    jsonschema.validate(document, json.loads((ROOT / "schemas/spec.schema.json").read_text()))
