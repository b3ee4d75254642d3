package hostbreaker

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// boltTestFind returns the record of (host, role, reason) in rs.
func boltTestFind(rs []Record, host, role string, reason Reason) (Record, bool) {
	for _, r := range rs {
		if r.Host == host && r.Role == role && r.Reason == reason {
			return r, true
		}
	}
	return Record{}, false
}

func TestBoltCreateAndReopen(t *testing.T) {
	path := boltTestPath(t)
	s1, err := openBoltStore(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("file not created: %v", err)
	}
	now := time.Now()
	want := Record{Host: "api.example.com:8443", Role: "write", Reason: ReasonManual,
		Until: now.Add(time.Hour), At: now, Note: "maintenance", Source: "proc-1"}
	boltTestPut(t, s1, want)
	if err := s1.Close(); err != nil {
		t.Fatal(err)
	}

	for _, url := range []string{path, "bolt://" + path} {
		s2, err := OpenStore(url)
		if err != nil {
			t.Fatalf("OpenStore(%q): %v", url, err)
		}
		rs := boltTestRecords(t, s2)
		if len(rs) != 1 {
			t.Fatalf("%s: got %d records, want 1: %+v", url, len(rs), rs)
		}
		got := rs[0]
		if got.Host != want.Host || got.Role != want.Role || got.Reason != want.Reason || got.Note != want.Note ||
			got.Source != want.Source || !got.Until.Equal(want.Until) || !got.At.Equal(want.At) {
			t.Errorf("%s: got %+v, want %+v", url, got, want)
		}
		if s2.Changes() != nil {
			t.Error("Changes() != nil")
		}
		_ = s2.Close()
	}
}

func TestBoltOpenErrors(t *testing.T) {
	if _, err := openBoltStore(""); err == nil {
		t.Error("empty path: no error")
	}
	dir := t.TempDir()
	missing := filepath.Join(dir, "nope", "hb.db")
	_, err := openBoltStore(missing)
	if err == nil || !strings.Contains(err.Error(), missing) {
		t.Errorf("missing parent: err = %v, want an error naming %s", err, missing)
	}
	file := filepath.Join(dir, "plain")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := openBoltStore(filepath.Join(file, "hb.db")); err == nil {
		t.Error("parent is a file: no error")
	}
	if _, err := openBoltStore(dir); err == nil {
		t.Error("path is a directory: no error")
	}
	// An existing empty file is a new database, as bbolt treats it.
	empty := filepath.Join(dir, "empty.db")
	if err := os.WriteFile(empty, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	s := boltTestOpen(t, empty)
	if rs := boltTestRecords(t, s); len(rs) != 0 {
		t.Errorf("empty file: %d records", len(rs))
	}
}

// TestStorePath checks which plain paths and bbolt URLs OpenStore and
// StorePath accept, and that a refused one creates no file. It runs in an
// empty working directory of its own.
func TestStorePath(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir)
	refused := []string{
		"",
		"::::not a url",
		"c:store.db",
		"host:6379",
		"bolt://" + filepath.Join(dir, "q.db") + "?mode=ro",
		"bolt://" + filepath.Join(dir, "q.db") + "?",
		"bolt://" + filepath.Join(dir, "q.db") + "#frag",
		"bolt://" + filepath.Join(dir, "q.db") + "#",
		"bbolt://" + filepath.Join(dir, "q.db") + "?timeout=1s",
		"bolt://host" + filepath.Join(dir, "h.db"),
		"bolt://",
		"nosuch://x",
	}
	for _, u := range refused {
		if p, err := StorePath(u); err == nil {
			t.Errorf("StorePath(%q) = %q, want an error", u, p)
		}
		s, err := OpenStore(u)
		if err == nil {
			s.Close()
			t.Errorf("OpenStore(%q) succeeded", u)
			continue
		}
		if u != "" && !strings.Contains(err.Error(), strings.TrimSuffix(u, "#")) {
			t.Errorf("OpenStore(%q): error %q does not name the URL", u, err)
		}
	}
	if entries, err := os.ReadDir(dir); err != nil || len(entries) != 0 {
		t.Fatalf("refused URLs created files: %v, %v", entries, err)
	}

	abs := filepath.Join(dir, "abs.db")
	for u, want := range map[string]string{
		"./x.db":         filepath.Join(dir, "x.db"),
		"x.db":           filepath.Join(dir, "x.db"),
		"sub/../y.db":    filepath.Join(dir, "y.db"),
		abs:              abs,
		"bolt://" + abs:  abs,
		"bbolt://" + abs: abs,
		"./a:b.db":       filepath.Join(dir, "a:b.db"), // a ':' after a '/' is a file name
	} {
		p, err := StorePath(u)
		if err != nil || p != want {
			t.Errorf("StorePath(%q) = %q, %v; want %q", u, p, err, want)
			continue
		}
		s, err := OpenStore(u)
		if err != nil {
			t.Errorf("OpenStore(%q): %v", u, err)
			continue
		}
		s.Close()
		if _, err := os.Stat(want); err != nil {
			t.Errorf("OpenStore(%q) created no file at %s: %v", u, want, err)
		}
	}
	if p, err := StorePath("redis://127.0.0.1:6379/0"); err != nil || p != "" {
		t.Errorf("StorePath(redis URL) = %q, %v; want \"\", nil", p, err)
	}
}

