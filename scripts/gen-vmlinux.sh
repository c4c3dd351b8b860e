#!/usr/bin/env bash
# Regenerate vmlinux/{x86,arm64}/vmlinux.h from Debian kernel packages.
#
# Both headers are produced from the same Debian kernel release: the newest
# linux-image-${KVER}.N...-{amd64,arm64} found in ${SUITE} (default: 6.12 from
# trixie). The host is Debian bookworm, so a private apt configuration (own
# state, cache and source list, amd64+arm64) is built in a work dir; the
# mirror URIs are taken from the host's /etc/apt/sources.list.d/*.sources.
#
# Steps per architecture: apt-get download the image package, extract
# vmlinuz, decompress it to the raw kernel image, carve the .BTF blob out of
# it (scripts/btfcarve), and `bpftool btf dump file ... format c`.
#
# Environment knobs:
#   KVER=6.12       kernel major.minor to look for
#   SUITE=trixie    Debian suite that carries it (bookworm: KVER=6.1)
#   WORKDIR=...     keep downloads/apt state here (default: temp dir, removed)
#
# Usage: scripts/gen-vmlinux.sh        (run as root, or with sudo for apt-get install)
set -euo pipefail

KVER=${KVER:-6.12}
SUITE=${SUITE:-trixie}
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT="$ROOT/vmlinux"

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

SUDO=
[[ $(id -u) -eq 0 ]] || SUDO=sudo

