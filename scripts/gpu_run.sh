#!/usr/bin/env bash
# The GPU check in one decisive command. Runs ON THE GPU MACHINE (driver + CUDA 13 toolkit,
# PyTorch, no Rust), from the repository root, with target/gpu-pack built by scripts/gpu_check.sh:
#
#   run(command="bash scripts/gpu_run.sh", carry=["target/gpu-pack"], timeout_s=600)
#
# Order, cheapest and most decisive first; everything under one global deadline:
#   1. the tests/cuda.rs GPU tests (the #[ignore]d ones, names discovered with `--list --ignored`),
#      each in its own process (`--exact NAME --include-ignored`, DIFFUGPT_REQUIRE_GPU=1): a first
#      pass with CUDA_LAUNCH_BLOCKING=1 (an error points at the launch that made it), then a second,
#      asynchronous pass (what the benchmarks run). The first failure stops the run: its output's
#      tail goes into summary.md;
#   2. `diffugpt generate --device cuda` on the fixture: a fallback to the CPU stops the run;
#   3. `diffugpt bench --device cuda`: a bf16 smoke run at T=64, then forwards at T=64/256/1024 in
#      bf16, f32 and bf16 with CUDA graphs, then the decoding workloads (prompt 32, canvas 512,
#      64 steps, 32-token answers);
#   4. benches/pytorch_cuda.py (PyTorch bf16, eager and CUDA graph), last.
#
# DEADLINE (seconds, default 540, below the device tool's 600 s limit): a watchdog stops the run at
# the deadline, and $OUT/summary.md is written whatever happens (after every step, at the end, on
# the deadline, on SIGTERM/SIGINT). $OUT gets at most 5 files (the device tool returns 8):
# summary.md (status, tests, GPU, driver, benchmarks, every command run), tests.log, bench.json,
# nvidia-smi.txt and raw.tgz (every log and JSON of the run).
# Exit status: 0 everything passed, 1 a failure, 124 stopped by the deadline or a signal.
#
# Usage: scripts/gpu_run.sh [--dry-run | --selftest | --help]
#   --dry-run   here, without a GPU: checks every file the run needs (the pack when it is built: its
#               glibc symbol versions too), then executes the whole plan with stub binaries
#               (STUB_FAIL_TEST=NAME, STUB_SLEEP=S, STUB_CPU_FALLBACK=1 steer them);
#   --selftest  dry runs that check the logic: all pass, a failing test stops the run and shows its
#               output, a GPU fallback skips the benchmarks, a 6 s DEADLINE and a SIGTERM still
#               write summary.md and leave no process behind; after a SIGKILL the summary of the
#               steps done is there (run by scripts/cuda_ci_check.sh).
# Environment: OUT (default /tmp/diffugpt-gpu-out), DEADLINE, PACK (default target/gpu-pack),
#   TEST_TIMEOUT (per test, default 150 s), TEST_PASSES (1 or 2, default 2), BENCH_REPS (default
#   10), SKIP_PYTORCH=1, MIN_STEP (a step starts only with this many seconds left, default 5).
# shellcheck disable=SC2329 # finish, on_signal and what they call run from traps
set -uo pipefail
self=$(cd "$(dirname "$0")" && pwd)/$(basename "$0")
cd "$(dirname "$0")/.." || exit 2
root=$PWD

mode=run
case ${1:-} in
  "") ;;
  --dry-run) mode=dry ;;
  --selftest) mode=selftest ;;
  -h | --help) sed -n '2,/^set -uo/p' "$self" | grep -v '^# shellcheck\|^set ' | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) echo "usage: $0 [--dry-run | --selftest | --help]" >&2; exit 2 ;;
esac

