#!/usr/bin/env bash
# kvsim's tests decode the simulator's KV-event stream with an independent decoder written
# in Python (bench/sim/testdata/kvevents_sub.py), using Debian's pyzmq and msgpack for the
# system interpreter /usr/bin/python3.
set -euo pipefail
cd "$(dirname "$0")/../.."
scripts/apt.sh python3 python3-zmq python3-msgpack
