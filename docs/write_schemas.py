"""Write docs/schemas/*.json: the JSON schemas of the policy's inputs and the model card, from
their pydantic models (ppmlops.compliance.documents). Run it after changing a model:

    python docs/write_schemas.py

tests/unit/test_policy_documents.py fails while a committed schema differs from the models.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

FOLDER = Path(__file__).resolve().parent / "schemas"


def schemas() -> dict[str, str]:
    """File name -> its text, for every document in ppmlops.compliance.documents.SCHEMAS."""
    from ppmlops.compliance.documents import SCHEMAS

    return {f"{name}.json": json.dumps(model.model_json_schema(), indent=2, sort_keys=True) + "\n"
            for name, model in SCHEMAS.items()}


def main() -> int:
    FOLDER.mkdir(exist_ok=True)
    for name, text in schemas().items():
        (FOLDER / name).write_text(text, encoding="utf-8")
        print(f"wrote {FOLDER / name}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
