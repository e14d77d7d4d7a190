# Guest side of live_model (errors): the errno of every malformed PLOOP_IOC_SNAPSHOT in the
# patched and the unpatched mode of the ploop model driver (ploop.ko), then the fuzzer (random requests
# from several threads) on ext4 directly on ploop and on ploop -> dm-crypt -> dm-linear.
# Results in /share/results.jsonl (lib.sh: result): the answer to each case in each mode (exit
# status and errno), which the host test compares with the contract's table; what `support`
# says in each mode; checks; the fuzzer's summaries; then "done". Also printed: "case MODE
# NAME RESULT" (RESULT: ok or the errno name), "check NAME ok|FAIL why", "info ..." lines.
# Needs SEED (fuzzer seed) in the environment.
set -u
mount -t tmpfs -o size=700m tmpfs /tmp || exit 10
mkdir -p /mnt/e /mnt/l /tmp/d /tmp/fz /tmp/fz2
P=/sys/module/ploop/parameters
# ok, bad and expect (checks) come from tests/guest/lib.sh.
stamp() { echo "info t=$(cut -d' ' -f1 /proc/uptime) $1"; }
# A write to the filesystem at $1 completes within 5 s: nothing is left frozen.
writable() {
  if (timeout 5 sh -c "echo x > $1/.alive && sync") 2>/dev/null; then ok "$2"; else bad "$2" "write blocked"; fi
}

ploop-verify device create --size 32M /tmp/d/base.img >/dev/null
ploop-verify device attach --device /dev/ploop0 /tmp/d/base.img >/dev/null || exit 11
mkfs.ext4 -q /dev/ploop0 && mount -t ext4 /dev/ploop0 /mnt/e || exit 12
dd if=/dev/zero of=/tmp/d/small.img bs=4k count=1 2>/dev/null

# answer NAME STATUS OUTPUT: the answer of `ploop-verify snapshot` (exit STATUS, printed
# OUTPUT) to case NAME in $MODE: ok, or the errno the kernel refused it with.
answer() {
  e=$(errno_of "$3")
  if [ "$2" = 0 ]; then r=ok
  elif [ "$2" = 1 ] && [ -n "$e" ]; then r=${e% *}
  else r="rc$2:$(printf '%s\n' "$3" | head -2 | tr '\n' ' ')"
  fi
  echo "case $MODE $1 $r"
  if [ -n "$e" ]; then
    result "$1" answer mode=$MODE status:=$2 errno:=${e#* }
  else
    result "$1" answer mode=$MODE status:=$2
  fi
}

n=0
# snap NAME [--device D] ARGS...: one raw snapshot, with a new delta file unless ARGS name
# one (--delta) or a raw fd (--chunk0-fd).
snap() {
  name=$1; shift
  dev=/dev/ploop0
  if [ "${1:-}" = --device ]; then dev=$2; shift 2; fi
  n=$((n + 1))
  delta="--delta /tmp/d/n$n.img"
  case " $* " in *" --chunk0-fd "*|*" --delta "*) delta= ;; esac
  out=$(ploop-verify snapshot --raw --device $dev $delta "$@" 2>&1)
  answer $name $? "$out"
}

cases() {
  snap enoent --device /dev/ploop1
  snap efault-ctl --fault ctl
  snap efault-null --fault null
  snap efault-kernel --fault kernel
  snap efault-chunk0 --fault chunk0
  snap efault-chunk1 --sync-fd-from /mnt/e --fault chunk1
  snap einval-chunk1-type --sync-fd-from /mnt/e --chunk1-type 1
  snap einval-chunk1-flags --sync-fd-from /mnt/e --chunk1-flags 0x10000000
  snap einval-chunk1-offset --sync-fd-from /mnt/e --chunk1-offset 512
  snap einval-chunk1-start --sync-fd-from /mnt/e --chunk1-start 1
  snap einval-chunk1-len --sync-fd-from /mnt/e --chunk1-len 4096
  snap enotsupp-chunks-0 --chunks 0
  snap enotsupp-chunks-3 --sync-fd-from /mnt/e --chunks 3
  snap enotsupp-chunks-255 --chunks 255
  snap enodev-sync-fd-tmpfs --sync-fd-from /tmp
  snap enodev-sync-fd-closed --sync-fd 1000
  snap nofssync-sync-fd-closed --no-fs-sync --sync-fd 1000
  snap einval-format --format 2
  snap einval-format-unknown --format 7
  snap einval-cluster-log --cluster-log 9
  snap einval-io-type --io-type 3
  snap ok-io-type-kaio --io-type kaio
  # libploop's sync fd: a block device node opened O_RDONLY, in both resolution modes. seed:
  # the node's super block is devtmpfs's (S4's mismatch); bdev: the node names the device.
  snap enodev-sync-fd-node-seed --sync-fd-dev /dev/ploop0
  echo bdev > $P/sync_fd_resolve
  snap ok-sync-fd-node-bdev --sync-fd-dev /dev/ploop0
  snap enodev-sync-fd-tmpfs-bdev --sync-fd-from /tmp
  echo seed > $P/sync_fd_resolve
  snap ebadf-delta-fd --chunk0-fd 999
  snap ebadf-delta-readonly --delta-readonly
  snap ebadf-delta-readonly-sync-fd --delta-readonly --sync-fd-from /mnt/e
  cp /tmp/d/small.img /tmp/d/wrong.img
  snap einval-delta-size --delta /tmp/d/wrong.img
  snap ok-autodetect
  snap ok-sync-fd --sync-fd-from /mnt/e
  snap ok-no-fs-sync --no-fs-sync

  # C1: a second snapshot while the first one is in its maintenance window. The driver holds
  # the window open (snapshot_hold_ms) and shows maintenance_type in pstate: deterministic.
  echo 2000 > $P/snapshot_hold_ms
  n=$((n + 1))
  ploop-verify snapshot --device /dev/ploop0 --delta /tmp/d/n$n.img >/tmp/d/first.out 2>&1 &
  first=$!
  i=0
  while [ "$(cat /sys/block/ploop0/pstate/maintenance)" != 3 ] && [ $i -lt 250 ]; do
    usleep 20000; i=$((i + 1))
  done
  snap ebusy-concurrent
  wait $first
  answer ebusy-first $? "$(cat /tmp/d/first.out)"
  echo 0 > $P/snapshot_hold_ms

  s=$(ploop-verify support --device /dev/ploop0)   # "patched: ...", "unpatched: ..."
  echo "case $MODE support ${s%%:*}"; result support support mode=$MODE support="${s%%:*}"
  expect "$MODE-leaked-freezes" "$(cat /sys/block/ploop0/pstate/leaked_freezes)" 0
  writable /mnt/e "$MODE-fs-writable-after-cases"
}

