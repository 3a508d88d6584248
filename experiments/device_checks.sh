#!/usr/bin/env bash
# Every check that needs the GPU machine, in one call of the device tool (issue 18), most
# wanted first: decode throughput against the HBM roofline in bfloat16 (Llama-3.2-1B's
# shape, random weights) on row slots, the layers read as by default (the attention's
# projections transposed), with the plain per-layer copy, and with a layer's products run
# by the row-products kernels, those kernels alone against XLA's products at several
# block settings, and on pages with both kernels; the paged decode-attention kernel alone against the jnp path, at several
# keys a step; bench_search's five runs in
# bfloat16 on SmolLM2's shape with random weights (the GGUF is over what a call carries),
# ours and transformers' both on the GPU; (a) and the kernel alone on 8-token pages; the decode throughput with the layers' weights read in
# the other ways and with CUDA graphs, and on pages with the kernel and with the jnp
# path; the paged decode-attention kernel compiled on the GPU against its jnp reference;
# (a) again on the jnp path; and, alongside them on cores of its own, the test suite on
# the machine's JAX 0.11, on its CPU.
#
# Prepare here once: `make device-files` (what the machine's image lacks into .whl/, and
# SmolLM2's shape and tokenizer into .device_model/). Then one call, and give it back:
#     run(command="bash experiments/device_checks.sh", carry=[".whl", ".device_model"],
#         timeout_s=520)
# Each step writes <step>.log (a benchmark's last line is its JSON) and prints its exit
# status and last lines; the benchmarks save their profiler traces beside the logs
# (traces/, summarized in the logs: experiments/device_trace.py). All of it comes back as
# one archive, $OUT/device_checks.tgz, rewritten after every step (the device tool brings
# back at most 8 files). A step runs under its own limit and never past the call's
# (DEVICE_CHECKS_SECONDS, default 500, less 10 s to spare): one past it is stopped, and the
# next one runs if any time is left. STEPS="name ..." runs only the steps named (a rerun).
#
# Off the device: PYTHON=.venv/bin/python SKIP_WHEELS=1 DEVICE_CHECKS_MODEL=tiny
# SEARCH_ARGS="--problems 2 --expansions 2 --step-tokens 16" TEST_FILES=tests/test_bench_decode.py
# bash experiments/device_checks.sh runs the same steps on the CPU, small, to check the script.
set -uo pipefail
archive=${OUT:-/tmp}/device_checks.tgz
out=$(mktemp -d /tmp/device_checks.XXXX)
traces=$out/traces
py=${PYTHON:-python3}
model=${DEVICE_CHECKS_MODEL:-1b}
deadline=$((SECONDS + ${DEVICE_CHECKS_SECONDS:-500} - 10))
mkdir -p "$traces" "$(dirname "$archive")"
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
  [ -n "${STEPS:-}" ] && [[ " $STEPS " != *" $name "* ]] && return
  local left=$((deadline - SECONDS))
  if [ "$left" -lt 20 ]; then
    echo "== $name: skipped, ${left} s left of the call"
    return
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "== $name (at most ${limit} s): $*"
  local start=$SECONDS
  timeout "$limit" "$@" >"$out/$name.log" 2>&1
  echo "   $name: exit $? after $((SECONDS - start)) s"
  tail -n 4 "$out/$name.log"
  tar czf "$archive.part" -C "$out" . && mv "$archive.part" "$archive"
}

{
  command -v nvidia-smi >/dev/null && nvidia-smi
  "$py" -c "import sys, jax, flax, transformers; print(sys.version); print('jax', jax.__version__,
'flax', flax.__version__, 'transformers', transformers.__version__, jax.devices())"
  nproc
} >"$out/env.txt" 2>&1
tail -n 3 "$out/env.txt"

# The suite runs on the CPU alongside the GPU steps, on cores of its own where the
# machine has enough and lets a process be pinned; the GPU steps keep four.
cores=$(nproc)
read -r -a test_files <<<"${TEST_FILES:-tests}"
suite=(-m pytest -q -rfE --dist loadfile "${test_files[@]}")
if [ "$cores" -ge 8 ] && taskset -c 0 true 2>/dev/null; then
  gpu_steps=(taskset -c 0-3)
  JAX_PLATFORMS=cpu step tests 600 taskset -c "4-$((cores - 1))" "$py" "${suite[@]}" \
    -n $((cores - 4)) &
  suite_pid=$!
else
  gpu_steps=()
  suite_pid=