func TestBoltPutValidation(t *testing.T) {
	s := boltTestOpen(t, boltTestPath(t))
	now := time.Now()
	good := boltTestRec("example.com", "", ReasonRetryAfter, now.Add(time.Minute), now)
	bad := map[string]Record{}
	for _, h := range []string{"", "Example.com", "example.com.", "a b", "example.com:0443", "ex\x00ample"} {
		r := good
		r.Host = h
		bad["host "+strconv.Quote(h)] = r
	}
	r := good
	r.Until = time.Time{}
	bad["zero Until"] = r
	r = good
	r.At = time.Time{}
	bad["zero At"] = r
	r = good
	r.Reason = "bogus"
	bad["unknown reason"] = r
	r = good
	r.Reason = ""
	bad["empty reason"] = r
	for name, r := range bad {
		if err := s.Put(context.Background(), r); err == nil {
			t.Errorf("%s: Put accepted %+v", name, r)
		}
	}
	if rs := boltTestRecords(t, s); len(rs) != 0 {
		t.Errorf("invalid records stored: %+v", rs)
	}
	boltTestPut(t, s, good)
	if rs := boltTestRecords(t, s); len(rs) != 1 {
		t.Errorf("got %d records, want 1", len(rs))
	}
}

// TestBoltMergeRules checks what the merge cases (TestMergeRules) cannot:
// a reset marker that expires stops dropping records written before it,
// and records and markers vanish at their Until without a write. It runs
// on the fake clock of a synctest bubble, so that no fsync or scheduling
// delay can move a deadline.
func TestBoltMergeRules(t *testing.T) {
	path := boltTestPath(t)
	synctest.Test(t, func(t *testing.T) {
		s := boltTestOpen(t, path)
		now := time.Now()
		h := "api.example.com"
		boltTestPut(t, s, boltTestRec(h, "", ReasonRetryAfter, now.Add(time.Hour), now))
		boltTestPut(t, s, boltTestRec(h, "", ReasonBreakerOpen, now.Add(time.Minute), now))
		boltTestPut(t, s, boltTestRec(h, "late", ReasonBreakerOpen, now.Add(time.Hour), now.Add(6*time.Second)))
		boltTestPut(t, s, boltTestRec("other.example", "", ReasonManual, now.Add(30*time.Minute), now))
		if rs := boltTestRecords(t, s); len(rs) != 4 {
			t.Fatalf("before reset: %s", formatRecords(rs))
		}

		resetAt := now.Add(5 * time.Second)
		boltTestPut(t, s, boltTestRec(h, "", ReasonReset, now.Add(400*time.Millisecond), resetAt))
		checkRecords(t, boltTestRecords(t, s), []Record{
			boltTestRec(h, "", ReasonReset, now.Add(400*time.Millisecond), resetAt),
			boltTestRec(h, "late", ReasonBreakerOpen, now.Add(time.Hour), now.Add(6*time.Second)),
			boltTestRec("other.example", "", ReasonManual, now.Add(30*time.Minute), now),
		})
		// A record written before the reset that arrives after it is dropped.
		stale := boltTestRec(h, "read", ReasonManual, now.Add(time.Hour), resetAt)
		boltTestPut(t, s, stale)
		if r, ok := boltTestFind(boltTestRecords(t, s), h, "read", ReasonManual); ok {
			t.Errorf("stale record accepted after reset: %+v", r)
		}

		// The marker vanishes at its Until, without a write ...
		time.Sleep(400 * time.Millisecond)
		if r, ok := boltTestFind(boltTestRecords(t, s), h, "", ReasonReset); ok {
			t.Errorf("reset marker outlived its Until: %+v", r)
		}
		// ... and then stale records are accepted again (no marker to compare to).
		boltTestPut(t, s, stale)
		if _, ok := boltTestFind(boltTestRecords(t, s), h, "read", ReasonManual); !ok {
			t.Error("record refused after the marker expired")
		}
		// A record vanishes at its Until.
		time.Sleep(30*time.Minute - 400*time.Millisecond)
		checkRecords(t, boltTestRecords(t, s), []Record{
			boltTestRec(h, "late", ReasonBreakerOpen, now.Add(time.Hour), now.Add(6*time.Second)),
			stale,
		})
	})
}

