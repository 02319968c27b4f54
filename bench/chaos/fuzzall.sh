#!/usr/bin/env bash
# fuzzall.sh runs every Go fuzz target in the repo one at a time, each for
# FUZZTIME (default 10m), with one fuzzing worker so a shared machine stays
# usable. Logs go to $LOGDIR/<pkg>_<Fuzz>.log; a summary line per target
# (start time UTC, package, target, fuzz time, PASS/FAIL, CPU seconds, last
# execs line) goes to stdout.
#
# CPU accounting: the test binary runs under /usr/bin/time through go test's
# -exec flag, so "cpu" is user+sys of the fuzzing itself (coordinator plus
# its worker, which are children of the test binary) and excludes compiling
# the instrumented binary; "total" is user+sys of the whole go test run,
# compile and link included. Wall seconds of the fuzzing process are "wall".
# Run it under nice -n 19 on a shared machine; NICE is not applied here.
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
	# -timeout 0: go test's default 10-minute test timeout equals the default fuzz time,
	# and a run that reaches both at once fails with "context deadline exceeded".
	cpuf="$log.cpu"
	totf="$log.total"
	rm -f "$cpuf" "$totf"
	if /usr/bin/time -o "$totf" -f '%U %S %e' \
		go test -run '^$' -fuzz "^${name}\$" -fuzztime "$ft" -fuzzminimizetime 3s -parallel 1 -timeout 0 \
		-exec "/usr/bin/time -o $cpuf -f %U+%S+%e" "$pkg" >"$log" 2>&1; then
		res=PASS
	else
		res=FAIL
	fi
	cpu=$(tail -1 "$cpuf" 2>/dev/null | awk -F+ '{printf "cpu=%.0fs wall=%.0fs", $1+$2, $3}')
	tot=$(tail -1 "$totf" 2>/dev/null | awk '{printf "total=%.0fs", $1+$2}')
	last=$(grep -E 'fuzz: elapsed' "$log" | tail -1)
	echo "$start $pkg $name $ft $res ${cpu:-cpu=?} ${tot:-total=?} | $last"
done
