"""`careconcile schema [spec|plan|drift-report|inventory]`: print the JSON Schema of a careconcile document."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from reconciler.core.schemas import render, schemas
from reconciler.errors import EXIT_OK, UsageError

DOCUMENTS = ("spec", "plan", "drift-report", "inventory")


def register(commands: Any) -> None:
    parser = commands.add_parser("schema", help="print the JSON Schema of a spec, a saved plan, a drift report or a node inventory")
    parser.add_argument("document", nargs="?", choices=DOCUMENTS, default="spec",
                        help="which document (default: spec)")
    parser.set_defaults(handler=_schema)


def _schema(args: argparse.Namespace) -> int:
    available = schemas()
    name = f"{args.document}.schema.json"
    if name not in available:
        raise UsageError(f"the {args.document} schema is not available in this version of careconcile")
    sys.stdout.write(render(available[name]))
    return EXIT_OK
