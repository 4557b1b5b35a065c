# Sourced by live/build.sh and live/rpi.sh: Debian packages for $deb_arch into $CACHE.
#   fetch_deb PACKAGE   prints the path of PACKAGE's .deb in $CACHE, downloading it if absent
# A .deb already in the cache is used as it is: rebuilding from the same files gives the same
# bytes even after the mirror moves on. A foreign architecture (arm64 on an amd64 machine) gets
# an apt state of its own under $CACHE/apt: its lists, its cache, no dpkg status, and the
# mirror this machine's apt uses (deploy/apt-mirror.sh). Its components include
# non-free-firmware, where Debian keeps the Raspberry Pi's boot firmware.
# Needs: deb_arch, CACHE, die.
mkdir -p "$CACHE"
APT_OPTS=()
if [ "$deb_arch" != "$(dpkg --print-architecture)" ]; then
    apt=$PWD/$CACHE/apt
    APT_OPTS=(-o "APT::Architecture=$deb_arch" -o "APT::Architectures::=$deb_arch"
        -o "Dir::Etc::sourcelist=$apt/sources.list" -o Dir::Etc::sourceparts=-
        -o "Dir::State::lists=$apt/lists" -o "Dir::Cache=$apt/cache"
        -o "Dir::Cache::archives=$apt/archives" -o Dir::State::status=/dev/null
        -o APT::Sandbox::User=root)
    components="main non-free-firmware"
    if ! grep -q "bookworm $components\$" "$apt/sources.list" 2>/dev/null ||
        [ -z "$(ls "$apt/lists" 2>/dev/null | grep -v partial)" ]; then
        mkdir -p "$apt/lists/partial" "$apt/archives/partial" "$apt/cache"
        mirror=$(deploy/apt-mirror.sh) || die "no Debian mirror in this machine's apt sources"
        {
            echo "deb $mirror bookworm $components"
            echo "deb $mirror bookworm-updates $components"
            if security=$(deploy/apt-mirror.sh security 2>/dev/null); then
                echo "deb $security bookworm-security $components"
            fi
        } >"$apt/sources.list"
        apt-get "${APT_OPTS[@]}" update -qq || die "apt-get update for $deb_arch failed"
    fi
fi
fetch_deb() {
    local deb
    deb=$(find "$CACHE" -maxdepth 1 -name "${1}_*.deb" | sort | tail -n 1)
    if [ -z "$deb" ]; then
        (cd "$CACHE" && apt-get "${APT_OPTS[@]}" download -q "$1:$deb_arch" >&2) || die "apt-get download $1 failed"
        deb=$(find "$CACHE" -maxdepth 1 -name "${1}_*.deb" | sort | tail -n 1)
    fi
    [ -n "$deb" ] || die "no .deb for $1 in $CACHE"
    echo "$deb"
}