# ---------------------------------------------------------------------------------------------
# --selftest: dry runs in temporary directories, checked from the outside.
selftest() {
  local tmp fails=0 t0 rc pid p
  tmp=$(mktemp -d /tmp/gpu_run_selftest.XXXXXX)
  ok() { echo "selftest ok: $*"; }
  bad() { echo "selftest FAILED: $*" >&2; fails=$((fails + 1)); }
  has() { grep -q -- "$2" "$1/summary.md" 2>/dev/null; }
  # Stub test names: fixed, so the scenarios do not depend on what the pack holds.
  export STUB_TESTS="kernel_one_matches_cpu kernel_two_matches_cpu forward_three_matches_cpu"
  export MIN_STEP=1 TMPDIR=$tmp/tmp
  mkdir -p "$TMPDIR"
  # Each scenario's stubs write their PIDs (and their sleeps') here, to find any left running.
  pids() { export STUB_PIDS=$tmp/pids/$1; mkdir -p "$STUB_PIDS"; }

  # 1. Everything passes.
  pids pass
  OUT=$tmp/pass DEADLINE=60 bash "$self" --dry-run > "$tmp/pass.log" 2>&1; rc=$?
  if [ $rc -eq 0 ] && has "$tmp/pass" "^status: PASS" && has "$tmp/pass" "kernel_two_matches_cpu" &&
    has "$tmp/pass" "bench-bf16-decode" && has "$tmp/pass" "pytorch" &&
    has "$tmp/pass" "| forward-1024 |" && [ -s "$tmp/pass/bench.json" ] &&
    python3 -c 'import json,sys; json.load(open(sys.argv[1]))' "$tmp/pass/bench.json" &&
    [ "$(find "$tmp/pass" -type f | wc -l)" -le 8 ]; then
    ok "all pass: exit 0, summary with tests, benchmarks and commands, <= 8 files in \$OUT"
  else
    bad "all-pass dry run (rc $rc)"; tail -n 30 "$tmp/pass.log" >&2
  fi

  # 2. The second test fails in the first pass: stop there, its output in the summary.
  pids fail
  OUT=$tmp/fail DEADLINE=60 STUB_FAIL_TEST=kernel_two_matches_cpu bash "$self" --dry-run \
    > "$tmp/fail.log" 2>&1; rc=$?
  if [ $rc -eq 1 ] && has "$tmp/fail" "^status: FAIL" &&
    has "$tmp/fail" "stub assertion: kernel_two_matches_cpu differs" &&
    ! has "$tmp/fail" "test1:forward_three_matches_cpu" && ! has "$tmp/fail" "| bench-"; then
    ok "failing test: exit 1, its output in summary.md, nothing run after it"
  else
    bad "failing-test dry run (rc $rc)"; tail -n 30 "$tmp/fail.log" >&2
  fi

  # 3. The CLI falls back to the CPU: no benchmarks.
  pids fallback
  OUT=$tmp/fallback DEADLINE=60 STUB_CPU_FALLBACK=1 bash "$self" --dry-run \
    > "$tmp/fallback.log" 2>&1; rc=$?
  if [ $rc -eq 1 ] && has "$tmp/fallback" "fell back to the CPU" && ! has "$tmp/fallback" "| bench-"; then
    ok "CPU fallback: exit 1, benchmarks skipped"
  else
    bad "fallback dry run (rc $rc)"; tail -n 30 "$tmp/fallback.log" >&2
  fi

  # 4. A tiny deadline while a test hangs: the watchdog stops it, summary.md is still written.
  pids deadline
  t0=$(date +%s)
  OUT=$tmp/deadline DEADLINE=6 STUB_SLEEP=60 bash "$self" --dry-run > "$tmp/deadline.log" 2>&1
  rc=$?
  if [ $rc -eq 124 ] && [ $(($(date +%s) - t0)) -le 15 ] && has "$tmp/deadline" "^status: DEADLINE" &&
    has "$tmp/deadline" "test1:kernel_one_matches_cpu" && [ -s "$tmp/deadline/raw.tgz" ] &&
    has "$tmp/deadline" "stub: kernel_one_matches_cpu hangs" &&
    ! has "$tmp/deadline" "kernel_two_matches_cpu"; then
    ok "deadline: exit 124 after $(($(date +%s) - t0)) s, summary.md names the step it stopped"
  else
    bad "deadline dry run (rc $rc, $(($(date +%s) - t0)) s)"; tail -n 30 "$tmp/deadline.log" >&2
  fi

  # 5. SIGTERM from outside (e.g. a supervisor): same.
  pids term
  OUT=$tmp/term DEADLINE=60 STUB_SLEEP=60 bash "$self" --dry-run > "$tmp/term.log" 2>&1 &
  pid=$!
  # once the hung test runs (a TERM before the traps are set would only test bash)
  for _ in $(seq 200); do
    compgen -G "$STUB_PIDS/sleep*" > /dev/null && break
    sleep 0.1
  done
  kill -TERM "$pid"
  wait "$pid"; rc=$?
  if [ $rc -eq 124 ] && has "$tmp/term" "^status: KILLED"; then
    ok "SIGTERM: exit 124, summary.md written"
  else
    bad "SIGTERM dry run (rc $rc)"; tail -n 30 "$tmp/term.log" >&2
  fi

  # 6. SIGKILL (the device tool's own limit): no trap runs, but the summary of the steps done is
  # there. (The hung stub outlives it here: killed below, it is no survivor of a trapped end.)
  pids kill
  OUT=$tmp/kill DEADLINE=60 STUB_SLEEP=60 bash "$self" --dry-run > "$tmp/kill.log" 2>&1 &
  pid=$!
  for _ in $(seq 200); do
    compgen -G "$STUB_PIDS/sleep*" > /dev/null && break
    sleep 0.1
  done
  kill -KILL "$pid"
  wait "$pid" 2>/dev/null
  for p in "$STUB_PIDS"/*; do kill -KILL "$(cat "$p")" 2>/dev/null; done
  rm -rf "${STUB_PIDS:?}"
  if has "$tmp/kill" "^status: RUNNING" && has "$tmp/kill" "| list-tests | ok |" && [ -s "$tmp/kill/raw.tgz" ]; then
    ok "SIGKILL: summary.md and raw.tgz hold the steps done before it"
  else
    bad "SIGKILL dry run"; tail -n 30 "$tmp/kill.log" >&2
  fi

  # No stub left running (the hung tests of 4 and 5 and their sleeps must have been killed).
  sleep 1
  local st left=0
  for p in "$tmp"/pids/*/*; do
    [ -e "$p" ] || continue
    # (a zombie, killed and not yet reaped by whoever inherited it, is not running)
    st=$(ps -o stat= -p "$(cat "$p")" 2>/dev/null) || continue
    if [[ $st != Z* ]]; then
      left=1
      echo "still running: $(ps -o pid=,stat=,etimes=,args= -p "$(cat "$p")")" >&2
      kill -KILL "$(cat "$p")" 2>/dev/null
    fi
  done
  if [ $left -eq 0 ]; then ok "no stub process left behind"; else bad "a stub process outlived its run"; fi

  if [ $fails -eq 0 ]; then
    rm -rf "$tmp"
    echo "gpu_run.sh --selftest: 6 scenarios passed"
    return 0
  fi
  echo "gpu_run.sh --selftest: $fails failed (logs in $tmp)" >&2
  return 1
}
if [ "$mode" = selftest ]; then
  selftest
  exit $?
