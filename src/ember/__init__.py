"""ember: call large language models from plain Python, and know what every call costs."""

from . import errors
from ._call import Model, Stream, models
from ._spend import Budget, Tracker, budget, track, usage
from ._types import Response, Usage

__all__ = [
    "Budget", "Model", "Response", "Stream", "Tracker", "Usage", "budget", "errors", "models",
    "track", "usage",
]
__version__ = "0.1.0"