func TestBoltExpiredIgnoredAndPruned(t *testing.T) {
	path := boltTestPath(t)
	s := boltTestOpen(t, path)
	now := time.Now()
	past := now.Add(-time.Minute)
	boltTestRaw(t, path, func(tx *bolt.Tx) error {
		cd, rs, st := tx.Bucket(boltCooldowns), tx.Bucket(boltResets), tx.Bucket(boltStates)
		for _, err := range []error{
			cd.Put([]byte("old.example\x00c:"), encodeRecord(boltTestRec("old.example", "", ReasonManual, past, past.Add(-time.Hour)))),
			cd.Put([]byte("live.example\x00c:"), encodeRecord(boltTestRec("live.example", "", ReasonManual, now.Add(time.Hour), now))),
			cd.Put([]byte("garbage\x00"), []byte("not json")),
			cd.Put([]byte("future\x00"), []byte(`{"v":9,"until":1}`)),
			cd.Put([]byte("future2\x00"), []byte(fmt.Sprintf(`{"v":9,"until":%d}`, now.Add(time.Hour).UnixNano()))),
			rs.Put([]byte("old.example"), encodeRecord(boltTestRec("old.example", "", ReasonReset, past, past.Add(-time.Hour)))),
			st.Put([]byte("gone"), encodeStates("gone", []PublishedState{{Host: "x.example", State: StateOpen}}, past)),
			st.Put([]byte("bad"), []byte("{")),
		} {
			if err != nil {
				return err
			}
		}
		return nil
	})
	rs := boltTestRecords(t, s)
	if len(rs) != 1 || rs[0].Host != "live.example" {
		t.Errorf("Records = %+v, want only live.example", rs)
	}
	states, err := s.States(context.Background())
	if err != nil || len(states) != 0 {
		t.Errorf("States = %+v, %v; want none", states, err)
	}

	// The first write prunes: expired records, markers and states, and
	// junk: entries that neither decode nor are of a newer version with an
	// until that has not passed.
	boltTestPut(t, s, boltTestRec("new.example", "", ReasonManual, now.Add(time.Hour), now))
	got := boltTestKeys(t, path, boltCooldowns)
	want := []string{"future2\x00", "live.example\x00c:", "new.example\x00c:"}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("cooldown keys after prune = %q, want %q", got, want)
	}
	if got := boltTestKeys(t, path, boltResets); len(got) != 0 {
		t.Errorf("reset keys after prune = %q", got)
	}
	if got := boltTestKeys(t, path, boltStates); len(got) != 0 {
		t.Errorf("states keys after prune = %q, want none", got)
	}

	// Already-expired writes are dropped.
	boltTestPut(t, s, boltTestRec("late.example", "", ReasonRetryAfter, past, past))
	if _, ok := boltTestFind(boltTestRecords(t, s), "late.example", "", ReasonRetryAfter); ok {
		t.Error("expired record returned")
	}
}