stamp start
MODE=patched; echo Y > $P/patched; cases
MODE=unpatched; echo N > $P/patched; cases
stamp cases

# Robustness: random requests from 3 threads with a writer on the filesystem, in both modes,
# on ext4 directly on ploop0 (autodetection: the ploop device) and on ploop1 -> dm-crypt ->
# dm-linear -> ext4 (autodetection: the dm-crypt device; the sync fd: dm-linear).
# fuzz NAME ARGS...: one fuzz-snapshot run, the check NAME that it passed, and the summary it
# prints (answers, and its writer's) as a result.
fuzz() {
  name=$1; shift
  o=$(ploop-verify testkit fuzz-snapshot --threads 3 "$@")
  rc=$?; echo "$o"
  if [ $rc = 0 ]; then ok $name; else bad $name "exit $rc"; fi
  re='^fuzz-snapshot: \([0-9]*\) requests, \([0-9]*\) threads, seed \([0-9]*\), \([a-z]*\) kernel, '
  re=$re'\([0-9.]*\) s: \(.*\) (EBUSY from a concurrent snapshot, retried: \([0-9]*\))$'
  set -- $(printf '%s\n' "$o" | sed -n "s/$re/\1 \2 \3 \4 \5 \7 \6/p")
  w=$(printf '%s\n' "$o" |
    sed -n 's/^fuzz-snapshot: writer: \([0-9]*\) writes+fsync, slowest \([0-9]*\) ms$/\1 \2/p')
  if [ $# -lt 7 ] || [ -z "$w" ]; then bad $name-summary "no summary or writer line"; return; fi
  req=$1 thr=$2 seed=$3 kernel=$4 secs=$5 busy=$6; shift 6
  result $name fuzz requests:=$req threads:=$thr seed:=$seed kernel=$kernel seconds:=$secs \
    answers="$*" busy_retries:=$busy writes:=${w% *} slowest_ms:=${w#* }
}

echo Y > $P/patched
fuzz fuzz-patched-direct --device /dev/ploop0 --iterations 2000 --seed "$SEED" \
  --mountpoint /mnt/e --workdir /tmp/fz
writable /mnt/e fs-writable-after-fuzz-patched-direct
stamp fuzz-direct

ploop-verify device create --size 32M /tmp/d/lbase.img >/dev/null
ploop-verify device attach --device /dev/ploop1 /tmp/d/lbase.img >/dev/null
C=$(ploop-verify testkit dm-crypt crypt1 /dev/ploop1) && L=$(ploop-verify testkit dm-linear lin1 "$C") &&
  mkfs.ext4 -q "$L" && mount -t ext4 "$L" /mnt/l || bad linear-stack
fuzz fuzz-patched-linear --device /dev/ploop1 --iterations 1500 --seed "$((SEED + 1))" \
  --mountpoint /mnt/l --workdir /tmp/fz2
writable /mnt/l fs-writable-after-fuzz-patched-linear
stamp fuzz-linear

echo N > $P/patched
fuzz fuzz-unpatched-linear --device /dev/ploop1 --iterations 1000 --seed "$((SEED + 2))" \
  --mountpoint /mnt/l --workdir /tmp/fz2
writable /mnt/l fs-writable-after-fuzz-unpatched-linear
writable /mnt/e fs-writable-at-end
echo Y > $P/patched
stamp fuzz-unpatched
expect leaked-freezes-ploop0 "$(cat /sys/block/ploop0/pstate/leaked_freezes)" 0
expect leaked-freezes-ploop1 "$(cat /sys/block/ploop1/pstate/leaked_freezes)" 0
echo "info deltas ploop0=$(cat /sys/block/ploop0/pstate/nr_deltas) ploop1=$(cat /sys/block/ploop1/pstate/nr_deltas)"

# Everything comes apart cleanly.
umount /mnt/l && ploop-verify testkit dm-remove lin1 && ploop-verify testkit dm-remove crypt1 &&
  ploop-verify device detach --device /dev/ploop1 >/dev/null && ok teardown-linear || bad teardown-linear
umount /mnt/e && ploop-verify device detach --device /dev/ploop0 >/dev/null && ok teardown-direct ||
  bad teardown-direct
rmmod ploop && ok rmmod || bad rmmod
finish
