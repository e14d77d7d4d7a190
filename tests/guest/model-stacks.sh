# Guest side of live_model (stacks): ext4 on ploop, on dm-crypt on ploop, and on dm-linear on
# dm-crypt on ploop (the stack of the patch), on the ploop model driver (ploop.ko) (patched mode); the
# same three on ploop0p1 of a GPT (as container images are) with ploop1 snapshot deltas, and
# ext4 on ploop0p1 with raw deltas and libploop's sync fd (the partition's node, bdev mode).
# For each stack: data written before a snapshot reads back after it; lower deltas never
# change after their snapshot; a fresh device built from the lower deltas alone shows the
# data as of the snapshot, with a clean journal (the filesystem was frozen); the ploop1
# deltas pass the header/BAT check (in use while the open top, closed once lower). Then:
# which filesystem is frozen during the switch (also the partition walk: empty p1, ext4 on
# p2), the hang of a switch whose ploop1 delta sits on the filesystem the sync fd freezes
# (released by an emergency thaw), and the snapshot latency with raw and ploop1 tops.
# Results in /share/results.jsonl (lib.sh: result): a check per property (the host test wants
# every one passed), the two latency series, then "done"; also printed ("check NAME ok" or
# "check NAME FAIL why"), with "info ..." lines. Keeps going after a failure.
set -u
mount -t tmpfs -o size=700m tmpfs /tmp || exit 10
mkdir -p /mnt/s
P=/sys/module/ploop/parameters

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

# fresh NAME WANT_A WANT_B DELTA...: a new device from DELTA... plus an empty writable
# top (the lower deltas stay untouched); checks a clean journal and the files a and b
# (WANT_x "none": the file must not exist). The stack ($k) and layout ($lay) of run_stack.
fresh() {
  fk=$name fname=$1 wa=$2 wb=$3; shift 3
  ploop-verify device create --size 32M /tmp/$fk/scratch.img >/dev/null
  if ! ploop-verify device attach --device /dev/ploop1 $cl "$@" /tmp/$fk/scratch.img >/dev/null; then
    bad "$fk-$fname-attach"; rm -f /tmp/$fk/scratch.img; return
  fi
  fdev=/dev/ploop1; [ $lay = part ] && fdev=/dev/ploop1p1
  if stack_up "$k" $fdev 1; then
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
    stack_down "$k" 1
  else
    bad "$fk-$fname-stack"
  fi
  ploop-verify device detach --device /dev/ploop1 >/dev/null || bad "$fk-$fname-detach"
  rm -f /tmp/$fk/scratch.img
}

# p1check NAME FILE yes|no: the ploop1 header/BAT check of FILE, m_DiskInUse as said.
p1check() {
  o=$(ploop-verify testkit ploop1-check "$2" --in-use $3) || { bad "$1" "$o"; return; }
  ok "$1"
}

