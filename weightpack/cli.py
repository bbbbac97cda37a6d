"""The ``weightpack`` command line. Exit status: 0 ok, 1 error (one line on stderr), 2 usage, 130 Ctrl-C."""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import io
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from . import __version__
from .errors import CANCEL, WeightpackError
from .paths import tree_size

if TYPE_CHECKING:
    from . import cluster

EXIT_CODES = ("exit status: 0 success; 1 error (one line on stderr naming the file, nothing left behind; with "
              "several sources, any failed); 2 usage error; 130 interrupted (Ctrl-C or SIGTERM; nothing left behind)")


def _size(n: float) -> str:
    return f"{n / 1e6:.1f} MB"


def _transfer(args: argparse.Namespace, run: Callable[[], Path], verb: str) -> dict:
    start = time.perf_counter()
    dst = run()
    seconds = time.perf_counter() - start
    before, after = tree_size(Path(args.src)), tree_size(dst)
    summary = {"source": str(args.src), "destination": str(dst), "source_bytes": before,
               "destination_bytes": after, "seconds": round(seconds, 3)}
    if not args.quiet and not args.json:
        print(f"{verb} {args.src} -> {dst}: {_size(before)} -> {_size(after)} "
              f"({100 * after / max(before, 1):.2f}%) in {seconds:.2f} s")
    return summary


def _many(args: argparse.Namespace) -> bool:
    """Several sources, or a cluster: the ``weightpack.cluster`` form of the command."""
    return len(args.src) > 1 or args.cluster is not None


def _summary(args: argparse.Namespace, run: Callable[[], cluster.Summary], verb: str) -> dict:
    """Run a several-source command; print each source's outcome (failures as one line each on stderr)
    and the totals.

    Ray prints its own notices on stdout (e.g. that a worker died and its task is retried): while
    it runs, they go to stderr (nowhere with -q), so that stdout carries weightpack's report only.
    """
    with contextlib.redirect_stdout(io.StringIO() if args.quiet else sys.stderr):
        summary = run()
    report = summary.as_dict()
    for o in summary.outcomes:
        if o.error is not None:
            print(f"weightpack: error: {o.error}", file=sys.stderr)
        elif not args.quiet and not args.json:
            into = f" -> {o.destination}" if o.destination else ""
            sizes = f": {_size(o.source_bytes)} -> {_size(o.destination_bytes)}" if o.destination else ""
            print(f"{verb} {o.source}{into}{sizes} in {o.seconds:.2f} s")
    if not args.quiet and not args.json:
        sizes = (f": {_size(report['source_bytes'])} -> {_size(report['destination_bytes'])} "
                 f"({100 * report['ratio']:.2f}%)" if report["destination_bytes"] else "")
        print(f"{report['done']} done, {report['failed']} failed{sizes} in {report['seconds']:.2f} s")
    return report


def _pack(args: argparse.Namespace) -> dict:
    from . import api
    from .compile_beside import DecoderBeside

    if _many(args):
        from . import cluster

        return _summary(args, lambda: cluster.pack_many(
            args.src, args.output, address=args.cluster, overwrite=args.force, threads=args.threads,
            verify=not args.no_verify, progress=args.progress, base=args.base), "packed")
    args.src = args.src[0]
    # A new machine's first pack compiles the coding kernels, then the decoder to verify: the decoder beside
    with contextlib.nullcontext() if args.no_verify else DecoderBeside.if_cold():
        return _transfer(args, lambda: api.pack(args.src, args.output, overwrite=args.force, threads=args.threads,
                                                verify=not args.no_verify, progress=args.progress, base=args.base),
                         "packed")


def _unpack(args: argparse.Namespace) -> dict:
    from . import api

    if _many(args):
        from . import cluster

        return _summary(args, lambda: cluster.unpack_many(
            args.src, args.output, address=args.cluster, overwrite=args.force, threads=args.threads,
            progress=args.progress, base=args.base, sha256=args.sha256), "unpacked")
    args.src = args.src[0]
    return _transfer(args, lambda: api.unpack(args.src, args.output, overwrite=args.force, threads=args.threads,
                                              progress=args.progress, base=args.base, sha256=args.sha256),
                     "unpacked")


