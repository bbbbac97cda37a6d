"""weightpack: lossless compression of safetensors checkpoints (dtype planes + rANS)."""

from .api import info, pack, unpack, verify
from .errors import FormatError, IntegrityError, OutputExistsError, WeightpackError

__version__ = "0.1.0"
__all__ = [
           "FormatError",
           "IntegrityError",
           "OutputExistsError",
           "WeightpackError",
           "__version__",
           "info",
           "pack",
           "unpack",
           "verify",
]
