#!/bin/bash
# Learning-per-image sweep of tiny configs on one GPU machine (benchmarks/RESULTS.md):
#   OUT=results_dir bash benchmarks/sweep_tiny.sh CONFIGS_FILE PARALLEL
# CONFIGS_FILE: one run per line, "TAG MODEL KEY=VALUE ..." (--set overrides); '#' lines skipped.
# Env: BUDGET (s, default 480) cuts the runs; CPUTIME=1 first times each line on one CPU thread
# (benchmarks/cputime.py); GPUCHECK=1 also runs benchmarks/gpu_check.py. Wheels for packages the
# machine lacks (pycocotools) are installed from .whl/ when present.
set -u
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
fi
export PYTHONPATH=/tmp/site:$PWD/src OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 PYTHONUNBUFFERED=1
D=/tmp/synth
if [ ! -f $D/annotations/instances_val.json ]; then python3 -m codetr data synth $D --train 1000 --val 200 --size 128 --seed 0 || exit 1; fi
mkdir -p /tmp/runs
if [ -n "${GPUCHECK:-}" ]; then (python3 benchmarks/gpu_check.py > $OUT/gpucheck.txt 2>&1 &) ; fi
if [ "${CPUTIME:-0}" = 1 ]; then
  grep -v "^#" $1 | grep . | xargs -P 14 -L 1 python3 benchmarks/cputime.py > $OUT/cputime.jsonl 2> $OUT/cputime.err
  cat $OUT/cputime.jsonl
fi
run_one() {
  tag=$1; model=$2; shift 2
  python3 -m codetr train $model --data /tmp/synth --out /tmp/runs/$tag --set train.device=cuda train.batch_size=8 train.checkpoint_every_iters=0 train.log_every=1000 "$@" > /tmp/runs/$tag.log 2>&1
  echo "$tag done rc=$?"
}
export -f run_one
grep -v "^#" $1 | grep . | timeout ${BUDGET:-480} xargs -P $2 -L 1 bash -c 'run_one "$@"' _
for f in /tmp/runs/*/metrics.jsonl; do t=$(basename $(dirname $f)); grep '"eval"' $f | python3 -c "
import sys, json
r=[json.loads(l) for l in sys.stdin]
print('$t', ' '.join(f\"{x['AP50']:.3f}\" for x in r), '| AP', ' '.join(f\"{x['AP']:.3f}\" for x in r))"; done | sort | tee $OUT/summary.txt
cat /tmp/runs/*/metrics.jsonl > $OUT/all_metrics.jsonl; sleep 1; cat $OUT/gpucheck.txt 2>/dev/null | grep -v "^  \|Traceback"
for f in /tmp/runs/*.log; do echo "== $f"; tail -3 $f; done > $OUT/logs.txt