def _verify(args: argparse.Namespace) -> dict:
    from . import api

    if _many(args):
        from . import cluster

        return _summary(args, lambda: cluster.verify_many(
            args.src, address=args.cluster, threads=args.threads, progress=args.progress, base=args.base), "verified")
    args.src = args.src[0]
    checked = api.verify(args.src, threads=args.threads, progress=args.progress, base=args.base)
    if not args.quiet and not args.json:
        files = f", {_count(checked['files'], 'other file')} match weightpack.json" if Path(args.src).is_dir() else ""
        print(f"{args.src}: OK ({_count(checked['archives'], 'archive')} decoded, every checksum and sha256 "
              f"match{files})")
    return {"source": str(args.src), **checked, "ok": True}


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'s' if n != 1 else ''}"


def _modes(chunks: dict[str, int]) -> str:
    """Chunk modes of a rANS plane, shown only when not all chunks use the plane's table."""
    if (not chunks["own"] and not chunks["raw"]) or chunks["raw"] == sum(chunks.values()):
        return ""
    return "[" + ",".join(f"{n} {mode}" for mode, n in chunks.items() if n) + "]"


def _info(args: argparse.Namespace) -> dict:
    from .describe import info

    report = info(args.src)
    if args.json or args.quiet:
        return report
    if "folder" not in report:
        _print_archive(report)
        return report
    for archive in report["archives"]:
        print(f"== {archive['file']}")
        _print_archive(archive)
        print()
    contents = f"{_count(len(report['archives']), 'archive')} and {_count(report['files'], 'other file')}"
    print(f"folder {report['folder']}: {contents}, {_size(report['original_bytes'])} -> "
          f"{_size(report['packed_bytes'])} ({100 * report['ratio']:.3f}%)")
    return report


def _print_archive(report: dict) -> None:
    print(f"{'tensor':<48} {'dtype':<6} {'shape':<14} {'packed':>8}  "
          "planes: codec[chunk modes] bits/symbol (plane bound)")
    for t in report["tensors"]:
        ratio = t["packed_bytes"] / t["original_bytes"] if t["original_bytes"] else 0.0
        planes = "  ".join(f"{p['plane']}:{p['codec']}{_modes(p['chunks'])} {p['bits']:.3f} ({p['bound_bits']:.3f})"
                           for p in t["planes"])
        if t["reference"]:
            planes = f"{t['reference']} {planes}"
        shape = "x".join(map(str, t["shape"])) or "scalar"
        print(f"{t['name'][:48]:<48} {t['dtype']:<6} {shape:<14} {100 * ratio:7.2f}%  {planes}")
    tb = max(report["tensor_bytes"], 1)
    print(f"\nfile: {_size(report['original_bytes'])} -> {_size(report['packed_bytes'])} "
          f"({100 * report['ratio']:.3f}%), sha256 {report['sha256']}")
    print(f"tensor data: packed {100 * report['tensor_packed_bytes'] / tb:.3f}% of original; "
          f"plane bound {100 * report['tensor_bound_bytes'] / tb:.3f}% "
          f"(gap {100 * (report['tensor_packed_bytes'] - report['tensor_bound_bytes']) / tb:+.3f} pp)")


def _push(args: argparse.Namespace) -> dict:
    from . import hub

    commit = hub.push(args.src, args.repo_id, revision=args.revision, private=args.private, token=args.token,
                      commit_message=args.commit_message, threads=args.threads, progress=args.progress,
                      base=args.base)
    if not args.quiet and not args.json:
        print(f"pushed {args.src} to {args.repo_id} (commit {commit})")
    return {"source": str(args.src), "repo_id": args.repo_id, "commit": commit}


def _pull(args: argparse.Namespace) -> dict:
    from . import hub

    dst = hub.pull(args.repo_id, args.output, revision=args.revision, token=args.token, overwrite=args.force,
                   threads=args.threads, progress=args.progress, base=args.base)
    if not args.quiet and not args.json:
        print(f"pulled {args.repo_id} -> {dst}")
    return {"repo_id": args.repo_id, "destination": str(dst)}


def _demo(args: argparse.Namespace) -> dict:
    from .demo import run_demo

    return run_demo(threads=args.threads, quiet=args.quiet or args.json, progress=args.progress)


