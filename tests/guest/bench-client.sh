# Guest side of `cargo xtask bench --client`: the latency of Debian's `ploop snapshot` (the
# whole command, as an operator or vzctl waits for it: libploop's locking, the new delta,
# the ioctl, DiskDescriptor.xml) on ext4 on ploop0p1 as `ploop init` lays it out, with two
# writers on it, without and with `ploop-verify run` around the same commands; ROUNDS rounds
# of COUNT snapshots per mode, each round's two modes in the order ORDERS gives (seeded in
# xtask, rounds separated by '/'), each series on a fresh image.
# Prints `snapshot-bench-samples LABEL: US...` lines (xtask/src/bench.rs reads them).
set -u
C=/var/c DD=/var/c/DiskDescriptor.xml

# series LABEL: COUNT timed `ploop snapshot` calls on a fresh image (called as the workload
# of `ploop-verify run` too).
series() {
  s=
  writers /mnt/c /tmp/stop
  i=0
  while [ $i -lt $COUNT ]; do
    i=$((i + 1))
    t0=$EPOCHREALTIME
    ploop snapshot $DD >/dev/null 2>&1 || echo "ploop snapshot $i ($1) failed"
    t1=$EPOCHREALTIME
    s="$s $(echo "$t0 $t1" | awk '{printf "%d", ($2 - $1) * 1e6}')"
  done
  touch /tmp/stop; wait
  echo "snapshot-bench-samples $1:$s"
}
if [ $# -gt 0 ]; then "$@"; exit $?; fi

# Not for the workload's re-entry above: /tmp holds the run's reports, /var/c the image.
mount -t tmpfs -o size=900m tmpfs /tmp || exit 10
client_dir $C || exit 11

fresh() {
  rm -rf $C/*; mkdir -p /mnt/c
  ploop init -s 384M -f ploop1 -t ext4 $C/root.hdd >/dev/null && unballoon $DD &&
    ploop mount -m /mnt/c $DD >/dev/null
}
r=0
while [ $r -lt $ROUNDS ]; do
  r=$((r + 1))
  for mode in $(echo "$ORDERS" | cut -d/ -f$r); do
    fresh || { echo "the client could not make and mount an image"; exit 12; }
    case $mode in
      without) series without-probes ;;
      run) ploop-verify run --quiet --out /tmp/run-$r -- sh /etc/ploop-vm/command series run-client
        echo "run round $r: exit $?" ;;
    esac
    ploop umount $DD >/dev/null
  done
done
