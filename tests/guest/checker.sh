# Guest side of live_checker: `ploop-verify run` around snapshot workloads on the ploop model
# driver. Each run writes its reports to /share/NAME/, and its exit status goes to
# /share/results.jsonl (lib.sh: result); the host test reads summary.json and replays
# trace.jsonl.
# Called with a workload name (from inside `ploop-verify run`), it runs that workload only.
set -u
P=/sys/module/ploop/parameters
CLEAN_SNAPSHOTS=${CLEAN_SNAPSHOTS:-210}

# --- workloads ---------------------------------------------------------------------------
wl_clean() {
  per=$(( (CLEAN_SNAPSHOTS + 8) / 9 ))   # 3 stacks x 3 device cycles (the model: 128 deltas at most)
  for kind in direct crypt linear; do
    for mode in sync auto sync; do
      [ $kind = linear ] && mode=sync   # autodetection cannot see this stack: see wl_s2
      up $kind || { echo "up $kind failed"; return 1; }
      snaps $per $mode
      down $kind
    done
  done
  # Two devices at once, and PLOOP_IOC_FREEZE/THAW (not snapshots) on one while the other
  # snapshots. (On the same device a freeze would meet -EBUSY from a snapshot in progress.)
  up direct /dev/ploop0 && up crypt /dev/ploop1 || return 1
  snaps 6 auto /dev/ploop1 &
  for i in 1 2 3; do
    ploop-verify device freeze --device /dev/ploop0 && ploop-verify device thaw --device /dev/ploop0
  done
  snaps 6 sync /dev/ploop0
  wait
  # Every error path of the patched ABI, each answered as the contract says.
  S="ploop-verify snapshot --raw --device /dev/ploop0"
  ploop-verify device create --size 64M /tmp/p0-e.img >/dev/null
  $S --delta /tmp/p0-e.img --chunks 0            # E1: ENOTSUPP
  $S --delta /tmp/p0-e.img --chunks 3            # E1: ENOTSUPP
  $S --delta /tmp/p0-e.img --sync-fd-from /mnt/p0 --chunk1-len 4096   # E2: EINVAL
  $S --delta /tmp/p0-e.img --sync-fd-from /mnt/p0 --chunk1-type 1     # E2: EINVAL
  $S --delta /tmp/p0-e.img --sync-fd-from /tmp   # S3: tmpfs, ENODEV
  $S --delta /tmp/p0-e.img --sync-fd 999         # S3: no such fd, ENODEV
  $S --delta /tmp/p0-e.img --fault ctl           # EFAULT
  $S --delta /tmp/p0-e.img --no-fs-sync          # O3: nothing frozen
  ploop-verify support --device /dev/ploop0
  down crypt /dev/ploop1
  ploop-verify snapshot --device /dev/ploop1 --delta /tmp/p0-e.img   # ENOENT: no delta
  down direct /dev/ploop0
  return 0
}
# A delta of snapshot J: the raw base and raw tops are .img, ploop1 tops .hds.
delta() { for f in /tmp/p0-$1.img /tmp/p0-$1.hds; do [ -e $f ] && echo $f && return; done; }
# X1's independent judge: the old snapshot of snapshot I (new top: delta I) rebuilt from the
# lower deltas alone on /dev/ploop1, read-only, under the same layers (KIND: the stack_up
# stack, default linear; part: on ploop1p1 of the same GPT); dumpe2fs -h on it says whether
# ext4 there needs a journal replay. The host compares it with the oracle's finding in NAME's
# trace.
rebuilt() { # NAME I [KIND [part]]
  kind=${3:-linear} fdev=/dev/ploop1 cl=
  [ "${4:-}" = part ] && fdev=/dev/ploop1p1 cl="--cluster-log 11"
  deltas= j=0
  while [ $j -lt $2 ]; do deltas="$deltas $(delta $j)"; j=$((j + 1)); done
  ploop-verify device attach --read-only --device /dev/ploop1 $cl $deltas >/dev/null || {
    bad $1-rebuilt-$2 "attach $deltas"; return; }
  L=
  case $kind in
    direct) L=$fdev ;;
    crypt) L=$(ploop-verify testkit dm-crypt ocrypt $fdev --no-uuid --read-only) ;;
    linear) C=$(ploop-verify testkit dm-crypt ocrypt $fdev --no-uuid --read-only) &&
      L=$(ploop-verify testkit dm-linear olin "$C" --read-only) ;;
  esac
  if [ -n "$L" ]; then
    feat=$(/sbin/dumpe2fs -h "$L" 2>/dev/null | sed -n 's/^Filesystem features: *//p')
    case " $feat " in *" needs_recovery "*) nr=true ;; *) nr=false ;; esac
    [ -n "$feat" ] || bad $1-rebuilt-$2 "dumpe2fs found no ext4 on $L"
    result $1-rebuilt-$2 rebuilt top="$(delta $2)" needs_recovery:=$nr features="$feat"
    echo "rebuilt $1 snapshot $2: needs_recovery=$nr"
  else
    bad $1-rebuilt-$2 "$kind stack on $fdev"
  fi
  ploop-verify testkit dm-remove olin 2>/dev/null; ploop-verify testkit dm-remove ocrypt 2>/dev/null
  ploop-verify device detach --device /dev/ploop1 >/dev/null
}
# The commit's stack under the oracle (X1), with the sync fd and with the autodetection; the
# key is the live table's (what `dmsetup table --showkeys` prints; no dmsetup here).
oracle_cases() {
  for mode in auto sync; do
    up linear && ploop-verify testkit dm-table crypt0 > /tmp/oracle.key
    RUNARGS="--oracle --oracle-key /tmp/oracle.key" check s2-$mode wl_s2_$mode
    for i in 1 2 3; do rebuilt s2-$mode $i; done
    down linear
  done
}
# KIND on ploop0p1 of a GPT, a raw base with 1 MiB clusters (libploop's), ploop1 tops.
up_p1() {
  rm -f /tmp/p0-*.img /tmp/p0-*.hds; mkdir -p /mnt/p0
  ploop-verify device create --size 64M /tmp/p0-0.img >/dev/null &&
    ploop-verify device attach --device /dev/ploop0 --cluster-log 11 /tmp/p0-0.img >/dev/null &&
    ploop-verify testkit gpt /dev/ploop0 --part rest >/dev/null &&
    stack_up "$1" /dev/ploop0p1 0 && mkfs.ext4 -q "$TOP" && mount -t ext4 "$TOP" /mnt/p0
}
down_p1() {
  umount /mnt/p0; stack_down "$1" 0; ploop-verify device detach --device /dev/ploop0 >/dev/null
  rm -f /tmp/p0-*.img /tmp/p0-*.hds
}
# wl_p1snaps FIRST MODE...: a ploop1 snapshot per MODE (sync: the mountpoint's fd; auto:
# none), deltas /tmp/p0-FIRST.hds on, while two writers do fsync-heavy I/O.
wl_p1snaps() {
  i=$1; shift
  writers /mnt/p0 /tmp/stop0
  for mode; do
    if [ $mode = sync ]; then sync_fd="--sync-fd-from /mnt/p0"; else sync_fd=; fi
    ploop-verify snapshot --device /dev/ploop0 --format ploop1 --delta /tmp/p0-$i.hds \
      $sync_fd >/dev/null || echo "snapshot $i ($mode) failed"
    i=$((i + 1))
  done
  touch /tmp/stop0; wait
}
# X1 beyond the commit's stack, on a container's layout (up_p1): ext4 on ploop0p1; dm-crypt
# on it with the key and, the same stack, without (X1 n/a, never judged); dm-linear on
# dm-crypt on it, whose autodetection misses ext4 (X1 fails).
oracle_p1_cases() {
  up_p1 direct || bad x1-p1-up "direct on ploop0p1"
  RUNARGS=--oracle check x1-p1 "wl_p1snaps 1 sync auto"
  for i in 1 2; do rebuilt x1-p1 $i direct part; done
  down_p1 direct
  up_p1 crypt && ploop-verify testkit dm-table crypt0 > /tmp/oracle.key || bad x1-p1-crypt-up
  RUNARGS="--oracle --oracle-key /tmp/oracle.key" check x1-p1-crypt "wl_p1snaps 1 sync auto"
  for i in 1 2; do rebuilt x1-p1-crypt $i crypt part; done
  RUNARGS=--oracle check x1-p1-nokey "wl_p1snaps 3 sync auto"
  down_p1 crypt
  up_p1 linear && ploop-verify testkit dm-table crypt0 > /tmp/oracle.key || bad x1-p1-linear-up
  RUNARGS="--oracle --oracle-key /tmp/oracle.key" check x1-p1-linear "wl_p1snaps 1 sync auto"
  for i in 1 2; do rebuilt x1-p1-linear $i linear part; done
  down_p1 linear
}
wl_s2_auto() { snaps 3 auto; }
wl_s2_sync() { snaps 3 sync; }
wl_leak_freeze() {
  ploop-verify device create --size 64M /tmp/p0-x.img >/dev/null
  ploop-verify snapshot --raw --device /dev/ploop0 --delta /tmp/p0-x.img --sync-fd-from /mnt/p0 \
    --delta-readonly
  ploop-verify device thaw --device /dev/ploop0   # recover the leaked freeze
}
wl_thaw_other() {
  ploop-verify snapshot --device /dev/ploop0 --delta /tmp/p0-1.img --sync-fd-from /mnt/p0
  ploop-verify device thaw --device /dev/ploop0
}
wl_sync_one() { ploop-verify snapshot --device /dev/ploop0 --delta /tmp/p0-1.img --sync-fd-from /mnt/p0; }
# C1 as vz7 answers it: the second snapshot meets -EBUSY at the ioctl dispatch, before
# ploop_snapshot runs, while the first holds its maintenance window (snapshot_hold_ms).
wl_ebusy() {
  ploop-verify snapshot --device /dev/ploop0 --delta /tmp/p0-1.img --sync-fd-from /mnt/p0 &
  first=$!
  i=0
  while [ "$(cat /sys/block/ploop0/pstate/maintenance)" != 3 ] && [ $i -lt 250 ]; do
    usleep 20000; i=$((i + 1))
  done
  usleep 200000   # the freeze follows maintenance=3
  ploop-verify snapshot --device /dev/ploop0 --delta /tmp/p0-2.img --sync-fd-from /mnt/p0
  echo "second snapshot: exit $? (EBUSY expected)"
  wait $first
}
# T2: one snapshot holding the filesystem frozen (snapshot_hold_ms) past --hang-after.
wl_held() {
  ploop-verify snapshot --device /dev/ploop0 --delta /tmp/p0-3.img --sync-fd-from /mnt/p0
}
# S4: libploop's sync fd, an fd of the device node opened O_RDONLY (here /dev/ploop0, the
# device ext4 is on), read by the seed through devtmpfs: -ENODEV, nothing frozen.
wl_node() {
  exec 7</dev/ploop0
  ploop-verify snapshot --raw --device /dev/ploop0 --delta /tmp/p0-1.img --chunks 2 --sync-fd 7
  echo "node sync fd: exit $?"
  exec 7<&-
}
# libploop's own request (testkit libploop-snapshot: ploop1, FS_SYNC, the device's cluster
# log, chunk #1 = the node /dev/ploop0p1 O_RDONLY, one retry with one chunk on EINVAL).
wl_libploop() {
  ploop-verify testkit libploop-snapshot --device /dev/ploop0 --delta /tmp/p0-lp$1.hds
  echo "libploop-snapshot: exit $?"
}
# A partitioned image as a container's: a GPT, ext4 on ploop0p1 at /mnt/p0, libploop's
# default cluster (1 MiB, log 11; libploop sends the device's, read from pstate/block_size).
up_part() {
  rm -f /tmp/p0-*.img /tmp/p0-*.hds; mkdir -p /mnt/p0
  ploop-verify device create --size 64M /tmp/p0-0.img >/dev/null &&
    ploop-verify device attach --device /dev/ploop0 --cluster-log 11 /tmp/p0-0.img >/dev/null &&
    ploop-verify testkit gpt /dev/ploop0 --part rest >/dev/null &&
    mkfs.ext4 -q /dev/ploop0p1 && mount -t ext4 /dev/ploop0p1 /mnt/p0
}
down_part() { umount /mnt/p0; ploop-verify device detach --device /dev/ploop0 >/dev/null; }
# S4 where /dev sits on a disk filesystem (CONTRACT.md, "The mismatch"): libploop's node of
# ploop0p1, made on ext4 on ploop1 (at /mnt/p1). The seed resolves the node through the
# filesystem holding it and freezes ploop1's instead of ploop0p1's.
up_devdisk() {
  up direct /dev/ploop1 && up_part &&
    mknod /mnt/p1/ploop0p1 b $(tr : ' ' < /sys/class/block/ploop0p1/dev)
}
down_devdisk() { down_part; down direct /dev/ploop1; }
wl_devdisk() {
  ploop-verify snapshot --device /dev/ploop0 --format ploop1 --delta /tmp/p0-dd$1.hds \
    --sync-fd-dev /mnt/p1/ploop0p1
  echo "node on a disk filesystem: exit $?"
}
wl_einval() { wl_sync_one; ploop-verify support --device /dev/ploop0; }
wl_unpatched() {
  snaps 3 auto
  ploop-verify support --device /dev/ploop0
  ploop-verify snapshot --device /dev/ploop0 --delta /tmp/p0-9.img --sync-fd-from /mnt/p0
  return 0
}