fi

# ---------------------------------------------------------------------------------------------
# Configuration and state.
out=${OUT:-/tmp/diffugpt-gpu-out}
DEADLINE=${DEADLINE:-540}
PACK=${PACK:-target/gpu-pack}
TEST_TIMEOUT=${TEST_TIMEOUT:-150}
TEST_PASSES=${TEST_PASSES:-2}
BENCH_REPS=${BENCH_REPS:-10}
MIN_STEP=${MIN_STEP:-5}
start=$(date +%s)
deadline_at=$((start + DEADLINE))
mkdir -p "$out"
work=$(mktemp -d "${TMPDIR:-/tmp}/gpu_run.XXXXXX")
mkdir -p "$work/logs"
: > "$work/steps.tsv"   # step, status, rc, seconds, command
: > "$work/tests.tsv"   # pass, test, status, seconds
child="" current_step="" current_log="" step_budget=0 current_test="" current_cmd="" status="" status_detail="" finished=0
step_t0=$start

# A file the run needs, or a failure before anything starts.
need() { [ -e "$1" ] || missing+=("$1"); }

# ---------------------------------------------------------------------------------------------
# summary.md: rebuilt from the state files after every step and at the end, whatever the end.
write_summary() {
  local s=$out/summary.md.tmp
  {
    echo "# diffugpt GPU run, $(date -u -d "@$start" '+%Y-%m-%d %H:%M UTC')"
    echo
    echo "status: ${status:-RUNNING}${status_detail:+: $status_detail}"
    echo
    [ "$mode" = dry ] && echo "**Dry run**: stub binaries, no GPU; nothing below was measured." && echo
    echo "- GPU: $(cat "$work/gpu.txt" 2>/dev/null || echo unknown)"
    echo "- CUDA (driver API): $(cat "$work/cuda_version.txt" 2>/dev/null || echo unknown)"
    echo "- host: $(uname -srm), $(ldd --version 2>/dev/null | head -n1)"
    echo "- pack: $(tr '\n' ' ' < "$PACK/BUILD_INFO" 2>/dev/null || echo "no BUILD_INFO in $PACK")"
    echo "- deadline: ${DEADLINE} s; elapsed $(($(date +%s) - start)) s"
    echo
    echo "## Tests (tests/cuda.rs, each in its own process)"
    echo
    if [ -s "$work/tests.tsv" ]; then
      echo "| pass | test | result | s |"
      echo "| --- | --- | --- | ---: |"
      awk -F'\t' '{ printf "| %s | %s | %s | %s |\n", $1, $2, $3, $4 }' "$work/tests.tsv"
      echo
      echo "passed: $(grep -c $'\tok\t' "$work/tests.tsv") of $(wc -l < "$work/tests.tsv") runs"
    else
      echo "no test ran"
    fi
    if [ -s "$work/failure.md" ]; then
      echo
      echo "## Failure"
      echo
      cat "$work/failure.md"
    fi
    if grep -qh '^ERR |' "$work"/logs/test1_*.log 2>/dev/null; then
      echo
      echo "## Kernel errors against the CPU reference (first pass)"
      echo
      echo "| kernel / test | dtype | rel. error | tolerance |"
      echo "| --- | --- | ---: | --- |"
      grep -h '^ERR |' "$work"/logs/test1_*.log | sed 's/^ERR | /| /; s/$/ |/'
    fi
    if [ -s "$work/bench.md" ]; then
      echo
      cat "$work/bench.md"
    fi
    echo
    echo "## Commands run (in order)"
    echo
    echo "| step | result | exit | s | command |"
    echo "| --- | --- | ---: | ---: | --- |"
    awk -F'\t' '{ c = $5; gsub(/\|/, "\\|", c); printf "| %s | %s | %s | %s | `%s` |\n", $1, $2, $3, $4, c }' \
      "$work/steps.tsv"
  } > "$s" 2>/dev/null
  mv -f "$s" "$out/summary.md"
}

