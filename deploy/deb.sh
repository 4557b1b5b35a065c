#!/usr/bin/env bash
# The Debian packages `bty` (the flasher) and `bty-web` (the lab server: its systemd unit, the
# system user and directories through sysusers.d and tmpfiles.d, /etc/bty/bty.toml as a conffile,
# maintainer scripts) for amd64 and arm64, made from the static musl binaries with
# dpkg-deb --build (no debhelper, no source package), into OUT with SHA256SUMS.
#
# The packages are reproducible: every file's time is SOURCE_DATE_EPOCH (the last commit's),
# owners are root (--root-owner-group), modes are set here, dpkg-deb sorts the entries, man pages
# are recompressed with gzip -9n and the changelog is generated from the version, revision and
# that time. Two runs over the same binaries give the same bytes.
#
# Inputs (environment; the defaults are where `make` puts them):
#   OUT (build/deb), MAN_DIR (build/man: bty.1.gz and bty-web.8.gz of `make man`),
#   BTY_X86_64, BTY_ARM64, BTY_WEB_X86_64, BTY_WEB_ARM64 (the static builds),
#   DEB_REVISION (1), DEB_MAINTAINER
set -euo pipefail
cd "$(dirname "$0")/.."

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
OUT=${OUT:-build/deb}
MAN_DIR=${MAN_DIR:-build/man}
BTY_X86_64=${BTY_X86_64:-target/x86_64-unknown-linux-musl/static/bty}
BTY_ARM64=${BTY_ARM64:-target/aarch64-unknown-linux-musl/static/bty}
BTY_WEB_X86_64=${BTY_WEB_X86_64:-target/x86_64-unknown-linux-musl/static/bty-web}
BTY_WEB_ARM64=${BTY_WEB_ARM64:-target/aarch64-unknown-linux-musl/static/bty-web}
DEB_REVISION=${DEB_REVISION:-1}
DEB_MAINTAINER=${DEB_MAINTAINER:-bty maintainers <bty@users.noreply.github.com>}
if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
    SOURCE_DATE_EPOCH=$(git log -1 --format=%ct 2>/dev/null || echo 0)
fi
export SOURCE_DATE_EPOCH
revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)
deb_version=$version-$DEB_REVISION
homepage=https://github.com/safl/bty

die() { echo "deploy/deb.sh: $*" >&2; exit 1; }

for m in bty.1.gz bty-web.8.gz; do
    [ -s "$MAN_DIR/$m" ] || die "missing $MAN_DIR/$m: run make man (MAN_DIR names another directory)"
done
for b in "$BTY_X86_64" "$BTY_WEB_X86_64"; do
    [ -s "$b" ] || die "missing $b: run make static"
done
for b in "$BTY_ARM64" "$BTY_WEB_ARM64"; do
    [ -s "$b" ] || die "missing $b: run make static-arm64"
done
command -v dpkg-deb >/dev/null || die "dpkg-deb not found (Debian's dpkg)"

umask 022
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The host unit of deploy/systemd, for the package's paths: the hand-install steps at its top
# give way to a note on what the package does, and the binary is /usr/bin/bty-web.
unit() {
    echo "# bty-web on a Debian host, from the bty-web package (deploy/deb.sh). Local changes:"
    echo "# \`systemctl edit bty-web\` (a drop-in in /etc/systemd/system/bty-web.service.d), not this file."
    echo "# The password and other BTY_* settings: /etc/bty/envvars; the rest: /etc/bty/bty.toml."
    sed -e '/^\[Unit\]/,$!d' \
        -e 's|/usr/local/bin/bty-web|/usr/bin/bty-web|' \
        -e 's|^Documentation=.*|&\nDocumentation=man:bty-web(8)|' \
        deploy/systemd/bty-web.service
}

changelog() {
    local pkg=$1
    printf '%s (%s) unstable; urgency=medium\n\n' bty "$deb_version"
    printf '  * Package of %s %s, built from revision\n    %s.\n\n' "$pkg" "$version" "$revision"
    printf ' -- %s  %s\n' "$DEB_MAINTAINER" "$(date -u -R -d "@$SOURCE_DATE_EPOCH")"
}

# Installed-Size as dpkg-gencontrol counts it: KiB per file, rounded up, and 1 per other entry.
installed_size() {
    find "$1" -path "$1/DEBIAN" -prune -o -mindepth 1 -printf '%y %s\n' |
        awk '$1 == "f" { n += int(($2 + 1023) / 1024); next } { n += 1 } END { print n }'
}

