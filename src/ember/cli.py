"""The `ember` command: `ember "prompt" -m MODEL` and `ember demo`."""

from __future__ import annotations

import argparse
import json
import sys
import time
from importlib import resources

from ._call import models
from ._types import Response
from .errors import EmberError

__all__ = ["main"]

DEMO_MODEL = "local/smollm2"
DEMO_PROMPT = """\
Review: The plot made no sense and the actors seemed bored.
Sentiment: Negative

Review: This lamp is bright, stylish, and worth every penny.
Sentiment: Positive

Review: The noodles were soggy and the place smelled bad.
Sentiment: Negative

Review: What a delightful film, full of joy and great music.
Sentiment: Positive

Review: My order arrived broken and customer support never replied.
Sentiment: Negative

Review: The hotel room was spotless and the bed was very comfortable.
Sentiment: Positive

Review: {text}
Sentiment:"""


def _label(answer: str) -> str:
    words = answer.strip().lower().split()
    word = words[0] if words else ""
    return "positive" if word.startswith("pos") else "negative" if word.startswith("neg") else "?"


def _stats(responses: list[Response]) -> str:
    tokens_in = sum(r.usage.input_tokens for r in responses)
    tokens_out = sum(r.usage.output_tokens for r in responses)
    costs = [r.cost for r in responses]
    cost = "unknown" if None in costs else f"${sum(c or 0.0 for c in costs):.6f}"
    latency = sum(r.latency for r in responses)
    return (f"calls {len(responses)}  tokens {tokens_in} in + {tokens_out} out  "
            f"cost {cost}  latency {latency:.2f}s total, {latency / len(responses):.3f}s/call")


def demo() -> int:
    """Classify the shipped labelled reviews with the embedded model; print the score."""
    lines = resources.files("ember").joinpath("demo.jsonl").read_text().splitlines()
    items = [json.loads(line) for line in lines if line.strip()]
    print(f"ember demo: {len(items)} labelled reviews, few-shot prompt, model {DEMO_MODEL}")
    print("(a 135M-parameter model running in-process: no key, no network; demo-grade)\n")
    start, responses, right = time.perf_counter(), [], 0
    for item in items:
        response = models(DEMO_MODEL, DEMO_PROMPT.format(text=item["text"]), raw=True,
                          max_tokens=2, temperature=0, stop=["\n"])
        guess = _label(response.text)
        right += guess == item["label"]
        responses.append(response)
        mark = "ok " if guess == item["label"] else "MISS"
        print(f"{mark} {guess:8} (want {item['label']:8}) {item['text']}")
    print(f"\naccuracy {right}/{len(items)} = {right / len(items):.0%}")
    print(_stats(responses) + f"  wall {time.perf_counter() - start:.1f}s")
    return 0


def ask(prompt: str, model: str) -> int:
    """Stream the answer to stdout; tokens, cost and latency to stderr."""
    stream = models.stream(model, prompt)
    for text in stream:
        print(text, end="", flush=True)
    print()
    if stream.response is not None:
        print(_stats([stream.response]), file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(
        prog="ember", description='Call a model: ember "prompt" -m MODEL.  Try: ember demo'
    )
    parser.add_argument("prompt", help='the prompt, or "demo" for the demo')
    parser.add_argument("-m", "--model", default=DEMO_MODEL, help=f"default {DEMO_MODEL}")
    options = parser.parse_args(args)
    try:
        return demo() if options.prompt == "demo" else ask(options.prompt, options.model)
    except EmberError as error:
        print(f"ember: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
