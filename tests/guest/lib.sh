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