# The files that come back: at most 5 (the device tool returns 8, two folders deep).
collect() {
  local f
  : > "$out/tests.log"
  for f in "$work"/logs/test*_*.log; do
    [ -e "$f" ] || continue
    { echo "===== $(basename "$f" .log)"; cat "$f"; } >> "$out/tests.log"
  done
  [ -f "$work/nvidia-smi.txt" ] && cp "$work/nvidia-smi.txt" "$out/nvidia-smi.txt"
  tar -czf "$out/raw.tgz" -C "$work" . 2>/dev/null
}

stop_child() {
  [ -n "$child" ] || return 0
  kill -TERM "$child" 2>/dev/null # timeout(1) passes it on to the command
  for _ in $(seq 30); do
    kill -0 "$child" 2>/dev/null || break
    sleep 0.1
  done
  # timeout(1) leads its own process group: take the command with it.
  kill -KILL -- "-$child" 2>/dev/null
  kill -KILL "$child" 2>/dev/null
  child=""
}

finish() {
  local rc=$?
  [ "$finished" -eq 1 ] && return
  finished=1
  trap '' TERM INT
  [ -n "${watchdog:-}" ] && kill "$watchdog" 2>/dev/null
  stop_child
  if [ -z "$status" ]; then
    if [ "$rc" -eq 0 ]; then status=PASS; else status=FAIL; status_detail=${status_detail:-exit $rc}; fi
  fi
  write_summary
  collect
  echo "== $status${status_detail:+: $status_detail} ($(($(date +%s) - start)) s); summary: $out/summary.md"
  rm -rf "$work"
  case $status in
    PASS) exit 0 ;;
    DEADLINE | KILLED) exit 124 ;;
    *) exit 1 ;;
  esac
}

on_signal() {
  trap '' TERM INT
  if [ -f "$work/deadline_hit" ]; then
    status=DEADLINE
    status_detail="the ${DEADLINE} s deadline stopped the run during step ${current_step:-?}"
  else
    status=KILLED
    status_detail="a signal stopped the run during step ${current_step:-?}"
  fi
  [ -n "$current_step" ] && printf '%s\t%s\t%s\t%s\t%s\n' "$current_step" "stopped" "-" \
    "$(($(date +%s) - step_t0))" "$current_cmd" >> "$work/steps.tsv"
  [ -n "$current_test" ] && printf '%s\t%s\t%s\t%s\n' "${current_test%%	*}" "${current_test#*	}" \
    "STOPPED ($status)" "$(($(date +%s) - step_t0))" >> "$work/tests.tsv"
  if [ -n "$current_step" ] && [ -f "$current_log" ]; then
    {
      echo "$status_detail. Last 60 lines of its output ($(basename "$current_log")):"
      echo
      echo '```'
      tail -n 60 "$current_log"
      echo '```'
    } > "$work/failure.md"
  fi
  exit 124
}
trap finish EXIT
trap on_signal TERM INT

# The watchdog: at the deadline, TERM to this shell (which is waiting on its step in `wait`, so
# the trap runs at once, stops the step and writes the summary).
main_pid=$$
(
  trap - EXIT TERM INT
  # (and gone soon after the run, should it be SIGKILLed)
  while [ "$(date +%s)" -lt "$deadline_at" ]; do
    kill -0 "$main_pid" 2>/dev/null || exit 0
    sleep 0.5
  done
  : > "$work/deadline_hit"
  kill -TERM "$main_pid" 2>/dev/null
) &
watchdog=$!

