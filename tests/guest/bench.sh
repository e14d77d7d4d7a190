# Guest side of `cargo xtask bench`: PLOOP_IOC_SNAPSHOT latency on the model driver without
# and with ploop-verify attached, in one guest, alternating so drift hits both alike.
# COUNT and ROUNDS come from the environment.
set -u
mount -t tmpfs -o size=900m tmpfs /tmp || exit 10
r=0
while [ $r -lt $ROUNDS ]; do
  r=$((r + 1))
  for mode in without with; do
    up direct || exit 11
    bench="ploop-verify testkit snapshot-bench --device /dev/ploop0 --count $COUNT \
      --sync-fd-from /mnt/p0 --write-to /mnt/p0 --label $mode-probes"
    if [ $mode = with ]; then
      ploop-verify run --quiet --out /share/run-$r -- $bench || echo "run exit $?"
    else
      $bench
    fi
    down direct
  done
done
