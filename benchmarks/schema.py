"""What `schema=` adds to a call: preparing the request and validating the answer.

    python benchmarks/schema.py [--number 20000] [--rounds 7]

In-process, no network: each row times one step ember takes per call, in microseconds
(the median of the rounds, each the mean of --number runs; the rows take turns within each
round, so that drift on a busy machine hits them alike). "request+encode" is what ember
does before sending (checking the call, the provider's body) with and without a schema;
"parse" is validating an answer into Response.parsed, next to pydantic's own
TypeAdapter.validate_json on the same text (the floor: ember's parse is that, plus a try).
The schema here is a small pydantic model of three fields, one nested; a label schema
(Literal, boxed under "value" for OpenAI) and a JSON-schema dict are shown too. The first
use of a type builds its TypeAdapter (a one-time cost, also shown).
"""

from __future__ import annotations

import argparse
import statistics
import time
import timeit
from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, TypeAdapter

from ember import _call, _schema, providers


class Country(BaseModel):
    code: str


class City(BaseModel):
    name: str
    population: int
    country: Country


ANSWER = '{"name": "Paris", "population": 2100000, "country": {"code": "FR"}}'
LABEL = '{"value": "positive"}'
DICT = {"type": "object", "properties": {"name": {"type": "string"}}}


def micros(fn: Callable[[], Any], number: int) -> float:
    return timeit.timeit(fn, number=number) / number * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--number", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    openai = providers.module("openai")
    key = {"api_key": "sk-bench", "base_url": "http://127.0.0.1:9/v1"}
    start = time.perf_counter()
    city = _schema.prepare(City)
    first = (time.perf_counter() - start) * 1e6
    label, plain = _schema.prepare(Literal["positive", "negative"]), _schema.prepare(DICT)
    adapter = TypeAdapter(City)
    rows = [
        ("request+encode, no schema",
         lambda: openai.encode(_call.request("gpt-4o-mini", "Hi", **key))),
        ("request+encode, schema=City",
         lambda: openai.encode(_call.request("gpt-4o-mini", "Hi", schema=City, **key))),
        ("parse, schema=City (pydantic)", lambda: _schema.parse(city, ANSWER, "openai", openai)),
        ("pydantic TypeAdapter.validate_json", lambda: adapter.validate_json(ANSWER)),
        ("parse, schema=Literal (boxed)", lambda: _schema.parse(label, LABEL, "openai", openai)),
        ("parse, schema=dict (json.loads)", lambda: _schema.parse(plain, ANSWER, "openai", openai)),
    ]
    rounds = [[micros(fn, args.number) for _, fn in rows] for _ in range(args.rounds)]
    for n, (name, _) in enumerate(rows):
        print(f"{name:38} {statistics.median(r[n] for r in rounds):7.2f} us")
    extra = statistics.median(r[1] - r[0] + r[2] for r in rounds)  # paired within a round
    print(f"{'schema=City on top of a call':38} {extra:7.2f} us  (goal <= 30)")
    print(f"{'first use of City (TypeAdapter, once)':38} {first:7.0f} us")


if __name__ == "__main__":
    main()