# run_step NAME BUDGET STDOUT STDERR CMD...: runs CMD under timeout(1) with BUDGET seconds (the
# global deadline, through the watchdog, comes first), in the background so that signals are
# handled while it runs. Returns CMD's status; 125 when too little time is left to start it.
run_step() {
  local name=$1 budget=$2 o=$3 e=$4 left rc
  shift 4
  left=$((deadline_at - $(date +%s)))
  current_cmd=$(printf '%q ' "$@")
  if [ "$left" -lt "$MIN_STEP" ]; then
    printf '%s\t%s\t%s\t%s\t%s\n' "$name" "skipped (deadline)" "-" 0 "$current_cmd" >> "$work/steps.tsv"
    return 125
  fi
  # Past the deadline the watchdog stops the step (and the run); the step's own budget is for a
  # step that hangs while time is left.
  [ "$budget" -le $((left + 10)) ] || budget=$((left + 10))
  current_step=$name current_log=$e step_budget=$budget
  step_t0=$(date +%s)
  echo "== [$(($(date +%s) - start)) s] $name: $current_cmd"
  if [ "$o" = "$e" ]; then
    timeout -k 5 "$budget" "$@" > "$o" 2>&1 &
  else
    timeout -k 5 "$budget" "$@" > "$o" 2> "$e" &
  fi
  child=$!
  wait "$child"
  rc=$?
  child=""
  current_step=""
  local res=ok
  [ $rc -eq 0 ] || res=failed
  [ $rc -eq 124 ] && res="timed out (${budget} s)"
  printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$res" "$rc" "$(($(date +%s) - step_t0))" "$current_cmd" \
    >> "$work/steps.tsv"
  # Everything so far, in case the run is killed where no trap runs (SIGKILL at the tool's limit).
  write_summary
  collect
  return $rc
}

fail() { # fail WHAT [LOG]: stop the run, the log's tail in the summary
  status=FAIL
  status_detail=$1
  {
    echo "$1"
    if [ -n "${2:-}" ] && [ -f "$2" ]; then
      echo
      echo "Last 60 lines of its output ($(basename "$2")):"
      echo
      echo '```'
      tail -n 60 "$2"
      echo '```'
    fi
  } > "$work/failure.md"
  echo "FAIL: $1" >&2
  [ -n "${2:-}" ] && [ -f "$2" ] && tail -n 60 "$2" >&2
  exit 1
}

# ---------------------------------------------------------------------------------------------
# The binaries: the pack, or stubs in a dry run.
make_stubs() {
  local d=$1 names=$2
  mkdir -p "$d"
  # The test binary: libtest's --list format, one test per process with --exact.
  cat > "$d/cuda-tests" <<EOF
#!/usr/bin/env bash
names="$names"
[ -n "\${STUB_PIDS:-}" ] && echo \$\$ > "\$STUB_PIDS/\$\$"
if [[ " \$* " == *" --list "* ]]; then
  for n in \$names; do echo "\$n: test"; done
  echo; echo "\$(echo \$names | wc -w) tests, 0 benchmarks"; exit 0
fi
name=""; prev=""
for a in "\$@"; do [ "\$prev" = --exact ] && name=\$a; prev=\$a; done
echo; echo "running 1 test"
if [ -n "\${STUB_SLEEP:-}" ]; then
  echo "stub: \$name hangs for \$STUB_SLEEP s"
  sleep "\$STUB_SLEEP" & [ -n "\${STUB_PIDS:-}" ] && echo \$! > "\$STUB_PIDS/sleep\$!"
  wait
fi
echo "ERR | \$name | bf16 | 1.0e-3 | 1e-2"
if [ "\$name" = "\${STUB_FAIL_TEST:-}" ]; then
  echo "thread '\$name' panicked at tests/cuda.rs:1:1:"
  echo "stub assertion: \$name differs from the CPU"
  echo "test \$name ... FAILED"; echo
  echo "test result: FAILED. 0 passed; 1 failed; 0 ignored; 0 measured; 9 filtered out"
  exit 101
fi
echo "test \$name ... ok"; echo
echo "test result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 9 filtered out"
EOF
  # The CLI: generate and bench, in the shape of their JSON.
  cat > "$d/diffugpt" <<'EOF'
#!/usr/bin/env bash
[ -n "${STUB_PIDS:-}" ] && echo $$ > "$STUB_PIDS/$$"
cmd=$1; shift
lens=64,256,1024 canvas=512 dtype=bf16
while [ $# -gt 0 ]; do
  case $1 in
    --forward-lens) lens=$2; shift ;;
    --canvas) canvas=$2; shift ;;
    --dtype) dtype=$2; shift ;;
  esac
  shift
done
if [ -n "${STUB_CPU_FALLBACK:-}" ]; then
  echo "diffugpt: CUDA requested but not available (stub); running on the CPU" >&2
