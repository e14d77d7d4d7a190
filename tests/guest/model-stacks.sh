# Guest side of live_model (stacks): ext4 on ploop, on dm-crypt on ploop, and on dm-linear on
# dm-crypt on ploop (the stack of the patch), on the ploop_model driver (patched mode).
# For each stack: data written before a snapshot reads back after it; lower deltas never
# change after their snapshot; a fresh device built from the lower deltas alone shows the
# data as of the snapshot, with a clean journal (the filesystem was frozen). Then: which
# filesystem is frozen during the switch, and the snapshot latency.
# Results in /share/results.jsonl (lib.sh: result): a check per property (the host test wants
# every one passed), the two latency series, then "done"; also printed ("check NAME ok" or
# "check NAME FAIL why"), with "info ..." lines. Keeps going after a failure.
set -u
mount -t tmpfs -o size=700m tmpfs /tmp || exit 10
mkdir -p /mnt/s
P=/sys/module/ploop_model/parameters

# ok, bad and expect (checks) come from tests/guest/lib.sh.
sum() { sha256sum "$1" 2>/dev/null | cut -d' ' -f1; }
# 1 if the ext4 superblock on $1 says the journal needs recovery (INCOMPAT_RECOVER, 0x4).
needs_recovery() {
  b=$(dd if="$1" bs=1 skip=$((1024 + 0x60)) count=1 2>/dev/null | od -An -tu1 | tr -d ' ')
  echo $(( (${b:-255} & 4) != 0 ))
}
# stack_up/stack_down come from tests/guest/lib.sh.
drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches; }
stamp() { echo "info t=$(cut -d' ' -f1 /proc/uptime) $1"; }

# fresh KIND NAME WANT_A WANT_B DELTA...: a new device from DELTA... plus an empty writable
# top (the lower deltas stay untouched); checks a clean journal and the files a and b
# (WANT_x "none": the file must not exist).
fresh() {
  fk=$1 fname=$2 wa=$3 wb=$4; shift 4
  ploop-verify device create --size 32M /tmp/$fk/scratch.img >/dev/null
  if ! ploop-verify device attach --device /dev/ploop1 "$@" /tmp/$fk/scratch.img >/dev/null; then
    bad "$fk-$fname-attach"; rm -f /tmp/$fk/scratch.img; return
  fi
  if stack_up "$fk" /dev/ploop1 1; then
    expect "$fk-$fname-clean-journal" "$(needs_recovery "$TOP")" 0
    if mount -t ext4 "$TOP" /mnt/s; then
      for f in a b; do
        eval want=\$w$f
        if [ "$want" = none ]; then
          expect "$fk-$fname-$f" "$( [ -e /mnt/s/$f ] && echo present || echo none)" none
        else
          expect "$fk-$fname-$f" "$(sum /mnt/s/$f)" "$want"
        fi
      done
      umount /mnt/s
    else
      bad "$fk-$fname-mount"
    fi
    stack_down "$fk" 1
  else
    bad "$fk-$fname-stack"
  fi
  ploop-verify device detach --device /dev/ploop1 >/dev/null || bad "$fk-$fname-detach"
  rm -f /tmp/$fk/scratch.img
}

