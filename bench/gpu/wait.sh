#!/usr/bin/env bash
# Device call: wait up to $1 seconds for the pipeline (polling its done marker), then bring back
# its results and logs under $OUT.
set -u
W=/tmp/tb
deadline=$((SECONDS + ${1:-540}))
while [ ! -f $W/done ] && [ $SECONDS -lt $deadline ]; do sleep 5; done
mkdir -p "$OUT"
cp $W/results/gpu.json $W/results/internlm2-build.json "$OUT"/ 2>/dev/null
cp $W/pipeline.log "$OUT"/ 2>/dev/null
(cd $W/logs 2>/dev/null && tail -n 60 */*.log > "$OUT"/servers-tail.log 2>/dev/null)
[ -f $W/done ] && echo "PIPELINE DONE" || echo "pipeline still running"
tail -n 40 $W/pipeline.log
