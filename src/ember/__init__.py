"""ember: call large language models from plain Python, and know what every call costs."""

from . import errors
from ._call import Model, Stream, models
from ._parallel import abatch, aparallel, batch, gather, parallel, vote
from ._spend import Budget, Tracker, budget, track, usage
from ._types import Response, Usage

__all__ = [
    "Budget", "Model", "Response", "Stream", "Tracker", "Usage", "abatch", "aparallel", "batch", "budget",
    "errors",
    "gather", "models", "parallel", "track", "usage", "vote",
]
__version__ = "0.1.0"
