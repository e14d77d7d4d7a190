# Guest side of `cargo xtask demo`: the stack of the patch's commit message (ext4 on dm-linear
# on dm-crypt on ploop, on the ploop model driver), snapshots under `ploop-verify run --oracle`:
# first with the sync fd (the patch's interface), then with the old autodetection, which
# freezes dm-crypt and misses the filesystem (S2), leaving old snapshots that need a journal
# replay (X1): the cause and the symptom the commit names, side by side.
set -u
mount -t tmpfs -o size=900m tmpfs /tmp || exit 10
up linear || exit 11
# The oracle reads the old snapshot through dm-crypt: without the key X1 would be n/a.
ploop-verify testkit dm-table crypt0 > /tmp/oracle.key || exit 12
echo "== with the sync fd (pctl_chunks=2, chunk #1 = fd of the mountpoint)"
ploop-verify run --oracle --oracle-key /tmp/oracle.key --out /share/with-sync-fd -- sh -c '
  for i in 1 2 3 4 5; do
    ploop-verify snapshot --device /dev/ploop0 --delta /tmp/p0-$i.img --sync-fd-from /mnt/p0
  done'
echo "exit $?" > /share/with-sync-fd.rc
echo "== with the old autodetection (no sync fd)"
ploop-verify run --oracle --oracle-key /tmp/oracle.key --out /share/autodetection -- sh -c '
  for i in 6 7 8; do ploop-verify snapshot --device /dev/ploop0 --delta /tmp/p0-$i.img; done'
echo "exit $?" > /share/autodetection.rc
down linear
