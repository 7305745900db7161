"""Regenerate the field tables and JSON Schema in docs/model-config.md.

The schema is derived from ``fusionserve.service.model.config`` so the reference can never
drift from the validator: this script rewrites only the part of the document
between the two markers below, and a unit test fails when the committed part
differs from what the code would generate.

    python -m fusionserve.models.config_doc            # rewrite docs/model-config.md
    python -m fusionserve.models.config_doc --check    # exit 1 if it is stale
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fusionserve.service.model.config import model_config_json_schema

BEGIN = "<!-- BEGIN GENERATED: python -m fusionserve.models.config_doc -->"
END = "<!-- END GENERATED -->"
DOC_PATH = Path(__file__).resolve().parent.parent / "docs" / "model-config.md"


def _type_of(prop: dict[str, Any]) -> str:
    if "$ref" in prop:
        name = prop["$ref"].rsplit("/", 1)[-1]
        return f"[{name}](#{name.lower()})"
    if "anyOf" in prop:
        return " \\| ".join(_type_of(p) for p in prop["anyOf"])
    if "enum" in prop:
        return " \\| ".join(f"`{json.dumps(v)}`" for v in prop["enum"])
    if "const" in prop:
        return f"`{json.dumps(prop['const'])}`"
    kind = prop.get("type", "any")
    if kind == "array":
        return f"list of {_type_of(prop.get('items', {}))}"
    return str(kind)


def _rules(prop: dict[str, Any]) -> str:
    rules = []
    for key, text in (
        ("exclusiveMinimum", "> {}"),
        ("minimum", ">= {}"),
        ("exclusiveMaximum", "< {}"),
        ("maximum", "<= {}"),
        ("minItems", "at least {} item(s)"),
        ("pattern", "matches `{}`"),
    ):
        if key in prop:
            rules.append(text.format(prop[key]))
    return ", ".join(rules)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _table(schema: dict[str, Any]) -> list[str]:
    required = set(schema.get("required", []))
    lines = ["| field | type | default | rules | meaning |", "|---|---|---|---|---|"]
    for name, prop in schema.get("properties", {}).items():
        default = "*required*" if name in required else f"`{json.dumps(prop.get('default'))}`"
        if name not in required and "default" not in prop:  # a default_factory: always empty here
            default = "`[]`" if prop.get("type") == "array" else "`{}`"
        lines.append(
            f"| `{name}` | {_type_of(prop)} | {_cell(default)} | {_cell(_rules(prop))} "
            f"| {_cell(prop.get('description', ''))} |"
        )
    return lines


def render_generated(schema: dict[str, Any] | None = None) -> str:
    """The generated part: one field table per object, then the JSON Schema itself."""
    schema = schema or model_config_json_schema()
    parts = [BEGIN, "", "### ModelConfig (the top level of config.yaml)", "", *_table(schema)]
    for name, definition in sorted(schema.get("$defs", {}).items()):
        parts += ["", f"### {name}", ""]
        if definition.get("description"):
            parts += [_cell(definition["description"]), ""]
        if "properties" in definition:
            parts += _table(definition)
        else:
            parts.append(f"One of {_type_of(definition)}.")
    parts += [
        "",
        "### JSON Schema",
        "",
        "```json",
        json.dumps(schema, indent=2, sort_keys=True),
        "```",
        "",
        END,
    ]
    return "\n".join(parts)


def splice(document: str, generated: str) -> str:
    """``document`` with the text between the markers replaced by ``generated``."""
    start, end = document.find(BEGIN), document.find(END)
    if start < 0 or end < start:
        raise ValueError(f"the document lacks the markers {BEGIN!r} ... {END!r}")
    return document[:start] + generated + document[end + len(END) :]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--doc", type=Path, default=DOC_PATH, help="markdown file holding the markers")
    parser.add_argument("--check", action="store_true", help="exit 1 when the file is stale; write nothing")
    args = parser.parse_args(argv)
    current = args.doc.read_text(encoding="utf-8")
    fresh = splice(current, render_generated())
    if args.check:
        if fresh != current:
            print(f"{args.doc} is stale; run: python -m fusionserve.models.config_doc", file=sys.stderr)
            return 1
        return 0
    if fresh != current:
        args.doc.write_text(fresh, encoding="utf-8")
        print(f"updated {args.doc}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
