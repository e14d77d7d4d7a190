# Guest side of live_client (and of the demo's first half): Debian's `ploop` (the real
# client, 1.15: one chunk and PLOOP_FLAG_FS_SYNC, so the kernel's autodetection picks what is
# frozen) drives the model driver through a container image's life, every command of it
# after `init` and the first `mount` under one `ploop-verify run --oracle` per layout:
#   p1      `ploop init -t ext4` (ploop1, GPT, ext4 on ploop0p1) mounted by `ploop mount -m`;
#           the autodetection's partition walk freezes ploop0p1: S2 and X1 pass.
#   linear  the commit's stack on the device `ploop mount` attached: ext4 on dm-linear on
#           dm-crypt on ploop0; the autodetection freezes dm-crypt and misses ext4: S2 and X1
#           fail on each snapshot.
# The life: N snapshots while two writers run, snapshot-list, umount; each old snapshot
# mounted read-only (p1: `ploop mount -r -u UUID -m DIR`; linear: `ploop mount -r -u UUID`
# and the same stack, read-only, then mount -o ro), which fails with ext4's "recovery
# required on readonly filesystem" exactly where the snapshot left a journal to replay; then
# `ploop mount` again, `snapshot-delete` of the newest snapshot (online: the device runs),
# umount, `snapshot-switch` to the oldest (offline, as the client requires), mount, umount.
# Results (lib.sh: result): each client command's exit status (kind client), the snapshot
# list after the snapshots (kind shot), each read-only mount's outcome (kind ro-mount), the
# run's exit status (kind exit, reports in /share/LAYOUT); then "done".
# STACKS (default "p1 linear") and N (default 3) come from the environment.
set -u
STACKS=${STACKS:-p1 linear}
N=${N:-3}
C=/var/c  # the image directory (lib.sh client_dir): DiskDescriptor.xml and the deltas

# pl CASE ARGS...: `ploop ARGS`, its output on the log (prefixed with CASE) and in $OUT, its
# exit status recorded as CASE.
pl() {
  c=$1; shift
  OUT=$(ploop "$@" 2>&1); rc=$?
  printf '%s\n' "$OUT" | sed "s|^|ploop[$c]: |"
  result "$c" client status:=$rc command="ploop $*" said="$(printf '%s\n' "$OUT" | tail -1)"
  return $rc
}

# ro_mount L UUID: the old snapshot UUID mounted read-only; records whether it mounted and
# whether ext4 said it needs a journal replay it may not do.
ro_mount() {
  l=$1 u=$2 mounted=false
  mkdir -p /mnt/old; dmesg -c >/dev/null
  if [ $l = p1 ]; then
    pl $l-ro-$u mount -r -u "$u" -m /mnt/old $C/DiskDescriptor.xml && mounted=true
    dev=$(dev_in "$OUT")
  else
    pl $l-ro-$u mount -r -u "$u" $C/DiskDescriptor.xml
    dev=$(dev_in "$OUT")
    OC=$(ploop-verify testkit dm-crypt ocrypt "$dev" --no-uuid --read-only) &&
      OL=$(ploop-verify testkit dm-linear olin "$OC" --read-only) &&
      mount -t ext4 -o ro "$OL" /mnt/old && mounted=true
  fi
  recovery=false
  dmesg | grep -q 'recovery required on readonly filesystem' && recovery=true
  echo "read-only mount of $u ($l): mounted=$mounted recovery-required=$recovery"
  result $l-ro-$u ro-mount uuid="$u" mounted:=$mounted recovery_required:=$recovery
  $mounted && umount /mnt/old
  if [ $l = linear ]; then
    ploop-verify testkit dm-remove olin 2>/dev/null; ploop-verify testkit dm-remove ocrypt 2>/dev/null
  fi
  # A client whose mount failed has taken its device down itself.
  [ -n "$dev" ] && [ -n "$(ls /sys/block/${dev#/dev/}/pdelta 2>/dev/null)" ] &&
    pl $l-ro-$u-umount umount -d "$dev"
  return 0
}

# wl_life L: the client's life on the mounted image (inside `ploop-verify run`).
wl_life() {
  l=$1 dd=$C/DiskDescriptor.xml
  writers /mnt/c /tmp/stop
  i=0
  while [ $i -lt $N ]; do i=$((i + 1)); pl $l-snapshot-$i snapshot $dd; done
  touch /tmp/stop; wait
  pl $l-list snapshot-list -H -o uuid,parent_uuid,current,fname $dd
  # `current` is "*" on the top's line and empty (no field) on the others.
  printf '%s\n' "$OUT" | while read -r u p a b; do
    if [ "$a" = "*" ]; then cur='*' f=$b; else cur= f=$a; fi
    case $u in "{"*) result $l-shot-$u shot uuid="$u" parent="$p" current="$cur" fname="$f" ;; esac
  done
  olds=$(printf '%s\n' "$OUT" | awk '$1 ~ /^[{]/ && $3 != "*" {print $1}')
  newest=$(printf '%s\n' "$OUT" | awk '$1 ~ /^[{]/ && $3 == "*" {print $2}')
  [ $l = linear ] && { umount /mnt/c; stack_down linear 0; }
  pl $l-umount umount $dd
  for u in $olds; do ro_mount $l "$u"; done
  # snapshot-delete while the device runs (libploop merges online), then offline switch.
  if [ $l = p1 ]; then pl $l-mount-2 mount -m /mnt/c $dd; else pl $l-mount-2 mount $dd; fi
  pl $l-delete snapshot-delete -u "$newest" $dd
  pl $l-list-2 snapshot-list -H -o uuid,parent_uuid,current,fname $dd
  oldest=$(printf '%s\n' "$OUT" | awk '$2 ~ /^[{]00000000-/ {print $1}')
  pl $l-umount-2 umount $dd
  pl $l-switch snapshot-switch -u "$oldest" $dd
  if [ $l = p1 ]; then pl $l-mount-3 mount -m /mnt/c $dd; else pl $l-mount-3 mount $dd; fi
  pl $l-umount-3 umount $dd
  return 0
}

if [ $# -gt 0 ]; then "$@"; exit $?; fi

mount -t tmpfs -o size=900m tmpfs /tmp || exit 10
client_dir $C || exit 11
for l in $STACKS; do
  rm -rf $C/*; mkdir -p /mnt/c
  key=
  if [ $l = p1 ]; then
    pl $l-init init -s 384M -f ploop1 -t ext4 $C/root.hdd && unballoon $C/DiskDescriptor.xml &&
      pl $l-mount mount -m /mnt/c $C/DiskDescriptor.xml || { bad $l-up "the client's init and mount"; continue; }
  else
    pl $l-init init -s 384M -f ploop1 -t none $C/root.hdd &&
      pl $l-mount mount $C/DiskDescriptor.xml || { bad $l-up "the client's init and mount"; continue; }
    dev=$(dev_in "$OUT")
    stack_up linear "$dev" 0 && mkfs.ext4 -q "$TOP" && mount -t ext4 "$TOP" /mnt/c ||
      { bad $l-up "the commit's stack on $dev"; continue; }
    # The oracle reads the old snapshots through dm-crypt: the live table's key.
    ploop-verify testkit dm-table crypt0 > /tmp/oracle.key && key="--oracle-key /tmp/oracle.key"
  fi
  ploop-verify run --quiet --oracle $key --out /share/$l -- sh /etc/ploop-vm/command wl_life $l
  rc=$?; result $l exit status:=$rc out=$l
  echo "run $l: exit $rc"
done
finish
