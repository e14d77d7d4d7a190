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
# writers DIR STOP: two background writers doing fsync-heavy I/O in DIR until the file STOP
# exists (touch STOP; wait).
writers() {
  rm -f $2
  for w in 1 2; do
    ( while [ ! -e $2 ]; do
        dd if=/dev/urandom of=$1/w$w bs=4k count=16 conv=fsync 2>/dev/null
      done ) &
  done
}
# snaps N MODE [DEV]: N snapshots (MODE sync: the fd of the mountpoint; auto: none) while
# two writers do fsync-heavy I/O on the filesystem.
snaps() {
  dev=${3:-/dev/ploop0}; n=${dev#/dev/ploop}; mnt=/mnt/p$n
  writers $mnt /tmp/stop$n
  i=0
  while [ $i -lt $1 ]; do
    i=$((i + 1))
    if [ "$2" = sync ]; then sync_fd="--sync-fd-from $mnt"; else sync_fd=; fi
    ploop-verify snapshot --device $dev --delta /tmp/p$n-$i.img $sync_fd >/dev/null ||
      echo "snapshot $i ($2 on $dev) failed"
  done
  touch /tmp/stop$n; wait
}

# --- results: what the host test reads (tests/lib.rs: Results::read) ---------------------
# result CASE KIND [KEY=TEXT | KEY:=JSON]...: appends one JSON object to $RESULTS,
#   {"case":"CASE","kind":"KIND","KEY":...}
# KEY=TEXT is a string: any text may go in (escaped here; bytes outside printable ASCII
# become spaces). KEY:=JSON is a number, true, false or null; anything else there is written
# as a string starting "not JSON: ", which the host refuses, naming the line. KIND and KEY are
# words of [a-z0-9_-]. Human-readable output is the caller's: this writes only the file.
RESULTS=/share/results.jsonl
json_str() { # TEXT: TEXT as a JSON string (no fork when there is nothing to escape)
  case $1 in
    *[!A-Za-z0-9\ ._:/+,=@%-]*)
      printf '"%s"' "$(printf '%s' "$1" | tr -c ' -~' ' ' | sed -e 's/\\/\\\\/g' -e 's/"/\\"/g')" ;;
    *) printf '"%s"' "$1" ;;
  esac
}
result() {
  local line kv k v
  case $2 in ''|*[!a-z0-9_-]*) echo "result: bad kind '$2'" >&2; return 1 ;; esac
  line="{\"case\":$(json_str "$1"),\"kind\":\"$2\""
  shift 2
  for kv in "$@"; do
    k=${kv%%=*} v=${kv#*=}
    case $k in
      *:) k=${k%:}
        case $v in
          true|false|null) ;;
          *) printf '%s' "$v" | grep -Eqx -- '-?(0|[1-9][0-9]*)(\.[0-9]+)?' || v=$(json_str "not JSON: $v") ;;
        esac ;;
      *) v=$(json_str "$v") ;;
    esac
    case $k in ''|*[!a-z0-9_]*) echo "result: bad key '$k' in '$kv'" >&2; return 1 ;; esac
    line="$line,\"$k\":$v"
  done
  printf '%s}\n' "$line" >> "$RESULTS"
}

# Checks: a pass/fail result named NAME, also printed as "check NAME ok|FAIL why".
ok() { echo "check $1 ok"; result "$1" check ok:=true; }
bad() { echo "check $1 FAIL ${2:-}"; result "$1" check ok:=false why="${2:-}"; }
expect() { # NAME GOT WANT
  if [ "$2" = "$3" ]; then ok "$1"; else bad "$1" "got '$2' want '$3'"; fi
}
# The script got to its end (the host wants this last).
finish() { result script done; echo done; }

# errno_of TEXT: "NAME NUMBER" of the errno a ploop-verify command printed in TEXT
# ("ploop-verify: snapshot on /dev/ploop0 failed: ENOTSUPP (errno 524)"), empty if none.
# The CLI prints the errno only in that message (its exit status says "refused": 1), so
# this is the one place that reads it.
errno_of() {
  printf '%s\n' "$1" | sed -n 's/.* failed: \([A-Z0-9]*\) (errno \([0-9]*\)).*/\1 \2/p' | head -1
}
# dev_of NODE: the block device NODE as decimal major:minor.
dev_of() {
  set -- $(stat -L -c '%t %T' "$1") && echo "$((0x$1)):$((0x$2))"
}

# --- the real client (xtask/src/client.rs puts Debian's `ploop` into the guest) -------------
# client_dir DIR: DIR on ext4 on a loop device over a file in /tmp, for the client's images.
# libploop opens every delta with O_DIRECT, which tmpfs refuses before 6.6 (EINVAL: "Can't
# open ... Invalid argument" on 6.1) and 9p too; ext4 takes it on every kernel.
client_dir() {
  mkdir -p "$1" && rm -f /tmp/client-fs.img &&
    mkfs.ext4 -q /tmp/client-fs.img 640M && mount -t ext4 -o loop /tmp/client-fs.img "$1"
}

# dev_in TEXT: the ploop device the client's output names ("Adding delta dev=/dev/ploop0 ...").
dev_in() { printf '%s\n' "$1" | sed -n 's|.*dev=\(/dev/ploop[0-9]*\).*|\1|p' | head -1; }

# unballoon DD: the balloon file `ploop init -t ext4` leaves in the filesystem, removed.
# libploop mounts in two steps, read-only and then a remount with `balloon_ino=INO` when the
# filesystem holds its balloon file (lib/ploop.c ploop_mount_fs): an option of vz7's ext4
# that Debian's ext4 refuses (EINVAL, "Can't mount file system"). Without the file the
# remount carries no such option. The model has no balloon (PLOOP_IOC_BALLOON only reports
# the maintenance state), so nothing else needs the file.
unballoon() {
  o=$(ploop mount "$1" 2>&1) || { echo "unballoon: ploop mount: $o"; return 1; }
  d=$(dev_in "$o")
  mkdir -p /mnt/b && mount -t ext4 "${d}p1" /mnt/b || return 1
  rm -f /mnt/b/.balloon-*; umount /mnt/b
  o=$(ploop umount "$1" 2>&1) || { echo "unballoon: ploop umount: $o"; return 1; }
}
