#!/bin/busybox sh
# kiln initramfs init. Mounts ROOT read-write at /, the USR slot named on the kernel command
# line (mount.usr=PARTUUID=...) read-only at /usr, the OEM partition at /usr/share/oem, and
# switches root. Partitions are found by the static kiln-agent, which reads the GPT itself.
/bin/busybox mkdir -p /proc /sys /dev /run /sysroot
/bin/busybox mount -t proc proc /proc
/bin/busybox --install -s /bin
export PATH=/bin
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null

. /etc/kiln/initramfs.conf
# No pathname expansion: kernel arguments may hold * or ?.
set -f

onfail=reboot
usr= usrflags=ro usrfstype="$KILN_USR_FSTYPE" root= rootflags=rw rootfstype=ext4
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        mount.usr=*) usr="${arg#mount.usr=}" ;;
        mount.usrflags=*) usrflags="${arg#mount.usrflags=}" ;;
        mount.usrfstype=*) usrfstype="${arg#mount.usrfstype=}" ;;
        root=*) root="${arg#root=}" ;;
        rootflags=*) rootflags="${arg#rootflags=}" ;;
        rootfstype=*) rootfstype="${arg#rootfstype=}" ;;
        kiln.onfail=*) onfail="${arg#kiln.onfail=}" ;;
    esac
done

fail() {
    echo "kiln-initramfs: error: $*"
    case "$onfail" in
        shell) echo "kiln-initramfs: starting a shell"; exec sh ;;
        poweroff) poweroff -f ;;
        *) echo "kiln-initramfs: rebooting in 5 s"; sleep 5; reboot -f ;;
    esac
}

# A module for hardware this machine lacks may refuse to load (the Xen front-ends outside
# Xen): note it and go on; a missing disk is caught when ROOT or USR is not found.
while read -r m; do
    [ -n "$m" ] || continue
    insmod "/lib/modules/$KILN_KERNEL/$m" 2>/dev/null || echo "kiln-initramfs: note: ${m##*/} not loaded (no such hardware?)"
done < /etc/kiln/modules

# Wait for a device (disk drivers probe asynchronously); prints its /dev path.
find_dev() {
    i=0
    while [ $i -lt 300 ]; do
        if kiln-agent find "$1" 2>/dev/null; then return 0; fi
        i=$((i + 1))
        sleep 0.1
    done
    kiln-agent find "$1"
}

[ -n "$root" ] || fail "no root= on the kernel command line"
[ -n "$usr" ] || fail "no mount.usr= on the kernel command line"
rootdev=$(find_dev "$root") || fail "root device $root not found"
usrdev=$(find_dev "$usr") || fail "USR device $usr not found"

mount -t "$rootfstype" -o "$rootflags" "$rootdev" /sysroot || fail "cannot mount $rootdev at /"
# Cloud disks are larger than the image: ROOT takes the rest (idempotent; a failure to grow
# is reported, not fatal).
kiln-agent grow-root /sysroot || echo "kiln-initramfs: warning: could not grow ROOT"
[ -d /sysroot/usr ] || fail "ROOT has no /usr mount point"
mount -t "$usrfstype" -o "$usrflags" "$usrdev" /sysroot/usr || fail "cannot mount $usrdev at /usr"
if [ -n "$KILN_OEM" ] && oemdev=$(find_dev "$KILN_OEM"); then
    mount -t ext4 -o ro,nodev,nosuid "$oemdev" /sysroot/usr/share/oem || fail "cannot mount OEM $oemdev"
fi
echo "kiln-initramfs: / is $rootdev, /usr is $usrdev ($usr)"

[ -e /sysroot/sbin/init ] || [ -L /sysroot/sbin/init ] || fail "no /sbin/init in the image"
mount --move /dev /sysroot/dev
umount /sys
umount /proc
exec switch_root /sysroot /sbin/init