if [ $# -gt 0 ]; then "$@"; exit $?; fi

# --- main: one `ploop-verify run` per case --------------------------------------------------
mount -t tmpfs -o size=900m tmpfs /tmp || exit 10
ploop-verify doctor | tail -9
# check NAME WORKLOAD: run WORKLOAD (a function above) under `ploop-verify run`.
# QUIET= shows the progress lines (the clean case: the host test reads them).
check() {
  t0=$(cut -d' ' -f1 /proc/uptime)
  ploop-verify run ${QUIET---quiet} ${RUNARGS:-} --out /share/$1 -- sh /etc/ploop-vm/command $2
  rc=$?; result $1 exit status:=$rc out=$1
  echo "run $1: exit $rc, $(cut -d' ' -f1 /proc/uptime) - $t0 s"
}
# ONLY=oracle: the oracle's cases alone, on the commit's stack and beyond (live_checker's X1
# test).
if [ "${ONLY:-}" = oracle ]; then oracle_cases; oracle_p1_cases; finish; exit 0; fi
QUIET= check clean wl_clean

oracle_cases

up direct
echo 2000 > $P/snapshot_hold_ms; check ebusy wl_ebusy
echo 4000 > $P/snapshot_hold_ms
RUNARGS="--hang-after 1.5 --max-freeze-ms 60000" check hung-held wl_held
echo 0 > $P/snapshot_hold_ms
down direct
up direct; check s4-seed wl_node; down direct
# The real client on a partitioned image: the seed refuses its node (S4), 0002's reading
# freezes ploop0p1 (clean), an unpatched kernel takes the one-chunk retry (a fallback).
up_part; check lp-seed "wl_libploop 1"; down_part
echo bdev > $P/sync_fd_resolve
up_part; check lp-bdev "wl_libploop 2"; down_part
echo seed > $P/sync_fd_resolve
up_devdisk; check s4-devdisk-seed "wl_devdisk 1"; down_devdisk
echo bdev > $P/sync_fd_resolve
up_devdisk; check s4-devdisk-bdev "wl_devdisk 2"; down_devdisk
echo seed > $P/sync_fd_resolve
echo N > $P/patched
up_part; check lp-unpatched "wl_libploop 3"; down_part
echo Y > $P/patched

for bug in leak_freeze thaw_other ignore_sync_fd thaw_early einval; do
  kind=linear; [ $bug = einval ] && kind=direct
  up $kind || echo "up $kind for $bug failed"
  echo $bug > $P/bug
  case $bug in
    leak_freeze) wl=wl_leak_freeze ;; thaw_other) wl=wl_thaw_other ;; einval) wl=wl_einval ;;
    *) wl=wl_sync_one ;;
  esac
  check bug-$bug $wl
  echo none > $P/bug
  ploop-verify device thaw --device /dev/ploop0 2>/dev/null
  down $kind
done

echo N > $P/patched
up direct; check unpatched wl_unpatched; down direct
echo Y > $P/patched
finish
