"""ember: call large language models from plain Python, and know what every call costs."""

from . import errors
from ._call import Model, Stream, models
from ._parallel import aparallel, gather, parallel, vote
from ._spend import Budget, Tracker, budget, track, usage
from ._types import Response, Usage

__all__ = ["Budget", "Model", "Response", "Stream", "Tracker", "Usage", "aparallel", "budget",
           "errors", "gather", "models", "parallel", "track", "usage", "vote"]
__version__ = "0.1.0"