// TestBoltPruneInterval checks that writes prune the whole file at most
// once per boltPruneInterval, and that expired records are never returned,
// pruned or not. It runs on the fake clock of a synctest bubble: the Puts
// below all happen at one instant, whatever the fsyncs cost.
func TestBoltPruneInterval(t *testing.T) {
	path := boltTestPath(t)
	synctest.Test(t, func(t *testing.T) {
		s := boltTestOpen(t, path)
		now := time.Now()
		const expired = 20_000
		boltTestRaw(t, path, func(tx *bolt.Tx) error {
			cd := tx.Bucket(boltCooldowns)
			for i := range expired {
				r := boltTestRec(fmt.Sprintf("gone%d.example", i), "", ReasonRetryAfter, now.Add(-time.Second), now.Add(-time.Minute))
				if err := cd.Put(boltTestKey(r), encodeRecord(r)); err != nil {
					return err
				}
			}
			return nil
		})
		if rs := boltTestRecords(t, s); len(rs) != 0 {
			t.Fatalf("Records returned %d expired records", len(rs))
		}
		const puts = 50
		for i := range puts {
			boltTestPut(t, s, boltTestRec(fmt.Sprintf("live%d.example", i), "", ReasonRetryAfter, now.Add(time.Minute), now))
		}
		if n := s.prunes.Load(); n != 1 {
			t.Errorf("%d Puts at one instant pruned %d times, want 1", puts, n)
		}
		if n := len(boltTestKeys(t, path, boltCooldowns)); n != puts {
			t.Errorf("after the prune: %d keys, want %d", n, puts)
		}

		// Records that expire between two prunes stay in the file, unseen.
		short := boltTestRec("short.example", "", ReasonManual, now.Add(500*time.Millisecond), now)
		boltTestPut(t, s, short)
		time.Sleep(600 * time.Millisecond)
		boltTestPut(t, s, boltTestRec("live0.example", "", ReasonManual, now.Add(time.Minute), time.Now()))
		if n := s.prunes.Load(); n != 1 {
			t.Errorf("a Put %v after the prune pruned again (%d prunes)", 600*time.Millisecond, n)
		}
		if !slices.Contains(boltTestKeys(t, path, boltCooldowns), string(boltTestKey(short))) {
			t.Error("the expired record was deleted before the prune interval passed")
		}
		if rs := boltTestRecords(t, s); len(rs) != puts {
			t.Errorf("Records returned %d records, want %d (no expired one)", len(rs), puts)
		}
		if st, err := s.States(context.Background()); err != nil || len(st) != 0 {
			t.Errorf("States = %v, %v", st, err)
		}

		// Once the interval has passed, a write prunes again: a
		// PublishStates as well as a Put.
		time.Sleep(boltPruneInterval)
		if err := s.PublishStates(context.Background(), "src", nil, time.Minute); err != nil {
			t.Fatal(err)
		}
		if n := s.prunes.Load(); n != 2 {
			t.Errorf("after the interval: %d prunes, want 2", n)
		}
		if slices.Contains(boltTestKeys(t, path, boltCooldowns), string(boltTestKey(short))) {
			t.Error("the expired record survived the second prune")
		}
	})
}

// TestBoltOlderLayout reads a file whose cooldowns are keyed host+"\x00"+role,
// as before slots: its records are returned, and the first Put on the host
// moves them to their slots.
func TestBoltOlderLayout(t *testing.T) {
	path := boltTestPath(t)
	s := boltTestOpen(t, path)
	now := time.Now()
	ra := boltTestRec("old.example", "", ReasonRetryAfter, now.Add(time.Hour), now)
	trip := boltTestRec("old.example", "r", ReasonBreakerOpen, now.Add(time.Hour), now)
	boltTestRaw(t, path, func(tx *bolt.Tx) error {
		cd := tx.Bucket(boltCooldowns)
		if err := cd.Put([]byte("old.example\x00"), encodeRecord(ra)); err != nil {
			return err
		}
		if err := cd.Put([]byte("old.example\x00r"), encodeRecord(trip)); err != nil {
			return err
		}
		// Two records for one slot: the one Put would have kept is read.
		for i, r := range []Record{
			boltTestRec("dup.example", "", ReasonRetryAfter, now.Add(2*time.Hour), now),
			boltTestRec("dup.example", "", ReasonRollingWindow, now.Add(time.Hour), now.Add(time.Second)),
		} {
			if err := cd.Put([]byte(fmt.Sprintf("dup.example\x00%d", i)), encodeRecord(r)); err != nil {
				return err
			}
		}
		return nil
	})
	dup := boltTestRec("dup.example", "", ReasonRetryAfter, now.Add(2*time.Hour), now)
	checkRecords(t, boltTestRecords(t, s), []Record{ra, trip, dup})
	noRole := boltTestRec("old.example", "", ReasonBreakerOpen, now.Add(2*time.Hour), now)
	boltTestPut(t, s, noRole)
	boltTestPut(t, s, boltTestRec("dup.example", "", ReasonRetryAfter, now.Add(time.Minute), now.Add(time.Minute)))
	checkRecords(t, boltTestRecords(t, s), []Record{ra, trip, noRole, dup})
	got := boltTestKeys(t, path, boltCooldowns)
	if want := []string{"dup.example\x00c:", "old.example\x00b:", "old.example\x00b:r", "old.example\x00c:"}; !slices.Equal(got, want) {
		t.Errorf("keys = %q, want %q", got, want)
	}
}

