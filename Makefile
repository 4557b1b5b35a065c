# bty: build, run, test and benchmark. `make help` lists the targets.
SHELL := /bin/bash
CARGO ?= cargo
STATE_DIR ?= ./var
LISTEN ?= 127.0.0.1:8080
MUSL_TARGET := x86_64-unknown-linux-musl
ARM64_TARGET := aarch64-unknown-linux-musl

# Debian packages the tests and benchmarks use (installed by `make deps` when missing):
#   qemu-utils: qemu-img/qemu-io to build qcow2 test images; e2fsprogs: mkfs.ext4 for the
#   mounted-target test; gdisk/fdisk: sgdisk/sfdisk for partition-table tests; util-linux:
#   losetup/mount; zstd xz-utils bzip2 pigz bmap-tools mbuffer: the reference pipelines of the
#   benchmark; musl-tools: the static build; wrk: the HTTP load generator of `make bench-web`,
#   python3-venv: the venv (target/bench-venv) it installs the reference bty-web into;
#   lshw: `bty inventory` runs it when installed (tests/it/disks.rs checks that path; the other
#   path, bty's own summary, is forced there with BTY_NO_LSHW=1). util-linux's lsblk is what
#   tests/it/disks.rs compares `bty disks` with.
#   docker-registry: the real OCI registry (distribution v2) the oras:// tests start on loopback;
#   curl: the reference pipeline of `make bench-http`; tmux: tests/it/wizard.rs drives the wizard
#   through it (send-keys, capture-pane); tftp-hpa: a second, independent TFTP client for
#   tests/it/tftp.rs; ca-certificates: the CA bundle of `make image`; podman: tests/it/image.rs
#   loads that image; chromium, chromium-driver: tests/it/browser.rs drives the UI in headless
#   Chromium over WebDriver (chromedriver on a free 127.0.0.1 port); python3-yaml:
#   tests/it/deploy.rs parses compose.yaml; systemd: systemd-analyze verifies the host unit.
#   The live environment (`make live`) and its end-to-end test (`make e2e`): busybox-static, cpio,
#   kmod (depmod over the kernel package's modules), file; the kernel itself is fetched with
#   `apt-get download` into target/live-cache, not installed on this machine.
#   ipxe-qemu ovmf (and qemu-system-x86, below): the guest that PXE-boots against bty-web (BIOS
#   and UEFI); dosfstools mtools: the EFI system partition of its test image, without a mount.
#   xorriso grub-pc-bin grub-efi-amd64-bin exfatprogs: `make usb` (live/usb.sh) builds the USB
#   live medium with them (the hybrid ISO, GRUB for BIOS and UEFI, the BTY_IMAGES exFAT);
#   exfat-fuse: tests/it/usb.rs reads and writes BTY_IMAGES from the host, whose kernel may have
#   no exFAT (fsck.exfat from exfatprogs checks it). `make rpi` (live/rpi.sh) adds fdisk's
#   sfdisk, mtools and grub-common's grub-mkimage; the Pi firmware and GRUB's arm64 modules come
#   as arm64 .deb files (live/debs.sh), not installed. groff-base: tests/it/man.rs renders the
#   man pages of `make man` with groff and fails on any warning.
#   dnsmasq-base iproute2: tests/it/lab.rs builds a lab network of its own (a network namespace,
#   a bridge, one tap per guest; `ip netns`, `ip tuntap`) and runs dnsmasq in it as the lab's
#   DHCP server (and as a proxyDHCP) with what `bty-web dhcp` prints. dnsmasq-base is the
#   program alone: the `dnsmasq` package would also enable and start a system-wide DNS and DHCP
#   service on the machine that runs the tests. In that namespace lab.rs also uses curl (the
#   API), busybox's udhcpc and tftp-hpa (a PXE firmware stand-in) and python3's http.server (the
#   image's origin), all listed above.
#   gcc-aarch64-linux-gnu: the cross C compiler and linker of the static arm64 bty-web (ring and
#   the bundled SQLite are C); qemu-user-static: tests/it/image.rs runs that arm64 binary with
#   qemu-aarch64-static (bookworm's 7.2: unlike qemu-system-x86 it breaks nothing of the 10.x
#   qemu-utils, so it needs no backports).
#   tinyproxy: tests/it/proxy.rs runs its own instance (a config, a port and a log in the test's
#   directory, foreground) on 127.0.0.1 as the real proxy that http_proxy/HTTPS_PROXY point at;
#   the package's own service is not used.
#   lintian: tests/it/deb.rs checks the packages of `make deb` with it (no errors or warnings).
#   lbzip2 pbzip2: the block-parallel bzip2 decoder (src/image/bzip2_mt.rs) is tested on their
#   files (lbzip2's single stream, pbzip2's many), and lbzip2 -dc is its benchmark reference.
DEB_PACKAGES := qemu-utils e2fsprogs gdisk fdisk util-linux zstd xz-utils bzip2 pigz \
	bmap-tools mbuffer musl-tools python3 time bsdutils wrk python3-venv lshw \
	docker-registry curl tmux tftp-hpa ca-certificates podman \
	chromium chromium-driver python3-yaml systemd dosfstools mtools \
	busybox-static cpio kmod file ipxe-qemu ovmf gcc-aarch64-linux-gnu qemu-user-static \
	dnsmasq-base iproute2 xorriso grub-pc-bin grub-efi-amd64-bin exfatprogs exfat-fuse groff-base \
	tinyproxy lintian lbzip2 pbzip2
