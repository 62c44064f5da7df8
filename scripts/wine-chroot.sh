#!/usr/bin/env bash
# Builds (once) a Debian trixie chroot with Wine 10 in DIR, for `make test-windows`: Wine runs
# the Windows agent under its own service manager. Debian's Wine 8 (bookworm) cannot start Go
# 1.26 binaries; trixie's Wine 10 can. The chroot is a cache outside the repository: a finished
# one holds the file .tether-wine-ready and is reused as is; an unfinished one is rebuilt.
# Needs root and debootstrap (installed with apt-get when missing). Exit 0 ready, 1 not built.
set -euo pipefail
dir=${1:?usage: wine-chroot.sh DIR}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
ready=$dir/.tether-wine-ready

if [ -f "$ready" ]; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "wine-chroot: needs root (debootstrap and chroot)" >&2
  exit 1
fi
if ! command -v debootstrap >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
fi
start=$(date +%s)
tmp=$dir.partial
# An interrupted debootstrap can leave /proc or /sys mounted inside: unmount before removing.
unmount_under() {
  awk -v d="$1" '$2 == d || index($2, d "/") == 1 {print $2}' /proc/mounts | sort -r | while read -r m; do
    umount -l "$m" || true
  done
}
unmount_under "$tmp"
rm -rf --one-file-system "$tmp"
mkdir -p "$(dirname "$dir")"
echo "wine-chroot: debootstrap trixie into $tmp"
debootstrap --variant=minbase trixie "$tmp" "$mirror" >"$tmp.log" 2>&1 || {
  tail -20 "$tmp.log" >&2
  exit 1
}
# 64-bit Wine alone: the agent is an amd64 binary, and no 32-bit architecture is needed.
echo "wine-chroot: installing wine"
# A cache rebuilt when in doubt: dpkg need not sync each file.
echo force-unsafe-io >"$tmp/etc/dpkg/dpkg.cfg.d/unsafe-io"
chroot "$tmp" env DEBIAN_FRONTEND=noninteractive sh -c \
  'apt-get update -qq && apt-get install -y -qq --no-install-recommends wine wine64 >/dev/null && apt-get clean' \
  >>"$tmp.log" 2>&1 || {
  tail -20 "$tmp.log" >&2
  exit 1
}
# Wine finds itself through /proc/self: it needs /proc, mounted in a mount namespace of its own
# so that nothing stays mounted in the cache (the test does the same).
unshare --mount --fork sh -c 'mount -t proc proc "$1/proc" && chroot "$1" wine --version' sh "$tmp" >>"$tmp.log" 2>&1 || {
  tail -20 "$tmp.log" >&2
  exit 1
}
unmount_under "$tmp"
unmount_under "$dir"
rm -rf --one-file-system "$dir"
mv "$tmp" "$dir"
rm -f "$tmp.log"
touch "$ready"
echo "wine-chroot: ready in $(($(date +%s) - start)) s: $dir"