def _threads(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return n


FORCE_HELP = ("replace an existing output of the same kind (a file; a folder only if empty, packed, or an "
              "earlier output of this command)")
BASE_HELP = "the base checkpoint (file or folder, plain or packed) the model was or is packed against"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="weightpack", description="Lossless compression of safetensors checkpoints.",
                                     epilog=EXIT_CODES)
    parser.add_argument("--version", action="version", version=f"weightpack {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")
    common.add_argument("-j", "--threads", type=_threads, default=None, metavar="N",
                        help="threads (default: all cores)")
    common.add_argument("--json", action="store_true", help="print a JSON report on stdout")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, func: Callable, help: str, runs_on: str = "api") -> argparse.ArgumentParser:
        """A subcommand; ``runs_on`` is the weightpack module its work imports (see ``run``)."""
        p = sub.add_parser(name, parents=[common], help=help, description=help, epilog=EXIT_CODES)
        p.set_defaults(func=func, runs_on=runs_on)
        return p

    def sources(p: argparse.ArgumentParser, what: str) -> None:
        p.add_argument("src", type=Path, nargs="+", help=f"{what}; with several, each one is done (a failure does "
                                                         "not stop the others) and a summary printed")
        p.add_argument("--cluster", metavar="ADDRESS", help="run on this Ray cluster (anything ray.init(address=) "
                       "takes: HOST:PORT, ray://HOST:10001, auto), one task per safetensors file; sources and "
                       "outputs on storage all nodes see; -j is then the threads of each task (default 1)")

    p = command("pack", _pack, "pack .safetensors files or model folders")
    sources(p, "X.safetensors or a model folder")
    p.add_argument("-o", "--output", help="destination (default: X.wpk, or FOLDER.wpk/ for a folder); an existing "
                                          "folder, or a name ending in /, receives a file's output inside; with "
                                          "several sources, a folder holding each one under its default name")
    p.add_argument("-f", "--force", action="store_true", help=FORCE_HELP)
    p.add_argument("--no-verify", action="store_true", help="skip decoding the new archive before publishing it")
    p.add_argument("--base", type=Path, help=BASE_HELP + ": tensors matching it by name, dtype and shape are "
                                            "coded as deltas to it")
    p = command("unpack", _unpack, "restore the original files from .wpk files or packed folders")
    sources(p, "X.wpk or a packed folder")
    p.add_argument("-o", "--output", help="destination (default: X.safetensors, or FOLDER/ for FOLDER.wpk/); an "
                                          "existing folder, or a name ending in /, receives a file's output inside; "
                                          "with several sources, a folder holding each one under its default name")
    p.add_argument("-f", "--force", action="store_true", help=FORCE_HELP)
    p.add_argument("--base", type=Path, help=BASE_HELP)
    p.add_argument("--sha256", action="store_true", help="also check each restored file's sha256 (a serial pass; "
                                                        "every byte is checked by its stripe's XXH64 anyway)")
    p = command("verify", _verify, "decode archives fully and check every checksum; write nothing")
    sources(p, "X.wpk or a packed folder")
    p.add_argument("--base", type=Path, help=BASE_HELP)
    p = command("info", _info, "show per tensor and plane: codec, bits achieved, order-0 bound", runs_on="describe")
    p.add_argument("src", type=Path, help="X.wpk or a packed folder")
    p = command("push", _push, "pack a model folder (unless packed) and upload it to the Hugging Face Hub",
                runs_on="hub")
    p.add_argument("src", type=Path, help="a model folder, packed or not")
    p.add_argument("repo_id", help="user/name of the model repo (created if needed)")
    p.add_argument("--revision", help="branch to commit to (created if needed; default main)")
    p.add_argument("--private", action="store_true", help="create the repo private")
    p.add_argument("--token", help="Hub token (default: HF_TOKEN or the saved login)")
    p.add_argument("--commit-message", help="commit message")
    p.add_argument("--base", type=Path, help=BASE_HELP)
    p = command("pull", _pull, "download a repo from the Hub and restore its original files", runs_on="hub")
    p.add_argument("repo_id", help="user/name of the model repo")
    p.add_argument("-o", "--output", type=Path, help="destination folder (default: the repo's name)")
    p.add_argument("-f", "--force", action="store_true", help=FORCE_HELP)
    p.add_argument("--revision", help="branch, tag or commit (default main)")
    p.add_argument("--token", help="Hub token (default: HF_TOKEN or the saved login)")
    p.add_argument("--base", type=Path, help=BASE_HELP)
    command("demo", _demo, "pack and unpack the real all-MiniLM-L6-v2 in F32, BF16 and F16", runs_on="demo")
    return parser


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM cleans up exactly like Ctrl-C


