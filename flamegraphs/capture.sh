#!/usr/bin/env bash
# Takes the flame graphs in this folder with the proxy's own profiling endpoint: runs the
# load generator with --pprof and, as each phase starts (its "phase X starts" line on
# stderr), asks /debug/pprof/flamegraph for that phase. Needs Postgres (see the README).
#
#   flamegraphs/capture.sh            # from the repository root
set -euo pipefail
cd "$(dirname "$0")/.."
out=flamegraphs
pprof=127.0.0.1:6061

cargo build --release --example loadtest

# Starts the load generator with "$@", its report in $out/$report.
start() {
    log=$(mktemp)
    target/release/examples/loadtest "$@" --pprof "$pprof" >"$out/$report" 2>"$log" &
    loadtest=$!
}
wait_for() { until grep -q "$1" "$log"; do kill -0 "$loadtest" || exit 1; sleep 0.1; done; }
take() { curl -sf -o "$out/$1.svg" "http://$pprof/debug/pprof/flamegraph?seconds=$2"; }
finish() { wait "$loadtest" || echo "the load generator reported a failure: see $out/$report"; rm -f "$log"; }

# One account of 10,000 rooms.
report=report-10000-rooms.txt
start --users 1 --rooms 10000 --clients 8 --seconds 20 --warm 60000
wait_for "phase a starts"
take first-sync-10000-rooms 1             # its first /sync: 10,000 rooms parsed and stored
take new-connection-window-10000-rooms 4  # new connections, window [0,19] of the 10,000
wait_for "phase b starts"
take no-change-requests 10                # 8 clients re-sending their request, timeout=0
finish

# Eight accounts of 1,000 rooms, messages arriving.
report=report-live.txt
start --users 8 --rooms 1000 --clients 8 --seconds 20 --rate 200
wait_for "phase d starts"
take live-delivery 10                     # 200 messages/s to 8 long-polling clients
finish
