"""Score the demo's three prompts, and their vote, on reviews they were NOT chosen on.

The two extra prompts of `ember demo` were picked by their vote's score on the demo's own
48 reviews, so that score flatters them. These 36 reviews (benchmarks/demo_heldout.jsonl,
written for this check and never used to pick a prompt's examples) give a fairer figure.
The last row is the demo's structured variant: the first prompt, its labels written as
JSON, answered through schema=Literal[...].

    python benchmarks/demo_heldout.py        # about 10 s, the embedded model, no network
"""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path

from ember import parallel, vote
from ember.cli import DEMO_JSON_PROMPT, DEMO_PROMPTS, _classify, _label


def main() -> None:
    os.environ.setdefault("EMBER_LOG", "0")  # a measurement, not usage worth keeping
    lines = (Path(__file__).parent / "demo_heldout.jsonl").read_text().splitlines()
    items = [json.loads(line) for line in lines]
    prompts = [resources.files("ember").joinpath(name).read_text() for name in DEMO_PROMPTS]
    jobs = [(prompt, item["text"]) for prompt in prompts for item in items]
    labels = parallel(_classify, jobs, concurrency=2)
    n = len(items)
    columns = {f"prompt {k + 1}": labels[k * n:(k + 1) * n] for k in range(len(prompts))}
    columns[f"vote of {len(prompts)}"] = [vote(labels[i::n]) for i in range(n)]
    json_prompt = resources.files("ember").joinpath(DEMO_JSON_PROMPT).read_text()  # schema=
    columns["prompt 1 through schema=Literal"] = parallel(_label, [(json_prompt, item["text"])
                                                                for item in items], concurrency=2)
    for name, guesses in columns.items():
        right = sum(guess == item["label"] for guess, item in zip(guesses, items, strict=True))
        print(f"{name:31} {right}/{n}")


if __name__ == "__main__":
    main()