fi
case $cmd in
  generate) echo '{"text": "stub", "tokens": []}' ;;
  bench)
    rows=""
    for t in ${lens//,/ }; do
      rows="$rows{\"test\": \"forward-$t\", \"mean_ms\": 1.5, \"std_ms\": 0.1, \"per_s\": 1000.0, \"dtype\": \"$dtype\"},"
    done
    if [ "$canvas" -gt 0 ]; then
      rows="$rows{\"test\": \"fixed-$canvas\", \"mean_ms\": 50.0, \"std_ms\": 1.0, \"per_s\": 640.0, \"dtype\": \"$dtype\"},"
      rows="$rows{\"test\": \"eosfirst-$canvas-a32\", \"mean_ms\": 5.0, \"std_ms\": 0.5, \"per_s\": 6400.0, \"dtype\": \"$dtype\"},"
    fi
    echo "{\"backend\": \"cuda:stub:$dtype\", \"rows\": [${rows%,}]}" ;;
esac
EOF
  cat > "$d/nvidia-smi" <<'EOF'
#!/usr/bin/env bash
case "$*" in
  *--query-gpu*) echo "Stub GPU, 000.00, 1024 MiB, 9.0" ;;
  *) echo "Stub nvidia-smi | Driver Version: 000.00 | CUDA Version: 13.0" ;;
esac
EOF
  cat > "$d/python3-torch" <<'EOF'
#!/usr/bin/env bash
[ -n "${STUB_PIDS:-}" ] && echo $$ > "$STUB_PIDS/$$"
o=pytorch.json
while [ $# -gt 0 ]; do [ "$1" = --out ] && o=$2; shift; done
cat > "$o" <<J
{"torch": "stub", "gpu": "Stub GPU", "dtype": "bf16",
 "forward-64": {"eager_ms": 4.0, "graph_ms": 0.8}, "forward-1024": {"eager_ms": 5.0, "graph_ms": 2.0},
 "fixed-512": {"eager_ms": 300.0, "graph_ms": 100.0}, "batch-16x512": {"eager_ms": 9.0, "graph_ms": 8.0}}
J
EOF
  chmod +x "$d"/*
}

missing=()
need tests/fixtures/tiny-diffugpt/config.json
need scripts/glibc_check.sh
pytorch_script=benches/pytorch_cuda.py
if [ "$mode" = dry ]; then
  echo "== dry run: the plan with stubs (no GPU); checking the files the run needs"
  if [ -x "$PACK/cuda-tests" ] && [ -x "$PACK/diffugpt" ]; then
    # The real pack: it must load on the GPU machine's older glibc, and list its tests here.
    for b in "$PACK/diffugpt" "$PACK/cuda-tests"; do
      bash scripts/glibc_check.sh "$b" > "$work/glibc_$(basename "$b").txt" 2>&1 ||
        missing+=("$b loadable under glibc 2.31 ($(tail -n1 "$work/glibc_$(basename "$b").txt"))")
    done
    names=$("$PACK/cuda-tests" --list --ignored 2>/dev/null | sed -n 's/: test$//p' | tr '\n' ' ')
    echo "   test names from $PACK/cuda-tests --list --ignored"
  else
    # No pack (CI does not build it): the names from the source, as libtest would list them.
    names=$(awk '/#\[ignore = "needs a GPU/ { ig = 1; next }
                 ig && /^ *(pub )?fn / { sub(/^ *(pub )?fn /, ""); sub(/\(.*/, ""); print; ig = 0 }' \
      tests/cuda.rs | tr '\n' ' ')
    echo "   no pack in $PACK: test names from tests/cuda.rs"
  fi
  names=${STUB_TESTS:-$names}
  [ -n "${names// /}" ] || missing+=("GPU test names (none found)")
  make_stubs "$work/stubs" "$names"
  TESTS_BIN=$work/stubs/cuda-tests
  DIFFUGPT_BIN=$work/stubs/diffugpt
  NVSMI=$work/stubs/nvidia-smi
  PYTORCH=("$work/stubs/python3-torch" "$pytorch_script")
else
  TESTS_BIN=$PACK/cuda-tests
  DIFFUGPT_BIN=$PACK/diffugpt
  NVSMI=nvidia-smi
  PYTORCH=(python3 "$pytorch_script")
  need "$TESTS_BIN"
  need "$DIFFUGPT_BIN"
  # The toolkit's libraries first: PyTorch's wheels carry other cuBLAS minor versions.
  export LD_LIBRARY_PATH=/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
