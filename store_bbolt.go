package hostbreaker

// This file holds the bbolt Store: one file shared by the processes of a
// machine, opened only for short transactions by a background goroutine.
// The lock-free check of whether the file changed is in store_bbolt_meta.go;
// the Store contract and merge rules in store.go.

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"math"
	"os"
	"path/filepath"
	"runtime/debug"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// boltLockTimeout bounds how long one operation waits for the file lock of
// a bbolt store. bbolt polls the lock every 50 ms and gives up once less
// than 50 ms of the timeout is left, so 150 ms makes three attempts over
// about 100 ms. It must never be zero: zero waits forever.
const boltLockTimeout = 150 * time.Millisecond

// boltFileMode is the permission of a bbolt store file that openBoltStore
// creates.
const boltFileMode = 0o600

// boltPruneInterval is the least time between two prunes of a bbolt file
// by one process: a write deletes the expired entries of the whole file
// only when the process's last prune of that file is this old, so that a
// write holds the file lock for the time of a write whatever the number of
// records. Expired entries left in the file meanwhile are never returned.
const boltPruneInterval = time.Second

// The buckets of a bbolt store.
var (
	// boltCooldowns maps host + "\x00" + slot (see recordSlot) to
	// encodeRecord of a cooldown or shared breaker trip.
	boltCooldowns = []byte("cooldowns")
	// boltResets maps a host to encodeRecord of its reset marker.
	boltResets = []byte("resets")
	// boltStates maps a source to encodeStates of what it published.
	boltStates = []byte("states")
	// boltJournal maps boltJournalKey of an event to its encodeEvent. It
	// is created by the first AppendEvents, and only AppendEvents writes
	// it. Its sequence (NextSequence) numbers the events appended.
	boltJournal = []byte("journal")
	// boltJournalInfo holds, under boltJournalCount, the number of
	// entries of boltJournal as 8 big-endian bytes, so that AppendEvents
	// enforces MaxEvents without counting them.
	boltJournalInfo  = []byte("journal-info")
	boltJournalCount = []byte("count")
	// boltOverrides maps a Hosts key to encodeOverride of its tuned
	// override. It is created by the first PutOverride, and only
	// PutOverride writes it. Nothing in it expires.
	boltOverrides = []byte("overrides")
	// boltConfigs maps a source to encodeConfig of the configuration it
	// published. It is created by the first PublishConfig, which alone
	// writes and prunes it; reads of the other buckets leave it alone.
	boltConfigs = []byte("configs")
)

// errBoltClosed is wrapped by every call made on a bbolt store after Close.
var errBoltClosed = errors.New("store is closed")

// boltStore is the [Store] kept in a bbolt file on one machine.
//
// It never keeps the file open: bbolt holds an exclusive lock for as long
// as a read-write handle is open, so every operation opens the file, runs
// one transaction and closes it, waiting at most boltLockTimeout for the
// lock. Many processes, and many boltStores in one process, can thus share
// one file. A lock that cannot be taken in time is an error that wraps
// bbolt's ErrTimeout; the caller tries again later.
//
// Reads are cached: Records, States and Overrides first read the
// transaction id from the file's meta pages without taking the lock, and
// reuse the last full read when it has not changed.
//
// Writes prune expired entries at most once per boltPruneInterval per
// process and file (see boltFile); in between, a Put only tidies the host it
// writes.
//
// The journal has buckets of its own, which the cache and the prunes leave
// alone: AppendEvents enforces its limits, and Events reads it afresh each
// time. An append is a write like any other, though: the next Records or
// States of every process reads the file again.
type boltStore struct {
	path string        // absolute path of the file
	file *boltFile     // this process's state of the file, shared with other boltStores of path
	sem  chan struct{} // file.sem

	closed atomic.Bool

	mu   sync.Mutex    // guards snap
	snap *boltSnapshot // the last full read, nil before the first

	fullReads atomic.Int64 // number of full reads, for tests
	prunes    atomic.Int64 // number of prunes of the whole file, for tests

	turnsMu  sync.Mutex // guards turnFile
	turnFile *turnFile  // the shared turns (store_bbolt_turns.go), nil until the first
}

// boltSnapshot is the decoded content of a bbolt store at one transaction.
type boltSnapshot struct {
	txid    uint64      // meta txid that the read transaction saw
	file    os.FileInfo // identity of the file read, nil if unknown
	records []Record    // cooldowns and reset markers, unexpired when read
	states  []boltStatesEntry
	// overrides holds the tuned overrides by Hosts key; never nil. Its
	// policies are shared: Overrides returns copies.
	overrides map[string]Policy
}

// boltStatesEntry is what one source published, with its expiry.
type boltStatesEntry struct {
	expires time.Time
	states  []PublishedState
}

