package hostbreaker

// The tests of store_bbolt_meta.go: readBoltMeta on real files, a torn
// meta page included, and corrupt or truncated files, before a store opens
// them (refused) and after (its operations fail and release the lock). The
// store's other tests, and the boltTest helpers, are in store_bbolt_test.go.

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// boltTestValidFile writes a bbolt store with enough records to span many
// pages and returns its bytes.
func boltTestValidFile(t *testing.T) []byte {
	t.Helper()
	path := boltTestPath(t)
	boltTestOpen(t, path)
	now := time.Now()
	boltTestRaw(t, path, func(tx *bolt.Tx) error {
		b := tx.Bucket(boltCooldowns)
		for i := range 300 {
			r := boltTestRec(fmt.Sprintf("h%d.example", i), "", ReasonManual, now.Add(time.Hour), now)
			r.Note = strings.Repeat("n", 200)
			if err := b.Put(boltTestKey(r), encodeRecord(r)); err != nil {
				return err
			}
		}
		return nil
	})
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func TestBoltCorruptFiles(t *testing.T) {
	valid := boltTestValidFile(t)
	f := bytes.NewReader(valid)
	m, err := readBoltMeta(f, int64(len(valid)))
	if err != nil {
		t.Fatal(err)
	}
	used := int(m.pgid) * int(m.pageSize)
	if used < 8*int(m.pageSize) {
		t.Fatalf("valid file uses only %d pages", m.pgid)
	}
	random := make([]byte, 64<<10)
	_, _ = rand.Read(random)
	garbled := bytes.Clone(valid) // metas intact, every other page random
	_, _ = rand.Read(garbled[2*m.pageSize:])
	if m.freelist != m.pgid-1 {
		t.Fatalf("freelist at page %d of %d", m.freelist, m.pgid)
	}
	garbledData := bytes.Clone(valid) // metas and freelist intact
	_, _ = rand.Read(garbledData[2*m.pageSize : m.freelist*uint64(m.pageSize)])

	cases := map[string][]byte{
		"text":             []byte(strings.Repeat("this is not a bbolt file\n", 1000)),
		"random":           random,
		"truncated half":   valid[:used/2],
		"truncated short":  valid[:100],
		"truncated 1 page": valid[:m.pageSize],
		"garbled pages":    garbled,
		"garbled data":     garbledData,
	}
	for name, data := range cases {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "bad.db")
			if err := os.WriteFile(path, data, 0o600); err != nil {
				t.Fatal(err)
			}
			s, err := openBoltStore(path)
			if err == nil {
				_ = s.Close()
				t.Fatalf("openBoltStore accepted a %s file", name)
			}
			if !strings.Contains(err.Error(), path) {
				t.Errorf("error does not name the path: %v", err)
			}
			t.Log(err)
		})
	}
}

func TestBoltCorruptedAfterOpen(t *testing.T) {
	valid := boltTestValidFile(t)
	m, err := readBoltMeta(bytes.NewReader(valid), int64(len(valid)))
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"truncated", "garbled"} {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "hb.db")
			if err := os.WriteFile(path, valid, 0o600); err != nil {
				t.Fatal(err)
			}
			s := boltTestOpen(t, path)
			if rs := boltTestRecords(t, s); len(rs) != 300 {
				t.Fatalf("got %d records", len(rs))
			}
			if name == "truncated" {
				// Metas intact, data pages beyond the end of the file: bbolt
				// faults on its memory map.
				if err := os.Truncate(path, int64(2*m.pageSize)); err != nil {
					t.Fatal(err)
				}
			} else {
				garbled := bytes.Clone(valid)
				_, _ = rand.Read(garbled[2*m.pageSize:])
				if err := os.WriteFile(path, garbled, 0o600); err != nil {
					t.Fatal(err)
				}
			}
			now := time.Now()
			if err := s.Put(context.Background(), boltTestRec("a.example", "", ReasonManual, now.Add(time.Hour), now)); err == nil {
				t.Error("Put on a corrupt file succeeded")
			} else {
				t.Log(err)
			}
			s.mu.Lock()
			s.snap = nil
			s.mu.Unlock()
			if _, err := s.Records(context.Background()); err == nil {
				t.Error("Records on a corrupt file succeeded")
			} else {
				t.Log(err)
			}
			// The failed operations released the lock. (A read-only open
			// takes a shared lock and does not read the corrupt freelist.)
			db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 500 * time.Millisecond, ReadOnly: true})
			if err == nil {
				_ = db.Close()
			} else if errors.Is(err, berrors.ErrTimeout) {
				t.Error("lock still held after a failed operation")
			}
		})
	}
}

func TestBoltReadMeta(t *testing.T) {
	path := boltTestPath(t)
	s := boltTestOpen(t, path)
	for i := range 3 {
		now := time.Now()
		boltTestPut(t, s, boltTestRec("a.example", strconv.Itoa(i), ReasonManual, now.Add(time.Hour), now))
		var txid int
		db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second, ReadOnly: true})
		if err != nil {
			t.Fatal(err)
		}
		_ = db.View(func(tx *bolt.Tx) error { txid = tx.ID(); return nil })
		_ = db.Close()
		data, _ := os.ReadFile(path)
		m, err := readBoltMeta(bytes.NewReader(data), int64(len(data)))
		if err != nil || m.txid != uint64(txid) {
			t.Errorf("readBoltMeta = %+v, %v; want txid %d", m, err, txid)
		}
		// With the first meta page torn, the second is found by probing.
		torn := bytes.Clone(data)
		torn[boltMetaOff+boltOffTxid] ^= 0xff
		m2, err := readBoltMeta(bytes.NewReader(torn), int64(len(torn)))
		if err != nil || m2.pageSize != m.pageSize {
			t.Errorf("torn meta 0: %+v, %v", m2, err)
		}
	}
}