// TestBoltPutThatChangesNothing checks that a Put that changes nothing
// writes nothing: the file's transaction id stays, so other processes keep
// their cached reads.
func TestBoltPutThatChangesNothing(t *testing.T) {
	path := boltTestPath(t)
	s1, s2 := boltTestOpen(t, path), boltTestOpen(t, path)
	now := time.Now()
	r := boltTestRec("same.example", "", ReasonRetryAfter, now.Add(time.Hour), now)
	boltTestPut(t, s1, r)
	boltTestRecords(t, s2)
	reads := s2.fullReads.Load()
	txid := func() uint64 {
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		m, err := readBoltMeta(bytes.NewReader(data), int64(len(data)))
		if err != nil {
			t.Fatal(err)
		}
		return m.txid
	}
	before := txid()
	for _, r := range []Record{
		r, // the same again
		boltTestRec("same.example", "", ReasonRollingWindow, now.Add(time.Minute), now.Add(time.Second)), // ends sooner
		boltTestRec("same.example", "", ReasonManual, now.Add(-time.Second), now.Add(time.Second)),       // expired
		boltTestRec("none.example", "", ReasonReset, now.Add(-time.Second), now.Add(time.Second)),        // expired reset of nothing
	} {
		boltTestPut(t, s1, r)
	}
	if after := txid(); after != before {
		t.Errorf("txid %d -> %d: a Put that changed nothing wrote", before, after)
	}
	checkRecords(t, boltTestRecords(t, s2), []Record{r})
	if s2.fullReads.Load() != reads {
		t.Error("another store read the file again")
	}
}

// TestBoltStates runs on the fake clock of a synctest bubble: the ttls and
// the prune interval are exact.
func TestBoltStates(t *testing.T) {
	path := boltTestPath(t)
	synctest.Test(t, func(t *testing.T) { testBoltStates(t, path) })
}

