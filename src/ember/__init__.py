"""ember: call large language models from plain Python, and know what every call costs."""

from . import errors
from ._cache import MemoryStore, SQLiteStore, cache
from ._call import Model, Stream, models
from ._pace import limit
from ._parallel import abatch, aparallel, batch, gather, parallel, vote
from ._redis import RedisStore
from ._retry import retry
from ._spend import Budget, Tracker, budget, track, usage
from ._types import Response, Usage

__all__ = ["Budget", "MemoryStore", "Model", "RedisStore", "Response", "SQLiteStore", "Stream",
           "Tracker", "Usage", "abatch", "aparallel", "batch", "budget", "cache", "errors",
           "gather", "limit", "models", "parallel", "retry", "track", "usage", "vote"]
__version__ = "0.1.0"