# run_stack KIND SNAP2: SNAP2 is "sync" (sync fd) or "auto" (the autodetection).
run_stack() {
  k=$1 d=/tmp/$1
  mkdir -p $d
  ploop-verify device create --size 32M $d/base.img >/dev/null || { bad $k-create; return; }
  ploop-verify device attach --device /dev/ploop0 $d/base.img >/dev/null || { bad $k-attach; return; }
  stack_up $k /dev/ploop0 0 || { bad $k-stack; return; }
  mkfs.ext4 -q -E lazy_itable_init=0,lazy_journal_init=0 "$TOP" || { bad $k-mkfs; return; }
  mount -t ext4 "$TOP" /mnt/s || { bad $k-mount; return; }
  dd if=/dev/urandom of=/mnt/s/a bs=64k count=16 2>/dev/null
  A1=$(sum /mnt/s/a)

  ploop-verify snapshot --device /dev/ploop0 --delta $d/s1.img --sync-fd-from /mnt/s ||
    bad $k-snapshot1
  H0=$(sum $d/base.img)
  drop_caches
  expect $k-readback-after-snapshot1 "$(sum /mnt/s/a)" "$A1"
  # change a in place (one block of the lower delta copied up) and write b
  dd if=/dev/urandom of=/mnt/s/a bs=4k count=1 seek=5 conv=notrunc 2>/dev/null
  dd if=/dev/urandom of=/mnt/s/b bs=64k count=8 2>/dev/null
  A2=$(sum /mnt/s/a) B=$(sum /mnt/s/b)
  sync
  expect $k-base-unchanged-after-writes "$(sum $d/base.img)" "$H0"

  if [ "$2" = sync ]; then
    ploop-verify snapshot --device /dev/ploop0 --delta $d/s2.img --sync-fd-from /mnt/s
  else
    ploop-verify snapshot --device /dev/ploop0 --delta $d/s2.img
  fi || bad $k-snapshot2
  H1=$(sum $d/s1.img)
  dd if=/dev/urandom of=/mnt/s/b bs=64k count=2 conv=notrunc 2>/dev/null
  dd if=/dev/urandom of=/mnt/s/c bs=64k count=4 2>/dev/null
  sync
  expect $k-base-unchanged-after-snapshot2 "$(sum $d/base.img)" "$H0"
  expect $k-s1-unchanged-after-writes "$(sum $d/s1.img)" "$H1"
  umount /mnt/s
  mount -t ext4 "$TOP" /mnt/s || bad $k-remount
  expect $k-readback-after-remount "$(sum /mnt/s/a)" "$A2"
  expect $k-deltas "$(cat /sys/block/ploop0/pstate/nr_deltas)" 3
  umount /mnt/s
  stack_down $k 0
  ploop-verify device detach --device /dev/ploop0 >/dev/null || bad $k-detach

  fresh $k from-base "$A1" none $d/base.img
  fresh $k from-s1 "$A2" "$B" $d/base.img $d/s1.img
  expect $k-base-unchanged-at-end "$(sum $d/base.img)" "$H0"
  expect $k-s1-unchanged-at-end "$(sum $d/s1.img)" "$H1"
  rm -rf $d
}

echo "info kernel $(uname -r)"
expect support "$(ploop-verify device create --size 32M /tmp/p.img >/dev/null;
  ploop-verify device attach --device /dev/ploop0 /tmp/p.img >/dev/null;
  ploop-verify support --device /dev/ploop0 | cut -d: -f1;
  ploop-verify device detach --device /dev/ploop0 >/dev/null; rm -f /tmp/p.img)" patched

# Raw block I/O: partial (512-byte) writes over blocks of a lower delta (copy-up), into
# holes and across blocks; what the device reads must equal the same writes applied to a
# plain file; reattaching the deltas gives the same bytes, the base alone the old ones. On
# tmpfs and on 9p (/share), whose llseek cannot report holes.
rawio() { # DIR NAME
  r=$1/rawio rn=$2; mkdir -p $r
  ploop-verify device create --size 1M $r/b.img >/dev/null
  ploop-verify device attach --device /dev/ploop0 $r/b.img >/dev/null || { bad rawio-$rn-attach; return; }
  dd if=/dev/urandom of=$r/pat bs=4k count=16 2>/dev/null
  dd if=$r/pat of=/dev/ploop0 bs=4k oflag=direct 2>/dev/null
  cp $r/pat $r/exp0; dd if=/dev/zero bs=4k count=240 >> $r/exp0 2>/dev/null
  cp $r/exp0 $r/exp
  ploop-verify snapshot --device /dev/ploop0 --delta $r/s1.img --no-fs-sync >/dev/null ||
    bad rawio-$rn-snapshot
  for x in "1 11" "1 200" "12 122" "3 2045"; do
    set -- $x
    dd if=/dev/urandom of=$r/p bs=512 count=$1 2>/dev/null
    dd if=$r/p of=/dev/ploop0 bs=512 seek=$2 oflag=direct conv=notrunc 2>/dev/null
    dd if=$r/p of=$r/exp bs=512 seek=$2 conv=notrunc 2>/dev/null
  done
  drop_caches
  dd if=/dev/ploop0 of=$r/got bs=4k iflag=direct 2>/dev/null
  expect rawio-$rn-partial-writes "$(sum $r/got)" "$(sum $r/exp)"
  ploop-verify device detach --device /dev/ploop0 >/dev/null
  ploop-verify device attach --device /dev/ploop0 $r/b.img $r/s1.img >/dev/null
  dd if=/dev/ploop0 of=$r/got bs=4k 2>/dev/null
  expect rawio-$rn-reattached "$(sum $r/got)" "$(sum $r/exp)"
  ploop-verify device detach --device /dev/ploop0 >/dev/null
  ploop-verify device attach --device /dev/ploop0 --read-only $r/b.img >/dev/null
  dd if=/dev/ploop0 of=$r/got bs=4k 2>/dev/null
  expect rawio-$rn-base-alone "$(sum $r/got)" "$(sum $r/exp0)"
  ploop-verify device detach --device /dev/ploop0 >/dev/null
  rm -rf $r
}

