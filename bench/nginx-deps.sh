#!/usr/bin/env bash
# Installs Debian's nginx-light for the benchmarks that compare bty-web with nginx
# (bench/fleet.sh, bench/dataplane.sh) without leaving a system nginx behind. The benchmarks
# run their own nginx in the foreground with their own config on 127.0.0.1; the package's
# postinst would enable and start a system-wide one on port 80. For the install,
# /usr/sbin/policy-rc.d answers 101 ("action forbidden"), which invoke-rc.d and
# deb-systemd-invoke obey, so nothing is started; a policy-rc.d that was already there is put
# back afterwards, even when the install fails. Then the service is disabled, and stopped if
# something started it anyway, so that neither this run nor a boot leaves port 80 taken.
#
# Does nothing when nginx-light is installed. Needs root to install.
set -euo pipefail

PKG=nginx-light
POLICY=/usr/sbin/policy-rc.d
SAVED=/usr/sbin/policy-rc.d.bty-bench

dpkg -s "$PKG" >/dev/null 2>&1 && exit 0
[[ $(id -u) == 0 ]] || { echo "bench/nginx-deps.sh: need root to install $PKG" >&2; exit 1; }

restore() {
  rm -f "$POLICY"
  if [[ -e $SAVED ]]; then mv "$SAVED" "$POLICY"; fi
}
if [[ -e $POLICY ]]; then mv "$POLICY" "$SAVED"; fi
trap restore EXIT
printf '#!/bin/sh\nexit 101\n' > "$POLICY"
chmod 755 "$POLICY"

echo "installing $PKG (its service neither started nor enabled)" >&2
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$PKG" >/dev/null

if [[ -d /run/systemd/system ]]; then
  systemctl disable --now nginx >/dev/null 2>&1 || true
else
  update-rc.d nginx disable >/dev/null 2>&1 || true
  # Only the pid file the package's own service writes: never another nginx.
  if [[ -s /run/nginx.pid ]] && kill -0 "$(cat /run/nginx.pid)" 2>/dev/null; then
    /etc/init.d/nginx stop >/dev/null 2>&1 || true
  fi
fi
