"""Generate docs/policy-schema.json, the JSON Schema of one policy document, from the models.

Usage: ``python scripts/gen_policy_schema.py`` rewrites the file; ``--check`` exits with 1 if
the file differs from what the models generate, which is what the test suite runs.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import itertools
import json
import re
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from smartflow.policy import documents
from smartflow.policy.detectors import BUILTIN_ENTITIES, ENTITY_GROUPS

__all__ = ["build_schema", "main", "render_schema"]

DEFAULT_OUTPUT = Path(__file__).resolve().parent.parent / "docs" / "policy-schema.json"

# Checks that validators make and JSON Schema can state: (model, field) -> pattern. The
# validators stay the authority; these let an editor flag a bad name before the gateway does.
_NAME_PATTERN = f"^{documents._NAME.pattern}$"
_ENTITY_NAME_PATTERN = f"^{documents._ENTITY_NAME.pattern}$"
_PATTERNS: dict[tuple[str, str], str] = {
    ("Metadata", "name"): _NAME_PATTERN,
    ("CustomPattern", "name"): _ENTITY_NAME_PATTERN,
    ("CustomWordList", "name"): _ENTITY_NAME_PATTERN,
    ("WordContentRule", "name"): _NAME_PATTERN,
    ("RegexContentRule", "name"): _NAME_PATTERN,
    ("TopicContentRule", "name"): _NAME_PATTERN,
    ("EntityLabel", "entity"): _ENTITY_NAME_PATTERN,
    ("EntityLabel", "label"): _NAME_PATTERN,
    ("ComplianceRule", "label"): _NAME_PATTERN,
}


def _attribute_docstrings(model: type[BaseModel]) -> dict[str, str]:
    """Return the string literal that follows each field assignment in the class bodies.

    Base classes come first, so a subclass's own docstring wins.
    """
    found: dict[str, str] = {}
    for cls in reversed(model.__mro__):
        if not (isinstance(cls, type) and issubclass(cls, BaseModel)) or cls is BaseModel:
            continue
        tree = ast.parse(inspect.getsource(cls))
        body = tree.body[0].body if isinstance(tree.body[0], ast.ClassDef) else []
        for statement, following in itertools.pairwise(body):
            if not (
                isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name)
            ):
                continue
            if isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant):
                if isinstance(following.value.value, str):
                    found[statement.target.id] = inspect.cleandoc(following.value.value)
    return found


def _models() -> dict[str, type[BaseModel]]:
    return {
        name: value
        for name, value in vars(documents).items()
        if isinstance(value, type) and issubclass(value, BaseModel) and value is not BaseModel
    }


def _describe_entity_type(schema: dict[str, Any]) -> None:
    entity = schema["$defs"]["EntityRule"]["properties"]["type"]
    names = ", ".join(sorted(BUILTIN_ENTITIES))
    groups = ", ".join(sorted(ENTITY_GROUPS))
    entity["description"] = (
        f"A built-in entity type ({names}) or a group ({groups}). Case does not matter."
    )


def _tidy(text: str) -> str:
    """Unwrap docstring lines within a paragraph and turn ``code`` into Markdown `code`."""
    paragraphs = [re.sub(r"\s*\n\s*", " ", part) for part in text.split("\n\n")]
    return "\n\n".join(paragraphs).replace("``", "`")


def _tidy_descriptions(node: Any) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "description" and isinstance(value, str):
                node[key] = _tidy(value)
            else:
                _tidy_descriptions(value)
    elif isinstance(node, list):
        for item in node:
            _tidy_descriptions(item)


def build_schema() -> dict[str, Any]:
    """Return the JSON Schema of ``PolicyDocument``, with field docstrings as descriptions."""
    schema = documents.PolicyDocument.model_json_schema(by_alias=True, mode="validation")
    models = _models()
    definitions: dict[str, Any] = schema.setdefault("$defs", {})
    for title, definition in [*definitions.items(), ("PolicyDocument", schema)]:
        model = models.get(title)
        if model is None:
            continue
        docstrings = _attribute_docstrings(model)
        for field_name, field_schema in definition.get("properties", {}).items():
            if field_name in docstrings and "description" not in field_schema:
                field_schema["description"] = docstrings[field_name]
            pattern = _PATTERNS.get((title, field_name))
            if pattern is not None:
                field_schema["pattern"] = pattern
    _describe_entity_type(schema)
    _tidy_descriptions(schema)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": f"Smartflow policy document ({documents.API_VERSION})",
        "description": (
            "One document of a policy set. A YAML file may hold several, separated by '---'. "
            "Generated by scripts/gen_policy_schema.py from smartflow.policy.documents."
        ),
        **{key: value for key, value in schema.items() if key not in ("title", "description")},
    }


def render_schema() -> str:
    return json.dumps(build_schema(), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--output", type=Path, default=DEFAULT_OUTPUT, help="schema file to write or check"
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="exit with 1 if the file differs from the generated schema; write nothing",
    )
    args = parser.parse_args(argv)
    generated = render_schema()
    if args.check:
        current = args.output.read_text(encoding="utf-8") if args.output.exists() else ""
        if current != generated:
            sys.stderr.write(
                f"{args.output} is out of date; regenerate it with "
                "python scripts/gen_policy_schema.py\n"
            )
            return 1
        return 0
    args.output.write_text(generated, encoding="utf-8")
    sys.stdout.write(f"wrote {args.output}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
