"""Regenerate schemas/*.schema.json from the pydantic models (the source of truth), as
registered in reconciler/core/schemas.py.

    .venv/bin/python hack/gen-schemas.py          # write
    .venv/bin/python hack/gen-schemas.py --check  # exit 1 if a checked-in schema is stale
"""

from __future__ import annotations

import sys
from pathlib import Path

from reconciler.core.schemas import render, schemas

SCHEMAS = Path(__file__).resolve().parents[1] / "schemas"


def generated() -> dict[str, str]:
    return {name: render(schema) for name, schema in schemas().items()}


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
