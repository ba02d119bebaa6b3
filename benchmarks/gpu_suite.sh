#!/usr/bin/env bash
# The GPU suite: CUDA tests, the operator benchmark (bf16 autocast and fp32, batch 32), the model
# benchmark (bf16 autocast, channels_last, batch 64 train / 256 inference) and the targets they are held to,
# in about 6 minutes on one H200.  Run from the repository root with the machine's own python (nothing is installed; the project
# is put on PYTHONPATH):
#
#   bash benchmarks/gpu_suite.sh                 # writes benchmarks/results/{op,model}_bench_cuda*.json
#   RESULTS=/some/dir bash benchmarks/gpu_suite.sh
#
# Every part runs under its own time limit and the suite keeps going when one fails; the printed tables
# go to $RESULTS/gpu_suite.log and a summary (one line per part) ends the output.  The exit status is 1
# when any part failed.  PYTHON, RESULTS, the per-part limits (TESTS_S, OP_S, MODEL_S) and the whole
# suite's (SUITE_S: no part starts past it, none runs beyond it) can be set.  The Triton kernels compile
# one tile per kernel and geometry (ACMIX_AUTOTUNE=0; a compile takes seconds, so benchmarking every tile
# would spend the suite's minutes compiling): ACMIX_AUTOTUNE=1 autotunes the tiles.  DEFAULT_TESTS=1 adds
# the default CPU suite of tests/ops and tests/nn (the CUDA tests run in their own part either way).
set -u -o pipefail

PYTHON=${PYTHON:-python3}
RESULTS=${RESULTS:-benchmarks/results}
TESTS_S=${TESTS_S:-110}
OP_S=${OP_S:-90}
MODEL_S=${MODEL_S:-150}
SUITE_S=${SUITE_S:-350}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 ACMIX_AUTOTUNE=${ACMIX_AUTOTUNE:-0}
mkdir -p "$RESULTS"
LOG="$RESULTS/gpu_suite.log"
: >"$LOG"
SUMMARY=()
FAILED=0

# part NAME LIMIT_S CMD...: runs CMD under `timeout`, output to the terminal and the log, and records
# ok / FAILED (exit status) / TIMEOUT with the seconds it took.
part() {
    local name=$1 limit=$2 start rc status
    shift 2
    if ((SECONDS + 5 > SUITE_S)); then
        SUMMARY+=("$(printf '%-26s %-22s' "$name" "SKIPPED (suite limit)")"); FAILED=1
        return
    fi
    ((limit > SUITE_S - SECONDS)) && limit=$((SUITE_S - SECONDS))
    echo "=== $name: $*" | tee -a "$LOG"
    start=$SECONDS
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$LOG"
    rc=${PIPESTATUS[0]}
    case $rc in
        0) status="ok" ;;
        124 | 137) status="TIMEOUT after ${limit} s"; FAILED=1 ;;
        *) status="FAILED (exit $rc)"; FAILED=1 ;;
    esac
    SUMMARY+=("$(printf '%-26s %-22s %4d s' "$name" "$status" $((SECONDS - start)))")
}

part "environment" 60 "$PYTHON" -c '
import torch, timm, acmix
print("torch", torch.__version__, "| timm", timm.__version__, "| acmix", acmix.__file__)
try:
    import triton; print("triton", triton.__version__)
except ImportError:
    print("triton: not installed")
assert torch.cuda.is_available(), "CUDA is not available"
print(torch.cuda.get_device_name(0), "| CUDA", torch.version.cuda)
'

# the cuda-marked tests (the CPU ones add nothing a GPU checks, and the interpreter's take minutes)
part "pytest -m cuda" "$TESTS_S" "$PYTHON" -m pytest -q -p no:cacheprovider -m cuda tests
if [ "${DEFAULT_TESTS:-0}" = 1 ]; then
    part "pytest ops+nn (default)" "$TESTS_S" "$PYTHON" -m pytest -q -p no:cacheprovider tests/ops tests/nn
fi

part "op_bench cuda bf16" "$OP_S" "$PYTHON" benchmarks/op_bench.py --device cuda --dtype bfloat16 --batch 32 \
    --json "$RESULTS/op_bench_cuda.json"
part "model_bench cuda bf16" "$MODEL_S" "$PYTHON" benchmarks/model_bench.py --device cuda --dtype bfloat16 \
    --channels-last --batch-size 64 --infer-batch-size 256 --models all --backends auto eager \
    --json "$RESULTS/model_bench_cuda.json"
# every GPU target (docs/fast-paths.md, "GPU targets") against what the two benchmarks just wrote
part "targets" 30 "$PYTHON" benchmarks/targets.py --op "$RESULTS/op_bench_cuda.json" \
    --model "$RESULTS/model_bench_cuda.json" --json "$RESULTS/targets_cuda.json"
# Tab. 1 on the GPU: Stage I's share of the measured time (the MACs do not depend on the device)
part "paper stage-costs cuda" 60 "$PYTHON" -m acmix paper stage-costs --device cuda --out "$RESULTS/stage_costs_cuda"
# the attention kernels' registers and spills as this machine's Triton builds them (the README's table is sm_90
# builds on a CPU machine, with another Triton)
part "kernel resources" 60 "$PYTHON" benchmarks/kernel_resources.py --target device --dtype bfloat16 \
    --json "$RESULTS/kernel_resources_cuda.json"
# float32 last: its tf32x3 kernels compile slowest, and the bf16 figures are the ones training uses
part "op_bench cuda fp32" "$OP_S" "$PYTHON" benchmarks/op_bench.py --device cuda --dtype float32 --batch 32 \
    --rounds 3 --no-unfold --json "$RESULTS/op_bench_cuda_fp32.json"

{
    echo
    echo "=== summary (results in $RESULTS, log $LOG)"
    printf '%s\n' "${SUMMARY[@]}"
    [ "$FAILED" = 0 ] && echo "all parts ok" || echo "SOME PARTS FAILED"
} | tee -a "$LOG"
exit "$FAILED"