def _run_cancellable(args: argparse.Namespace) -> dict:
    """Run the command on a worker thread; the main thread only waits and takes Ctrl-C / SIGTERM.

    Python delivers KeyboardInterrupt to the main thread at any instruction, including inside the
    JIT compiler's callbacks, where it can leave a compiler lock held and hang the process. Here
    the work never sees an asynchronous interrupt: it is asked to stop (``CANCEL``), stops at
    its next step, removes its temporary output, and only then does the command exit. A second
    Ctrl-C exits at once.

    While the work runs, the signals only make that request; they raise nothing in the main thread
    either. When they raised KeyboardInterrupt there, one that arrived while the worker thread was
    starting (``start()`` waits for the GIL while the work already runs) ended the process with the
    work cut short and its temporary output left behind: 2 of 40 packs, the signal sent as soon as
    the temporary appeared.
    """
    outcome: dict[str, object] = {}
    done = threading.Event()

    def work() -> None:
        try:
            outcome["result"] = args.func(args)
        except BaseException as exc:  # handed to the main thread, which reports it
            outcome["error"] = exc
        finally:
            done.set()

    def stop(signum: int, frame: object) -> None:
        if CANCEL.is_set():
            os._exit(130)
        CANCEL.set()

    ours = threading.current_thread() is threading.main_thread()  # only the main thread takes signals
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)} if ours else {}
    try:
        threading.Thread(target=work, name="weightpack", daemon=True).start()
        while not done.wait(0.1):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        CANCEL.clear()
    if "error" in outcome:  # stopped on a request: KeyboardInterrupt, reported as an interruption
        raise outcome["error"]
    return outcome["result"]  # done before a request was noticed: the output is complete and published


def main(argv: Sequence[str] | None = None) -> int:
    """Run a command line (``sys.argv`` by default); return its exit status."""
    return _execute(_parser().parse_args(argv))


def run() -> NoReturn:
    """The ``weightpack`` program (its console script, and ``python -m weightpack``): ``main`` as a process.

    A short command spends most of its life starting up. Importing numba creates a few hundred
    thousand objects, and Python's cyclic garbage collector, set off by the allocations, walks all of
    them several times over: ~95 ms of a 0.55 s unpack of a small file here. None of them is garbage.
    So the program parses its arguments (``--help`` and usage errors stay fast), imports what the
    command runs on with the collector off, and moves all of it out of the collector's sight
    (``gc.freeze``) before turning it back on for the command's own objects. ``main``, called from
    other Python code, leaves the collector as it is.

    And numpy's BLAS (OpenBLAS) gets one thread unless the environment says otherwise. When numpy
    loads it, it starts a thread per core, and each spins ~0.1 s waiting for work that weightpack never
    gives it (there is no linear algebra here): ~0.12 s of the CPU of every MiniLM unpack on two cores
    (0.75 against 0.87 s), taken from the decoding threads, and a spinning thread per core on more.
    """
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # OpenBLAS reads it when numpy loads it, below
    gc.disable()
    args = _parser().parse_args()
    importlib.import_module(f"{__package__}.{args.runs_on}")
    gc.freeze()
    gc.enable()
    sys.exit(_execute(args))


def _execute(args: argparse.Namespace) -> int:
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)
    args.progress = not args.quiet and not args.json and sys.stderr.isatty()
    try:
        result = _run_cancellable(args)
    except WeightpackError as exc:
        print(f"weightpack: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("weightpack: interrupted; no partial output was left behind", file=sys.stderr)
        return 130
    except OSError as exc:
        print(f"weightpack: error: {exc.filename or ''}{': ' if exc.filename else ''}{exc.strerror or exc}",
              file=sys.stderr)
        return 1
    except Exception as exc:  # a bug: still one line, unless debugging
        if os.environ.get("WEIGHTPACK_DEBUG"):
            raise
        print(f"weightpack: internal error: {type(exc).__name__}: {exc} (set WEIGHTPACK_DEBUG=1 for a traceback)",
              file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result, indent=2))
    return 1 if result.get("failed") else 0  # several sources: any that failed makes the run fail


if __name__ == "__main__":
    run()
