#!/bin/sh
# Prints the Debian mirror this machine's apt already uses, so the Makefile's private source
# lists (bookworm-backports for QEMU, trixie for Quadlet and iPXE, arm64 for musl headers) go
# where the machine's own packages come from: a lab with a local or air-gapped mirror keeps
# working, and no mirror's host name is written into the repository.
#   deploy/apt-mirror.sh            the main archive (a URI not serving -security suites)
#   deploy/apt-mirror.sh security   the security archive (serving a -security suite)
# Reads one-line sources (/etc/apt/sources.list, *.list) and deb822 ones (*.sources).
# Exits 1 with a message naming the files when there is none.
want=${1:-main}
dir=${APT_SOURCES_DIR:-/etc/apt}
{
	# one-line form: deb [options] URI SUITE COMPONENTS...
	cat "$dir"/sources.list "$dir"/sources.list.d/*.list 2>/dev/null |
		sed -n -E 's/^[[:space:]]*deb[[:space:]]+(\[[^]]*\][[:space:]]+)?([^[:space:]]+)[[:space:]]+([^[:space:]]+).*/\2 \3/p'
	# deb822 form: a stanza's URIs and Suites, Types including deb
	for f in "$dir"/sources.list.d/*.sources; do
		[ -f "$f" ] || continue
		awk '
			function flush() { if (deb) for (i = 1; i <= nu; i++) for (j = 1; j <= ns; j++) print u[i], s[j]; deb = 0; nu = 0; ns = 0 }
			/^[[:space:]]*$/ { flush(); next }
			/^#/ { next }
			/^Types:/ { deb = ($0 ~ /[[:space:]]deb([[:space:]]|$)/) }
			/^URIs:/ { nu = split(substr($0, 6), u) }
			/^Suites:/ { ns = split(substr($0, 8), s) }
			END { flush() }
		' "$f"
	done
} | while read -r uri suite; do
	case $suite in
	*-security) [ "$want" = security ] && echo "${uri%/}" ;;
	*) [ "$want" = main ] && echo "${uri%/}" ;;
	esac
done | awk 'NF && !seen[$0]++ { print; exit }' | grep . ||
	{ echo "apt-mirror.sh: no Debian $want archive in $dir/sources.list or $dir/sources.list.d/" >&2; exit 1; }
