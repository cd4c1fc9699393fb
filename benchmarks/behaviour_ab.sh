#!/usr/bin/env bash
# usage: benchmarks/behaviour_ab.sh SRC OUT (issue 18) -- every train mode for 60 steps + the demo, one thread, with SRC's code
# Compare OUT/*/results.json of two checkouts (a `git worktree add` of the older revision)
# to show that a refactor changed no metric: same seed, same steps, same numbers.
set -u
SRC=$1; OUT=$2; mkdir -p $OUT
PY="env PYTHONPATH=$SRC/src ${PYTHON:-$(pwd)/.venv/bin/python}"
T="$PY -c 'import sys; from structconv.cli import main; sys.exit(main(sys.argv[1:]))' train --data-path ${DATA:-$(pwd)/data} --max-steps 60 --threads 1 --eval-subset 1000 --eval-at 0,30 --no-progress --quiet --seed 0"
cd /tmp
eval $T --mode baseline --output-dir $OUT/baseline
eval $T --mode sr --output-dir $OUT/sr
eval $T --mode control --output-dir $OUT/control
eval $T --mode direct --output-dir $OUT/direct
eval $T --mode sr --sr eq3 --output-dir $OUT/sr_eq3
eval $T --mode finetune --init-from $OUT/baseline/model.pth --output-dir $OUT/finetune
(cd $SRC && $PY examples/demo.py --steps 60 --threads 1 --eval-subset 1000 --data-path ${DATA:-$(pwd)/data} --output-dir $OUT/demo > $OUT/demo.log 2>&1)
echo done