IMAGE_DIR ?= target/image
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
IMAGE_TAG ?= localhost/bty-web:$(VERSION)

# qemu-system-x86 and qemu-system-arm (the arm64 PXE guest of tests/it/e2e_arm64.rs, with
# AAVMF from qemu-efi-aarch64) come from bookworm-backports, like the project machines'
# qemu-utils (10.x):
# bookworm's 7.2 would make apt remove that qemu-utils (it Breaks qemu-system-common << 8). The backports
# source is handed to apt for this one install; the machine's own sources stay as they are.
# Every private source list here (backports, arm64 musl headers, trixie's podman and ipxe) points
# at the mirror the machine's apt already uses (deploy/apt-mirror.sh), so a lab with a local
# or air-gapped mirror works and no mirror's host name is written into the repository.
APT_BPO := $(CURDIR)/target/apt-bpo
APT_BPO_OPTS := -o Dir::Etc::sourcelist=$(APT_BPO)/sources.list -o Dir::Etc::sourceparts=- \
	-o Dir::State::lists=$(APT_BPO)/lists -o Dir::Cache::archives=$(APT_BPO)/archives

# The C code of the arm64 build (ring, SQLite) is compiled against musl's headers, like musl-gcc
# does for x86_64, not against the cross compiler's glibc headers (glibc's pthread and LFS
# symbols do not match the musl libc.a Rust links). Debian's cross toolchain has no musl, so
# `make deps` downloads Debian's musl-dev for arm64 with apt (an arm64-only package list of
# its own under target/, the machine's dpkg and sources untouched) and unpacks it here.
APT_ARM64 := $(CURDIR)/target/apt-arm64
APT_ARM64_OPTS := -o APT::Architecture=arm64 -o APT::Architectures::=arm64 \
	-o Dir::Etc::sourcelist=$(APT_ARM64)/sources.list -o Dir::Etc::sourceparts=- \
	-o Dir::State::lists=$(APT_ARM64)/lists -o Dir::Cache::archives=$(APT_ARM64)/archives \
	-o Dir::State::status=/dev/null -o APT::Sandbox::User=root
MUSL_ARM64_INC := $(APT_ARM64)/musl/usr/include/aarch64-linux-musl

.PHONY: help run test deps quadlet lint build build-release release release-check deb usb rpi man live-x86_64 live-arm64 static static-arm64 static-bty image ipxe live live-check e2e bench-e2e bench bench-flash bench-http bench-web bench-dataplane bench-fleet bench-deps bench-fleet-view clean

