import importlib.util
import json
from pathlib import Path

import jsonschema
import pytest
from ruamel.yaml import YAML

from reconciler.shell.specfile import load_spec

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
    load_spec(spec_file)
    document = YAML(typ="safe").load(spec_file.read_text())
    jsonschema.validate(document, json.loads((ROOT / "schemas/spec.schema.json").read_text()))


def test_the_schema_rejects_what_the_model_rejects_in_choices_and_keys():
    schema = json.loads((ROOT / "schemas/spec.schema.json").read_text())
    document = YAML(typ="safe").load((ROOT / "specs/fleet-with-defaults.yaml").read_text())
    document["spec"]["defaults"]["authorities"]["key"] = {"algorithm": "ECDSA", "size": 2048}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(document, schema)
    document = YAML(typ="safe").load((ROOT / "specs/fleet-with-defaults.yaml").read_text())
    document["spec"]["clusters"][1]["stateStore"] = {"workspace": {}, "secret": {}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(document, schema)


def test_the_example_specs_show_every_authority_with_kubeadms_common_names():
    """specs/ show the etcd and front-proxy CAs beside the cluster CA, and none of them
    gives an authority another's CN (a subject in the defaults applies to all three)."""
    from reconciler.core.spec import DEFAULT_COMMON_NAMES, managed_authorities, resolve_authority

    listed = set()
    for spec_file in sorted((ROOT / "specs").glob("*.yaml")):
        document = load_spec(spec_file).document
        for cluster in document.spec.clusters:
            for name in managed_authorities(cluster):
                listed.add(name)
                assert resolve_authority(document, cluster, name).common_name == DEFAULT_COMMON_NAMES[name], \
                    f"{spec_file.name}: {cluster.name} {name}"
    assert listed == set(DEFAULT_COMMON_NAMES)