stamp start
rawio /tmp tmpfs
rawio /share 9p
stamp rawio
run_stack direct auto
stamp direct
run_stack crypt auto
stamp crypt
run_stack linear sync
stamp linear

# Which filesystem is frozen during the switch: the driver holds the window open
# (snapshot_hold_ms) and a write to the filesystem must block (frozen) or not. The
# autodetection does not see ploop -> dm-crypt -> dm-linear -> ext4: the bug the patch fixes.
frozen_during_switch() { # KIND MODE(sync|auto) WANT(frozen|not-frozen)
  k=$1 d=/tmp/fz-$1
  mkdir -p $d
  ploop-verify device create --size 32M $d/base.img >/dev/null
  ploop-verify device attach --device /dev/ploop0 $d/base.img >/dev/null || { bad fz-$k-attach; return; }
  stack_up $k /dev/ploop0 0 || { bad fz-$k-stack; return; }
  mkfs.ext4 -q "$TOP" && mount -t ext4 "$TOP" /mnt/s || { bad fz-$k-mount; return; }
  echo 4000 > $P/snapshot_hold_ms
  if [ $2 = sync ]; then
    ploop-verify snapshot --device /dev/ploop0 --delta $d/s1.img --sync-fd-from /mnt/s >/dev/null &
  else
    ploop-verify snapshot --device /dev/ploop0 --delta $d/s1.img >/dev/null &
  fi
  i=0
  while [ "$(cat /sys/block/ploop0/pstate/maintenance)" != 3 ] && [ $i -lt 200 ]; do
    usleep 20000; i=$((i + 1))
  done
  # maintenance_type is set before the freeze: give the freeze a second to happen, then
  # probe while the window is still held open.
  sleep 1
  if (timeout 1 sh -c 'echo x > /mnt/s/probe') 2>/dev/null; then got=not-frozen; else got=frozen; fi
  wait $! || bad fz-$k-$2-snapshot
  echo 0 > $P/snapshot_hold_ms
  expect "frozen-during-switch-$k-$2" $got $3
  umount /mnt/s
  stack_down $k 0
  ploop-verify device detach --device /dev/ploop0 >/dev/null || bad fz-$k-detach
  rm -rf $d
}
frozen_during_switch direct auto frozen
frozen_during_switch crypt auto frozen
frozen_during_switch linear sync frozen
frozen_during_switch linear auto not-frozen

stamp frozen-during-switch
# Latency of PLOOP_IOC_SNAPSHOT on the stack of the patch (no timing is asserted).
mkdir -p /tmp/bench
ploop-verify device create --size 32M /tmp/bench/base.img >/dev/null
ploop-verify device attach --device /dev/ploop0 /tmp/bench/base.img >/dev/null
# bench LABEL ARGS...: 50 snapshots; the line snapshot-bench prints, as a result.
bench() {
  label=$1; shift
  o=$(ploop-verify testkit snapshot-bench --device /dev/ploop0 --count 50 --write-to /mnt/s \
    --workdir /tmp/bench --label $label "$@")
  rc=$?; echo "$o"; [ $rc = 0 ] || return 1
  set -- $(printf '%s\n' "$o" | sed -n "s/^snapshot-bench $label: n=\([0-9]*\) min=\([0-9.]*\)ms \
p50=\([0-9.]*\)ms p90=\([0-9.]*\)ms max=\([0-9.]*\)ms mean=\([0-9.]*\)ms$/\1 \2 \3 \4 \5 \6/p")
  [ $# = 6 ] || { echo "bench $label: no latency line"; return 1; }
  result bench-$label bench label=$label n:=$1 min_ms:=$2 p50_ms:=$3 p90_ms:=$4 max_ms:=$5 mean_ms:=$6
}
stack_up linear /dev/ploop0 0 && mkfs.ext4 -q "$TOP" && mount -t ext4 "$TOP" /mnt/s &&
  bench sync-fd --sync-fd-from /mnt/s && bench no-fs-sync --no-fs-sync || bad bench
expect bench-deltas "$(cat /sys/block/ploop0/pstate/nr_deltas)" 101
umount /mnt/s
stack_down linear 0
ploop-verify device detach --device /dev/ploop0 >/dev/null || bad bench-detach
expect leaked-freezes "$(cat /sys/block/ploop0/pstate/leaked_freezes)" 0
stamp bench
finish
