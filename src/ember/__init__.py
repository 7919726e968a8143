"""ember: call large language models from plain Python, and know what every call costs."""

from . import errors
from ._call import Model, Stream, models
from ._types import Response, Usage

__all__ = ["Model", "Response", "Stream", "Usage", "errors", "models"]
__version__ = "0.1.0"
