// Command btfcarve finds the kernel's BTF blob inside an uncompressed kernel
// image (raw arm64 Image or an x86 ELF vmlinux) and writes it out as a raw
// BTF file that `bpftool btf dump file <out> format c` accepts.
//
// It scans for struct btf_header (include/uapi/linux/btf.h):
//
//	__u16 magic    = 0xEB9F (little-endian)
//	__u8  version  = 1
//	__u8  flags    = 0
//	__u32 hdr_len  = 24
//	__u32 type_off = 0
//	__u32 type_len
//	__u32 str_off  = type_len
//	__u32 str_len
//
// and keeps the largest candidate whose lengths are sane and whose string
// section starts and ends with a NUL byte.
//
// Usage: go run ./scripts/btfcarve <kernel-image> <out.btf>
package main

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
)

const (
	hdrLen   = 24
	minTotal = 64 << 10  // vmlinux BTF is several MB; ignore tiny hits
	maxTotal = 256 << 20 // and absurd ones
)

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: btfcarve <kernel-image> <out.btf>")
		os.Exit(2)
	}
	data, err := os.ReadFile(os.Args[1])
	if err != nil {
		fatal(err)
	}
	magic := []byte{0x9f, 0xeb, 0x01, 0x00, hdrLen, 0, 0, 0}
	le := binary.LittleEndian
	bestOff, bestLen := -1, 0
	for pos := 0; ; {
		i := bytes.Index(data[pos:], magic)
		if i < 0 {
			break
		}
		off := pos + i
		pos = off + 1
		if off+hdrLen > len(data) {
			break
		}
		h := data[off : off+hdrLen]
		typeOff, typeLen := le.Uint32(h[8:]), le.Uint32(h[12:])
		strOff, strLen := le.Uint32(h[16:]), le.Uint32(h[20:])
		if typeOff != 0 || strOff != typeLen || typeLen == 0 || strLen == 0 {
			continue
		}
		total := uint64(hdrLen) + uint64(strOff) + uint64(strLen)
		if total < minTotal || total > maxTotal || uint64(off)+total > uint64(len(data)) {
			continue
		}
		strs := data[off+hdrLen+int(strOff) : off+int(total)]
		if strs[0] != 0 || strs[len(strs)-1] != 0 {
			continue
		}
		fmt.Fprintf(os.Stderr, "btfcarve: candidate at 0x%x: type_len=%d str_len=%d total=%d\n",
			off, typeLen, strLen, total)
		if int(total) > bestLen {
			bestOff, bestLen = off, int(total)
		}
	}
	if bestOff < 0 {
		fatal(fmt.Errorf("no BTF header found in %s", os.Args[1]))
	}
	if err := os.WriteFile(os.Args[2], data[bestOff:bestOff+bestLen], 0o644); err != nil {
		fatal(err)
	}
	fmt.Fprintf(os.Stderr, "btfcarve: wrote %d bytes from offset 0x%x to %s\n", bestLen, bestOff, os.Args[2])
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "btfcarve:", err)
	os.Exit(1)
}
