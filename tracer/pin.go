package tracer

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// The CLOSE-WAIT table pinned across restarts (Config.PinTable).
//
// A restarted tracer (a DaemonSet upgrade) that starts from nothing knows
// the sockets already in CLOSE-WAIT only from its start-up listing, which
// cannot say when their FIN came: every age is unknown. With PinTable the
// table stays in bpffs when the tracer closes, and the next New loads it
// instead of a new one. The sockets still in CLOSE-WAIT keep their entry
// and so their FIN time; the entries of sockets that closed while no
// tracer ran are pruned after the start-up listing (Snapshot), which tells
// which sockets are still in CLOSE-WAIT. Without PinTable nothing is
// pinned: the table goes with the last descriptor, even on SIGKILL.

const (
	pinnedTable = "closewait" // the map's name, and its file in PinDir
	pinLockFile = ".lock"
	cwfReported = 1 << 2 // enum cw_flag CWF_REPORTED
)

// preparePin checks PinDir, creates it, and locks it so that two tracers
// never share one table. It reports whether a table is pinned there.
func (t *Tracer) preparePin() (adopt bool, err error) {
	dir := t.cfg.PinDir
	if dir == "" {
		dir = DefaultPinDir
	}
	t.pinDir = dir
	var st unix.Statfs_t
	parent := filepath.Dir(dir)
	if err := unix.Statfs(parent, &st); err != nil {
		return false, fmt.Errorf("pin directory %s: %w", dir, err)
	}
	if st.Type != unix.BPF_FS_MAGIC {
		return false, fmt.Errorf("pin directory %s is not on a bpf filesystem (mount one: mount -t bpf bpf %s)", dir, parent)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return false, fmt.Errorf("pin directory: %w", err)
	}
	// bpffs holds only directories and pinned objects, so the lock is on
	// the directory itself.
	f, err := os.Open(dir)
	if err != nil {
		return false, fmt.Errorf("pin directory: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		return false, fmt.Errorf("pin directory %s is in use by another tcptrace (flock: %w)", dir, err)
	}
	t.pinLock = f
	_, err = os.Stat(filepath.Join(dir, pinnedTable))
	return err == nil, nil
}

// loadCollection loads spec, with the CLOSE-WAIT table pinned if asked. A
// pinned table that does not fit (another version's layout, another
// --max-tracked) is replaced by a new one, with a warning.
func (t *Tracer) loadCollection(spec *ebpf.CollectionSpec) (*ebpf.Collection, error) {
	if t.pinLock == nil {
		return ebpf.NewCollection(spec)
	}
	spec.Maps[pinnedTable].Pinning = ebpf.PinByName
	opts := ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: t.pinDir}}
	coll, err := ebpf.NewCollectionWithOptions(spec, opts)
	if errors.Is(err, ebpf.ErrMapIncompatible) {
		t.cfg.Logger.Warn("the pinned CLOSE-WAIT table does not fit this tracer (another version, or another --max-tracked): starting a new one; the ages of sockets already in CLOSE-WAIT are unknown",
			"pin", filepath.Join(t.pinDir, pinnedTable), "error", err)
		if rmErr := os.Remove(filepath.Join(t.pinDir, pinnedTable)); rmErr != nil {
			return nil, fmt.Errorf("replace the pinned table: %w", rmErr)
		}
		t.adoptPending = false
		coll, err = ebpf.NewCollectionWithOptions(spec, opts)
	}
	return coll, err
}

// pruneAdopted drops the adopted entries (those made before this tracer
// started) whose socket the start-up listing did not find in CLOSE-WAIT:
// it closed while no tracer ran. Entries of namespaces the listing could
// not enter are kept. The rest are handed over again by the table scan.
func (t *Tracer) pruneAdopted(seen map[uint64]struct{}, listed map[uint32]bool) (kept, pruned int, err error) {
	m := t.coll.Maps[pinnedTable]
	var stale, reported []uint64
	_, err = t.readTable(func(key uint64, raw []byte) {
		if int64(binary.LittleEndian.Uint64(raw)) >= t.startBoot {
			return // entered CLOSE-WAIT since this tracer started
		}
		netns := binary.LittleEndian.Uint32(raw[64:])
		// A socket the peer reset while held waits for its descriptor's
		// close, which this tracer's count of such sockets does not
		// cover: let it go rather than keep it forever.
		if _, ok := seen[key]; !ok && listed[netns] || raw[offEntryPeerReset] != 0 {
			stale = append(stale, key)
			return
		}
		kept++
		if raw[75]&cwfReported != 0 {
			reported = append(reported, key)
		}
	})
	if err != nil {
		return 0, 0, err
	}
	for _, key := range stale {
		if err := m.Delete(key); err == nil {
			pruned++
		}
	}
	// The previous tracer's scan handed these over already; this one has
	// not seen them.
	var e [cwEntrySize]byte
	for _, key := range reported {
		if m.Lookup(key, &e) != nil {
			continue // closed meanwhile
		}
		e[75] &^= cwfReported
		_ = m.Update(key, &e, ebpf.UpdateExist)
	}
	return kept, pruned, nil
}

// dropAdopted empties an adopted table that cannot be pruned (no socket
// listing before Linux 5.9): an entry left for a socket that closed would
// be reported stuck.
func (t *Tracer) dropAdopted() error {
	m := t.coll.Maps[pinnedTable]
	var keys []uint64
	if _, err := t.readTable(func(key uint64, raw []byte) {
		if int64(binary.LittleEndian.Uint64(raw)) < t.startBoot {
			keys = append(keys, key)
		}
	}); err != nil {
		return err
	}
	for _, k := range keys {
		_ = m.Delete(k)
	}
	return nil
}
