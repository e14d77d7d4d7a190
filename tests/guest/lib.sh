# Shell helpers prepended to every guest script (tests/lib.rs: run_guest_script).

# stack_up KIND DEV N: builds KIND (direct, crypt, linear) on DEV; sets TOP to the device a
# filesystem goes on. crypt: dm-crypt with a CRYPT- uuid (what the autodetection looks for);
# linear: dm-linear on dm-crypt, the stack of the patch's commit message.
stack_up() {
  case $1 in
    direct) TOP=$2 ;;
    crypt) TOP=$(ploop-verify testkit dm-crypt crypt$3 "$2") || return 1 ;;
    linear)
      C=$(ploop-verify testkit dm-crypt crypt$3 "$2") || return 1
      TOP=$(ploop-verify testkit dm-linear lin$3 "$C") || return 1 ;;
    *) echo "stack_up: unknown stack $1" >&2; return 1 ;;
  esac
}

# stack_down KIND N
stack_down() {
  case $1 in
    crypt) ploop-verify testkit dm-remove crypt$2 ;;
    linear) ploop-verify testkit dm-remove lin$2; ploop-verify testkit dm-remove crypt$2 ;;
  esac
}

# up KIND [DEV]: DEV (default /dev/ploop0) from a fresh base delta, the KIND stack, ext4 on
# top mounted at /mnt/DEVNAME; sets MNT.
up() {
  dev=${2:-/dev/ploop0}; n=${dev#/dev/ploop}; MNT=/mnt/p$n
  rm -f /tmp/p$n-*.img; mkdir -p $MNT
  ploop-verify device create --size 64M /tmp/p$n-0.img >/dev/null &&
    ploop-verify device attach --device $dev /tmp/p$n-0.img >/dev/null &&
    stack_up "$1" $dev $n && mkfs.ext4 -q "$TOP" && mount -t ext4 "$TOP" $MNT
}
down() { # KIND [DEV]
  dev=${2:-/dev/ploop0}; n=${dev#/dev/ploop}
  umount /mnt/p$n; stack_down "$1" $n
  ploop-verify device detach --device $dev >/dev/null
  rm -f /tmp/p$n-*.img
}
# snaps N MODE [DEV]: N snapshots (MODE sync: the fd of the mountpoint; auto: none) while
# two writers do fsync-heavy I/O on the filesystem.
snaps() {
  dev=${3:-/dev/ploop0}; n=${dev#/dev/ploop}; mnt=/mnt/p$n
  rm -f /tmp/stop$n
  for w in 1 2; do
    ( while [ ! -e /tmp/stop$n ]; do
        dd if=/dev/urandom of=$mnt/w$w bs=4k count=16 conv=fsync 2>/dev/null
      done ) &
  done
  i=0
  while [ $i -lt $1 ]; do
    i=$((i + 1))
    if [ "$2" = sync ]; then sync_fd="--sync-fd-from $mnt"; else sync_fd=; fi
    ploop-verify snapshot --device $dev --delta /tmp/p$n-$i.img $sync_fd >/dev/null ||
      echo "snapshot $i ($2 on $dev) failed"
  done
  touch /tmp/stop$n; wait
}
