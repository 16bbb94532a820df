"""JSON Schema of the messages edged publishes (the public API; README "Message schema")."""

import json
from pathlib import Path
from typing import Any

SCHEMA_PATH = Path(__file__).with_name("messages.schema.json")


def load_schema() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    return data