// boltFile is what the boltStores of one process share about one file.
type boltFile struct {
	// sem serializes this process's opens of the file. flock excludes two
	// handles of one process as it does two processes, but bbolt only
	// polls it every 50 ms; waiting on a channel instead lets the
	// goroutines and stores of one process take turns promptly and keeps
	// the lock timeout for contention with other processes.
	sem chan struct{}
	// lastPrune is the wall time, in Unix nanoseconds, of this process's
	// last prune of the file; zero before the first. Written while sem is
	// held.
	lastPrune atomic.Int64
}

// boltFiles holds one boltFile per absolute path, shared by every
// boltStore of the process; see boltFileOf.
var boltFiles struct {
	sync.Mutex
	m map[string]*boltFile
}

// boltFileOf returns this process's boltFile of the file at path.
func boltFileOf(path string) *boltFile {
	boltFiles.Lock()
	defer boltFiles.Unlock()
	if boltFiles.m == nil {
		boltFiles.m = make(map[string]*boltFile)
	}
	f, ok := boltFiles.m[path]
	if !ok {
		f = &boltFile{sem: make(chan struct{}, 1)}
		boltFiles.m[path] = f
	}
	return f
}

// openBoltStore opens the bbolt store at path, creating the file and its
// buckets if it is absent. The parent directory must exist. An existing file
// must be a sound bbolt file: one that is not, or that is truncated, is an
// error naming the path.
func openBoltStore(path string) (Store, error) {
	if path == "" {
		return nil, errors.New("bbolt store: empty path")
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("bbolt store %s: %w", path, err)
	}
	dir := filepath.Dir(abs)
	if st, err := os.Stat(dir); err != nil {
		return nil, fmt.Errorf("bbolt store %s: parent directory: %w", abs, err)
	} else if !st.IsDir() {
		return nil, fmt.Errorf("bbolt store %s: parent %s is not a directory", abs, dir)
	}
	existed := false
	if st, err := os.Stat(abs); err == nil {
		if !st.Mode().IsRegular() {
			return nil, fmt.Errorf("bbolt store %s: not a regular file", abs)
		}
		if st.Size() > 0 {
			existed = true
			if err := checkBoltPages(abs); errors.Is(err, fs.ErrPermission) {
				return nil, fmt.Errorf("bbolt store %s: %w", abs, err)
			} else if err != nil {
				return nil, fmt.Errorf("bbolt store %s: not a valid bbolt file: %w", abs, err)
			}
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("bbolt store %s: %w", abs, err)
	}

	file := boltFileOf(abs)
	s := &boltStore{path: abs, file: file, sem: file.sem}
	ctx := context.Background()
	if existed {
		// Check the file under a shared lock, and write only if buckets
		// are missing: a write would make every process read it again.
		complete := false
		err = s.run(ctx, true, func(tx *bolt.Tx) error {
			complete = boltHasBuckets(tx)
			return boltWalk(tx)
		})
		if err == nil && !complete {
			err = s.run(ctx, false, boltInit)
			if errors.Is(err, fs.ErrPermission) {
				err = nil // read-only to this process; a writer adds them
			}
		}
	} else {
		err = s.run(ctx, false, boltInit)
	}
	switch {
	case err == nil:
	case errors.Is(err, berrors.ErrTimeout):
		// Another process holds the lock. The meta pages checked above, or
		// the ones that process has written since, vouch for the file;
		// missing buckets are created by the first write.
		if cerr := checkBoltPages(abs); cerr != nil {
			return nil, fmt.Errorf("bbolt store %s: open: %w", abs, err)
		}
	case errors.Is(err, fs.ErrPermission):
		return nil, fmt.Errorf("bbolt store %s: open: %w", abs, err)
	case existed:
		return nil, fmt.Errorf("bbolt store %s: not a valid bbolt file: %w", abs, err)
	default:
		return nil, fmt.Errorf("bbolt store %s: create: %w", abs, err)
	}
	return s, nil
}

// boltInit creates the buckets of a store that lacks them and reads every
// entry, so that a corrupt file fails now rather than on first use.
func boltInit(tx *bolt.Tx) error {
	for _, name := range [][]byte{boltCooldowns, boltResets, boltStates} {
		if _, err := tx.CreateBucketIfNotExists(name); err != nil {
			return err
		}
	}
	return boltWalk(tx)
}

// boltHasBuckets reports whether the store's buckets all exist.
func boltHasBuckets(tx *bolt.Tx) bool {
	for _, name := range [][]byte{boltCooldowns, boltResets, boltStates} {
		if tx.Bucket(name) == nil {
			return false
		}
	}
	return true
}

// boltWalk reads every entry of the store's buckets and of the overrides,
// to find corruption.
func boltWalk(tx *bolt.Tx) error {
	for _, name := range [][]byte{boltCooldowns, boltResets, boltStates, boltOverrides, boltConfigs} {
		if b := tx.Bucket(name); b != nil {
			if err := b.ForEach(func(k, v []byte) error { return nil }); err != nil {
				return err
			}
		}
	}
	return nil
}

// run opens the file, runs fn in one transaction (read-only when readOnly)
// and closes the file. It waits for the lock at most boltLockTimeout, or
// until ctx is done if that comes first.
func (s *boltStore) run(ctx context.Context, readOnly bool, fn func(*bolt.Tx) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	select {
	case s.sem <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { <-s.sem }()
	timeout := boltLockTimeout
	if dl, ok := ctx.Deadline(); ok {
		d := time.Until(dl)
		if d <= 0 {
			return context.DeadlineExceeded
		}
		timeout = min(timeout, d)
	}
	return boltRun(s.path, readOnly, timeout, fn)
}

// boltRun opens the bbolt file at path, runs fn in one transaction and
// closes it. A panic in bbolt, which a corrupt file can cause, including a
// fault on the memory map of a truncated file, is returned as an error.
//
// A read-write open is preceded by checkBoltPages: bbolt reads the freelist
// while it opens a file read-write, and a panic there, before bolt.Open
// returns, would leave the file mapped with no handle to unmap it. On Linux
// the mapping keeps the flock of its open file, so the file would stay
// locked for the life of the process. A panic in a transaction is safe: the
// DB is closed, which unlocks and unmaps.
func boltRun(path string, readOnly bool, timeout time.Duration, fn func(*bolt.Tx) error) (err error) {
	if !readOnly {
		if err := checkBoltPages(path); err != nil {
			return err
		}
	}
	var (
		file *os.File
		db   *bolt.DB
	)
	// Turn faults on the memory map into panics that recover can catch.
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		r := recover()
		if r == nil {
			return
		}
		err = fmt.Errorf("corrupt database (bbolt panicked: %v)", r)
		if db == nil {
			if file != nil {
				_ = file.Close()
			}
			return
		}
		// bbolt's managed transactions roll back on a panic, so Close does
		// not block; still, never wait for it forever.
		done := make(chan struct{})
		go func() {
			defer close(done)
			defer func() { _ = recover() }()
			_ = db.Close()
		}()
		select {
		case <-done:
		case <-time.After(time.Second):
		}
	}()
	opts := &bolt.Options{
		Timeout:      timeout,
		ReadOnly:     readOnly,
		NoStatistics: true,
		OpenFile: func(name string, flag int, perm os.FileMode) (*os.File, error) {
			f, err := os.OpenFile(name, flag, perm)
			if err == nil {
				file = f
			}
			return f, err
		},
	}
	db, err = bolt.Open(path, boltFileMode, opts)
	if err != nil {
		return err
	}
	inner := fn
	fn = func(tx *bolt.Tx) error {
		// A file shorter than the pages in use would make bbolt read past
		// its memory map, possibly into other memory, rather than fault.
		if fi, err := file.Stat(); err != nil {
			return err
		} else if fi.Size() < tx.Size() {
			return fmt.Errorf("truncated: %d bytes, but %d are in use", fi.Size(), tx.Size())
		}
		return inner(tx)
	}
	if readOnly {
		err = db.View(fn)
	} else {
		err = db.Update(fn)
	}
	if cerr := db.Close(); err == nil && cerr != nil {
		err = cerr
	}
	return err
}

// check returns an error if the store is closed.
func (s *boltStore) check(ctx context.Context, op string) error {
	if s.closed.Load() {
		return fmt.Errorf("bbolt store %s: %s: %w", s.path, op, errBoltClosed)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("bbolt store %s: %s: %w", s.path, op, err)
	}
	return nil
}

// Records returns the unexpired cooldowns and reset markers. When the file
// has not changed since the last full read, it answers from that read
// without taking the file lock.
func (s *boltStore) Records(ctx context.Context) ([]Record, error) {
	if err := s.check(ctx, "records"); err != nil {
		return nil, err
	}
	snap, err := s.snapshot(ctx, "records")
	if err != nil {
		return nil, err
	}
	now := time.Now()
	out := make([]Record, 0, len(snap.records))
	for _, r := range snap.records {
		if r.Until.After(now) {
			out = append(out, r)
		}
	}
	return out, nil
}

// States returns the unexpired states published by every source. Like
// Records, it answers from the last full read when the file has not changed.
func (s *boltStore) States(ctx context.Context) ([]PublishedState, error) {
	if err := s.check(ctx, "states"); err != nil {
		return nil, err
	}
	snap, err := s.snapshot(ctx, "states")
	if err != nil {
		return nil, err
	}
	now := time.Now()
	var out []PublishedState
	for _, e := range snap.states {
		if e.expires.After(now) {
			out = append(out, e.states...)
		}
	}
	if out == nil {
		out = []PublishedState{}
	}
	return out, nil
}

// poll returns what Records, States and Overrides would, from one
// snapshot: the file is read only when it changed since the last read.
func (s *boltStore) poll(ctx context.Context) (storePoll, error) {
	if err := s.check(ctx, "poll"); err != nil {
		return storePoll{}, err
	}
	snap, err := s.snapshot(ctx, "poll")
	if err != nil {
		return storePoll{}, err
	}
	now := time.Now()
	out := storePoll{records: make([]Record, 0, len(snap.records)), overrides: make(map[string]Policy, len(snap.overrides))}
	for _, r := range snap.records {
		if r.Until.After(now) {
			out.records = append(out.records, r)
		}
	}
	for _, e := range snap.states {
		if e.expires.After(now) {
			out.states = append(out.states, e.states...)
		}
	}
	for k, p := range snap.overrides {
		out.overrides[k] = cloneTuned(p)
	}
	return out, nil
}

// snapshot returns the cached read if the file is unchanged, or reads it.
// The result is shared and must not be modified.
func (s *boltStore) snapshot(ctx context.Context, op string) (*boltSnapshot, error) {
	if snap := s.cached(); snap != nil {
		return snap, nil
	}
	return s.load(ctx, op)
}

// cached returns the last full read if the file is the same one and its
// transaction id has not changed since, or nil. It reads the meta pages
// with plain reads and takes no lock: bbolt writes the meta page last, so a
// txid that has not moved means the content has not either.
func (s *boltStore) cached() *boltSnapshot {
	s.mu.Lock()
	snap := s.snap
	s.mu.Unlock()
	if snap == nil || snap.file == nil {
		return nil
	}
	f, err := os.Open(s.path)
	if err != nil {
		return nil
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil || !os.SameFile(fi, snap.file) {
		return nil
	}
	m, err := readBoltMeta(f, fi.Size())
	if err != nil || m.txid != snap.txid {
		return nil
	}
	return snap
}

// load reads the whole store in one read-only transaction and caches it.
func (s *boltStore) load(ctx context.Context, op string) (*boltSnapshot, error) {
	s.fullReads.Add(1)
	snap := &boltSnapshot{overrides: map[string]Policy{}}
	if fi, err := os.Stat(s.path); err == nil {
		snap.file = fi
	}
	err := s.run(ctx, true, func(tx *bolt.Tx) error {
		snap.txid = uint64(tx.ID())
		now := time.Now()
		snap.records = boltReadRecords(tx, now)
		clear(snap.overrides)
		if b := tx.Bucket(boltOverrides); b != nil {
			_ = b.ForEach(func(k, v []byte) error {
				if key, p, err := decodeOverride(v); err == nil && key == string(k) {
					snap.overrides[key] = p
				}
				return nil
			})
		}
		if b := tx.Bucket(boltStates); b != nil {
			_ = b.ForEach(func(k, v []byte) error {
				if _, states, expires, err := decodeStates(v); err == nil && expires.After(now) {
					snap.states = append(snap.states, boltStatesEntry{expires: expires, states: states})
				}
				return nil
			})
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("bbolt store %s: %s: %w", s.path, op, err)
	}
	s.mu.Lock()
	if old := s.snap; old == nil || old.file == nil || snap.file == nil ||
		!os.SameFile(old.file, snap.file) || snap.txid >= old.txid {
		s.snap = snap
	}
	s.mu.Unlock()
	return snap, nil
}

// boltReadRecords returns the records and reset markers of every host that
// have not expired at now. Each host is read as Put reads it (see
// appendStored).
func boltReadRecords(tx *bolt.Tx, now time.Time) []Record {
	markers := make(map[string][]byte)
	if b := tx.Bucket(boltResets); b != nil {
		_ = b.ForEach(func(k, v []byte) error {
			markers[string(k)] = v
			return nil
		})
	}
	var out []Record
	var host []byte
	var values [][]byte
	add := func() {
		h := string(host)
		out = appendStored(out, h, values, markers[h], now)
		delete(markers, h)
	}
	if b := tx.Bucket(boltCooldowns); b != nil {
		// Keys are sorted and no host holds a NUL, so each host's entries
		// are contiguous.
		_ = b.ForEach(func(k, v []byte) error {
			h, _, ok := bytes.Cut(k, []byte{0})
			if !ok {
				return nil // not a key this package writes
			}
			if values != nil && !bytes.Equal(h, host) {
				add()
				values = values[:0]
			}
			host = h
			values = append(values, v)
			return nil
		})
		if len(values) > 0 {
			add()
		}
	}
	for _, h := range slices.Sorted(maps.Keys(markers)) {
		out = appendStored(out, h, nil, markers[h], now)
	}
	return out
}

// validateBoltRecord returns an error if r cannot be stored as it is.
func validateBoltRecord(r Record) error {
	if h, err := normalizeHost("", r.Host); err != nil || h != r.Host {
		return fmt.Errorf("invalid host %q: want a normalized host", r.Host)
	}
	if r.Until.IsZero() {
		return fmt.Errorf("record for %s has no Until", r.Host)
	}
	if r.At.IsZero() {
		return fmt.Errorf("record for %s has no At", r.Host)
	}
	if _, err := decodeRecord(encodeRecord(r)); err != nil {
		return fmt.Errorf("record for %s cannot be stored: %w", r.Host, err)
	}
	return nil
}

// boltHostPrefix is the prefix of the keys of host's entries in the
// cooldowns bucket; an entry's name (its slot) follows. A normalized host
// holds no NUL byte, so the prefix is unambiguous.
func boltHostPrefix(host string) []byte {
	return []byte(host + "\x00")
}

// errBoltNoWrite rolls back a write transaction that changed nothing, so
// that the file, and the other processes' cached reads, stay as they are.
var errBoltNoWrite = errors.New("nothing to write")

// Put writes r, merging it with the host's records as [Store] documents
// (the rules are putStored's): it reads the host's entries and marker,
// merges r, and writes the difference, which also deletes the host's
// expired records and junk. It prunes the whole file in the same
// transaction when the last prune is boltPruneInterval old. A Put that
// changes nothing rolls back: it writes nothing to the file.
func (s *boltStore) Put(ctx context.Context, r Record) error {
	if err := s.check(ctx, "put"); err != nil {
		return err
	}
	if err := validateBoltRecord(r); err != nil {
		return fmt.Errorf("bbolt store %s: put: %w", s.path, err)
	}
	err := s.run(ctx, false, func(tx *bolt.Tx) error {
		now := time.Now()
		cooldowns, resets, _, err := boltBuckets(tx)
		if err != nil {
			return err
		}
		prefix := boltHostPrefix(r.Host)
		entries := make(map[string][]byte)
		c := cooldowns.Cursor()
		for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
			entries[string(k[len(prefix):])] = v
		}
		// putStored reads every value before the first write below.
		w := putStored(entries, resets.Get([]byte(r.Host)), r, now)
		for _, name := range w.del {
			if err := cooldowns.Delete(append(slices.Clip(prefix), name...)); err != nil {
				return err
			}
		}
		for name, v := range w.put {
			if err := cooldowns.Put(append(slices.Clip(prefix), name...), v); err != nil {
				return err
			}
		}
		if w.marker != nil {
			if err := resets.Put([]byte(r.Host), w.marker); err != nil {
				return err
			}
		} else if w.delMarker {
			if err := resets.Delete([]byte(r.Host)); err != nil {
				return err
			}
		}
		pruned, err := s.prune(tx, now)
		if err != nil {
			return err
		}
		if w.none() && pruned == 0 {
			return errBoltNoWrite
		}
		return nil
	})
	if errors.Is(err, errBoltNoWrite) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("bbolt store %s: put %s: %w", s.path, r.Host, err)
	}
	return nil
}

// prune deletes the expired entries of the file, as boltPrune does, when
// this process's last prune of the file is at least boltPruneInterval
// before now (or after it: the clock was set back). It returns the number
// of entries deleted. It must run in a write transaction, under s.sem.
func (s *boltStore) prune(tx *bolt.Tx, now time.Time) (int, error) {
	last := s.file.lastPrune.Load()
	if d := now.UnixNano() - last; last != 0 && d >= 0 && d < int64(boltPruneInterval) {
		return 0, nil
	}
	s.file.lastPrune.Store(now.UnixNano())
	s.prunes.Add(1)
	return boltPrune(tx, now)
}

// boltBuckets returns the store's buckets in a writable transaction,
// creating those that are missing.
func boltBuckets(tx *bolt.Tx) (cooldowns, resets, states *bolt.Bucket, err error) {
	if cooldowns, err = tx.CreateBucketIfNotExists(boltCooldowns); err != nil {
		return
	}
	if resets, err = tx.CreateBucketIfNotExists(boltResets); err != nil {
		return
	}
	states, err = tx.CreateBucketIfNotExists(boltStates)
	return
}

// boltPrune deletes the expired records, markers and states of the whole
// file, and the junk: entries that neither decode nor are kept by
// keepForeign. It returns the number of entries deleted.
func boltPrune(tx *bolt.Tx, now time.Time) (int, error) {
	deleted := 0
	expired := func(name []byte, isExpired func(v []byte) bool) error {
		b := tx.Bucket(name)
		if b == nil {
			return nil
		}
		var del [][]byte
		if err := b.ForEach(func(k, v []byte) error {
			if v != nil && isExpired(v) {
				del = append(del, bytes.Clone(k))
			}
			return nil
		}); err != nil {
			return err
		}
		for _, k := range del {
			if err := b.Delete(k); err != nil {
				return err
			}
		}
		deleted += len(del)
		return nil
	}
	record := func(v []byte) bool {
		if r, err := decodeRecord(v); err == nil {
			return !r.Until.After(now)
		}
		_, keep := keepForeign(v, now)
		return !keep
	}
	states := func(v []byte) bool {
		if _, _, expires, err := decodeStates(v); err == nil {
			return !expires.After(now)
		}
		_, keep := keepForeign(v, now)
		return !keep
	}
	if err := expired(boltCooldowns, record); err != nil {
		return deleted, err
	}
	if err := expired(boltResets, record); err != nil {
		return deleted, err
	}
	err := expired(boltStates, states)
	return deleted, err
}

// PublishStates replaces what source published with states, valid for ttl.
// Like Put, it prunes the whole file in the same transaction when the last
// prune is boltPruneInterval old.
func (s *boltStore) PublishStates(ctx context.Context, source string, states []PublishedState, ttl time.Duration) error {
	if err := s.check(ctx, "publish states"); err != nil {
		return err
	}
	if source == "" {
		return fmt.Errorf("bbolt store %s: publish states: empty source", s.path)
	}
	if ttl <= 0 {
		return fmt.Errorf("bbolt store %s: publish states of %s: ttl %v is not positive", s.path, source, ttl)
	}
	if _, _, _, err := decodeStates(encodeStates(source, states, time.Now().Add(ttl))); err != nil {
		return fmt.Errorf("bbolt store %s: publish states of %s: %w", s.path, source, err)
	}
	err := s.run(ctx, false, func(tx *bolt.Tx) error {
		now := time.Now()
		_, _, b, err := boltBuckets(tx)
		if err != nil {
			return err
		}
		if err := b.Put([]byte(source), encodeStates(source, states, now.Add(ttl))); err != nil {
			return err
		}
		_, err = s.prune(tx, now)
		return err
	})
	if err != nil {
		return fmt.Errorf("bbolt store %s: publish states of %s: %w", s.path, source, err)
	}
	return nil
}

// boltJournalKeyLen is the length of a key of the journal bucket.
const boltJournalKeyLen = 16

// boltJournalChunk is the size of the buffers that Events copies entries to.
const boltJournalChunk = 1 << 20

// boltJournalKey returns the journal key of an event whose Time is ns Unix
// nanoseconds and that the journal numbered seq: ns as 8 big-endian bytes
// with the sign bit flipped, so that keys sort in time order (times before
// 1970 included), then seq as 8 big-endian bytes, which makes the key
// unique among the events of one nanosecond.
func boltJournalKey(ns int64, seq uint64) []byte {
	k := make([]byte, boltJournalKeyLen)
	binary.BigEndian.PutUint64(k, uint64(ns)^(1<<63))
	binary.BigEndian.PutUint64(k[8:], seq)
	return k
}

// boltJournalFrom returns the least journal key of the events whose Time is
// at or after t.
func boltJournalFrom(t time.Time) []byte {
	switch {
	case t.Before(time.Unix(0, math.MinInt64)):
		return boltJournalKey(math.MinInt64, 0)
	case t.After(time.Unix(0, math.MaxInt64)):
		return bytes.Repeat([]byte{0xff}, boltJournalKeyLen+1) // after every key
	}
	return boltJournalKey(t.UnixNano(), 0)
}

// AppendEvents appends events to the journal bucket and enforces limits, as
// [Store] documents, in one write transaction: it skips (and counts as
// dropped) the events already older than limits.Retention, puts the
// others under their boltJournalKey, deletes the entries whose key is
// older than limits.Retention, then the first entries beyond
// limits.MaxEvents, and updates the count in boltJournalInfo. Entries that
// do not decode are dropped like the others, by their key. A batch that
// neither adds nor drops anything rolls back.
func (s *boltStore) AppendEvents(ctx context.Context, events []Event, limits JournalLimits) (int, error) {
	if err := s.check(ctx, "append events"); err != nil {
		return 0, err
	}
	if err := checkJournalEvents(events); err != nil {
		return 0, fmt.Errorf("bbolt store %s: append events: %w", s.path, err)
	}
	values := make([][]byte, len(events))
	for i, ev := range events {
		values[i] = encodeEvent(ev)
	}
	dropped := 0
	err := s.run(ctx, false, func(tx *bolt.Tx) error {
		dropped = 0
		now := time.Now()
		b, err := tx.CreateBucketIfNotExists(boltJournal)
		if err != nil {
			return err
		}
		info, err := tx.CreateBucketIfNotExists(boltJournalInfo)
		if err != nil {
			return err
		}
		// Keys mostly arrive in order, at the end: fill the pages.
		b.FillPercent = 0.9
		count, ok := boltJournalCountOf(info)
		if !ok {
			count = boltJournalRecount(b)
		}
		var (
			oldest time.Time // events before it are older than limits.Retention
			cutoff []byte    // the keys of those events are before it
		)
		if limits.Retention > 0 {
			oldest = now.Add(-limits.Retention)
			cutoff = boltJournalFrom(oldest)
		}
		added := 0
		for i, ev := range events {
			if ev.Time.Before(oldest) {
				dropped++
				continue
			}
			seq, err := b.NextSequence()
			if err != nil {
				return err
			}
			if err := b.Put(boltJournalKey(ev.Time.UnixNano(), seq), values[i]); err != nil {
				return err
			}
			added++
		}
		count += uint64(added)
		// The entries to drop are the first ones, in key order: those
		// before cutoff, then as many more as exceed MaxEvents.
		var del, delBuckets [][]byte
		c := b.Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			n := uint64(len(del) + len(delBuckets))
			old := cutoff != nil && bytes.Compare(k, cutoff) < 0
			over := limits.MaxEvents > 0 && count > n && count-n > uint64(limits.MaxEvents)
			if !old && !over {
				break
			}
			if v == nil { // a nested bucket: not written by this package
				delBuckets = append(delBuckets, bytes.Clone(k))
			} else {
				del = append(del, bytes.Clone(k))
			}
		}
		for _, k := range del {
			if err := b.Delete(k); err != nil {
				return err
			}
		}
		for _, k := range delBuckets {
			if err := b.DeleteBucket(k); err != nil {
				return err
			}
		}
		n := len(del) + len(delBuckets)
		dropped += n
		count -= min(count, uint64(n))
		if added == 0 && n == 0 {
			return errBoltNoWrite
		}
		return info.Put(boltJournalCount, binary.BigEndian.AppendUint64(nil, count))
	})
	if errors.Is(err, errBoltNoWrite) {
		return dropped, nil
	}
	if err != nil {
		return 0, fmt.Errorf("bbolt store %s: append events: %w", s.path, err)
	}
	return dropped, nil
}

// boltJournalCountOf returns the count of journal entries kept in info.
func boltJournalCountOf(info *bolt.Bucket) (uint64, bool) {
	v := info.Get(boltJournalCount)
	if len(v) != 8 {
		return 0, false
	}
	return binary.BigEndian.Uint64(v), true
}

// boltJournalRecount counts the entries of the journal bucket b, for a
// file whose count is missing.
func boltJournalRecount(b *bolt.Bucket) uint64 {
	var n uint64
	c := b.Cursor()
	for k, _ := c.First(); k != nil; k, _ = c.Next() {
		n++
	}
	return n
}

// Events returns the journal's events whose Time is at or after since, in
// time order (events of one nanosecond in the order they were appended).
// It copies the entries from the key of since on in one read-only
// transaction and decodes them after it ends (see decodeJournal), so that
// the file lock is held for the time of a copy, not of the decoding.
// Entries that do not decode, or whose key is not one AppendEvents
// writes, are skipped.
func (s *boltStore) Events(ctx context.Context, since time.Time) ([]Event, error) {
	if err := s.check(ctx, "events"); err != nil {
		return nil, err
	}
	var values [][]byte
	err := s.run(ctx, true, func(tx *bolt.Tx) error {
		values = values[:0]
		b := tx.Bucket(boltJournal)
		if b == nil {
			return nil
		}
		// Values live in the memory map only until the transaction ends:
		// copy them to chunks of boltJournalChunk bytes, which, unlike one
		// growing buffer, are never copied again.
		var chunk []byte
		c := b.Cursor()
		for k, v := c.Seek(boltJournalFrom(since)); k != nil; k, v = c.Next() {
			if len(k) != boltJournalKeyLen || v == nil {
				continue
			}
			if cap(chunk)-len(chunk) < len(v) {
				chunk = make([]byte, 0, max(boltJournalChunk, len(v)))
			}
			chunk = append(chunk, v...)
			values = append(values, chunk[len(chunk)-len(v):len(chunk):len(chunk)])
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("bbolt store %s: events: %w", s.path, err)
	}
	return decodeJournal(values, since), nil
}

// Overrides returns the tuned overrides. Like Records, it answers from the
// last full read when the file has not changed. Entries that do not decode
// as the override of their key are skipped.
func (s *boltStore) Overrides(ctx context.Context) (map[string]Policy, error) {
	if err := s.check(ctx, "overrides"); err != nil {
		return nil, err
	}
	snap, err := s.snapshot(ctx, "overrides")
	if err != nil {
		return nil, err
	}
	out := make(map[string]Policy, len(snap.overrides))
	for key, p := range snap.overrides {
		out[key] = cloneTuned(p)
	}
	return out, nil
}

// PutOverride replaces the override of key with p, or deletes it when p
// sets no tunable field, as [Store] documents. A write changes the file's
// transaction id, so the next read of every process that shares the file
// reads it again; a PutOverride that changes nothing rolls back.
func (s *boltStore) PutOverride(ctx context.Context, key string, p Policy) error {
	if err := s.check(ctx, "put override"); err != nil {
		return err
	}
	if err := checkOverrideKey(key); err != nil {
		return fmt.Errorf("bbolt store %s: put override: %w", s.path, err)
	}
	p, err := tunedPolicy(p)
	if err != nil {
		return fmt.Errorf("bbolt store %s: put override of %s: %w", s.path, key, err)
	}
	var v []byte // nil: delete
	if !emptyTuned(p) {
		v = encodeOverride(key, p)
	}
	err = s.run(ctx, false, func(tx *bolt.Tx) error {
		if v == nil && tx.Bucket(boltOverrides) == nil {
			return errBoltNoWrite
		}
		b, err := tx.CreateBucketIfNotExists(boltOverrides)
		if err != nil {
			return err
		}
		old := b.Get([]byte(key))
		switch {
		case v == nil && old == nil, v != nil && bytes.Equal(old, v):
			return errBoltNoWrite
		case v == nil:
			return b.Delete([]byte(key))
		default:
			return b.Put([]byte(key), v)
		}
	})
	if errors.Is(err, errBoltNoWrite) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("bbolt store %s: put override of %s: %w", s.path, key, err)
	}
	return nil
}

// PublishConfig replaces the configuration of c.Source with c, as [Store]
// documents, and in the same transaction drops the configurations kept
// past configRetention or beyond configKeep, and the junk.
func (s *boltStore) PublishConfig(ctx context.Context, c PublishedConfig, ttl time.Duration) error {
	if err := s.check(ctx, "publish config"); err != nil {
		return err
	}
	if _, err := checkPublishedConfig(c, ttl, time.Now()); err != nil {
		return fmt.Errorf("bbolt store %s: publish config of %q: %w", s.path, c.Source, err)
	}
	err := s.run(ctx, false, func(tx *bolt.Tx) error {
		now := time.Now()
		b, err := tx.CreateBucketIfNotExists(boltConfigs)
		if err != nil {
			return err
		}
		if err := b.Put([]byte(c.Source), encodeConfig(c, now.Add(ttl))); err != nil {
			return err
		}
		expires := make(map[string]time.Time)
		var junk [][]byte
		if err := b.ForEach(func(k, v []byte) error {
			if src, exp, ok := configHeader(v); ok && src == string(k) {
				expires[src] = exp
			} else {
				junk = append(junk, bytes.Clone(k))
			}
			return nil
		}); err != nil {
			return err
		}
		for _, src := range stoppedBeyondKeep(expires, now) {
			junk = append(junk, []byte(src))
		}
		for _, k := range junk {
			if err := b.Delete(k); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("bbolt store %s: publish config of %q: %w", s.path, c.Source, err)
	}
	return nil
}

// Configs returns the configurations kept, running or stopped, reading
// the file afresh.
func (s *boltStore) Configs(ctx context.Context) ([]PublishedConfig, error) {
	if err := s.check(ctx, "configs"); err != nil {
		return nil, err
	}
	var values [][]byte
	var keys []string
	err := s.run(ctx, true, func(tx *bolt.Tx) error {
		if b := tx.Bucket(boltConfigs); b != nil {
			return b.ForEach(func(k, v []byte) error {
				keys, values = append(keys, string(k)), append(values, bytes.Clone(v))
				return nil
			})
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("bbolt store %s: configs: %w", s.path, err)
	}
	return decodeConfigs(keys, values, time.Now()), nil
}

// Changes returns nil: a bbolt store is polled.
func (s *boltStore) Changes() <-chan struct{} { return nil }

// Close marks the store closed; later calls of its other methods return an
// error. It holds no file open but its turns file, which it closes.
// Closing twice is not an error.
func (s *boltStore) Close() error {
	s.closed.Store(true)
	s.closeTurns()
	s.mu.Lock()
	s.snap = nil
	s.mu.Unlock()
	return nil
}
