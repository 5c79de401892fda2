#!/usr/bin/env bash
# Run one research suite and log how long it took on this machine (RUN_DIR/invocations.jsonl).
#
#   bash studies/monotonic_ffn/run.sh pythia_arch        # studies/monotonic_ffn/suites/pythia_arch.yaml -> runs/research_pythia_arch
#   bash studies/monotonic_ffn/run.sh smollm2            # studies/monotonic_ffn/suites/smollm2.yaml     -> runs/research_smollm2
#   bash studies/monotonic_ffn/run.sh smollm2 --mode full
#
# Every invocation appends one line to RUN_DIR/invocations.jsonl (start, end, seconds, exit code, torch threads,
# load average before and after, CPU), so a run that was interrupted and resumed reports the sum of its parts.
# Threads: on the project's 2-core CPU shared with other jobs, one OpenMP thread per process was measured ~8x faster
# than two (two spinning threads on an oversubscribed machine mostly wait for each other), hence the default of 1;
# set OMP_NUM_THREADS yourself on a machine of your own.
set -euo pipefail
cd "$(dirname "$0")/../.."  # the repository root: runs/ and .venv/ live there
name="${1:?usage: research_run.sh pythia_arch|smollm2 [harness run options]}"
shift
suite="studies/monotonic_ffn/suites/${name}.yaml"
out="${RESEARCH_OUT:-runs/research_${name}}"   # RESEARCH_OUT=runs/research_${name}_rerun: an independent rerun
[ -f "$suite" ] || { echo "no suite $suite" >&2; exit 2; }
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
mkdir -p "$out"
load_before="$(cut -d' ' -f1-3 /proc/loadavg)"
start="$(date +%s)"
rc=0
# An interrupt (Ctrl-C, scancel, kill -INT of the group) stops harness, which keeps what it finished; the trap lets
# this script go on to log the part that ran, so a resumed run's invocations still sum to its whole wall time.
trap 'rc=130' INT TERM
.venv/bin/harness run "$suite" --out "$out" --no-progress "$@" || rc=$?
trap - INT TERM
end="$(date +%s)"
load_after="$(cut -d' ' -f1-3 /proc/loadavg)"
cpu="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
fmt='{"suite": "%s", "args": "%s", "start": %s, "end": %s, "seconds": %s, "exit_code": %s, '
fmt+='"omp_num_threads": %s, "nproc": %s, "load_before": "%s", "load_after": "%s", "cpu": "%s"}\n'
printf "$fmt" "$suite" "$*" "$start" "$end" "$((end - start))" "$rc" "$OMP_NUM_THREADS" \
  "$(getconf _NPROCESSORS_ONLN)" "$load_before" "$load_after" \
  "$cpu" >> "$out/invocations.jsonl"
echo "$suite: $((end - start)) s (exit $rc); log in $out/invocations.jsonl"
exit "$rc"