fi

read -r -a batches <<<"${BATCHES:-1 8 32}"
bench=("${gpu_steps[@]}" "$py" experiments/bench_decode.py --random-llama "$model"
       --batches "${batches[@]}" --reps 5 --no-matmul-cap)
# Row slots as the decoder reads the layers by default on a GPU (one array per layer, the
# attention's projections held [out, in]: RowLinear), then as it did before, [in, out],
# where XLA:GPU stores a batch-1 projection's products and reduces them in a second kernel
# (experiments/device_program.py).
step bench_decode_rows 90 "${bench[@]}" --trace "$traces/rows"
step bench_decode_rows_plain 90 "${bench[@]}" --layer-weights per-layer \
  --trace "$traces/rows_plain"
# A layer's norms, products, SiLU and residuals as four Pallas kernels at batch 1 (XLA's
# GEMMs from batch 8, where the kernel does not run: the transposed default's program),
# and the kernels alone against XLA's products on the 1B layer's shapes. On row slots the
# q/k/v kernel stays XLA's RoPE and writes (qkv_into_pages is for pages).
step bench_decode_rows_kernels 90 "${bench[@]}" --layer-weights per-layer-kernels \
  --trace "$traces/rows_kernels"
step bench_row_products 90 "${gpu_steps[@]}" "$py" experiments/bench_row_products.py \
  --shape "$([ "$model" = tiny ] && echo tiny || echo 1b)"
# Both kernels together, the fewest kernels a batch-1 token has (123 compiled for an H200
# here against the default's 284 on the same pages: experiments/device_programs/).
step bench_decode_pages_kernels 90 "${bench[@]}" --page-size 16 --attention pallas \
  --layer-weights per-layer-kernels --trace "$traces/pages_kernels"
# The paged kernel alone against the decoder's jnp path on a search round's rows
# (SmolLM2's heads), its page loop reading 16 to 128 keys a step.
step bench_paged_attention 60 "${gpu_steps[@]}" "$py" experiments/bench_paged_attention.py
random_model=/tmp/smollm2-random
step random_checkpoint 40 "${gpu_steps[@]}" "$py" experiments/random_checkpoint.py \
  --like .device_model/smollm2 --out "$random_model"
read -r -a search_args <<<"${SEARCH_ARGS:-}"
search=("${gpu_steps[@]}" "$py" experiments/bench_search.py --model "$random_model"
        --dtype bfloat16 "${search_args[@]}")
step bench_search 200 "${search[@]}" --trace "$traces/search"
# 8-token pages, which the kernel reads several a step: (a) with the kernel, for its time
# and z (on the CPU's jnp path 1.17 there against 1.33 on 16-token pages), and the kernel
# alone against the jnp path.
step bench_search_pages8 90 "${search[@]}" --runs a --page-size 8
step bench_paged_attention_pages8 40 "${gpu_steps[@]}" "$py" experiments/bench_paged_attention.py \
  --page-size 8
# The layers' other readings: the scan over the stacked weights (which XLA:GPU copies a
# layer out of at every token), rolled or unrolled, and the rolled scan with XLA's
# dynamic-slice fusion (products reading the slices in place); and the default with the
# token loop's body run as CUDA graphs.
step bench_decode_rows_unrolled 90 "${bench[@]}" --layer-weights unrolled \
  --trace "$traces/rows_unrolled"
XLA_FLAGS="--xla_gpu_enable_dynamic_slice_fusion=true" step bench_decode_rows_slice_fusion 90 \
  "${bench[@]}" --layer-weights stacked --trace "$traces/rows_slice_fusion"
XLA_FLAGS="--xla_gpu_enable_command_buffer=FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CONDITIONAL,WHILE" \
  step bench_decode_rows_graphs 90 "${bench[@]}" --trace "$traces/rows_graphs"
for attention in pallas jnp; do
  step "bench_decode_pages_$attention" 90 "${bench[@]}" --page-size 16 --attention "$attention"
done
step kernels 60 "${gpu_steps[@]}" "$py" -m pytest -p no:xdist -p no:cacheprovider -q -rs \
  tests/kernels
step bench_search_jnp 90 "${search[@]}" --runs a --attention jnp --trace "$traces/search_jnp"
if [ -n "$suite_pid" ]; then
  wait "$suite_pid"
else
  JAX_PLATFORMS=cpu step tests 600 "$py" "${suite[@]}" -n "$cores"
fi
