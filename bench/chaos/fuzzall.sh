#!/usr/bin/env bash
# fuzzall.sh runs every Go fuzz target in the repo one at a time, each for
# FUZZTIME (default 10m), with one fuzzing worker so a shared machine stays
# usable. Logs go to $LOGDIR/<pkg>_<Fuzz>.log; a summary line per target
# (package, target, fuzz time, last execs line, PASS/FAIL) goes to stdout.
#
# Usage: bench/chaos/fuzzall.sh [pkg:FuzzName ...]   (default: all targets)
set -u
cd "$(dirname "$0")/../.."
FUZZTIME=${FUZZTIME:-10m}
LOGDIR=${LOGDIR:-/tmp/fuzzlogs}
mkdir -p "$LOGDIR"
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
	while IFS=: read -r file _ rest; do
		name=$(sed -E 's/^func (Fuzz[A-Za-z0-9_]*).*/\1/' <<<"$rest")
		targets+=("./$(dirname "${file#./}"):$name")
	done < <(grep -rn '^func Fuzz' --include='*_test.go' . | grep -v '^./bench/out/')
fi
for t in "${targets[@]}"; do
	pkg=${t%%:*}
	name=${t##*:}
	tt=${t#*:}
	# pkg:Name:time overrides the fuzz time for one target.
	ft=$FUZZTIME
	if [ "${tt%%:*}" != "$tt" ]; then
		name=${tt%%:*}
		ft=${tt##*:}
	fi
	log="$LOGDIR/$(tr '/.' '__' <<<"$pkg")_$name.log"
	start=$(date -u +%H:%M:%S)
	if go test -run '^$' -fuzz "^${name}\$" -fuzztime "$ft" -fuzzminimizetime 3s -parallel 1 "$pkg" >"$log" 2>&1; then
		res=PASS
	else
		res=FAIL
	fi
	last=$(grep -E 'fuzz: elapsed' "$log" | tail -1)
	echo "$start $pkg $name $ft $res | $last"
done
