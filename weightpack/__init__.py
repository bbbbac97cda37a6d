"""weightpack: lossless compression of safetensors checkpoints (dtype planes + rANS).

``pack``/``unpack``/``verify``/``info`` work on files and model folders; ``safe_open``/``load_file``
read tensors straight from a .wpk; ``weightpack.hub`` pushes and pulls packed models.
"""

from . import hub
from .api import info, pack, unpack, verify
from .errors import FormatError, IntegrityError, OutputExistsError, WeightpackError
from .loading import load_file, load_folder, safe_open

__version__ = "0.1.0"
__all__ = ["FormatError", "IntegrityError", "OutputExistsError", "WeightpackError", "__version__", "hub", "info",
           "load_file", "load_folder", "pack", "safe_open", "unpack", "verify"]
