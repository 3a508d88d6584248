#!/usr/bin/env bash
# Every check that needs the GPU machine, in one call of the device tool: the paged
# decode-attention kernel compiled on the GPU against its jnp reference, decode throughput
# against the HBM roofline in bfloat16 (Llama-3.2-1B's shape, random weights) on row slots
# and on pages with the kernel and with the jnp path (issue 18), and the test suite on the
# machine's JAX 0.11 (the only place that version runs).
#
# Prepare here once: `make device-wheels` (what the machine's image lacks, into .whl/).
# Then one call, and give the machine back:
#     run(command="bash experiments/device_checks.sh", carry=[".whl"], timeout_s=590)
# Each step writes $OUT/<step>.log (bench_decode's last line is its JSON) and prints its
# exit status and last lines; a step past its time limit is stopped and the next one runs.
#
# Off the device: PYTHON=.venv/bin/python SKIP_WHEELS=1 DEVICE_CHECKS_MODEL=tiny
# TEST_FILES=tests/test_bench_decode.py bash experiments/device_checks.sh runs the same
# steps on the CPU with a tiny model, to check the script itself.
set -uo pipefail
out=${OUT:-/tmp/device_checks}
py=${PYTHON:-python3}
model=${DEVICE_CHECKS_MODEL:-1b}
mkdir -p "$out"
export PYTHONUNBUFFERED=1

if [ -d .whl ] && [ -z "${SKIP_WHEELS:-}" ]; then
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  # pycosat ships no wheel: built here from its source (reasoning-gym imports it).
  "$py" -m pip install -q --no-index --no-deps --no-build-isolation --target /tmp/site \
    .whl/pycosat-*.tar.gz || echo "pycosat did not build: the gsm_symbolic tests will fail"
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

step() {  # step NAME SECONDS COMMAND...: COMMAND's output to $out/NAME.log
  local name=$1 limit=$2
  shift 2
  echo "== $name (at most ${limit} s): $*"
  local start=$SECONDS
  timeout "$limit" "$@" >"$out/$name.log" 2>&1
  echo "   exit $? after $((SECONDS - start)) s"
  tail -n 4 "$out/$name.log"
}

{
  command -v nvidia-smi >/dev/null && nvidia-smi
  "$py" -c "import sys, jax, flax, transformers; print(sys.version); print('jax', jax.__version__,
'flax', flax.__version__, 'transformers', transformers.__version__, jax.devices())"
} >"$out/env.txt" 2>&1
tail -n 2 "$out/env.txt"

step kernels 90 "$py" -m pytest -p no:xdist -p no:cacheprovider -q -rs tests/kernels
bench=(experiments/bench_decode.py --random-llama "$model" --batches 1 8 32 --reps 5)
step bench_decode_rows 90 "$py" "${bench[@]}"
for attention in pallas jnp; do
  step "bench_decode_pages_$attention" 90 "$py" "${bench[@]}" --page-size 16 \
    --attention "$attention"
done
read -r -a test_files <<<"${TEST_FILES:-tests}"
step tests 150 "$py" -m pytest -q -rfE -n 8 --dist loadfile "${test_files[@]}"
