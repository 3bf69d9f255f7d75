"""JSON Schema documents of every message, as written to docs/schemas/."""

from __future__ import annotations

import json
from pathlib import Path

from controller.telemetry._schemas import ALL_SCHEMAS

__all__ = ["json_schema_documents", "write_json_schemas"]


def json_schema_documents() -> dict[str, str]:
    """File name -> JSON Schema text (draft 2020-12), one per message schema."""
    documents: dict[str, str] = {}
    for name, model in sorted(ALL_SCHEMAS.items()):
        schema = model.model_json_schema(by_alias=True)
        schema = {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": f"{name}.v{model.VERSION}.json",
            **schema,
        }
        documents[f"{name}.v{model.VERSION}.json"] = json.dumps(schema, indent=2) + "\n"
    return documents


def write_json_schemas(directory: Path) -> list[Path]:
    """(Re)write every schema file into `directory`; returns the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for file_name, text in json_schema_documents().items():
        path = directory / file_name
        path.write_text(text)
        written.append(path)
    return written