# stage DIR PKG ARCH: the files both packages have (copyright, changelog, lintian overrides).
stage_common() {
    local dir=$1 pkg=$2
    install -D -m 0644 deploy/deb/copyright "$dir/usr/share/doc/$pkg/copyright"
    changelog "$pkg" | gzip -9n >"$dir/usr/share/doc/$pkg/changelog.Debian.gz"
    chmod 0644 "$dir/usr/share/doc/$pkg/changelog.Debian.gz"
    install -D -m 0644 "deploy/deb/$pkg.lintian-overrides" "$dir/usr/share/lintian/overrides/$pkg"
}

man_page() {
    local src=$1 dst=$2
    mkdir -p "$(dirname "$dst")"
    gzip -dc "$src" | gzip -9n >"$dst"
    chmod 0644 "$dst"
}

# build DIR PKG ARCH: control fields, md5sums, times; then the .deb into OUT.
build() {
    local dir=$1 pkg=$2 arch=$3
    mkdir -p "$dir/DEBIAN"
    {
        echo "Package: $pkg"
        echo "Source: bty"
        echo "Version: $deb_version"
        echo "Architecture: $arch"
        echo "Maintainer: $DEB_MAINTAINER"
        echo "Installed-Size: $(installed_size "$dir")"
        cat "$work/$pkg.fields"
        echo "Section: admin"
        echo "Priority: optional"
        echo "Homepage: $homepage"
        cat "deploy/deb/$pkg.description"
    } >"$dir/DEBIAN/control"
    (cd "$dir" && find . -path ./DEBIAN -prune -o -type f -printf '%P\n' | LC_ALL=C sort |
        xargs -d '\n' md5sum >DEBIAN/md5sums)
    chmod 0644 "$dir/DEBIAN/control" "$dir/DEBIAN/md5sums"
    find "$dir" -type d -exec chmod 0755 {} +
    find "$dir" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
    dpkg-deb --root-owner-group -Zxz -z9 --build "$dir" "$OUT.tmp/${pkg}_${deb_version}_$arch.deb" >/dev/null
}

rm -rf "$OUT.tmp"
mkdir -p "$OUT.tmp"
for arch in amd64 arm64; do
    if [ "$arch" = amd64 ]; then bty=$BTY_X86_64 web=$BTY_WEB_X86_64; else bty=$BTY_ARM64 web=$BTY_WEB_ARM64; fi

    d=$work/bty-$arch
    install -D -m 0755 "$bty" "$d/usr/bin/bty"
    man_page "$MAN_DIR/bty.1.gz" "$d/usr/share/man/man1/bty.1.gz"
    stage_common "$d" bty
    : >"$work/bty.fields"
    build "$d" bty "$arch"

    d=$work/bty-web-$arch
    install -D -m 0755 "$web" "$d/usr/bin/bty-web"
    mkdir -p "$d/lib/systemd/system"
    unit >"$d/lib/systemd/system/bty-web.service"
    chmod 0644 "$d/lib/systemd/system/bty-web.service"
    install -D -m 0644 deploy/systemd/bty.sysusers "$d/usr/lib/sysusers.d/bty-web.conf"
    install -D -m 0644 deploy/systemd/bty.tmpfiles "$d/usr/lib/tmpfiles.d/bty-web.conf"
    install -D -m 0644 deploy/deb/bty.toml "$d/etc/bty/bty.toml"
    man_page "$MAN_DIR/bty-web.8.gz" "$d/usr/share/man/man8/bty-web.8.gz"
    stage_common "$d" bty-web
    mkdir -p "$d/DEBIAN"
    for s in postinst prerm postrm; do
        install -m 0755 "deploy/deb/bty-web.$s" "$d/DEBIAN/$s"
    done
    echo /etc/bty/bty.toml >"$d/DEBIAN/conffiles"
    chmod 0644 "$d/DEBIAN/conffiles"
    # The postinst runs systemd-sysusers and systemd-tmpfiles; the unit needs systemd anyway.
    echo "Depends: systemd | systemd-standalone-sysusers | systemd-sysusers" >"$work/bty-web.fields"
    build "$d" bty-web "$arch"
done
(cd "$OUT.tmp" && LC_ALL=C ls ./*.deb | sed 's|^\./||' | xargs sha256sum >SHA256SUMS)
touch -d "@$SOURCE_DATE_EPOCH" "$OUT.tmp"/*
rm -rf "$OUT"
mv "$OUT.tmp" "$OUT"
(cd "$OUT" && sha256sum -c --quiet SHA256SUMS) || die "SHA256SUMS does not verify"
for f in "$OUT"/*.deb; do
    echo "$f: $(stat -c %s "$f") bytes"
done
