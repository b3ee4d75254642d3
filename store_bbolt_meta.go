package hostbreaker

// This file reads a bbolt file with plain reads and no lock: readBoltMeta
// finds the meta page bbolt uses, whose txid tells the store's read cache
// whether the file has changed (boltStore.cached), and checkBoltPages
// checks what bbolt would trip over when it opens the file read-write. The
// store itself, its transactions and its cache are in store_bbolt.go.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"io/fs"
	"os"
)

// The layout of a bbolt meta page (go.etcd.io/bbolt/internal/common): a
// 16-byte page header, then magic, version, pageSize, flags (uint32 each),
// the root bucket (16 bytes), freelist, pgid, txid and checksum (uint64
// each), in the machine's byte order. The checksum is FNV-1a 64 of the meta
// up to the checksum.
const (
	boltMetaOff      = 16 // page header size
	boltMetaLen      = 64
	boltMagic        = 0xED0CDAED
	boltVersion      = 2
	boltMinPageSize  = 1 << 10
	boltMaxPageSize  = 1 << 24
	boltOffVersion   = 4
	boltOffPageSize  = 8
	boltOffFreelist  = 32
	boltOffPgid      = 40
	boltOffTxid      = 48
	boltOffChecksum  = 56
	boltMetaReadSize = boltMetaOff + boltMetaLen
)

// boltMeta is what readBoltMeta reads from a valid meta page.
type boltMeta struct {
	pageSize uint32
	freelist uint64 // page of the freelist, boltNoFreelist if none
	pgid     uint64 // high water mark: pages in use
	txid     uint64
}

// parseBoltMeta parses the meta page at the start of buf, which holds
// boltMetaReadSize bytes. ok is false unless the magic, version and
// checksum are right.
func parseBoltMeta(buf []byte) (m boltMeta, ok bool) {
	meta := buf[boltMetaOff : boltMetaOff+boltMetaLen]
	ne := binary.NativeEndian
	if ne.Uint32(meta) != boltMagic || ne.Uint32(meta[boltOffVersion:]) != boltVersion {
		return m, false
	}
	h := fnv.New64a()
	h.Write(meta[:boltOffChecksum])
	if h.Sum64() != ne.Uint64(meta[boltOffChecksum:]) {
		return m, false
	}
	return boltMeta{
		pageSize: ne.Uint32(meta[boltOffPageSize:]),
		freelist: ne.Uint64(meta[boltOffFreelist:]),
		pgid:     ne.Uint64(meta[boltOffPgid:]),
		txid:     ne.Uint64(meta[boltOffTxid:]),
	}, true
}

// readBoltMeta reads the two meta pages of a bbolt file of the given size
// and returns the valid one with the higher txid, the one bbolt uses. Like
// bbolt, it takes the page size from the first meta page, or tries the
// possible page sizes when that page is invalid.
func readBoltMeta(f io.ReaderAt, size int64) (boltMeta, error) {
	var buf [boltMetaReadSize]byte
	read := func(off int64) (boltMeta, bool) {
		if off < 0 || off+boltMetaReadSize > size {
			return boltMeta{}, false
		}
		if n, _ := f.ReadAt(buf[:], off); n != len(buf) {
			return boltMeta{}, false
		}
		return parseBoltMeta(buf[:])
	}
	best, ok := read(0)
	if ok && best.pageSize >= boltMetaReadSize && best.pageSize <= boltMaxPageSize {
		if m1, ok1 := read(int64(best.pageSize)); ok1 && m1.pageSize == best.pageSize && m1.txid > best.txid {
			best = m1
		}
		return best, nil
	}
	for ps := int64(boltMinPageSize); ps <= boltMaxPageSize; ps <<= 1 {
		if m1, ok1 := read(ps); ok1 && int64(m1.pageSize) == ps {
			return m1, nil
		}
	}
	return boltMeta{}, errors.New("no valid bbolt meta page (not a bbolt file, or corrupt)")
}

// The page header fields that checkBoltPages reads, and bbolt's values.
const (
	boltPageHeaderSize = 16
	boltOffPageFlags   = 8
	boltOffPageCount   = 10
	boltOffPageOver    = 12
	boltFreelistFlag   = 0x10
	boltNoFreelist     = ^uint64(0)
)

// checkBoltPages checks, with plain reads and without locking, what bbolt
// reads when it opens a file read-write: a valid meta page, a file that
// holds every page in use, and a sound freelist page header. An absent or
// empty file passes: bbolt creates it.
//
// Another process may commit while the check reads, and may even reuse the
// freelist page it is looking at; so a failure counts only when the meta
// page has not changed meanwhile.
func checkBoltPages(path string) error {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	} else if err != nil {
		return err
	}
	defer f.Close()
	for try := 0; ; try++ {
		txid, err := checkBoltPagesOnce(f)
		if err == nil || txid < 0 || try == 2 {
			return err
		}
		fi, serr := f.Stat()
		if serr != nil {
			return err
		}
		if m, merr := readBoltMeta(f, fi.Size()); merr != nil || int64(m.txid) == txid {
			return err
		}
	}
}

// checkBoltPagesOnce makes the checks of checkBoltPages once. It returns
// the txid of the meta page it checked, -1 if it found none.
func checkBoltPagesOnce(f *os.File) (txid int64, err error) {
	fi, err := f.Stat()
	if err != nil || fi.Size() == 0 {
		return -1, err
	}
	m, err := readBoltMeta(f, fi.Size())
	if err != nil {
		return -1, err
	}
	// bbolt grows the file before it writes the meta page: stat it again
	// now, after reading the meta page, to compare.
	if fi, err = f.Stat(); err != nil {
		return -1, err
	}
	if m.pgid < 2 || m.pgid > 1<<40 || fi.Size() < int64(m.pgid)*int64(m.pageSize) {
		return int64(m.txid), fmt.Errorf("truncated: %d bytes, but %d pages of %d bytes are in use", fi.Size(), m.pgid, m.pageSize)
	}
	if m.freelist == boltNoFreelist {
		return int64(m.txid), nil
	}
	if m.freelist < 2 || m.freelist >= m.pgid {
		return int64(m.txid), fmt.Errorf("corrupt: freelist page %d outside pages 2..%d", m.freelist, m.pgid-1)
	}
	var hdr [boltPageHeaderSize + 8]byte
	if _, err := f.ReadAt(hdr[:], int64(m.freelist)*int64(m.pageSize)); err != nil {
		return int64(m.txid), fmt.Errorf("corrupt: freelist page %d: %w", m.freelist, err)
	}
	ne := binary.NativeEndian
	if flags := ne.Uint16(hdr[boltOffPageFlags:]); flags != boltFreelistFlag {
		return int64(m.txid), fmt.Errorf("corrupt: freelist page %d has flags %#x", m.freelist, flags)
	}
	pages := uint64(ne.Uint32(hdr[boltOffPageOver:])) + 1
	n := uint64(ne.Uint16(hdr[boltOffPageCount:]))
	if n == 0xFFFF { // the count is the first element
		n = ne.Uint64(hdr[boltPageHeaderSize:]) + 1
	}
	if m.freelist+pages > m.pgid || n > pages*uint64(m.pageSize)/8 ||
		boltPageHeaderSize+8*n > pages*uint64(m.pageSize) {
		return int64(m.txid), fmt.Errorf("corrupt: freelist page %d overflows", m.freelist)
	}
	return int64(m.txid), nil
}