help:
	@echo "make run          build and start bty-web on $(STATE_DIR) (prints URL and password)"
	@echo "make test         install test dependencies, then lint and run every test"
	@echo "make deps         install the Debian packages and Rust targets the tests need"
	@echo "make static       build static bty and bty-web (musl, LTO, stripped), print sizes"
	@echo "make static-arm64 build the static arm64 bty and bty-web (cross, musl), print their sizes"
	@echo "make image        reproducible OCI image of bty-web, amd64 + arm64 (no daemon) -> $(IMAGE_DIR)"
	@echo "make live         build the netboot kernel + initrd (+ .sha256) into build/live (ARCH=arm64: arm64)"
	@echo "make ipxe         Debian's iPXE binaries (undionly.kpxe, ipxe.efi, ipxe-arm64.efi, + .sha256) into build/ipxe"
	@echo "make live-check   build the live environment twice and compare the bytes"
	@echo "make usb          the USB live medium (BIOS+UEFI stick, CD) + .sha256 into build/usb"
	@echo "make man          bty(1) and bty-web(8) into build/man"
	@echo "make rpi          the Raspberry Pi stick (Pi 3/4 firmware, arm64 UEFI) + .sha256 into build/usb"
	@echo "make deb          Debian packages bty and bty-web, amd64 + arm64 (+ SHA256SUMS) into build/deb"
	@echo "make release      the whole asset set, release.toml and SHA256SUMS into build/release"
	@echo "make release-check  build the release's ISO and image again elsewhere and compare"
	@echo "make e2e          QEMU guests PXE-boot from bty-web (user-mode net, and a lab netns with dnsmasq)"
	@echo "make bench-e2e    the same with a 256 MiB image: power-on to done -> bench/RESULTS.md"
	@echo "make bench-flash  flash benchmark against the reference pipelines -> bench/RESULTS.md"
	@echo "make bench-http   flash over http from 127.0.0.1 against curl | zstd -dc | dd -> bench/RESULTS.md"
	@echo "make bench-web    bty-web against the reference server (PyPI bty-lab), ~4 min, then bench-dataplane and bench-fleet-view -> bench/RESULTS.md"
	@echo "make bench-dataplane  large files from bty-web against nginx (sendfile), /pxe during downloads, ~3 min -> bench/RESULTS.md"
	@echo "make bench-fleet  16 bty flash at once from one bty-web's cache against 16 curl | zstd -dc | dd from nginx -> bench/RESULTS.md"
	@echo "make bench-fleet-view  the machines page and the live stream at 1,000 and 10,000 machines -> bench/RESULTS.md"

run: build-release
	@mkdir -p $(STATE_DIR)
	@if [ ! -s $(STATE_DIR)/admin-password ]; then \
		(umask 077; head -c 18 /dev/urandom | base64 | tr '+/' '-_' > $(STATE_DIR)/admin-password); fi
	@echo "bty-web: state dir $(STATE_DIR), admin password: $$(cat $(STATE_DIR)/admin-password)"
	@echo "bty-web: http://$(LISTEN)/ (log in at http://$(LISTEN)/ui/login; Ctrl+C stops it)"
	BTY_ADMIN_PASSWORD="$$(cat $(STATE_DIR)/admin-password)" \
		./target/release/bty-web --listen $(LISTEN) --state-dir $(STATE_DIR)

deps:
	@missing=""; for p in $(DEB_PACKAGES); do \
		dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		if [ "$$(id -u)" != 0 ]; then echo "make deps: need root to install:$$missing" >&2; exit 1; fi; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
	@if ! dpkg -s qemu-system-x86 >/dev/null 2>&1 || ! dpkg -s qemu-system-arm >/dev/null 2>&1 || \
		! dpkg -s qemu-efi-aarch64 >/dev/null 2>&1; then \
		echo "installing: qemu-system-x86 qemu-system-arm qemu-efi-aarch64 qemu-utils (bookworm-backports)"; \
		if [ "$$(id -u)" != 0 ]; then echo "make deps: need root to install qemu-system-x86" >&2; exit 1; fi; \
		mkdir -p $(APT_BPO)/lists/partial $(APT_BPO)/archives/partial; \
		mirror=$$(deploy/apt-mirror.sh) || exit 1; \
		for s in bookworm bookworm-updates bookworm-backports; do \
			echo "deb $$mirror $$s main"; done >$(APT_BPO)/sources.list; \
		if security=$$(deploy/apt-mirror.sh security 2>/dev/null); then \
			echo "deb $$security bookworm-security main" >>$(APT_BPO)/sources.list; fi; \
		apt-get $(APT_BPO_OPTS) update -qq && DEBIAN_FRONTEND=noninteractive apt-get $(APT_BPO_OPTS) \
			install -y -qq -t bookworm-backports --no-install-recommends --no-remove \
			qemu-system-x86 qemu-system-arm qemu-efi-aarch64 qemu-utils >/dev/null; \
	fi
	@rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy rustfmt
	@for t in $(MUSL_TARGET) $(ARM64_TARGET); do \
		rustup target list --installed 2>/dev/null | grep -qx $$t || rustup target add $$t; done
	@if [ ! -f $(MUSL_ARM64_INC)/stdio.h ]; then \
		echo "fetching: musl-dev:arm64 (headers for the arm64 static build) into $(APT_ARM64)"; \
		rm -rf $(APT_ARM64) && mkdir -p $(APT_ARM64)/lists/partial $(APT_ARM64)/archives/partial \
			$(APT_ARM64)/deb && \
		mirror=$$(deploy/apt-mirror.sh) && echo "deb $$mirror bookworm main" >$(APT_ARM64)/sources.list && \
		apt-get $(APT_ARM64_OPTS) update -qq && \
		(cd $(APT_ARM64)/deb && apt-get $(APT_ARM64_OPTS) download -qq musl-dev:arm64) && \
		dpkg-deb -x $(APT_ARM64)/deb/musl-dev_*_arm64.deb $(APT_ARM64)/musl && \
		test -f $(MUSL_ARM64_INC)/stdio.h; \
	fi

