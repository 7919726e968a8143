"""Structured output: `schema=` made into the JSON schema a provider is sent, and the
model's answer made into a validated value (`Response.parsed`).

A schema is a pydantic model, a dataclass, a TypedDict (from typing_extensions before
Python 3.12, as pydantic requires), a Literal or Enum of labels, or any other type that
pydantic's TypeAdapter reads: pydantic writes its JSON schema and validates the answer.
pydantic is imported on first use, and each type is read once. A JSON-schema dict is sent
as given and its answer is decoded JSON: the provider's constrained decoding enforces the
dict, ember does not (it ships no JSON-schema validator).

Every schema is sent in the strict form that OpenAI's strict mode and Anthropic require:
each object closed (additionalProperties false) with all its properties required and no
`default`; a field with a default is then always written by the model. Providers that
take only an object at the root (OpenAI, Anthropic) get any other schema boxed under the
key "value", and the answer is unboxed. Left out: rewriting keywords a provider does not
support (Anthropic's numeric bounds, say): the provider's 400 names them.
"""

import functools
import json
from typing import Any, NamedTuple

from .errors import ConfigError, InvalidOutput

__all__ = ["Schema", "parse", "prepare"]


class Schema(NamedTuple):
    """A schema= value made ready: its JSON schema in strict form, as given (`json`) and
    with an object at the root (`boxed`), and the pydantic TypeAdapter that validates
    answers (None for a dict schema)."""

    json: dict[str, Any]
    boxed: dict[str, Any]
    adapter: Any


def prepare(schema: Any) -> Schema:
    """Make a schema= value ready to send; a ConfigError when pydantic cannot read it."""
    if isinstance(schema, dict):
        return _ready(schema, None)
    try:
        return _adapted(schema)
    except (RuntimeError, TypeError) as problem:  # pydantic's errors are RuntimeErrors
        raise ConfigError(f"schema= takes a pydantic model, a dataclass, a TypedDict, a Literal, "
                          f"an Enum or a JSON-schema dict, not {schema!r}: {problem}") from None


@functools.lru_cache(maxsize=256)
def _adapted(schema: Any) -> Schema:
    from pydantic import TypeAdapter

    adapter = TypeAdapter(schema)
    return _ready(adapter.json_schema(), adapter)


def _ready(schema: dict[str, Any], adapter: Any) -> Schema:
    strict = boxed = json.loads(json.dumps(schema), object_hook=_close)  # a closed copy
    if strict.get("type") != "object":  # boxed; references ($defs) stay at the root
        value = {key: part for key, part in strict.items() if key != "$defs"}
        defs = {"$defs": strict["$defs"]} if "$defs" in strict else {}
        boxed = _close({"type": "object", "properties": {"value": value}, **defs})
    return Schema(strict, boxed, adapter)


def _close(node: dict[str, Any]) -> dict[str, Any]:
    """One object of a schema, its parts already closed: if it is an object type, closed
    (unless it says otherwise), with all its properties required and their defaults dropped."""
    if node.get("type") == "object" and isinstance(node.get("properties"), dict):
        for field in node["properties"].values():
            field.pop("default", None)
        node = {"additionalProperties": False, **node, "required": list(node["properties"])}
    return node


def parse(schema: Schema, text: str, provider: str, module: Any) -> Any:
    """The answer as a value of the schema, as the provider's module sent it (boxed if its
    OBJECT_ROOT says so); InvalidOutput when the answer is not one."""
    answer = text
    try:
        if getattr(module, "OBJECT_ROOT", False) and schema.boxed is not schema.json:
            answer = json.dumps(json.loads(text)["value"])
        return schema.adapter.validate_json(answer) if schema.adapter else json.loads(answer)
    except (ValueError, KeyError, TypeError) as problem:  # ValidationError is a ValueError
        raise InvalidOutput(provider, text, f"{type(problem).__name__}: {problem}") from None
