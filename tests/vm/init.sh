#!/bin/busybox sh
# /init of the kernel-matrix initramfs: mount what the guest script needs,
# load the 9p modules, mount the host's share at /out, run /guest.sh, print
# the end marker with its exit status, power off.
/bin/busybox mount -t proc proc /proc
/bin/busybox --install -s /bin
export PATH=/bin
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
mkdir -p /sys/fs/cgroup
mount -t cgroup2 cgroup2 /sys/fs/cgroup
echo "CORESNAP-VM-INIT uptime=$(cut -d' ' -f1 /proc/uptime)"
for m in $(cat /lib/modules/order); do
    insmod "/lib/modules/$m.ko" || echo "CORESNAP-VM: insmod $m failed"
done
# cache=mmap: coresnap reads each core back to hash it for the manifest, and
# 9p has no SEEK_HOLE, so every hole is read; through the page cache a 32 MiB
# core's read-back takes 1.8 s under TCG instead of 4.9 s. Writes, and so the
# holes the host sees, are the same as without a cache.
if mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000,cache=mmap out /out; then
    sh /guest.sh /out 2>&1
    rc=$?
else
    echo "CORESNAP-VM: cannot mount the 9p share 'out'"
    rc=90
fi
sync
echo "CORESNAP-VM-END rc=$rc uptime=$(cut -d' ' -f1 /proc/uptime)"
poweroff -f