# Quadlet's generator: tests/it/deploy.rs runs its dry run over the units `bty-web init` writes.
# Bookworm's podman 4.3 predates Quadlet (4.4), so the one binary is taken from trixie's podman
# package with `apt-get download` (apt's state for it kept under target/; nothing installed).
QUADLET := target/quadlet/quadlet
QUADLET_APT := $(CURDIR)/target/quadlet/apt
QUADLET_APT_OPTS := -o Dir::Etc::sourcelist=$(QUADLET_APT)/sources.list -o Dir::Etc::sourceparts=- \
	-o Dir::State::lists=$(QUADLET_APT)/lists -o Dir::Cache::archives=$(QUADLET_APT)/archives \
	-o APT::Sandbox::User=root

quadlet: $(QUADLET)

$(QUADLET):
	@mkdir -p $(QUADLET_APT)/lists/partial $(QUADLET_APT)/archives/partial
	@mirror=$$(deploy/apt-mirror.sh) && echo "deb $$mirror trixie main" >$(QUADLET_APT)/sources.list
	apt-get $(QUADLET_APT_OPTS) update -qq
	cd target/quadlet && rm -f podman_*.deb && apt-get $(QUADLET_APT_OPTS) download -qq podman/trixie
	dpkg-deb --fsys-tarfile target/quadlet/podman_*.deb | tar -xO ./usr/libexec/podman/quadlet >$@.tmp
	chmod 0755 $@.tmp && mv $@.tmp $@ && rm -f target/quadlet/podman_*.deb

# Linted with the test hooks (what the tests build) and without them (what ships).
lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets --features test-hooks -- -D warnings
	$(CARGO) clippy --all-targets -- -D warnings

# iPXE's first-stage binaries, as Debian builds them: `make image` ships them and bty-web serves
# them from [tftp] ipxe_dir. Debian's ipxe *source* package is not on the package mirror these
# machines reach (every version answers 404), so there is no build with an embedded script: the
# binaries are Debian's own, pinned by version and by the sha256 of each file, which makes the
# output reproducible. The trixie build (2025) rather than bookworm's (2019): its ipxe.efi runs
# the autoexec.ipxe that sits beside it on an HTTP boot server, which bty-web generates (see the
# legacy PXE section of docs/pxe.md). The trixie list is handed to apt for this one download only.
IPXE_VERSION := 1.21.1+git20250501.dad20602+dfsg-1
IPXE_OUT ?= build/ipxe
IPXE_APT := $(CURDIR)/target/ipxe-apt
IPXE_APT_OPTS := -o Dir::Etc::sourcelist=$(IPXE_APT)/sources.list -o Dir::Etc::sourceparts=- \
	-o Dir::State::lists=$(IPXE_APT)/lists -o Dir::Cache=$(IPXE_APT)/cache \
	-o Dir::Cache::archives=$(IPXE_APT)/archives
IPXE_DEB := $(IPXE_APT)/deb/ipxe_$(subst :,%3a,$(IPXE_VERSION))_all.deb
IPXE_SHA256_UNDIONLY := 391bfe580ec9f823d046ee390765d6c389f482b9a8b9fae0f90871cd8ff57828
IPXE_SHA256_EFI := 6095eb23f4173674a3dc124a2a6d3cdeed514172793306a10d525f57b97cdc6a
IPXE_SHA256_EFI_ARM64 := 5369815eee98bf98b28a18af9a57207f9096a3b4e542ed3df1eb3f5b28d3d9a9

