# Guest side of live_probes: for every attach method and transport, trace a freeze/thaw
# made by EXT4_IOC_SHUTDOWN on ext4 over loop, and by suspend/resume of a dm-linear device
# with ext4 on it. Keeps going after a failure: the host test names every one.
# Results in /share/results.jsonl (lib.sh: result): the devices, each trace's exit status and
# file, the exit status of the commands that must fail.
ploop-verify doctor --json > /share/doctor.json
rc=$?; echo "doctor rc=$rc"; result doctor exit status:=$rc out=doctor.json
ploop-verify doctor

# trace_one TRIGGER METHOD TRANSPORT COMMAND...: one `ploop-verify trace` of COMMAND.
trace_one() {
  name=$1-$2-$3 method=$2 transport=$3; shift 3
  ploop-verify trace --method $method --transport $transport --out /share/$name.jsonl -- "$@"
  rc=$?; echo "trace $name: exit $rc"; result $name exit status:=$rc out=$name.jsonl
}

dd if=/dev/zero of=/tmp/img bs=1M count=0 seek=64 2>/dev/null
losetup /dev/loop0 /tmp/img || exit 10
mkfs.ext4 -q /dev/loop0 || exit 11
mkdir -p /mnt/a
dev=$(dev_of /dev/loop0) || exit 15
echo "loop: /dev/loop0 is $dev"; result loop device dev=$dev

for method in kprobe fentry; do
  for transport in ringbuf perf; do
    mount -t ext4 /dev/loop0 /mnt/a || exit 12
    trace_one loop $method $transport ploop-verify testkit ext4-shutdown /mnt/a
    umount /mnt/a
  done
done

DM=$(ploop-verify testkit dm-linear lin0 /dev/loop0) || exit 13
dev=$(dev_of "$DM") || exit 15
echo "dm: $DM is $dev"; result dm device dev=$dev
mount -t ext4 "$DM" /mnt/a || exit 14
for method in kprobe fentry; do
  for transport in ringbuf perf; do
    trace_one dm $method $transport ploop-verify testkit dm-suspend-resume lin0
  done
done
umount /mnt/a
ploop-verify testkit dm-remove lin0

# Nothing to observe: trace must say so with exit status 2, never 0.
ploop-verify trace --out /share/empty.jsonl -- true
rc=$?; echo "empty: exit $rc"; result empty exit status:=$rc
# No ploop module: `run` says there is no verdict on ploop at all, and exits 2.
ploop-verify run --out /share/no-ploop -- true 2> /share/no-ploop.err
rc=$?; echo "no-ploop: exit $rc"; result no-ploop exit status:=$rc out=no-ploop.err
# A workload that fails is reported as status 1.
mount -t ext4 /dev/loop0 /mnt/a
ploop-verify trace -- sh -c 'ploop-verify testkit ext4-shutdown /mnt/a; exit 3'
rc=$?; echo "failing-workload: exit $rc"; result failing-workload exit status:=$rc
umount /mnt/a
# The tool's threads drain at nice 19 (the default), its workload keeps the nice it had (0).
mount -t ext4 /dev/loop0 /mnt/a
ploop-verify trace -- sh -c 'sleep 1
  for t in /proc/$PPID/task/*/stat; do cut -d" " -f19 $t; done | sort -u | tr "\n" " " > /tmp/tool-nice
  cut -d" " -f19 /proc/self/stat > /tmp/workload-nice
  ploop-verify testkit ext4-shutdown /mnt/a'
umount /mnt/a
expect nice-tool "$(cat /tmp/tool-nice)" "19 "
expect nice-workload "$(cat /tmp/workload-nice)" 0
finish
