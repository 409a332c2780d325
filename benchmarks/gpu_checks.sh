#!/usr/bin/env bash
# Every GPU measurement of the project in one go, for a machine with one CUDA GPU (about 7
# minutes by the sum of its steps' times, measured separately on an H100 and an H200):
#   benchmarks/gpu_checks.sh [OUT_DIR [STEP ...]]   (default: gpu-results/, every step)
# STEP is smoke, patched, bench_batches, bench_train, paper_run or paper_run_24 (to run some of
# them only; paper_run_24 runs only when named):
# 1. smoke, patched: a short tiny-preset run on CUDA through the command line (the CUDA path
#    works end to end), and its attention-patched twin (the reference's forward inside the
#    compiled, graphed step); about 40 s each;
# 2. bench_batches: batch assembly against one training step, tiny and paper presets;
# 3. bench_train: the paper preset's step (ms/step, MFU, CUDA graphs, the naive baseline, peak
#    memory) and the probes' rate with a profile of one evaluation; about 70 s;
# 4. paper_run: the paper preset's default run (16k steps, the evaluation plan), then
#    `phasefit detect` on it: wall time, evaluations (the metrics tax), the phases; about 4 min;
# 5. paper_run_24: the same with everyone evaluated at 24 steps (`--set eval.n_full=24`, against
#    the default 8), to weigh a few dozen full evaluations against the metrics tax.
# Each step's output goes to OUT_DIR/<step>.log; a failing step does not stop the next.
set -u
out=${1:-gpu-results}
shift $(( $# > 0 ? 1 : 0 ))
only=" $* "  # the steps to run; all when none are named
mkdir -p "$out"
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
$py -c "import torch; print('torch', torch.__version__, torch.version.cuda)" | tee -a "$out/gpu.txt"

step() {  # step NAME SECONDS COMMAND...
    local name=$1 limit=$2; shift 2
    if [ "$only" != "  " ] && [[ "$only" != *" $name "* ]]; then return; fi
    local t0=$SECONDS
    timeout "$limit" "$@" > "$out/$name.log" 2>&1
    echo "$name: exit $? after $((SECONDS - t0)) s" | tee -a "$out/summary.txt"
    tail -n 25 "$out/$name.log"
}

[[ "$only" == "  " || "$only" == *" smoke "* ]] && rm -rf /tmp/phasefit-gpu-smoke
rm -rf /tmp/phasefit-gpu-patched /tmp/phasefit-gpu-paper /tmp/phasefit-gpu-paper-24
step smoke 180 $py -m phasefit.cli train configs/tiny.toml --device cuda --out /tmp/phasefit-gpu-smoke \
    --set train.steps=300 --set eval.n_evals=10
step patched 180 $py -m phasefit.cli train configs/tiny.toml --device cuda --out /tmp/phasefit-gpu-patched \
    --set patch.reference=/tmp/phasefit-gpu-smoke --set train.steps=300 --set eval.n_evals=10
step bench_batches 120 $py benchmarks/bench_batches.py --device cuda --presets tiny,paper --repeats 20
step bench_train 180 $py benchmarks/bench_train.py --preset paper --device cuda --steps 50
step paper_run 420 sh -c "$py -m phasefit.cli train configs/paper.toml --device cuda --out /tmp/phasefit-gpu-paper \
    && $py -m phasefit.cli detect /tmp/phasefit-gpu-paper"
if [[ "$only" == *" paper_run_24 "* ]]; then  # only when named
    step paper_run_24 480 sh -c "$py -m phasefit.cli train configs/paper.toml --device cuda \
        --out /tmp/phasefit-gpu-paper-24 --set eval.n_full=24 && $py -m phasefit.cli detect /tmp/phasefit-gpu-paper-24"
fi