func testBoltStates(t *testing.T, path string) {
	s := boltTestOpen(t, path)
	ctx := context.Background()
	now := time.Now()
	a := []PublishedState{
		{Host: "a.example", State: StateOpen, Until: now.Add(time.Minute), Reason: ReasonBreakerOpen},
		{Host: "b.example", Role: "write", State: StateHalfOpen},
	}
	if err := s.PublishStates(ctx, "proc-a", a, time.Hour); err != nil {
		t.Fatal(err)
	}
	if err := s.PublishStates(ctx, "proc-b", []PublishedState{{Host: "c.example", State: StateClosed}}, 300*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	got, err := s.States(ctx)
	if err != nil || len(got) != 3 {
		t.Fatalf("States = %+v, %v; want 3", got, err)
	}
	for _, st := range got {
		switch st.Host {
		case "a.example":
			if st.Source != "proc-a" || st.State != StateOpen || !st.Until.Equal(a[0].Until) || st.Reason != ReasonBreakerOpen {
				t.Errorf("a: %+v", st)
			}
		case "b.example":
			if st.Source != "proc-a" || st.Role != "write" || st.State != StateHalfOpen || !st.Until.IsZero() {
				t.Errorf("b: %+v", st)
			}
		case "c.example":
			if st.Source != "proc-b" {
				t.Errorf("c: %+v", st)
			}
		}
	}

	// Publishing again replaces the source's states.
	if err := s.PublishStates(ctx, "proc-a", a[1:], time.Hour); err != nil {
		t.Fatal(err)
	}
	got, _ = s.States(ctx)
	if len(got) != 2 {
		t.Errorf("after replace: %+v", got)
	}

	// proc-b's states expire after their ttl, without any write (cached read).
	reads := s.fullReads.Load()
	time.Sleep(300 * time.Millisecond)
	got, _ = s.States(ctx)
	if len(got) != 1 || got[0].Host != "b.example" {
		t.Errorf("after ttl: %+v", got)
	}
	if s.fullReads.Load() != reads {
		t.Error("unchanged file read again")
	}
	// Publishing an empty list clears a source; a write prunes proc-b, once
	// the last prune is boltPruneInterval old.
	time.Sleep(boltPruneInterval)
	if err := s.PublishStates(ctx, "proc-a", nil, time.Hour); err != nil {
		t.Fatal(err)
	}
	got, _ = s.States(ctx)
	if len(got) != 0 {
		t.Errorf("after empty publish: %+v", got)
	}
	if keys := boltTestKeys(t, path, boltStates); len(keys) != 1 || keys[0] != "proc-a" {
		t.Errorf("states keys = %q, want [proc-a]", keys)
	}

	if err := s.PublishStates(ctx, "", a, time.Hour); err == nil {
		t.Error("empty source accepted")
	}
	if err := s.PublishStates(ctx, "proc-a", a, 0); err == nil {
		t.Error("zero ttl accepted")
	}
	if err := s.PublishStates(ctx, "proc-a", []PublishedState{{Host: "a.example", State: State(7)}}, time.Hour); err == nil {
		t.Error("unknown state accepted")
	}
}

// TestBoltTwoStoresAndCache runs on the fake clock of a synctest bubble, so
// that a record expires exactly when the test says.
func TestBoltTwoStoresAndCache(t *testing.T) {
	path := boltTestPath(t)
	synctest.Test(t, func(t *testing.T) { testBoltTwoStoresAndCache(t, path) })
}

func testBoltTwoStoresAndCache(t *testing.T, path string) {
	s1, s2 := boltTestOpen(t, path), boltTestOpen(t, path)
	ctx := context.Background()
	now := time.Now()

	if rs := boltTestRecords(t, s1); len(rs) != 0 {
		t.Fatalf("new store has %+v", rs)
	}
	reads := s1.fullReads.Load()
	for range 3 {
		boltTestRecords(t, s1)
		if _, err := s1.States(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if n := s1.fullReads.Load(); n != reads {
		t.Errorf("unchanged file: %d full reads, want %d", n, reads)
	}

	boltTestPut(t, s2, boltTestRec("a.example", "", ReasonManual, now.Add(time.Hour), now))
	rs := boltTestRecords(t, s1)
	if _, ok := boltTestFind(rs, "a.example", "", ReasonManual); !ok {
		t.Fatalf("s1 does not see s2's write: %+v", rs)
	}
	if n := s1.fullReads.Load(); n != reads+1 {
		t.Errorf("changed file: %d full reads, want %d", n, reads+1)
	}
	if err := s2.PublishStates(ctx, "s2", []PublishedState{{Host: "a.example", State: StateOpen}}, time.Hour); err != nil {
		t.Fatal(err)
	}
	if st, err := s1.States(ctx); err != nil || len(st) != 1 || st[0].Source != "s2" {
		t.Errorf("s1.States = %+v, %v", st, err)
	}
	boltTestPut(t, s1, boltTestRec("b.example", "x", ReasonRetryAfter, now.Add(time.Hour), now))
	if _, ok := boltTestFind(boltTestRecords(t, s2), "b.example", "x", ReasonRetryAfter); !ok {
		t.Error("s2 does not see s1's write")
	}

	// A record that expires drops out of the cached result without a write.
	boltTestPut(t, s2, boltTestRec("c.example", "", ReasonRetryAfter, now.Add(200*time.Millisecond), now))
	if _, ok := boltTestFind(boltTestRecords(t, s1), "c.example", "", ReasonRetryAfter); !ok {
		t.Fatal("s1 does not see c.example")
	}
	reads = s1.fullReads.Load()
	time.Sleep(200 * time.Millisecond)
	if _, ok := boltTestFind(boltTestRecords(t, s1), "c.example", "", ReasonRetryAfter); ok {
		t.Error("expired record returned from cache")
	}
	if s1.fullReads.Load() != reads {
		t.Error("cache not used")
	}

	// Changing the result cannot change the cache.
	rs = boltTestRecords(t, s1)
	rs[0].Host = "mutated.example"
	if _, ok := boltTestFind(boltTestRecords(t, s1), "mutated.example", "", rs[0].Reason); ok {
		t.Error("cache shares memory with a result")
	}

	// The file replaced by another one, even with the same txid, is read again.
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
	reads = s1.fullReads.Load()
	boltTestRecords(t, s1)
	if s1.fullReads.Load() != reads+1 {
		t.Error("replaced file not read again")
	}
}

// TestBoltConcurrent writes from many goroutines through several stores on
// one file. No retry is needed: the stores of one process take turns on a
// per-file semaphore before bbolt's flock, so the lock timeout only applies
// to other processes.
func TestBoltConcurrent(t *testing.T) {
	path := boltTestPath(t)
	const stores, workers, puts = 3, 4, 6
	ss := make([]*boltStore, stores)
	for i := range ss {
		ss[i] = boltTestOpen(t, path)
	}
	base := time.Now().Add(time.Hour)
	var wg sync.WaitGroup
	errs := make(chan error, stores*workers*puts*3)
	for si, s := range ss {
		for w := range workers {
			wg.Go(func() {
				ctx := context.Background()
				own := fmt.Sprintf("h%d-%d.example", si, w)
				for i := range puts {
					at := time.Now()
					if err := s.Put(ctx, boltTestRec(own, "", ReasonRetryAfter, base.Add(time.Duration(i)*time.Second), at)); err != nil {
						errs <- err
					}
					until := base.Add(time.Duration((si*workers+w)*puts+i) * time.Millisecond)
					if err := s.Put(ctx, boltTestRec("shared.example", "r", ReasonBreakerOpen, until, at)); err != nil {
						errs <- err
					}
					if _, err := s.Records(ctx); err != nil {
						errs <- err
					}
				}
				if err := s.PublishStates(ctx, own, []PublishedState{{Host: own, State: StateOpen}}, time.Hour); err != nil {
					errs <- err
				}
			})
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	fresh := boltTestOpen(t, path)
	rs := boltTestRecords(t, fresh)
	if len(rs) != stores*workers+1 {
		t.Errorf("got %d records, want %d", len(rs), stores*workers+1)
	}
	for si := range stores {
		for w := range workers {
			r, ok := boltTestFind(rs, fmt.Sprintf("h%d-%d.example", si, w), "", ReasonRetryAfter)
			if want := base.Add((puts - 1) * time.Second); !ok || !r.Until.Equal(want) {
				t.Errorf("h%d-%d: %+v, want until %v", si, w, r, want)
			}
		}
	}
	r, _ := boltTestFind(rs, "shared.example", "r", ReasonBreakerOpen)
	if want := base.Add((stores*workers*puts - 1) * time.Millisecond); !r.Until.Equal(want) {
		t.Errorf("shared: until %v, want %v", r.Until, want)
	}
	if st, err := fresh.States(context.Background()); err != nil || len(st) != stores*workers {
		t.Errorf("States: %d, %v", len(st), err)
	}
}

// TestBoltHelperProcess is the child of TestBoltProcesses.
func TestBoltHelperProcess(t *testing.T) {
	path, id := os.Getenv("HOSTBREAKER_BOLT_HELPER"), os.Getenv("HOSTBREAKER_BOLT_ID")
	if path == "" {
		t.Skip("helper process only")
	}
	s, err := openBoltStore(path)
	if err != nil {
		t.Fatal(err)
	}
	boltTestPutMany(t, s, "p"+id)
}

// boltTestPutMany writes 10 cooldowns of hosts prefix-N.example. Between
// processes only flock arbitrates and a store waits for it ~100 ms by
// design (a Transport tries again on its next poll), so a busy file is
// retried here.
func boltTestPutMany(t testing.TB, s Store, prefix string) {
	until := time.Now().Add(time.Hour)
	for i := range 10 {
		r := boltTestRec(fmt.Sprintf("%s-%d.example", prefix, i), "", ReasonManual, until, time.Now())
		for try := 0; ; try++ {
			err := s.Put(context.Background(), r)
			if err == nil {
				break
			}
			if !errors.Is(err, berrors.ErrTimeout) || try == 50 {
				t.Fatalf("Put: %v", err)
			}
		}
	}
}

func TestBoltProcesses(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	path := boltTestPath(t)
	s := boltTestOpen(t, path)
	var cmds []*exec.Cmd
	for i := range 2 {
		cmd := exec.Command(os.Args[0], "-test.run=^TestBoltHelperProcess$", "-test.count=1")
		cmd.Env = append(os.Environ(), "HOSTBREAKER_BOLT_HELPER="+path, "HOSTBREAKER_BOLT_ID="+strconv.Itoa(i))
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if t.Failed() {
				t.Logf("helper %d:\n%s", i, out.String())
			}
		})
		cmds = append(cmds, cmd)
	}
	boltTestPutMany(t, s, "parent")
	for i, cmd := range cmds {
		if err := cmd.Wait(); err != nil {
			t.Errorf("helper %d: %v", i, err)
		}
	}
	if rs := boltTestRecords(t, s); len(rs) != 30 {
		t.Errorf("got %d records, want 30", len(rs))
	}
}

func TestBoltLockedFile(t *testing.T) {
	path := boltTestPath(t)
	s := boltTestOpen(t, path)
	ctx := context.Background()
	now := time.Now()
	boltTestPut(t, s, boltTestRec("a.example", "", ReasonManual, now.Add(time.Hour), now))
	boltTestRecords(t, s) // fills the cache
	fresh := boltTestOpen(t, path)

	holder, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	done := make(chan error, 1)
	go func() { done <- s.Put(ctx, boltTestRec("b.example", "", ReasonManual, now.Add(time.Hour), now)) }()
	select {
	case err := <-done:
		if err == nil || !errors.Is(err, berrors.ErrTimeout) {
			t.Errorf("Put on a locked file: %v, want a timeout", err)
		}
		if d := time.Since(start); d > time.Second {
			t.Errorf("Put took %v", d)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Put blocked on a locked file")
	}
	if _, err := fresh.Records(ctx); !errors.Is(err, berrors.ErrTimeout) {
		t.Errorf("full read on a locked file: %v, want a timeout", err)
	}
	// The cached poll takes no lock.
	if rs, err := s.Records(ctx); err != nil || len(rs) != 1 {
		t.Errorf("cached Records on a locked file: %+v, %v", rs, err)
	}
	// A context deadline shorter than the lock timeout is honoured.
	short, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	start = time.Now()
	if err := s.PublishStates(short, "x", nil, time.Hour); err == nil {
		t.Error("PublishStates on a locked file succeeded")
	}
	cancel()
	if d := time.Since(start); d > 100*time.Millisecond {
		t.Errorf("PublishStates with a 20ms deadline took %v", d)
	}
	// Opening a valid file that another process holds succeeds.
	third := boltTestOpen(t, path)

	if err := holder.Close(); err != nil {
		t.Fatal(err)
	}
	boltTestPut(t, s, boltTestRec("b.example", "", ReasonManual, now.Add(time.Hour), now))
	if rs := boltTestRecords(t, third); len(rs) != 2 {
		t.Errorf("after unlock: %+v", rs)
	}
}

func TestBoltClose(t *testing.T) {
	s := boltTestOpen(t, boltTestPath(t))
	ctx := context.Background()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	errs := []error{
		s.Put(ctx, boltTestRec("a.example", "", ReasonManual, now.Add(time.Hour), now)),
		s.PublishStates(ctx, "x", nil, time.Hour),
	}
	_, err := s.Records(ctx)
	errs = append(errs, err)
	_, err = s.States(ctx)
	errs = append(errs, err)
	for i, err := range errs {
		if !errors.Is(err, errBoltClosed) {
			t.Errorf("call %d after Close: %v", i, err)
		}
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func BenchmarkBoltPut(b *testing.B) {
	s := boltTestOpen(b, boltTestPath(b))
	ctx := context.Background()
	now := time.Now()
	i := 0
	for b.Loop() {
		i++
		r := boltTestRec("bench.example", "", ReasonRetryAfter, now.Add(time.Hour+time.Duration(i)), now)
		if err := s.Put(ctx, r); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkBoltPutManyRecords writes one host's cooldown into a file that
// holds 10,000 live records of other hosts: the cost of a write should not
// grow with the number of records.
func BenchmarkBoltPutManyRecords(b *testing.B) {
	path := boltTestPath(b)
	s := boltTestOpen(b, path)
	ctx := context.Background()
	now := time.Now()
	boltTestRaw(b, path, func(tx *bolt.Tx) error {
		cd := tx.Bucket(boltCooldowns)
		for i := range 10_000 {
			r := boltTestRec(fmt.Sprintf("h%d.example", i), "", ReasonManual, now.Add(time.Hour), now)
			if err := cd.Put([]byte(r.Host+"\x00c:"), encodeRecord(r)); err != nil {
				return err
			}
		}
		return nil
	})
	i := 0
	for b.Loop() {
		i++
		r := boltTestRec("bench.example", "", ReasonRetryAfter, now.Add(time.Hour+time.Duration(i)), now)
		if err := s.Put(ctx, r); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkBoltRecordsUnchanged(b *testing.B) {
	s := boltTestOpen(b, boltTestPath(b))
	ctx := context.Background()
	now := time.Now()
	for i := range 20 {
		boltTestPut(b, s, boltTestRec(fmt.Sprintf("h%d.example", i), "", ReasonManual, now.Add(time.Hour), now))
	}
	boltTestRecords(b, s)
	reads := s.fullReads.Load()
	for b.Loop() {
		if rs, err := s.Records(ctx); err != nil || len(rs) != 20 {
			b.Fatal(len(rs), err)
		}
	}
	if s.fullReads.Load() != reads {
		b.Error("unchanged file read again")
	}
}

// TestBoltFaultRecovered truncates the file in the middle of a transaction,
// so that bbolt faults on its memory map: the fault is an error, and the
// lock is released.
func TestBoltFaultRecovered(t *testing.T) {
	path := boltTestPath(t)
	s := boltTestOpen(t, path)
	now := time.Now()
	for i := range 3 {
		boltTestPut(t, s, boltTestRec(fmt.Sprintf("h%d.example", i), "", ReasonManual, now.Add(time.Hour), now))
	}
	valid, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	m, err := readBoltMeta(bytes.NewReader(valid), int64(len(valid)))
	if err != nil {
		t.Fatal(err)
	}
	err = boltRun(path, true, time.Second, func(tx *bolt.Tx) error {
		if err := os.Truncate(path, 2*int64(m.pageSize)); err != nil {
			return err
		}
		return tx.Bucket(boltCooldowns).ForEach(func(k, v []byte) error { return nil })
	})
	if err == nil || !strings.Contains(err.Error(), "panicked") {
		t.Fatalf("transaction on a file truncated under it: %v, want a recovered panic", err)
	}
	t.Log(err)
	if err := os.WriteFile(path, valid, 0o600); err != nil {
		t.Fatal(err)
	}
	// Needs the exclusive lock, so the shared one was released.
	boltTestPut(t, s, boltTestRec("after.example", "", ReasonManual, now.Add(time.Hour), now))
	if rs := boltTestRecords(t, s); len(rs) != 4 {
		t.Errorf("got %d records, want 4", len(rs))
	}
}
