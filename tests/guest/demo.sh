# Guest side of `cargo xtask demo`: the stack of the patch's commit message (ext4 on dm-linear
# on dm-crypt on ploop: the LUKS layout, named as libploop names it, CRYPT-ploopN for
# dm-crypt on the whole disk and CRYPT-ploopNp1 for the partition above it) on an image that
# Debian's real `ploop` client made and attached, on the ploop model driver. First the real
# client's snapshots under `ploop-verify run --oracle`: 1.15 sends one chunk with
# PLOOP_FLAG_FS_SYNC, the kernel's autodetection freezes dm-crypt and misses ext4 (S2), and
# the old snapshot needs a journal replay (X1): mounting it read-only fails as the commit
# says. Then the patch's interface, the 2020 client's request (`testkit libploop-snapshot`:
# two chunks, #1 the node of CRYPT-ploopNp1) with kernel-patch/0002's reading of it: S2 and
# X1 pass, and the old snapshot mounts read-only.
set -u
mount -t tmpfs -o size=900m tmpfs /tmp || exit 10
P=/sys/module/ploop/parameters
C=/var/c DD=/var/c/DiskDescriptor.xml
client_dir $C || exit 11
# attach: `ploop mount` of the image, the commit's stack on it, ext4 at /mnt/c, the key.
attach() {
  out=$(ploop mount $DD 2>&1) || { echo "$out"; return 1; }
  dev=$(dev_in "$out") n=${dev#/dev/ploop}
  crypt=$(ploop-verify testkit dm-crypt CRYPT-ploop$n $dev) &&
    top=$(ploop-verify testkit dm-linear CRYPT-ploop${n}p1 $crypt) &&
    mkdir -p /mnt/c && mount -t ext4 $top /mnt/c &&
    ploop-verify testkit dm-table CRYPT-ploop$n > /tmp/oracle.key
}
detach() {
  umount /mnt/c
  ploop-verify testkit dm-remove CRYPT-ploop${n}p1; ploop-verify testkit dm-remove CRYPT-ploop$n
  ploop umount -d $dev >/dev/null
}
# ro_old CASE DELTA...: the old snapshot (these deltas, base first) attached read-only by
# the client, the same stack read-only, and ext4 mounted read-only: prints what happened and
# writes it to /share/CASE.ro (mounted, recovery-required, or failed) for xtask's check.
ro_old() {
  case=$1; shift
  echo failed > /share/$case.ro
  out=$(ploop mount -r -f ploop1 "$@" 2>&1) || { echo "$out"; return 1; }
  odev=$(dev_in "$out")
  dmesg -c >/dev/null
  oc=$(ploop-verify testkit dm-crypt ocrypt $odev --no-uuid --read-only) &&
    ol=$(ploop-verify testkit dm-linear olin $oc --read-only) &&
    mkdir -p /mnt/old && if mount -t ext4 -o ro $ol /mnt/old 2>/dev/null; then
      echo "mounted read-only: the old snapshot is clean"; umount /mnt/old
      echo mounted > /share/$case.ro
    else
      echo "mount -o ro failed; the kernel says:"; dmesg | grep -i 'ext4-fs' | sed 's/^/  /'
      dmesg | grep -q 'recovery required on readonly filesystem' &&
        echo recovery-required > /share/$case.ro
    fi
  ploop-verify testkit dm-remove olin; ploop-verify testkit dm-remove ocrypt
  ploop umount -d $odev >/dev/null
}
# chain: the device's deltas, base first (pdelta/<level>/image, as libploop reads them).
chain() {
  for l in $(ls /sys/block/${dev#/dev/}/pdelta | sort -n); do
    cat /sys/block/${dev#/dev/}/pdelta/$l/image
  done
}
# snapshots NAME CMD: three snapshots by CMD under `ploop-verify run --oracle`, writers on.
snapshots() {
  writers /mnt/c /tmp/stop
  ploop-verify run --oracle --oracle-key /tmp/oracle.key --out /share/$1 -- sh -c "$2"
  echo "exit $?" > /share/$1.rc
  touch /tmp/stop; wait
}

ploop init -s 384M -f ploop1 -t none $C/root.hdd >/dev/null || exit 12
mkfs_once=$(ploop mount $DD 2>&1) && dev=$(dev_in "$mkfs_once") n=${dev#/dev/ploop} &&
  crypt=$(ploop-verify testkit dm-crypt CRYPT-ploop$n $dev) &&
  top=$(ploop-verify testkit dm-linear CRYPT-ploop${n}p1 $crypt) && mkfs.ext4 -q $top &&
  ploop-verify testkit dm-remove CRYPT-ploop${n}p1 && ploop-verify testkit dm-remove CRYPT-ploop$n &&
  ploop umount -d $dev >/dev/null || { echo "$mkfs_once"; exit 13; }

echo "== Debian's ploop client: ploop snapshot (one chunk, PLOOP_FLAG_FS_SYNC: autodetection)"
attach || exit 14
snapshots real-client "for i in 1 2 3; do ploop snapshot $DD | grep -i snapshot; done"
old=$(chain | sed '$d')
detach
echo "== the last old snapshot, attached read-only by the client, mounted read-only"
ro_old real-client $old

echo "== the patch's sync fd: the 2020 client's request (chunk #1 = /dev/mapper/CRYPT-ploopNp1)"
# kernel-patch/0002's reading of a device-node fd (the seed's refuses it: S4).
echo bdev > $P/sync_fd_resolve
attach || exit 15
snapshots sync-fd "for i in 1 2 3; do
  ploop-verify testkit libploop-snapshot --device $dev --node /dev/mapper/CRYPT-ploop${n}p1 --delta $C/lp-\$i.hds; done"
old=$(chain | sed '$d')
detach
echo "== the last old snapshot, attached read-only by the client, mounted read-only"
ro_old sync-fd $old
echo seed > $P/sync_fd_resolve
