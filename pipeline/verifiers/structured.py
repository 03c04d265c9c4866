"""Verifiers for structured outputs: ``regex`` (the completion matches a pattern) and ``json_schema``
(the completion holds a JSON value that validates against a schema).

The pattern or schema comes from the verifier options in the recipe, or per row from ``meta.pattern`` /
``meta.schema`` (a row's own value wins). JSON is looked for inside ```json fences first, then as the
first JSON object or array in the text, so chatter around it is tolerated.

    python -m pipeline.verifiers.structured '{"a": 1}' '{"type": "object", "required": ["a"]}'
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from pipeline.errors import UserError
from pipeline.rows import meta_of
from pipeline.verifiers import Verdict

_JSON_FENCE = re.compile(r"```[ \t]*(?:json)?[ \t]*\n(.*?)(?:```|\Z)", re.S | re.I)


class RegexVerifier:
    """``passed`` when the completion (stripped) matches ``pattern``: ``fullmatch`` (default) or ``search``."""

    name = "regex"

    def __init__(self, pattern: str | None = None, mode: str = "fullmatch", ignore_case: bool = False):
        if mode not in ("fullmatch", "search"):
            raise UserError(f"regex verifier: mode must be 'fullmatch' or 'search', not {mode!r}")
        self.mode = mode
        self.flags = re.S | (re.I if ignore_case else 0)
        self.pattern = self._compile(pattern, "the recipe") if pattern else None

    def _compile(self, pattern: str, where: str) -> re.Pattern:
        try:
            return re.compile(pattern, self.flags)
        except re.error as e:
            raise UserError(
                f"regex verifier: pattern {pattern!r} from {where} is invalid ({e}); fix the pattern"
            ) from None

    def check(self, rows: list[dict]) -> list[Verdict]:
        verdicts = []
        for row in rows:
            pattern = self.pattern
            if meta_of(row).get("pattern"):
                try:
                    pattern = re.compile(meta_of(row)["pattern"], self.flags)
                except re.error as e:  # a bad pattern in one row's data must not stop the run
                    verdicts.append(Verdict(None, None, f"bad_pattern: {e}"))
                    continue
            if pattern is None:
                verdicts.append(Verdict(None, None, "no_pattern: set verify.regex pattern or meta.pattern"))
                continue
            text = (row.get("completion") or "").strip()
            match = pattern.fullmatch(text) if self.mode == "fullmatch" else pattern.search(text)
            verdicts.append(
                Verdict(match is not None, 1.0 if match else 0.0, "match" if match else "no_match")
            )
        return verdicts


def extract_json(text: str) -> tuple[bool, object]:
    """(found, value): the JSON value in a completion, from a fence, the whole text, or the first {...}/[...]."""
    decoder = json.JSONDecoder()
    candidates = [m.strip() for m in _JSON_FENCE.findall(text)] + [text.strip()]
    for candidate in candidates:
        try:
            return True, json.loads(candidate)
        except (json.JSONDecodeError, RecursionError):
            pass
    for i, ch in enumerate(text):
        if ch in "{[":
            try:
                return True, decoder.raw_decode(text, i)[0]
            except (json.JSONDecodeError, RecursionError):
                continue
    return False, None


class JsonSchemaVerifier:
    """``passed`` when the completion contains JSON that validates against ``schema`` (a dict or a file path)."""

    name = "json_schema"

    def __init__(self, schema: dict | str | None = None):
        if isinstance(schema, str):
            path = Path(schema)
            if not path.is_file():
                raise UserError(
                    f"json_schema verifier: schema file {schema} does not exist; give a path or an inline mapping"
                )
            schema = json.loads(path.read_text())
        self.schema = schema
        if schema is not None:
            self._validator(schema, "the recipe")

    @staticmethod
    def _validator(schema: dict, where: str):
        import jsonschema

        try:
            cls = jsonschema.validators.validator_for(schema)
            cls.check_schema(schema)
        except jsonschema.SchemaError as e:
            raise UserError(
                f"json_schema verifier: the schema from {where} is invalid ({e.message}); fix it"
            ) from None
        return cls(schema)

    def check(self, rows: list[dict]) -> list[Verdict]:
        default = self._validator(self.schema, "the recipe") if self.schema is not None else None
        verdicts = []
        for row in rows:
            validator = default
            row_schema = meta_of(row).get("schema")
            if row_schema is not None:
                try:
                    validator = self._validator(row_schema, "meta.schema")
                except UserError as e:
                    verdicts.append(Verdict(None, None, f"bad_schema: {e}"))
                    continue
            if validator is None:
                verdicts.append(
                    Verdict(None, None, "no_schema: set verify.json_schema schema or meta.schema")
                )
                continue
            found, value = extract_json(row.get("completion") or "")
            if not found:
                verdicts.append(Verdict(False, 0.0, "invalid_json"))
                continue
            error = next(iter(validator.iter_errors(value)), None)
            if error is None:
                verdicts.append(Verdict(True, 1.0, "valid"))
            else:
                where = "/".join(map(str, error.absolute_path)) or "(root)"
                verdicts.append(Verdict(False, 0.0, f"schema_mismatch: {where}: {error.message}"[:300]))
        return verdicts


if __name__ == "__main__":
    import sys

    print(JsonSchemaVerifier(json.loads(sys.argv[2])).check([{"completion": sys.argv[1]}]))