fi
export DIFFUGPT_ROOT=$root
if [ ${#missing[@]} -gt 0 ]; then
  printf '   missing: %s\n' "${missing[@]}" >&2
  fail "missing before the start: ${missing[*]}"
fi

# GPU and driver, for the summary.
timeout 20 "$NVSMI" > "$work/nvidia-smi.txt" 2>&1
timeout 20 "$NVSMI" --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader \
  > "$work/gpu.txt" 2>/dev/null || echo "nvidia-smi failed (no driver?)" > "$work/gpu.txt"
grep -o 'CUDA Version: *[0-9.]*' "$work/nvidia-smi.txt" | head -n1 | sed 's/.*: *//' > "$work/cuda_version.txt"
write_summary

# ---------------------------------------------------------------------------------------------
# 1. Tests: discovered at run time, each in its own process, stop at the first failure.
run_step list-tests 30 "$work/logs/list.txt" "$work/logs/list.err" "$TESTS_BIN" --list --ignored ||
  fail "could not list the GPU tests" "$work/logs/list.err"
mapfile -t tests < <(sed -n 's/: test$//p' "$work/logs/list.txt")
[ ${#tests[@]} -gt 0 ] || fail "no GPU test found (--list --ignored listed none)" "$work/logs/list.txt"
echo "   ${#tests[@]} GPU tests: ${tests[*]}"

for pass in $(seq "$TEST_PASSES"); do
  envs=(env DIFFUGPT_REQUIRE_GPU=1)
  [ "$pass" = 1 ] && envs+=(CUDA_LAUNCH_BLOCKING=1)
  for t in "${tests[@]}"; do
    log=$work/logs/test${pass}_${t//[^A-Za-z0-9_]/_}.log
    current_test="$pass	$t"
    t0=$(date +%s)
    run_step "test$pass:$t" "$TEST_TIMEOUT" "$log" "$log" \
      "${envs[@]}" "$TESTS_BIN" --exact "$t" --include-ignored --nocapture --test-threads=1
    rc=$?
    current_test=""
    res=ok
    if [ $rc -eq 125 ]; then
      res="not run (deadline)"
    elif [ $rc -ne 0 ]; then
      res="FAILED (exit $rc)"
      [ $rc -eq 124 ] && res="TIMED OUT (${step_budget} s)"
    elif ! grep -q "test result: ok. 1 passed" "$log"; then
      res="FAILED (did not run: no '1 passed')"
    fi
    printf '%s\t%s\t%s\t%s\n' "$pass" "$t" "$res" "$(($(date +%s) - t0))" >> "$work/tests.tsv"
    [ "$res" = ok ] && continue
    [ $rc -eq 125 ] && { status=DEADLINE; status_detail="no time left for test $t (pass $pass)"; exit 124; }
    blocking=""
    [ "$pass" = 1 ] && blocking=", CUDA_LAUNCH_BLOCKING=1"
    fail "test $t $res in pass $pass$blocking" "$log"
  done
done

# 2. The CLI on the GPU: a fallback to the CPU makes every benchmark below a CPU benchmark.
g=$work/logs/generate
run_step generate-cuda 60 "$g.json" "$g.err" "$DIFFUGPT_BIN" generate \
  --model tests/fixtures/tiny-diffugpt --device cuda --dtype f32 --canvas 32 --prompt Hello --json ||
  fail "diffugpt generate --device cuda failed" "$g.err"
grep -q "running on the CPU" "$g.err" &&
  fail "diffugpt generate --device cuda fell back to the CPU: no benchmark run" "$g.err"

# 3. Benchmarks, cheapest first. A failed one is reported and the next one runs.
bench_md() { # the benchmark section of summary.md, and bench.json (every JSON of the run)
  python3 - "$work" "$out" <<'PY' > "$work/bench.md.tmp" 2>"$work/bench_md.err" && mv "$work/bench.md.tmp" "$work/bench.md"
import glob, json, os, sys
work, out = sys.argv[1], sys.argv[2]
runs = {}
for p in sorted(glob.glob(os.path.join(work, "logs", "*.json")), key=os.path.getmtime):
    n = os.path.basename(p)[:-5]
    if n == "generate":
        continue
    try:
        runs[n] = json.load(open(p))
    except Exception as e:
        runs[n] = {"error": f"unreadable: {e}"}
json.dump(runs, open(os.path.join(out, "bench.json"), "w"), indent=1)
f = lambda x: "-" if x is None else f"{x:.3f}"
lines = ["## Benchmarks", "", "| bench | backend | test | dtype | mean ms | std ms | per s |",
         "| --- | --- | --- | --- | ---: | ---: | ---: |"]
for n, r in runs.items():
    if n == "pytorch":
        continue
    for row in r.get("rows", []):
        lines.append(f"| {n} | {r.get('backend')} | {row.get('test')} | {row.get('dtype')} | "
                     f"{f(row.get('mean_ms'))} | {f(row.get('std_ms'))} | {f(row.get('per_s'))} |")
    extra = {k: v for k, v in r.items() if k not in ("rows", "backend", "model", "params", "forward_ms", "forward_gflops", "arm",
             "weight_mb", "fma_peak_gflops", "memory_bandwidth_gbs", "threads", "cpu_kernels")}
    if extra:
        lines.append(f"| {n} | other keys: `{json.dumps(extra)[:400]}` | | | | | |")
pt = runs.get("pytorch")
if pt:
    lines += ["", f"PyTorch {pt.get('torch')} on {pt.get('gpu')} ({pt.get('dtype')}):", "",
              "| test | diffugpt bf16 ms | diffugpt bf16 + graphs ms | diffugpt f32 ms | PyTorch eager ms | PyTorch graph ms | bf16 / PyTorch graph |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    def ms(prefixes, test):
        for n in prefixes:
            for row in runs.get(n, {}).get("rows", []):
                if row.get("test") == test:
                    return row.get("mean_ms")
        return None
    ours = lambda kind, test: ms([f"bench-{kind}-fwd", f"bench-{kind}-decode"], test)
    eos = next((row["test"] for row in runs.get("bench-bf16-decode", {}).get("rows", [])
                if row.get("test", "").startswith("eosfirst")), None)
    for test, key in [("forward-64", "forward-64"), ("forward-1024", "forward-1024"),
                      ("fixed-512", "fixed-512"), (eos, "fixed-512")]:
        if test is None:
            continue
        a, g = ours("bf16", test), (pt.get(key) or {}).get("graph_ms")
        lines.append(f"| {test} | {f(a)} | {f(ours('bf16-graphs', test))} | {f(ours('f32', test))} | "
                     f"{f((pt.get(key) or {}).get('eager_ms'))} | {f(g)} | "
                     f"{f(a / g) if a and g else '-'} |")
    if "batch-16x512" in pt:
        b = pt["batch-16x512"]
        lines.append(f"| batch 16x512 forward (PyTorch only) | - | - | - | {f(b.get('eager_ms'))} | {f(b.get('graph_ms'))} | - |")
    lines.append("")
    lines.append("eosfirst row: against PyTorch's fixed-512 decode (same prompt, canvas and steps).")
print("\n".join(lines))
PY
}

bench_failed=0
bench() { # bench NAME BUDGET [ENV=VALUE...] -- diffugpt bench ARGS
  local name=$1 budget=$2 envs=()
  shift 2
  while [ "$1" != -- ]; do envs+=("$1"); shift; done
  shift
  [ ${#envs[@]} -eq 0 ] || envs=(env "${envs[@]}")
  local j=$work/logs/$name.json e=$work/logs/$name.err rc
  run_step "$name" "$budget" "$j" "$e" "${envs[@]}" "$DIFFUGPT_BIN" bench --device cuda --format json "$@"
  rc=$?
  [ $rc -eq 125 ] && return 125
  [ $rc -eq 0 ] || bench_failed=1
  if grep -q "running on the CPU" "$e" 2>/dev/null; then
    fail "$name fell back to the CPU" "$e"
  fi
  bench_md
  return 0
}
fwd=(--forward-lens "64,256,1024" --reps "$BENCH_REPS" --canvas 0)
dec=(--forward-lens 64 --reps 3 --canvas 512 --steps 64 --prompt-len 32 --answer-len 32)
bench bench-smoke 60 -- --dtype bf16 --forward-lens 64 --reps 3 --canvas 0 &&
  bench bench-bf16-fwd 90 -- --dtype bf16 "${fwd[@]}" &&
  bench bench-f32-fwd 90 -- --dtype f32 "${fwd[@]}" &&
  bench bench-bf16-graphs-fwd 90 DIFFUGPT_CUDA_GRAPHS=1 -- --dtype bf16 "${fwd[@]}" &&
  bench bench-bf16-decode 120 -- --dtype bf16 "${dec[@]}" &&
  bench bench-bf16-graphs-decode 120 DIFFUGPT_CUDA_GRAPHS=1 -- --dtype bf16 "${dec[@]}" &&
  bench bench-f32-decode 120 -- --dtype f32 "${dec[@]}"

# 4. PyTorch, last.
if [ -n "${SKIP_PYTORCH:-}" ]; then
  printf '%s\t%s\t%s\t%s\t%s\n' pytorch "skipped (SKIP_PYTORCH)" - 0 - >> "$work/steps.tsv"
elif [ ! -f "$pytorch_script" ]; then
  printf '%s\t%s\t%s\t%s\t%s\n' pytorch "skipped (no $pytorch_script)" - 0 - >> "$work/steps.tsv"
else
  run_step pytorch 180 "$work/logs/pytorch.log" "$work/logs/pytorch.log" \
    env PYTHONUNBUFFERED=1 "${PYTORCH[@]}" --reps "$BENCH_REPS" --out "$work/logs/pytorch.json" ||
    bench_failed=1
  bench_md
fi

if [ $bench_failed -ne 0 ]; then
  status=FAIL
  status_detail="all tests passed; a benchmark failed (see the commands)"
  exit 1
fi
if grep -q $'\tskipped (deadline)\t' "$work/steps.tsv"; then
  status=DEADLINE
  status_detail="all tests passed; the deadline left steps out (see the commands)"
  exit 124
fi
exit 0
