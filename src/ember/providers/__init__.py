"""Which provider serves a model string, where it lives, and which key it needs.

Each provider module turns a Request into its wire format (`encode`) and its answers
back into text, usage (None if unreported) and why the answer ended (`decode`,
`decode_event`, see _types.finish), and names its transport (`post`, `events`); one that
embeds also has `encode_embed` and `decode_embed` (vectors, usage). A module whose
structured output takes only an object at the root sends a schema= boxed and says so with
`OBJECT_ROOT = True` (see _schema). Nothing outside the
module knows a provider's shape.
"""


import difflib
import functools
import importlib
import os
from types import ModuleType

from ..errors import MissingKey, UnknownModel

__all__ = ["PROVIDERS", "base_url", "key", "module", "resolve"]

# name: (module, default base URL, key variables: the first is the one to tell users to set)
PROVIDERS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "openai": ("openai", "https://api.openai.com/v1", ("OPENAI_API_KEY",)),
    "anthropic": ("anthropic", "https://api.anthropic.com", ("ANTHROPIC_API_KEY",)),
    "google": ("google", "https://generativelanguage.googleapis.com",
               ("GEMINI_API_KEY", "GOOGLE_API_KEY")),
    "ollama": ("openai", "http://localhost:11434/v1", ()),
    "local": ("local", "", ())}
PREFIXES = {"gpt-": "openai", "o1": "openai", "o3": "openai", "o4": "openai",
            "chatgpt-": "openai", "text-embedding-": "openai", "claude-": "anthropic",
            "gemini-": "google", "smollm2": "local"}
LOCAL_MODELS = ["smollm2"]


def _suggest(name: str, choices: list[str]) -> list[str]:
    return difflib.get_close_matches(name, choices, n=3, cutoff=0.5)


def resolve(model: str) -> tuple[str, str]:
    """'provider/model' or a bare well-known name -> (provider, model)."""
    if not isinstance(model, str):
        raise TypeError(f"model must be a string such as 'openai/gpt-4o-mini', not {model!r}")
    provider, slash, name = model.partition("/")
    if slash:
        if provider not in PROVIDERS:
            raise UnknownModel(f"Unknown provider {provider!r} in {model!r}.",
                               _suggest(provider, list(PROVIDERS)))
        return provider, name
    for prefix, provider in PREFIXES.items():
        if model.startswith(prefix):
            return provider, model
    from .._prices import known_models

    known = {m: f"{p}/{m}" for p in ("google", "anthropic", "openai") for m in known_models(p)
             if ":" not in m}  # canonical names, not fine-tune keys; a name's home provider wins
    known |= {m: f"local/{m}" for m in LOCAL_MODELS}
    raise UnknownModel(f"Unknown model {model!r}: write 'provider/model' (providers: "
                       f"{', '.join(PROVIDERS)}).", [known[m] for m in _suggest(model, [*known])])


@functools.cache
def module(provider: str) -> ModuleType:
    return importlib.import_module(f"{__name__}.{PROVIDERS[provider][0]}")


def base_url(provider: str, given: str | None) -> str:
    """The base URL: given, else $<PROVIDER>_BASE_URL, else the provider's own."""
    url = given or os.environ.get(f"{provider.upper()}_BASE_URL") or PROVIDERS[provider][1]
    return url.rstrip("/")


def key(provider: str, given: str | None, url: str) -> str | None:
    """The API key: given, else from the provider's variables. Required only by the
    provider's own servers: a self-hosted OpenAI-compatible server may need none."""
    variables = PROVIDERS[provider][2]
    found = given or next((os.environ[v] for v in variables if os.environ.get(v)), None)
    if found is None and variables and url == PROVIDERS[provider][1]:
        raise MissingKey(provider, variables)
    return found
