"""The decoder readied by a second process while this one compiles the coding kernels: a new machine's
first ``weightpack demo`` and first ``weightpack pack`` (which verifies by decoding).

numba compiles under one lock per process, so a first pack compiled the coding kernels (~14 s here for
MiniLM) and then, to verify what it wrote, the decoder (~17 s), one after the other on one core. A
second process started at the beginning compiles the decoder into numba's on-disk cache meanwhile, on
another core; whoever is about to decode first waits for it (``decoder_ready``) and then loads the
decoder from the cache instead of compiling it a second time. If that process fails, the decoder is
compiled here as usual. Only the CLI and the demo start one, and only when the decoder is not cached:
a library call spawning processes would surprise its caller.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from contextlib import AbstractContextManager, nullcontext

_CODE = "from weightpack.wpkfile import warm_up_decoder; warm_up_decoder()"
_readying: list[DecoderBeside] = []  # the process readying the decoder now, if any
_lock = threading.Lock()


class DecoderBeside:
    """A context: a second process loading, or compiling into numba's cache, the decoder while it lasts."""

    def __enter__(self) -> DecoderBeside:
        try:
            self._process: subprocess.Popen | None = subprocess.Popen(
                [sys.executable, "-c", _CODE], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL)
        except OSError:  # no second process here: the first decode compiles the decoder itself
            self._process = None
        with _lock:
            _readying.append(self)
        return self

    def wait(self) -> int | None:
        """Wait until the decoder is ready; the process's exit status (None if none was started)."""
        process = self._process
        return process.wait() if process is not None else None

    def __exit__(self, *exc: object) -> None:
        with _lock:
            _readying.remove(self)
        if self._process is not None and self._process.poll() is None:  # failed or interrupted before decoding
            self._process.kill()
            self._process.wait()

    @classmethod
    def if_cold(cls) -> AbstractContextManager:
        """One if the decoder is not in numba's cache yet (a machine's first run), else a context doing nothing."""
        from .stripe import _decode_stripes

        index = getattr(getattr(getattr(_decode_stripes, "_cache", None), "_cache_file", None), "_index_path", None)
        return nullcontext() if index is None or os.path.exists(index) else cls()


def decoder_ready() -> None:
    """Before decoding: wait for a decoder being readied beside, if any (a no-op otherwise)."""
    with _lock:
        readying = list(_readying)
    for beside in readying:
        beside.wait()