# The target is the file the newest binary added brings, so a checkout that ran `make ipxe`
# before arm64 runs the rule again rather than calling build/ipxe done.
ipxe: $(IPXE_OUT)/ipxe-arm64.efi.sha256

# The .deb stays in target/ipxe-apt, so a rebuild does not download it again.
$(IPXE_DEB):
	@mkdir -p $(IPXE_APT)/lists/partial $(IPXE_APT)/archives/partial $(IPXE_APT)/cache $(IPXE_APT)/deb
	mirror=$$(deploy/apt-mirror.sh) && \
		echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $$mirror trixie main" \
		>$(IPXE_APT)/sources.list
	apt-get $(IPXE_APT_OPTS) update -qq
	cd $(IPXE_APT)/deb && apt-get $(IPXE_APT_OPTS) download -q 'ipxe=$(IPXE_VERSION)'

$(IPXE_OUT)/ipxe-arm64.efi.sha256: $(IPXE_DEB)
	rm -rf $(IPXE_APT)/x && mkdir -p $(IPXE_APT)/x $(IPXE_OUT)
	dpkg-deb -x $(IPXE_DEB) $(IPXE_APT)/x
	echo "$(IPXE_SHA256_UNDIONLY)  $(IPXE_APT)/x/usr/lib/ipxe/undionly.kpxe" | sha256sum -c --quiet
	echo "$(IPXE_SHA256_EFI)  $(IPXE_APT)/x/usr/lib/ipxe/ipxe-amd64.efi" | sha256sum -c --quiet
	echo "$(IPXE_SHA256_EFI_ARM64)  $(IPXE_APT)/x/usr/lib/ipxe/ipxe-arm64.efi" | sha256sum -c --quiet
	install -m 0644 $(IPXE_APT)/x/usr/lib/ipxe/undionly.kpxe $(IPXE_OUT)/undionly.kpxe
	install -m 0644 $(IPXE_APT)/x/usr/lib/ipxe/ipxe-amd64.efi $(IPXE_OUT)/ipxe.efi
	install -m 0644 $(IPXE_APT)/x/usr/lib/ipxe/ipxe-arm64.efi $(IPXE_OUT)/ipxe-arm64.efi
	touch -d @0 $(IPXE_OUT)/undionly.kpxe $(IPXE_OUT)/ipxe.efi $(IPXE_OUT)/ipxe-arm64.efi
	cd $(IPXE_OUT) && sha256sum ipxe.efi >ipxe.efi.sha256 && sha256sum undionly.kpxe >undionly.kpxe.sha256
	cd $(IPXE_OUT) && sha256sum ipxe-arm64.efi >ipxe-arm64.efi.sha256
	@cat $(IPXE_OUT)/*.sha256

# The static binaries first (tests/it/image.rs packs both static bty-webs, x86_64 and arm64,
# into the image and runs the arm64 one under qemu-user), and the live environment, built twice
# to show it is reproducible (tests/it/e2e.rs boots it). The arm64 build adds about 2.5 min cold
# on 2 cores. The integration tests are one binary, `it` (tests/it/main.rs, a module per area:
# `cargo test --features test-hooks --test it flash::` runs one). The tests' bty and bty-web carry
# the test hooks (cargo feature test-hooks: BTY_TEST_* variables; without it a test's reboot
# would be real); the integration tests do not compile without it. Every build that ships
# (release, static*, live, image) leaves it off.
TEST_FEATURES := --features test-hooks

test: deps quadlet lint static static-arm64 live-check ipxe release-check deb
	$(CARGO) test --all-targets $(TEST_FEATURES)

build:
	$(CARGO) build

build-release:
	$(CARGO) build --release

# The release's asset set (deploy/release.sh): what bty-web's netboot fetch and an air-gapped
# mirror take. tests/it/release.rs points a bty-web at it.
release: static static-arm64 live-x86_64 live-arm64 ipxe usb rpi image deb
	deploy/release.sh

# The Debian packages (deploy/deb.sh): bty and bty-web for amd64 and arm64 from the static
# binaries, with the man pages of `make man` (MAN_DIR, default build/man), reproducible (every
# time the last commit's). tests/it/deb.rs checks them with lintian and installs them into a
# throwaway root.
deb: static static-arm64 man
	deploy/deb.sh

# Two builds of one commit give the same release: the ISO and the OCI image are made again from
# their inputs in another directory (the live environment's own check is live-check), the set
# gathered again, and every file compared.
release-check: release
	rm -rf target/release-check
	OUT=target/release-check/usb live/usb.sh >/dev/null
	OUT=target/release-check/usb live/rpi.sh >/dev/null
	SOURCE_DATE_EPOCH=$$(git log -1 --format=%ct) python3 deploy/mkimage.py \
		--binary amd64=target/$(MUSL_TARGET)/static/bty-web \
		--binary arm64=target/$(ARM64_TARGET)/static/bty-web --out target/release-check/image \
		--tag $(IMAGE_TAG) --ipxe-dir $(IPXE_OUT) --man-dir build/man --version $(VERSION) \
		--revision $$(git rev-parse HEAD) >/dev/null
	OUT=target/release-check/release USB=target/release-check/usb IMAGE=target/release-check/image \
		deploy/release.sh >/dev/null
	diff -r build/release target/release-check/release
	@echo "release-check: the release builds reproducibly"

# The USB live medium carries the live environment's kernel and initrd.
usb: live-x86_64
	live/usb.sh

# bty(1) and bty-web(8) from their pages in docs/man (the image and the packages ship them).
man:
	python3 docs/man/build.py build/man $(VERSION) $$(date -u -d @$$(git log -1 --format=%ct) +%Y-%m-%d)

# The Raspberry Pi stick carries the arm64 live environment's kernel and initrd.
rpi: live-arm64
	live/rpi.sh

STATIC_BUILD = CC_x86_64_unknown_linux_musl=musl-gcc RUSTFLAGS="-C target-feature=+crt-static" \
	$(CARGO) build --profile static --target $(MUSL_TARGET)

# The arm64 bty-web (the image's linux/arm64 half, and the Raspberry Pi host install): rustup's
# musl target, Debian's cross gcc as C compiler and linker, musl's headers (see APT_ARM64). Set
# per target through the environment, so no .cargo/config changes any other build.
STATIC_ARM64_BUILD = CC_aarch64_unknown_linux_musl=aarch64-linux-gnu-gcc \
	AR_aarch64_unknown_linux_musl=aarch64-linux-gnu-ar \
	CFLAGS_aarch64_unknown_linux_musl="-nostdinc -isystem $(MUSL_ARM64_INC) -isystem $$(aarch64-linux-gnu-gcc -print-file-name=include)" \
	CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER=aarch64-linux-gnu-gcc \
	RUSTFLAGS="-C target-feature=+crt-static" \
	$(CARGO) build --profile static --target $(ARM64_TARGET)

static-arm64: deps
	$(STATIC_ARM64_BUILD) --bin bty --bin bty-web
	@f=target/$(ARM64_TARGET)/static/bty-web; size=$$(stat -c %s $$f); \
		echo "$$f: $$size bytes ($$((size / 1024)) KiB)"; file $$f 2>/dev/null || true
	@f=target/$(ARM64_TARGET)/static/bty; size=$$(stat -c %s $$f); \
		echo "$$f: $$size bytes ($$((size / 1024)) KiB), limit 4 MiB"; file $$f 2>/dev/null || true; \
		test $$size -le $$((4 * 1024 * 1024))

static: deps
	@rustup target list --installed 2>/dev/null | grep -qx $(MUSL_TARGET) || rustup target add $(MUSL_TARGET)
	$(STATIC_BUILD) --bin bty --bin bty-web
	@ls -l target/$(MUSL_TARGET)/static/bty-web
	@f=target/$(MUSL_TARGET)/static/bty; \
		size=$$(stat -c %s $$f); \
		echo "$$f: $$size bytes ($$((size / 1024)) KiB), limit 4 MiB"; \
		file $$f 2>/dev/null || true; \
		test $$size -le $$((4 * 1024 * 1024))

# The image's files carry the last commit's time, so two builds of one commit are identical.
# One index over linux/amd64 and linux/arm64 (target/image/oci and bty-web-VERSION.oci.tar),
# plus one archive per architecture.
image: static static-arm64 ipxe man
	SOURCE_DATE_EPOCH=$$(git log -1 --format=%ct) python3 deploy/mkimage.py \
		--binary amd64=target/$(MUSL_TARGET)/static/bty-web \
		--binary arm64=target/$(ARM64_TARGET)/static/bty-web --out $(IMAGE_DIR) --tag $(IMAGE_TAG) \
		--ipxe-dir $(IPXE_OUT) --man-dir build/man \
		--version $(VERSION) --revision $$(git rev-parse HEAD)

# The live environment carries only bty, so it does not wait for the static bty-web.
static-bty: deps
	@rustup target list --installed 2>/dev/null | grep -qx $(MUSL_TARGET) || rustup target add $(MUSL_TARGET)
	$(STATIC_BUILD) --bin bty

# `make live ARCH=arm64` builds the arm64 one (Debian's arm64 kernel, busybox and the static
# arm64 bty); both go to build/live, side by side.
ARCH ?= x86_64
live: $(if $(filter arm64 aarch64,$(ARCH)),live-arm64,live-x86_64)

live-x86_64: static-bty
	ARCH=x86_64 live/build.sh

live-arm64: static-arm64
	ARCH=arm64 live/build.sh

# Two builds from the same inputs (the second in another directory) must give the same bytes,
# for each architecture.
live-check: live-x86_64 live-arm64
	rm -rf target/live-check
	OUT=target/live-check ARCH=x86_64 live/build.sh >/dev/null
	OUT=target/live-check ARCH=arm64 live/build.sh >/dev/null
	cd build/live && for f in *; do cmp "$$f" "../../target/live-check/$$f"; done
	@echo "live-check: the live environments (x86_64, arm64) build reproducibly"

# Only the end-to-end modules of the integration tests (name filters on the `it` binary): e2e
# and e2e_arm64 (x86_64 and arm64 guests on QEMU's user-mode network), lab (a network namespace
# with dnsmasq as the lab's DHCP), usb (the USB medium booted as a stick and as a CD) and rpi
# (the Raspberry Pi stick in QEMU's raspi3b and, through UEFI, in its virt machine).
e2e: deps live-x86_64 live-arm64 ipxe usb rpi
	$(CARGO) test $(TEST_FEATURES) --test it -- --nocapture e2e:: e2e_arm64:: lab:: usb:: rpi::

# Power-on to `done` for a 256 MiB image (the figures in bench/RESULTS.md): each firmware alone
# (e2e::), then three machines at once on the lab network (lab::three_machines...), one after the other.
bench-e2e: deps live-x86_64 ipxe
	BTY_E2E_IMAGE_MIB=256 $(CARGO) test $(TEST_FEATURES) --test it -- --nocapture --test-threads=1 e2e::bios_machine e2e::uefi_machine lab::three_machines

bench: bench-flash

bench-flash: deps build-release
	bench/flash.sh

bench-http: deps build-release
	bench/http.sh

# Installs the reference (pip, into target/bench-venv) on first use; then only 127.0.0.1.
# Measures the static musl bty-web: the binary the container image and the host install ship.
# Then the data plane (bench-dataplane) and the fleet view (bench-fleet-view), same binary.
bench-web: static bench-deps
	BTY_WEB=target/$(MUSL_TARGET)/static/bty-web bench/web.sh
	BTY_WEB=target/$(MUSL_TARGET)/static/bty-web bench/dataplane.sh
	BTY_WEB=target/$(MUSL_TARGET)/static/bty-web bench/fleet-view.sh

# Only 127.0.0.1: the page sizes and times, and the stream bytes per change in a storm.
bench-fleet-view: static
	BTY_WEB=target/$(MUSL_TARGET)/static/bty-web bench/fleet-view.sh

# Large files out of the static bty-web against nginx serving the same file with sendfile, and
# /pxe latency during the downloads; 127.0.0.1 only.
bench-dataplane: static bench-deps
	BTY_WEB=target/$(MUSL_TARGET)/static/bty-web bench/dataplane.sh

# Packages only the benchmarks use, kept out of DEB_PACKAGES (the tests' list): nginx-light,
# the reference of bench/dataplane.sh and bench/fleet.sh, which run their own nginx in the
# foreground on 127.0.0.1. bench/nginx-deps.sh installs it with neither its system service
# started (policy-rc.d answers 101 for the install) nor enabled.
bench-deps: deps
	bench/nginx-deps.sh

# A fleet at once: 16 `bty flash` from one bty-web's image cache (the static musl bty-web, the
# one the container image and the host install ship) against 16 `curl | zstd -dc | dd` from
# nginx, onto loop devices; 127.0.0.1 only.
bench-fleet: build-release static bench-deps
	BTY=target/release/bty BTY_WEB=target/$(MUSL_TARGET)/static/bty-web bench/fleet.sh

clean:
	$(CARGO) clean