# run_stack NAME KIND SNAP2 FORMAT LAYOUT: KIND is the stack (direct, crypt, linear); SNAP2
# is "sync" (the mountpoint as sync fd), "auto" (the autodetection) or "node" (libploop's
# sync fd: the node of the partition the stack is on, resolved with sync_fd_resolve=bdev);
# FORMAT is the snapshot deltas' (raw, ploop1: on a device with 1 MiB clusters); LAYOUT is
# "disk" (the stack on /dev/ploop0) or "part" (a GPT, the stack on /dev/ploop0p1).
run_stack() {
  name=$1 k=$2 s2=$3 fmt=$4 lay=$5 d=/tmp/$1
  cl= ext=img
  if [ $fmt = ploop1 ]; then cl="--cluster-log 11" ext=hds; fi
  mkdir -p $d
  ploop-verify device create --size 32M $d/base.img >/dev/null || { bad $name-create; return; }
  ploop-verify device attach --device /dev/ploop0 $cl $d/base.img >/dev/null || { bad $name-attach; return; }
  dev=/dev/ploop0
  if [ $lay = part ]; then
    ploop-verify testkit gpt /dev/ploop0 --part rest >/dev/null || { bad $name-gpt; return; }
    dev=/dev/ploop0p1
  fi
  stack_up $k $dev 0 || { bad $name-stack; return; }
  mkfs.ext4 -q -E lazy_itable_init=0,lazy_journal_init=0 "$TOP" || { bad $name-mkfs; return; }
  mount -t ext4 "$TOP" /mnt/s || { bad $name-mount; return; }
  dd if=/dev/urandom of=/mnt/s/a bs=64k count=16 2>/dev/null
  A1=$(sum /mnt/s/a)

  ploop-verify snapshot --device /dev/ploop0 --format $fmt --delta $d/s1.$ext --sync-fd-from /mnt/s ||
    bad $name-snapshot1
  [ $fmt = ploop1 ] && p1check $name-s1-in-use $d/s1.$ext yes
  H0=$(sum $d/base.img)
  drop_caches
  expect $name-readback-after-snapshot1 "$(sum /mnt/s/a)" "$A1"
  # change a in place (one block of the lower delta copied up) and write b
  dd if=/dev/urandom of=/mnt/s/a bs=4k count=1 seek=5 conv=notrunc 2>/dev/null
  dd if=/dev/urandom of=/mnt/s/b bs=64k count=8 2>/dev/null
  A2=$(sum /mnt/s/a) B=$(sum /mnt/s/b)
  sync
  expect $name-base-unchanged-after-writes "$(sum $d/base.img)" "$H0"

  case $s2 in
    sync) ploop-verify snapshot --device /dev/ploop0 --format $fmt --delta $d/s2.$ext --sync-fd-from /mnt/s ;;
    node) echo bdev > $P/sync_fd_resolve
      ploop-verify snapshot --device /dev/ploop0 --format $fmt --delta $d/s2.$ext --sync-fd-dev $dev
      r=$?; echo seed > $P/sync_fd_resolve; [ $r = 0 ] ;;
    *) ploop-verify snapshot --device /dev/ploop0 --format $fmt --delta $d/s2.$ext ;;
  esac || bad $name-snapshot2
  H1=$(sum $d/s1.$ext)
  if [ $fmt = ploop1 ]; then
    p1check $name-s1-closed $d/s1.$ext no
    p1check $name-s2-in-use $d/s2.$ext yes
  fi
  dd if=/dev/urandom of=/mnt/s/b bs=64k count=2 conv=notrunc 2>/dev/null
  dd if=/dev/urandom of=/mnt/s/c bs=64k count=4 2>/dev/null
  sync
  expect $name-base-unchanged-after-snapshot2 "$(sum $d/base.img)" "$H0"
  expect $name-s1-unchanged-after-writes "$(sum $d/s1.$ext)" "$H1"
  umount /mnt/s
  mount -t ext4 "$TOP" /mnt/s || bad $name-remount
  expect $name-readback-after-remount "$(sum /mnt/s/a)" "$A2"
  expect $name-deltas "$(cat /sys/block/ploop0/pstate/nr_deltas)" 3
  umount /mnt/s
  stack_down $k 0
  ploop-verify device detach --device /dev/ploop0 >/dev/null || bad $name-detach
  [ $fmt = ploop1 ] && p1check $name-s2-closed-at-detach $d/s2.$ext no

  fresh from-base "$A1" none $d/base.img
  fresh from-s1 "$A2" "$B" $d/base.img $d/s1.$ext
  expect $name-base-unchanged-at-end "$(sum $d/base.img)" "$H0"
  expect $name-s1-unchanged-at-end "$(sum $d/s1.$ext)" "$H1"
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
run_stack direct direct auto raw disk
stamp direct
run_stack crypt crypt auto raw disk
stamp crypt
run_stack linear linear sync raw disk
stamp linear
run_stack direct-p1 direct node raw part
stamp direct-p1
run_stack direct-p1-ploop1 direct auto ploop1 part
stamp direct-p1-ploop1
run_stack crypt-p1-ploop1 crypt auto ploop1 part
stamp crypt-p1-ploop1
run_stack linear-p1-ploop1 linear sync ploop1 part
stamp linear-p1-ploop1

# frozen_now DIR: "frozen" when a write under DIR waits for a frozen superblock, judged by
# where the writer waits (s_writers, a percpu rwsem), not by how long it takes: in a slow TCG
# guest a write may wait a second on the journal of a filesystem that is not frozen. A
# frozen writer is left behind; it finishes when the snapshot thaws.
frozen_now() {
  sh -c "echo x > $1/probe" 2>/dev/null &
  w=$! i=0
  while kill -0 $w 2>/dev/null && [ $i -lt 50 ]; do usleep 20000; i=$((i + 1)); done
  kill -0 $w 2>/dev/null || { echo not-frozen; return; }
  stk=$(tr '\n' ' ' < /proc/$w/stack 2>/dev/null)
  case $stk in *percpu_rwsem_wait*|*__sb_start_write*) echo frozen; return ;; esac
  i=0
  while kill -0 $w 2>/dev/null && [ $i -lt 150 ]; do usleep 20000; i=$((i + 1)); done
  if kill -0 $w 2>/dev/null; then echo "blocked-elsewhere: $stk"; else echo not-frozen; fi
}

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
  snap=$!
  i=0
  while [ "$(cat /sys/block/ploop0/pstate/maintenance)" != 3 ] && [ $i -lt 200 ]; do
    usleep 20000; i=$((i + 1))
  done
  # maintenance_type is set before the freeze: give the freeze a second to happen, then
  # probe while the window is still held open.
  sleep 1
  got=$(frozen_now /mnt/s)
  wait $snap || bad fz-$k-$2-snapshot
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

