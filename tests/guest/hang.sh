# Guest side of live_checker's hang case (T2, CONTRACT.md "as deployed"): nothing checks that
# the sync fd belongs to the ploop device, so an fd on the filesystem that holds the image's
# delta files gets that filesystem frozen. The ploop device's own filesystem stays writable;
# its writes reach the delta files on the frozen filesystem and block there, and the switch
# (ploop_quiesce, which waits for in-flight writes) hangs with the filesystem frozen.
# `ploop-verify run` must report it while it hangs; the emergency thaw (sysrq j; FITHAW on
# 6.12, whose emergency thaw worker blocks on the frozen filesystem itself) then lets
# the snapshot finish, and no filesystem may be left frozen.
set -u
P=/sys/module/ploop/parameters
HANG_AFTER=${HANG_AFTER:-3}
SYSRQ_AFTER=${SYSRQ_AFTER:-8}

if [ "${1:-}" = workload ]; then
  # Two writers keep ploop0's filesystem busy; the snapshot's maintenance window is held
  # open 1 s so that their writes are in flight when the switch begins.
  writers /mnt/p0 /tmp/stop
  sleep 1
  t0=$(cut -d' ' -f1 /proc/uptime)
  ploop-verify snapshot --device /dev/ploop0 --delta /mnt/p1/p0-1.img --sync-fd-from /mnt/p1 &
  snap=$!
  sleep $SYSRQ_AFTER
  # 6.12's emergency thaw worker blocks on this very filesystem (hung task, nothing
  # released): there, FITHAW on the frozen filesystem is the way out.
  case $(uname -r) in
    6.1.*) echo "release: sysrq j (emergency thaw) at $(cut -d' ' -f1 /proc/uptime) s"
      echo j > /proc/sysrq-trigger ;;
    *) echo "release: fsfreeze --unfreeze (FITHAW) at $(cut -d' ' -f1 /proc/uptime) s"
      fsfreeze --unfreeze /mnt/p1 ;;
  esac
  wait $snap
  rc=$?
  echo "snapshot: exit $rc after $(echo "$(cut -d' ' -f1 /proc/uptime) $t0" | awk '{print $1 - $2}') s"
  touch /tmp/stop
  wait
  exit 0
fi

mount -t tmpfs -o size=600m tmpfs /tmp || exit 10
# /mnt/p1: ext4 on ploop1 (its base delta in tmpfs), holding ploop0's delta files.
up direct /dev/ploop1 || { bad setup "ploop1 with ext4"; finish; exit 0; }
ploop-verify device create --size 64M /mnt/p1/p0-0.img >/dev/null &&
  ploop-verify device attach --device /dev/ploop0 /mnt/p1/p0-0.img >/dev/null &&
  mkfs.ext4 -q /dev/ploop0 && mkdir -p /mnt/p0 && mount -t ext4 /dev/ploop0 /mnt/p0 ||
  { bad setup "ploop0 on /mnt/img"; finish; exit 0; }
echo 1000 > $P/snapshot_hold_ms

ploop-verify run --hang-after $HANG_AFTER --max-freeze-ms 120000 --out /share/hang \
  -- sh /etc/ploop-vm/command workload
rc=$?
result hang exit status:=$rc out=hang
echo 0 > $P/snapshot_hold_ms

# Nothing may be left frozen: a write to each filesystem must finish promptly.
for m in /mnt/p0 /mnt/p1; do
  ( touch $m/after-thaw && echo done > /tmp/wrote-${m##*/} ) &
done
sleep 3
for m in p0 p1; do
  if [ -e /tmp/wrote-$m ]; then ok writable-$m; else bad writable-$m "a write to /mnt/$m blocks: still frozen"; fi
done
finish
