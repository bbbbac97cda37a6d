"""numba as weightpack's kernels use it: ``njit`` and ``register_jitable``, with cached kernels loaded fast.

Why this module exists: with every kernel in numba's on-disk cache, a short command (unpacking a
small file, ``info``, the first tensor of a ``from_pretrained``) spent about half a second before
its first kernel ran. Before loading any cached function, numba "refreshes" its compiler: it imports
and registers every typing and lowering implementation it has (~200 modules: unicode, typed dicts,
random, linear algebra, which in turn imports all of scipy.linalg when scipy is installed). Those
registries are what *compiling* needs; loading a cached function only links machine code that is
already there. numba's compiler refreshes them itself before any compilation (``compile_extra``,
``BaseContext.get_function``), so skipping the refresh on a cache hit changes nothing else.

Importing this module makes numba's CPU cache do exactly that: on a hit, it loads the function
(starting numba's runtime first if its code calls it: the one other thing the refresh provided, see
below); a miss is compiled as numba always does. An entry that cannot be loaded counts as a miss
(see ``_load_without_refresh``). It only touches weightpack's own kernels
on numba's CPU target (the GPU kernels have a cache of their own; anyone else's numba code in the
process loads as numba does), and does nothing on a numba whose cache lacks the private methods it
relies on (then start-up is just slower). Measured on the 2-core VM, a warm-cache CLI
unpack of a 75 kB checkpoint: 1.22-1.72 s before, 0.83-1.12 s after (6 runs each, alternated).

Two more start-up rules for the kernels (decoding and, since 2026-12-02, coding too). No array
methods (``a.sum()``, ``a.all()``): their cached code refers to ``numba.np.arraymath``, whose import
costs ~0.3 s when scipy is installed (it probes scipy's BLAS); loops say the same and load in
milliseconds. And no allocating or viewing arrays (``np.empty``, ``a.view``): that cached code
refers to ``numba.np.arrayobj``, whose import (with the string code it pulls in) costs ~50 ms; the
Python caller allocates and makes the views in numpy (``rans.decode``, ``rans.encode``,
``checksum.stripe_hash``, ``FrequencyTable.decoder_entries``, ``FrequencyTable.fit``). Allocating
in the coding kernels also compiled numba's allocation code on a machine's first pack.

And numba is imported without two optional packages it only probes (``_import_numba``).

A kernel's first call also skips two things that only matter to code other than weightpack's
(``njit``, per kernel): the scan of every installed package's metadata for numba extensions (numba
runs it again before compiling anything, so a kernel compiled on a cache miss still sees them; 42-52
ms alone in a fresh process here, more with more packages installed), and importing ``numpy.ma``
(~20 ms alone) to check that an argument is no masked array, which an argument of type ``np.ndarray``
itself cannot be. A small file's unpack after the imports: 115-144 -> 89-105 ms (alternated).

And since the kernels allocate nothing, they are compiled without numba's runtime (NRT: arrays'
reference counts, allocation), ``_nrt=False``: their code neither calls nor links against it, and
loading them does not start it, an LLVM compile of its atomic helpers that took 42-47 ms of every
process's first kernel (that unpack, after the imports: 83-115 -> 37-73 ms more). Decoding, packing
and checksums run as fast either way, measured, once the rANS decoder's select was written so that
LLVM cannot turn it into a branch (``rans._renormalise``). A cached entry whose code does call the
runtime (another version's, whose source files kept their stamps) starts it first: linked without
it, such code crashes the process at its first call.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import threading
from collections.abc import Callable


class _Absent:
    """Packages that read as not installed to the thread that made this finder, and to no other: put ahead
    of every finder while numba is imported, it hides what numba's import merely probes (``_import_numba``)
    without touching ``sys.modules``, which every thread shares. (A finder on ``sys.meta_path`` needs only
    ``find_spec``; ``importlib.abc``, which numba imports later anyway, is not imported for it.)"""

    def __init__(self, names: list[str]) -> None:
        self.names, self.thread = frozenset(names), threading.get_ident()

    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        if name in self.names and threading.get_ident() == self.thread:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None  # anyone else's import, or another package: the other finders' business


def _import_numba() -> None:
    """Import numba without the optional packages its import merely probes: ~25 ms of every short command,
    and of the decoder's warm-up beside a pull's first requests.

    numba's ``__init__`` imports SciPy only to check that its version is not too old, and
    ``numba.core.config`` imports PyYAML only to read a ``.numba_config.yaml`` in the working directory.
    While numba is imported they read as absent (unless that file exists, or they are imported already),
    to the importing thread only (``_Absent``): another thread importing either meanwhile gets it as usual
    (``pull`` imports numba on a thread beside huggingface_hub's requests). Afterwards nothing is changed:
    numba imports SciPy again, as usual, where it uses it (linear algebra).
    """
    if "numba" in sys.modules:
        return
    hidden = [name for name in ("scipy", "yaml") if name not in sys.modules]
    if os.path.exists(".numba_config.yaml") and "yaml" in hidden:
        hidden.remove("yaml")
    finder = _Absent(hidden)
    sys.meta_path.insert(0, finder)
    try:
        import numba  # noqa: F401
    finally:
        sys.meta_path.remove(finder)


_import_numba()

import numba  # noqa: E402
import numpy as np  # noqa: E402
from numba.core import caching, types  # noqa: E402
from numba.core.cpu import CPUContext, CPUTargetOptions  # noqa: E402
from numba.core.extending import register_jitable  # noqa: E402
from numba.core.runtime import rtsys  # noqa: E402
from numba.np import numpy_support  # noqa: E402

__all__ = ["njit", "register_jitable"]


# numba's (private) option, where this numba has it; elsewhere the kernels are compiled with the runtime
_WITHOUT_RUNTIME = {"_nrt": False} if hasattr(CPUTargetOptions, "_nrt") else {}


def njit(**options: object) -> Callable[[Callable], Callable]:
    """``numba.njit(**options)`` for a kernel that allocates nothing: compiled without numba's runtime,
    its first call spared numba's extension scan and ``numpy.ma`` (see the module's doc). A kernel that
    did allocate would fail to compile, not misbehave."""
    def decorate(func: Callable) -> Callable:
        kernel = numba.njit(**_WITHOUT_RUNTIME, **options)(func)
        kernel._compilation_chain_init_hook = _no_extension_scan  # what a call runs first
        kernel.typeof_pyval = functools.partial(_typeof_argument, kernel.typeof_pyval)  # for new argument types
        return kernel
    return decorate


def _no_extension_scan() -> None:
    """Nothing, where numba scans installed packages for extensions before a call's first compile or
    load: compiling runs the scan anyway (``CPUContext.load_additional_registries``)."""


def _typeof_argument(numba_typeof: Callable[[object], object], value: object) -> object:
    """numba's type of a kernel's argument; an ``np.ndarray`` (not a subclass) without the masked-array
    check that imports ``numpy.ma``: it cannot be one."""
    if type(value) is not np.ndarray:
        return numba_typeof(value)
    return types.Array(numpy_support.from_dtype(value.dtype), value.ndim, numpy_support.map_layout(value),
                       readonly=not value.flags.writeable)


def _load_without_refresh(self: caching.Cache, sig: object, target_context: object) -> object:
    """``Cache.load_overload`` minus the registry refresh on a CPU cache hit (see the module's doc): numba's
    ``_load_overload`` (a disabled cache loads nothing; read the entry, link it), with the runtime started
    between reading and linking where the entry's code needs it.

    A cache entry that cannot be loaded (cut short by a crash or a full disk while numba wrote it) is
    a miss: its index is deleted, and the kernel compiled again and cached anew. numba itself raises,
    then and in every later run, until someone finds and deletes its cache.
    """
    ours = getattr(getattr(self, "_py_func", None), "__module__", "").startswith(f"{__package__}.")
    if not ours or not isinstance(target_context, CPUContext):  # other code's numba works as numba does
        return _NUMBA_LOAD_OVERLOAD(self, sig, target_context)
    if not getattr(self, "_enabled", True):
        return None
    try:
        with self._guard_against_spurious_io_errors():
            data = self._cache_file.load(self._index_key(sig, target_context.codegen()))
            if data is None:
                return None
            if _needs_runtime(data):
                rtsys.initialize(target_context)  # idempotent
            return self._impl.rebuild(target_context, data)
    except Exception:  # damaged; numba's compiler refreshes itself before compiling the kernel again
        with contextlib.suppress(OSError, AttributeError):
            os.remove(self._cache_file._index_path)  # numba reads it again before saving, and would fail there
        return None


def _needs_runtime(data: tuple) -> bool:
    """Whether a cached kernel's code refers to numba's runtime (``NRT_...``, the prefix of each of its
    symbols that compiled code calls), in its object code, where ``CodeLibrary.serialize_using_object_code``
    puts it. True if the entry is not laid out so: starting the runtime is the safe side."""
    try:
        return b"NRT_" in data[0][2][0]
    except (IndexError, TypeError):
        return True


_NUMBA_LOAD_OVERLOAD = caching.Cache.load_overload


def _install() -> None:
    """Where numba's cache is laid out as ``_load_without_refresh`` expects: its methods, and the two
    attributes a cache's ``__init__`` sets."""
    if (all(hasattr(caching.Cache, name) for name in ("_index_key", "_guard_against_spurious_io_errors"))
            and {"_cache_file", "_impl"} <= set(caching.Cache.__init__.__code__.co_names)):
        caching.Cache.load_overload = _load_without_refresh


_install()