# held_write LABEL WANT SNAPSHOT-ARGS...: a snapshot of /dev/ploop0 held open in its
# maintenance window (snapshot_hold_ms) while a write to /mnt/s tells whether the filesystem
# is frozen during the switch.
held_write() {
  label=$1 want=$2; shift 2
  echo 4000 > $P/snapshot_hold_ms
  ploop-verify snapshot --device /dev/ploop0 "$@" >/dev/null &
  snap=$!
  i=0
  while [ "$(cat /sys/block/ploop0/pstate/maintenance)" != 3 ] && [ $i -lt 200 ]; do
    usleep 20000; i=$((i + 1))
  done
  sleep 1
  got=$(frozen_now /mnt/s)
  wait $snap || bad $label-snapshot
  echo 0 > $P/snapshot_hold_ms
  expect "$label" $got $want
}

# The partition walk without a sync fd: p1 empty, ext4 on p2. The model freezes the disk and
# p1 and thaws each at once (no filesystem), then keeps p2 frozen across the switch. Then
# libploop's sync fd (the node of p2): bdev mode freezes p2; seed mode refuses (ENODEV,
# devtmpfs) and freezes nothing.
mkdir -p /tmp/walk
ploop-verify device create --size 32M /tmp/walk/base.img >/dev/null
ploop-verify device attach --device /dev/ploop0 /tmp/walk/base.img >/dev/null &&
  ploop-verify testkit gpt /dev/ploop0 --part 8M --part rest >/dev/null &&
  mkfs.ext4 -q /dev/ploop0p2 && mount -t ext4 /dev/ploop0p2 /mnt/s || bad walk-setup
held_write frozen-during-switch-walk-p2-auto frozen --delta /tmp/walk/s1.img
echo bdev > $P/sync_fd_resolve
held_write frozen-during-switch-p2-node-bdev frozen --delta /tmp/walk/s2.img --sync-fd-dev /dev/ploop0p2
echo seed > $P/sync_fd_resolve
e=$(ploop-verify snapshot --device /dev/ploop0 --delta /tmp/walk/s3.img --sync-fd-dev /dev/ploop0p2 2>&1)
expect p2-node-seed-enodev "$(errno_of "$e")" "ENODEV 19"
expect walk-deltas "$(cat /sys/block/ploop0/pstate/nr_deltas)" 3
(timeout 5 sh -c 'echo x > /mnt/s/alive && sync') 2>/dev/null && ok walk-p2-writable-after || bad walk-p2-writable-after
umount /mnt/s
ploop-verify device detach --device /dev/ploop0 >/dev/null || bad walk-detach
rm -rf /tmp/walk
stamp partition-walk

# The hang (T2's cause, CONTRACT "Nothing checks that the sync fd belongs to this ploop
# device"): delta files on a filesystem (/vz, ext4 on loop0) and the sync fd naming that
# filesystem. With a raw old top the switch only syncs it and returns; with a ploop1 old top
# the switch writes its header (m_DiskInUse cleared) into the frozen /vz and waits there, in
# D state, until /vz is thawed: by an emergency thaw (sysrq j) on 6.1; on 6.12 the emergency
# thaw worker itself blocks (hung task, nothing released), FITHAW (fsfreeze -u) releases it.
mkdir -p /vz
dd if=/dev/zero of=/tmp/vz.img bs=1M count=96 2>/dev/null
losetup /dev/loop0 /tmp/vz.img && mkfs.ext4 -q /dev/loop0 && mount -t ext4 /dev/loop0 /vz || bad hang-setup
ploop-verify device create --size 32M /vz/base.img >/dev/null
ploop-verify device attach --device /dev/ploop0 --cluster-log 11 /vz/base.img >/dev/null &&
  mkfs.ext4 -q /dev/ploop0 && mount -t ext4 /dev/ploop0 /mnt/s || bad hang-ploop
