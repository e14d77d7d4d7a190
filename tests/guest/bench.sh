# Guest side of `cargo xtask bench`: PLOOP_IOC_SNAPSHOT latency on the model driver without
# the tool, with its probes and a consumer that only counts (`trace`), and with
# `ploop-verify run` for each transport and attach method (at its default nice 19, and once
# at nice 0 for comparison); each round runs the modes in its own order (ORDERS, seeded
# random from the host) so that drift hits all alike and no mode always runs first. Then the detection delay (every call made to fail T1) and the
# event-loss rate (refused snapshot calls at rising rates).
# COUNT, ROUNDS, STACK (a stack kind of lib.sh: direct, crypt, linear) and, optionally, MODES,
# ORDERS (each round's modes, rounds separated by '/') and RATES come from the environment.
set -u
mount -t tmpfs -o size=900m tmpfs /tmp || exit 10
MODES=${MODES:-without count run-ringbuf-fentry run-ringbuf-kprobe run-perf-fentry run-perf-kprobe nice0-ringbuf-fentry}
RATES=${RATES:-1000 2000 5000 10000 20000 0}
ploop-verify doctor | grep -i -E "plan|fentry|ring" | head -5

bench_cmd() { # LABEL
  echo "ploop-verify testkit snapshot-bench --device /dev/ploop0 --count $COUNT \
    --sync-fd-from /mnt/p0 --write-to /mnt/p0 --warmup 1 --samples --label $1"
}

r=0
while [ $r -lt $ROUNDS ]; do
  r=$((r + 1))
  order=$MODES
  [ -n "${ORDERS:-}" ] && order=$(echo "$ORDERS" | cut -d/ -f$r)
  for mode in $order; do
    up $STACK || exit 11
    case $mode in
      without) $(bench_cmd without-probes) ;;
      count) ploop-verify trace -- $(bench_cmd count-probes) | grep -v '^ploop-verify: trace' ;;
      run-*|nice0-*)
        # The reports go to the guest's own tmpfs, as on a host they go to a local disk, and
        # reach /share only after the run: /share is 9p, served by the QEMU process whose
        # threads share two host cores with both vCPUs. Calls of 15-70 ms (freeze_bdev's
        # sync) were 16 in 1600 with the reports on /share, 12 in 2400 with them local; the
        # mode without the tool has a few too.
        set -- $(echo $mode | tr - ' ')
        nice=19; [ $1 = nice0 ] && nice=0
        ploop-verify run --quiet --profile --nice $nice --transport $2 --method $3 \
          --out /tmp/run-$mode-$r -- $(bench_cmd $mode) 2>&1 |
          grep -E "snapshot-bench|profile:|VIOLATION|lost"
        mv /tmp/run-$mode-$r /share/
        ;;
    esac
    down $STACK
  done
done

# Detection delay: T1 set so that every call fails it when it completes; each violation says
# how long after its completing event it was printed.
for t in ringbuf perf; do
  up $STACK || exit 11
  ploop-verify run --transport $t --max-freeze-ms 0.001 --out /share/delay-$t \
    -- $(bench_cmd delay-$t) 2>&1 | sed -n "s/.*\[found \([0-9.]*\) ms after the event\]/delay-ms $t \1/p"
  down $STACK
done

# Event loss: refused snapshot calls (about four events each) at rising rates, 2 s each.
for t in ringbuf perf; do
  up $STACK || exit 11
  for rate in $RATES; do
    ploop-verify run --quiet --transport $t --out /share/rate-$t-$rate -- \
      ploop-verify testkit snapshot-bench --device /dev/ploop0 --rate $rate --seconds 2 \
      --label rate-$t-$rate | grep snapshot-bench
    lost=$(sed -n 's/.*"lost": *\([0-9]*\).*/\1/p' /share/rate-$t-$rate/summary.json | head -1)
    calls=$(sed -n 's/^  "snapshots": *\([0-9]*\).*/\1/p' /share/rate-$t-$rate/summary.json | head -1)
    echo "rate-result $t target=$rate judged=${calls:-?} lost=${lost:-?}"
  done
  down $STACK
done
