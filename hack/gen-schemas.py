"""Regenerate schemas/*.schema.json from the pydantic models (the source of truth).

    .venv/bin/python hack/gen-schemas.py          # write
    .venv/bin/python hack/gen-schemas.py --check  # exit 1 if a checked-in schema is stale
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from reconciler.core.spec import SpecDocument

SCHEMAS = Path(__file__).resolve().parents[1] / "schemas"


def generated() -> dict[str, str]:
    spec = SpecDocument.model_json_schema(by_alias=True)
    spec = {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": "https://careconcile.dev/schemas/spec.schema.json", **spec}
    return {"spec.schema.json": json.dumps(spec, indent=2, sort_keys=True) + "\n"}


def main(argv: list[str]) -> int:
    stale = []
    for name, text in generated().items():
        path = SCHEMAS / name
        if "--check" in argv:
            if not path.is_file() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
    if stale:
        print(f"stale schemas: {', '.join(stale)}; run `.venv/bin/python hack/gen-schemas.py`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