ploop-verify snapshot --device /dev/ploop0 --delta /vz/s1.img --sync-fd-from /vz >/dev/null &&
  ok hang-raw-old-top-returns || bad hang-raw-old-top-returns
ploop-verify snapshot --device /dev/ploop0 --format ploop1 --delta /vz/s2.hds --sync-fd-from /vz >/dev/null &&
  ok hang-ploop1-over-raw-returns || bad hang-ploop1-over-raw-returns
ploop-verify snapshot --device /dev/ploop0 --format ploop1 --delta /vz/s3.hds --sync-fd-from /vz >/dev/null &
hpid=$!
sleep 4
st=$(sed -n 's/^State:\t*\([A-Z]\).*/\1/p' /proc/$hpid/status 2>/dev/null)
expect hang-ploop1-old-top-blocks "$st" D
stk=$(cat /proc/$hpid/task/*/stack 2>/dev/null | tr '\n' ' ')
echo "info hung snapshot stack: $stk"
case $stk in *ploop1_close*complete_snapshot*) ok hang-stack-in-header-write ;;
  *) bad hang-stack-in-header-write "$stk" ;; esac
case $(uname -r) in
  6.1.*) how="emergency thaw (sysrq j)"; echo j > /proc/sysrq-trigger ;;
  *) how="FITHAW (fsfreeze --unfreeze /vz)"; timeout 10 fsfreeze --unfreeze /vz ;;
esac
i=0
while kill -0 $hpid 2>/dev/null && [ $i -lt 100 ]; do usleep 50000; i=$((i + 1)); done
if kill -0 $hpid 2>/dev/null; then bad hang-released "$how"; else ok hang-released; fi
echo "info hang released by $how after $((i * 50)) ms" 
wait $hpid
(timeout 5 sh -c 'echo x > /vz/alive && sync') 2>/dev/null && ok hang-vz-writable-after || bad hang-vz-writable-after
p1check hang-s2-closed /vz/s2.hds no
umount /mnt/s
ploop-verify device detach --device /dev/ploop0 >/dev/null || bad hang-detach
umount /vz && losetup -d /dev/loop0
rm -f /tmp/vz.img
stamp hang

stamp frozen-during-switch
# Latency of PLOOP_IOC_SNAPSHOT on the stack of the patch (no timing is asserted).
mkdir -p /tmp/bench
ploop-verify device create --size 32M /tmp/bench/base.img >/dev/null
ploop-verify device attach --device /dev/ploop0 --cluster-log 11 /tmp/bench/base.img >/dev/null
# bench LABEL ARGS...: 40 snapshots (3 series fit in the 128 deltas of a device); the line snapshot-bench prints, as a result.
bench() {
  label=$1; shift
  o=$(ploop-verify testkit snapshot-bench --device /dev/ploop0 --count 40 --write-to /mnt/s \
    --workdir /tmp/bench --label $label "$@")
  rc=$?; echo "$o"; [ $rc = 0 ] || return 1
  set -- $(printf '%s\n' "$o" | sed -n "s/^snapshot-bench $label: n=\([0-9]*\) min=\([0-9.]*\)ms \
p50=\([0-9.]*\)ms p90=\([0-9.]*\)ms max=\([0-9.]*\)ms mean=\([0-9.]*\)ms$/\1 \2 \3 \4 \5 \6/p")
  [ $# = 6 ] || { echo "bench $label: no latency line"; return 1; }
  result bench-$label bench label=$label n:=$1 min_ms:=$2 p50_ms:=$3 p90_ms:=$4 max_ms:=$5 mean_ms:=$6
}
stack_up linear /dev/ploop0 0 && mkfs.ext4 -q "$TOP" && mount -t ext4 "$TOP" /mnt/s &&
  bench sync-fd --sync-fd-from /mnt/s && bench no-fs-sync --no-fs-sync &&
  bench ploop1-sync-fd --format ploop1 --sync-fd-from /mnt/s || bad bench
expect bench-deltas "$(cat /sys/block/ploop0/pstate/nr_deltas)" 121
umount /mnt/s
stack_down linear 0
ploop-verify device detach --device /dev/ploop0 >/dev/null || bad bench-detach
expect leaked-freezes "$(cat /sys/block/ploop0/pstate/leaked_freezes)" 0
stamp bench
finish
