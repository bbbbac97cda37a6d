"""weightpack: lossless compression of safetensors checkpoints (dtype planes + rANS).

``pack``/``unpack``/``verify``/``info`` work on files and model folders; ``safe_open``/``load_file``/
``load_folder`` read tensors straight from a .wpk or packed folder; ``from_pretrained`` builds a
transformers model from a packed folder or repo; ``weightpack.hub`` pushes and pulls packed models;
``weightpack.cluster`` packs, unpacks and verifies many checkpoints, here or on a Ray cluster.

The heavy modules (numpy, numba) load on first use, so that the command line can install its
signal handling before anything slow runs: Ctrl-C at any moment gets a clean exit.
"""

from __future__ import annotations

import importlib

from .errors import FormatError, IntegrityError, OutputExistsError, WeightpackError

__version__ = "0.1.0"
_LAZY = {"pack": "api", "unpack": "api", "verify": "api", "info": "describe", "safe_open": "loading",
         "load_file": "loading", "load_folder": "loading", "from_pretrained": "models", "hub": None,
         "cluster": None}
__all__ = ["FormatError", "IntegrityError", "OutputExistsError", "WeightpackError", "__version__", *_LAZY]


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


def __getattr__(name: str) -> object:
    if name not in _LAZY:
        raise AttributeError(f"module 'weightpack' has no attribute {name!r}")
    module = importlib.import_module(f".{_LAZY[name] or name}", __name__)
    return module if _LAZY[name] is None else getattr(module, name)
