# Guest side of live_probes: for every attach method and transport, trace a freeze/thaw
# made by EXT4_IOC_SHUTDOWN on ext4 over loop, and by suspend/resume of a dm-linear device
# with ext4 on it. Keeps going after a failure: the host test names every one.
ploop-verify doctor --json > /share/doctor.json; echo "doctor rc=$?"
ploop-verify doctor

dd if=/dev/zero of=/tmp/img bs=1M count=0 seek=64 2>/dev/null
losetup /dev/loop0 /tmp/img || exit 10
mkfs.ext4 -q /dev/loop0 || exit 11
mkdir -p /mnt/a
stat -c %t:%T /dev/loop0 > /share/dev-loop

for method in kprobe fentry; do
  for transport in ringbuf perf; do
    c=$method-$transport
    mount -t ext4 /dev/loop0 /mnt/a || exit 12
    ploop-verify trace --method $method --transport $transport --out /share/loop-$c.jsonl \
      -- ploop-verify testkit ext4-shutdown /mnt/a
    echo $? > /share/rc-loop-$c
    umount /mnt/a
  done
done

DM=$(ploop-verify testkit dm-linear lin0 /dev/loop0) || exit 13
stat -c %t:%T "$DM" > /share/dev-dm
mount -t ext4 "$DM" /mnt/a || exit 14
for method in kprobe fentry; do
  for transport in ringbuf perf; do
    c=$method-$transport
    ploop-verify trace --method $method --transport $transport --out /share/dm-$c.jsonl \
      -- ploop-verify testkit dm-suspend-resume lin0
    echo $? > /share/rc-dm-$c
  done
done
umount /mnt/a
ploop-verify testkit dm-remove lin0

# Nothing to observe: trace must say so with exit status 2, never 0.
ploop-verify trace --out /share/empty.jsonl -- true
echo $? > /share/rc-empty
# No ploop module: `run` says there is no verdict on ploop at all, and exits 2.
ploop-verify run --out /share/no-ploop -- true 2> /share/no-ploop.err
echo $? > /share/rc-no-ploop
# A workload that fails is reported as status 1.
mount -t ext4 /dev/loop0 /mnt/a
ploop-verify trace -- sh -c 'ploop-verify testkit ext4-shutdown /mnt/a; exit 3'
echo $? > /share/rc-failing-workload
umount /mnt/a
echo done