# --- tools -----------------------------------------------------------------
need_pkgs=()
have() { command -v "$1" >/dev/null 2>&1 || [[ -x /usr/sbin/$1 ]]; }
have bpftool  || need_pkgs+=(bpftool)
have zstd     || need_pkgs+=(zstd)
have xz       || need_pkgs+=(xz-utils)
have bzip2    || need_pkgs+=(bzip2)
have lz4      || need_pkgs+=(lz4)
have dpkg-deb || need_pkgs+=(dpkg)
have gzip     || need_pkgs+=(gzip)
[[ -r $KEYRING ]] || need_pkgs+=(debian-archive-keyring)
if ((${#need_pkgs[@]})); then
	log "installing: ${need_pkgs[*]}"
	$SUDO apt-get update -qq
	$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}"
fi
have go || die "go is required (to build scripts/btfcarve)"
BPFTOOL=$(command -v bpftool || echo /usr/sbin/bpftool)

# --- work dir --------------------------------------------------------------
if [[ -n ${WORKDIR:-} ]]; then
	mkdir -p "$WORKDIR"
	WORK=$(cd "$WORKDIR" && pwd)
else
	WORK=$(mktemp -d)
	trap 'rm -rf "$WORK"' EXIT
fi
chmod 755 "$WORK" # let apt's unprivileged _apt user write its partial dirs

# --- mirrors from the host's apt sources ----------------------------------
# shellcheck source=scripts/debian-apt.sh
source "$ROOT/scripts/debian-apt.sh"
read -r MIRROR SECURITY < <(debian_mirrors)
[[ -n ${MIRROR:-} ]] || die "no Debian mirror URI found in the host's apt sources"
log "mirror: $MIRROR  security: $SECURITY"

# --- private apt configuration ---------------------------------------------
APTD="$WORK/apt"
mkdir -p "$APTD"
{
	private_apt_conf "$APTD"
	echo 'APT::Architectures { "amd64"; "arm64"; };'
	echo 'APT::Get::List-Cleanup "false";'
} >"$APTD/apt.conf"
{
	echo "deb [arch=amd64,arm64 signed-by=$KEYRING] $MIRROR $SUITE main"
	echo "deb [arch=amd64,arm64 signed-by=$KEYRING] $MIRROR $SUITE-updates main"
	if [[ $SECURITY != - ]]; then
		echo "deb [arch=amd64,arm64 signed-by=$KEYRING] $SECURITY $SUITE-security main"
	fi
} >"$APTD/sources.list"
export APT_CONFIG="$APTD/apt.conf"

log "apt-get update ($SUITE, amd64+arm64, private config)"
apt-get update -qq

# --- resolve the newest kernel present for BOTH architectures ---------------
# Package names look like linux-image-6.12.48+deb13-amd64 (trixie) or
# linux-image-6.1.0-37-amd64 (bookworm); cloud/rt/-unsigned/-dbg are skipped.
kre=${KVER//./\\.}
list_abis() { # $1 = flavour; prints the ABI part (e.g. 6.12.48+deb13)
	apt-cache pkgnames "linux-image-$KVER" |
		sed -nE "s/^linux-image-(${kre}[.-][0-9][0-9a-z.+~-]*)-$1\$/\1/p" |
		grep -vE -- '-(cloud|rt)$' | sort -u
}
ABI=$(comm -12 <(list_abis amd64) <(list_abis arm64) | sort -V | tail -n1)
[[ -n $ABI ]] || die "no linux-image-$KVER.* for both amd64 and arm64 in $SUITE"
log "kernel ABI: $ABI"

pkgver() { # $1 = package, $2 = arch
	apt-cache show "$1:$2" | sed -n 's/^Version: //p' | sort -V | tail -n1
}

# --- decompression (after scripts/extract-vmlinux in the kernel tree) ------
log "building scripts/btfcarve"
(cd "$ROOT" && go build -o "$WORK/btfcarve" ./scripts/btfcarve)
carve() { # $1 = image, $2 = btf out; quiet unless it succeeds
	local msg
	if msg=$("$WORK/btfcarve" "$1" "$2" 2>&1); then
		printf '%s\n' "$msg" >&2
		return 0
	fi
	return 1
}

# The image may be uncompressed already (Debian's arm64 vmlinuz is a raw
# Image in 6.12, gzip-compressed in older releases); otherwise try each
# compression magic found in it (x86 bzImage payload); success = BTF found.
decompress_and_carve() { # $1 = vmlinuz, $2 = raw out, $3 = btf out
	local img=$1 raw=$2 btf=$3 spec magic cmd off
	if carve "$img" "$btf"; then
		log "image is not compressed"
		return 0
	fi
	for spec in \
		'\x1f\x8b\x08|gzip -dc' \
		'\x28\xb5\x2f\xfd|zstd -dc' \
		'\xfd\x37\x7a\x58\x5a\x00|xz -dc' \
		'\x5d\x00\x00\x00|xz -dc --format=lzma' \
		'BZh|bzip2 -dc' \
		'\x02\x21\x4c\x18|lz4 -dc'; do
		magic=${spec%%|*} cmd=${spec#*|}
		command -v "${cmd%% *}" >/dev/null || continue
		for off in $(LC_ALL=C grep -obUaP "$magic" "$img" | cut -d: -f1 | head -n 8); do
			tail -c "+$((off + 1))" "$img" | $cmd >"$raw" 2>/dev/null || true
			if [[ -s $raw ]] && carve "$raw" "$btf"; then
				log "decompressed with '$cmd' at offset $off"
				return 0
			fi
		done
	done
	die "no BTF found in $img (compressed or not)"
}

declare -A PKGVER
# e.g. "bpftool v7.1.0, libbpf v1.1 (Debian package bpftool 7.1.0+6.1.135-1)"
BPFTOOL_VER="bpftool $("$BPFTOOL" version | sed -n '1s/.* //p'), $("$BPFTOOL" version | sed -n 's/^using //p')"
if dv=$(dpkg-query -W -f='${Version}' bpftool 2>/dev/null) && [[ -n $dv ]]; then
	BPFTOOL_VER+=" (Debian package bpftool $dv)"
fi
for arch in amd64 arm64; do
	case $arch in
	amd64) dir=x86 ;;
	arm64) dir=arm64 ;;
	esac
	pkg="linux-image-$ABI-$arch"
	PKGVER[$arch]=$(pkgver "$pkg" "$arch")
	log "$arch: $pkg ${PKGVER[$arch]}"

	d="$WORK/$arch"
	rm -rf "$d" && mkdir -p "$d/root"
	# let apt download as its unprivileged _apt user into this dir
	if [[ $(id -u) -eq 0 ]] && id _apt >/dev/null 2>&1; then chown _apt "$d"; fi
	(cd "$d" && apt-get download -qq "$pkg:$arch=${PKGVER[$arch]}")
	deb=$(ls "$d"/*.deb)
	dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$d/root" --wildcards '*vmlinuz*'
	vmlinuz=$(find "$d/root" -type f -name 'vmlinuz*' | head -n1)
	[[ -n $vmlinuz ]] || die "no vmlinuz in $deb"

	decompress_and_carve "$vmlinuz" "$d/Image" "$d/vmlinux.btf"

	mkdir -p "$OUT/$dir"
	"$BPFTOOL" btf dump file "$d/vmlinux.btf" format c >"$d/vmlinux.h"
	for sym in 'struct sock {' 'struct trace_event_raw_inet_sock_set_state {' \
		'struct bpf_iter__tcp {' 'btf_trace_inet_sock_set_state'; do
		grep -qF -- "$sym" "$d/vmlinux.h" || die "$arch: '$sym' missing from generated vmlinux.h"
	done
	mv "$d/vmlinux.h" "$OUT/$dir/vmlinux.h"
	log "wrote $OUT/$dir/vmlinux.h ($(wc -c <"$OUT/$dir/vmlinux.h") bytes)"
done

# --- dispatcher and README --------------------------------------------------
cat >"$OUT/vmlinux.h" <<'H'
/* SPDX-License-Identifier: GPL-2.0 */
/* Generated by scripts/gen-vmlinux.sh; see README.md. Picks the per-arch
 * kernel BTF dump; bpf2go -target amd64,arm64 defines __TARGET_ARCH_*. */
#ifndef __TCPTRACE_VMLINUX_DISPATCH_H__
#define __TCPTRACE_VMLINUX_DISPATCH_H__

#if defined(__TARGET_ARCH_x86)
#include "x86/vmlinux.h"
#elif defined(__TARGET_ARCH_arm64)
#include "arm64/vmlinux.h"
#else
#error "vmlinux.h: define __TARGET_ARCH_x86 or __TARGET_ARCH_arm64"
#endif

#endif /* __TCPTRACE_VMLINUX_DISPATCH_H__ */
H

cat >"$OUT/README.md" <<MD
# vmlinux headers

Kernel type definitions for the CO-RE eBPF programs, dumped from the BTF of a
Debian kernel with \`bpftool btf dump file <btf> format c\`. Both architectures
come from the same kernel release, so the layouts they describe match.

| header | package | version | bpftool |
| --- | --- | --- | --- |
| \`x86/vmlinux.h\` | \`linux-image-$ABI-amd64\` (amd64) | \`${PKGVER[amd64]}\` | $BPFTOOL_VER |
| \`arm64/vmlinux.h\` | \`linux-image-$ABI-arm64\` (arm64) | \`${PKGVER[arm64]}\` | $BPFTOOL_VER |

Suite: Debian \`$SUITE\`.

\`vmlinux.h\` in this directory dispatches on \`__TARGET_ARCH_x86\` /
\`__TARGET_ARCH_arm64\` (defined by bpf2go for \`-target amd64,arm64\`) and
fails with \`#error\` for any other target.

CO-RE relocations make the programs work on other kernels too: the headers
only need to contain the types used, not match the running kernel exactly.

## Regenerating

    scripts/gen-vmlinux.sh                     # newest 6.12 kernel from trixie
    KVER=6.1 SUITE=bookworm scripts/gen-vmlinux.sh   # or another release

The script takes the Debian mirror from the host's
\`/etc/apt/sources.list.d/*.sources\`, builds a private apt configuration
(amd64+arm64, the given suite) in a work dir, picks the newest
\`linux-image-\$KVER.*\` available for both architectures, \`apt-get download\`s
it, extracts \`vmlinuz\`, decompresses it (x86 bzImage payload / arm64 gzip
Image), carves the \`.BTF\` blob out with \`scripts/btfcarve\` (scans for the
\`struct btf_header\` magic 0xEB9F) and dumps it with bpftool. It needs
root (or sudo) only to install missing tools (bpftool, zstd, xz-utils, ...).
MD
log "done: $OUT"
