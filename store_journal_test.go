package hostbreaker

// Tests of the stores' journal: AppendEvents and Events on bbolt and Redis,
// their retention, bounds, pages and keys.

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	bolt "go.etcd.io/bbolt"
)

// utcEvent returns ev with its times in UTC, so that events that mean the
// same encode the same.
func utcEvent(ev Event) Event {
	ev.Time = ev.Time.UTC()
	if !ev.Until.IsZero() {
		ev.Until = ev.Until.UTC()
	}
	if ev.Summary != nil {
		s := *ev.Summary
		s.Outcomes = slices.Clone(s.Outcomes)
		for i := range s.Outcomes {
			s.Outcomes[i].At = s.Outcomes[i].At.UTC()
		}
		ev.Summary = &s
	}
	return ev
}

// sameEvent reports whether a and b are the same event, times compared as
// instants.
func sameEvent(a, b Event) bool {
	return string(encodeEvent(utcEvent(a))) == string(encodeEvent(utcEvent(b)))
}

// mustEvents returns the events of s since since.
func mustEvents(t testing.TB, s Store, since time.Time) []Event {
	t.Helper()
	evs, err := s.Events(context.Background(), since)
	if err != nil {
		t.Fatalf("Events(%v): %v", since, err)
	}
	return evs
}

// TestJournalAppendAndRead appends events in two batches, out of order and
// some one nanosecond apart, and reads them back in time order, from
// several instants: since is inclusive to the nanosecond.
func TestJournalAppendAndRead(t *testing.T) {
	eachJournalStore(t, func(t *testing.T, s journalStore) {
		if evs := mustEvents(t, s, time.Time{}); len(evs) != 0 {
			t.Fatalf("a new journal holds %d events", len(evs))
		}
		t0 := time.Now().Add(-time.Minute)
		offsets := []time.Duration{
			0, 1, 2, 999_999, time.Millisecond, time.Millisecond + 1,
			5 * time.Millisecond, time.Second, time.Second + 1, 30 * time.Second,
		}
		var want []Event
		for i, d := range offsets {
			want = append(want, journalTestEvent("p1", t0.Add(d), i))
		}
		batch1 := []Event{want[9], want[1], want[5], want[0], want[7]}
		batch2 := []Event{want[3], want[8], want[2], want[6], want[4]}
		for _, b := range [][]Event{batch1, batch2} {
			if dropped := mustAppend(t, s, b, JournalLimits{}); dropped != 0 {
				t.Fatalf("AppendEvents without limits dropped %d", dropped)
			}
		}
		all := mustEvents(t, s, time.Time{})
		checkIDs(t, "since the zero time", all, want)
		for i := range min(len(all), len(want)) {
			if !sameEvent(all[i], want[i]) {
				t.Errorf("event %d read back as\n  %s\nwant\n  %s", i, encodeEvent(all[i]), encodeEvent(want[i]))
			}
		}
		for i, ev := range want {
			checkIDs(t, fmt.Sprintf("since event %d's Time", i), mustEvents(t, s, ev.Time), want[i:])
			checkIDs(t, fmt.Sprintf("since 1ns after event %d", i), mustEvents(t, s, ev.Time.Add(1)), want[i+1:])
		}
		checkIDs(t, "since long ago", mustEvents(t, s, t0.Add(-24*time.Hour)), want)
		checkIDs(t, "since after the last", mustEvents(t, s, t0.Add(time.Hour)), nil)
		checkIDs(t, "since the far future", mustEvents(t, s, time.Date(3000, 1, 1, 0, 0, 0, 0, time.UTC)), nil)

		// Another store of the same file or prefix reads the same journal.
		checkIDs(t, "another store", mustEvents(t, s.open(), time.Time{}), want)

		// An empty batch without limits changes nothing.
		if dropped := mustAppend(t, s, nil, JournalLimits{}); dropped != 0 {
			t.Errorf("empty AppendEvents dropped %d", dropped)
		}
		checkIDs(t, "after an empty batch", mustEvents(t, s, time.Time{}), want)
	})
}

// TestJournalBeforeEpoch checks that events before 1970, whose Unix times
// are negative, are kept in time order with the others.
func TestJournalBeforeEpoch(t *testing.T) {
	eachJournalStore(t, func(t *testing.T, s journalStore) {
		times := []time.Time{
			time.Date(1969, 12, 31, 23, 59, 59, 500_000_000, time.UTC),
			time.Unix(0, -1_000_001),
			time.Unix(0, -1_000_000),
			time.Unix(0, -1),
			time.Unix(0, 0),
			time.Unix(0, 1),
			time.Date(1700, 1, 1, 0, 0, 0, 0, time.UTC),
			time.Date(2200, 1, 1, 0, 0, 0, 0, time.UTC),
		}
		var evs []Event
		for i, tm := range times {
			evs = append(evs, journalTestEvent("p", tm, i))
		}
		mustAppend(t, s, evs, JournalLimits{})
		want := slices.Clone(evs)
		slices.SortFunc(want, func(a, b Event) int { return a.Time.Compare(b.Time) })
		checkIDs(t, "since the zero time", mustEvents(t, s, time.Time{}), want)
		checkIDs(t, "since -1ms", mustEvents(t, s, time.Unix(0, -1_000_000)), want[3:])
	})
}

// TestJournalSameProcessAndTime checks that events never overwrite each
// other, even when they are equal: two stores of one file or prefix (two
// Transports of one process) and one store from two goroutines append the
// same event, of one process in one nanosecond, in batches that repeat it.
func TestJournalSameProcessAndTime(t *testing.T) {
	eachJournalStore(t, func(t *testing.T, s journalStore) {
		ev := journalTestEvent("host:1/t1", time.Now(), 0)
		batch := []Event{ev, ev, ev}
		stores := []Store{s.Store, s.Store, s.open(), s.open()}
		const rounds = 5
		var wg sync.WaitGroup
		errs := make(chan error, len(stores)*rounds)
		for _, st := range stores {
			wg.Go(func() {
				for range rounds {
					if _, err := st.AppendEvents(context.Background(), batch, JournalLimits{}); err != nil {
						errs <- err
					}
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		got := mustEvents(t, s, time.Time{})
		if want := len(stores) * rounds * len(batch); len(got) != want {
			t.Fatalf("journal holds %d events, want %d", len(got), want)
		}
		for i, g := range got {
			if !sameEvent(g, ev) {
				t.Fatalf("event %d is %s, want %s", i, encodeEvent(g), encodeEvent(ev))
			}
		}
	})
}

// TestJournalRetention checks that AppendEvents drops, and counts, the
// events older than the retention: those stored and those it is given.
func TestJournalRetention(t *testing.T) {
	eachJournalStore(t, func(t *testing.T, s journalStore) {
		now := time.Now()
		old := []Event{
			journalTestEvent("p", now.Add(-3*time.Hour), 0),
			journalTestEvent("p", now.Add(-2*time.Hour), 1),
			journalTestEvent("p", now.Add(-61*time.Minute), 2),
		}
		young := []Event{
			journalTestEvent("p", now.Add(-59*time.Minute), 3),
			journalTestEvent("p", now.Add(-time.Minute), 4),
		}
		mustAppend(t, s, append(slices.Clone(old), young...), JournalLimits{})
		// A longer retention drops nothing.
		if dropped := mustAppend(t, s, nil, JournalLimits{Retention: 4 * time.Hour}); dropped != 0 {
			t.Errorf("retention 4h dropped %d", dropped)
		}
		checkIDs(t, "after retention 4h", mustEvents(t, s, time.Time{}), append(slices.Clone(old), young...))

		// A batch with an event already too old, under a retention of an hour.
		fresh := journalTestEvent("p", time.Now(), 5)
		tooOld := journalTestEvent("p", now.Add(-5*time.Hour), 6)
		if dropped := mustAppend(t, s, []Event{fresh, tooOld}, JournalLimits{Retention: time.Hour}); dropped != len(old)+1 {
			t.Errorf("retention 1h dropped %d, want %d", dropped, len(old)+1)
		}
		checkIDs(t, "after retention 1h", mustEvents(t, s, time.Time{}), append(slices.Clone(young), fresh))

		// An empty batch enforces the retention too.
		if dropped := mustAppend(t, s, nil, JournalLimits{Retention: 30 * time.Minute}); dropped != 1 {
			t.Errorf("retention 30m dropped %d, want 1", dropped)
		}
		checkIDs(t, "after retention 30m", mustEvents(t, s, time.Time{}), []Event{young[1], fresh})
	})
}

// TestJournalMaxEvents checks that AppendEvents drops, and counts, the
// oldest events (by Time, not by when they were appended) beyond
// MaxEvents.
func TestJournalMaxEvents(t *testing.T) {
	eachJournalStore(t, func(t *testing.T, s journalStore) {
		t0 := time.Now().Add(-time.Hour)
		at := func(i int) Event { return journalTestEvent("p", t0.Add(time.Duration(i)*10*time.Second), i) }
		var stored []Event
		for _, i := range rand.Perm(10) {
			stored = append(stored, at(i+1))
		}
		if dropped := mustAppend(t, s, stored, JournalLimits{MaxEvents: 10}); dropped != 0 {
			t.Errorf("10 events under MaxEvents 10: dropped %d", dropped)
		}
		// Events 1..10 are stored; 0 is older than all, 11 and 12 newer.
		if dropped := mustAppend(t, s, []Event{at(12), at(0), at(11)}, JournalLimits{MaxEvents: 8}); dropped != 5 {
			t.Errorf("13 events under MaxEvents 8: dropped %d, want 5", dropped)
		}
		var want []Event
		for i := 5; i <= 12; i++ {
			want = append(want, at(i))
		}
		checkIDs(t, "after MaxEvents 8", mustEvents(t, s, time.Time{}), want)

		// Both bounds: retention drops events 5 to 8, MaxEvents 3 then drops 9.
		limits := JournalLimits{Retention: time.Since(t0) - 85*time.Second, MaxEvents: 3}
		if dropped := mustAppend(t, s, nil, limits); dropped != 5 {
			t.Errorf("retention and MaxEvents 3: dropped %d, want 5", dropped)
		}
		checkIDs(t, "after MaxEvents 3", mustEvents(t, s, time.Time{}), want[5:])
		if s.path != "" {
			if n := boltTestJournalCount(t, s.path); n != 3 {
				t.Errorf("stored count: %d, want 3", n)
			}
		}

		// A batch larger than MaxEvents keeps its newest.
		batch := []Event{at(20), at(22), at(21)}
		if dropped := mustAppend(t, s, batch, JournalLimits{MaxEvents: 2}); dropped != 4 {
			t.Errorf("a batch of 3 under MaxEvents 2: dropped %d, want 4", dropped)
		}
		checkIDs(t, "after MaxEvents 2", mustEvents(t, s, time.Time{}), []Event{at(21), at(22)})
	})
}

// boltTestJournalCount returns the count of journal entries that the file
// at path keeps.
func boltTestJournalCount(t testing.TB, path string) uint64 {
	t.Helper()
	var n uint64
	boltTestRaw(t, path, func(tx *bolt.Tx) error {
		info := tx.Bucket(boltJournalInfo)
		if info == nil {
			t.Fatal("no journal-info bucket")
		}
		var ok bool
		if n, ok = boltJournalCountOf(info); !ok {
			t.Fatal("no journal count")
		}
		return nil
	})
	return n
}

// TestJournalBoltCount checks that the count of journal entries that the
// bbolt store keeps, which spares AppendEvents counting them, stays the
// number of entries through appends and drops by two stores, and that a
// file without it is counted once.
func TestJournalBoltCount(t *testing.T) {
	path := boltTestPath(t)
	a, b := boltTestOpen(t, path), boltTestOpen(t, path)
	ctx := context.Background()
	t0 := time.Now().Add(-time.Hour)
	limits := JournalLimits{Retention: 2 * time.Hour, MaxEvents: 50}
	total, dropped := 0, 0
	for i := range 40 {
		st := []Store{a, b}[i%2]
		var batch []Event
		for j := range 1 + i%5 {
			batch = append(batch, journalTestEvent("p", t0.Add(time.Duration(rand.IntN(3600))*time.Second), j))
		}
		n, err := st.AppendEvents(ctx, batch, limits)
		if err != nil {
			t.Fatal(err)
		}
		total += len(batch)
		dropped += n
		entries := len(boltTestKeys(t, path, boltJournal))
		if count := boltTestJournalCount(t, path); count != uint64(entries) {
			t.Fatalf("after append %d: count %d, entries %d", i, count, entries)
		}
		if entries != total-dropped || entries > limits.MaxEvents {
			t.Fatalf("after append %d: %d entries, %d appended, %d dropped", i, entries, total, dropped)
		}
	}
	if dropped == 0 {
		t.Fatal("MaxEvents never dropped anything")
	}

	// A Put prunes the file; it leaves the journal alone.
	boltTestPut(t, a, boltTestRec("a.example", "", ReasonManual, time.Now().Add(time.Hour), time.Now()))
	if n := len(mustEvents(t, a, time.Time{})); n != limits.MaxEvents {
		t.Fatalf("after a Put: %d events, want %d", n, limits.MaxEvents)
	}

	// Without its count, the journal is counted.
	boltTestRaw(t, path, func(tx *bolt.Tx) error { return tx.DeleteBucket(boltJournalInfo) })
	if n := mustAppend(t, a, []Event{journalTestEvent("p", time.Now(), 0)}, JournalLimits{MaxEvents: 45}); n != 6 {
		t.Errorf("without a count, MaxEvents 45 dropped %d, want 6", n)
	}
	if count := boltTestJournalCount(t, path); count != 45 {
		t.Errorf("recounted: %d, want 45", count)
	}
}

// TestJournalUndecodable checks that entries that do not decode as events
// are skipped, and dropped by the limits like the others.
func TestJournalUndecodable(t *testing.T) {
	eachJournalStore(t, func(t *testing.T, s journalStore) {
		t0 := time.Now().Add(-time.Minute)
		good := []Event{journalTestEvent("p", t0, 0), journalTestEvent("p", t0.Add(10*time.Second), 1)}
		mustAppend(t, s, good, JournalLimits{})
		newer := encodeEvent(journalTestEvent("p", t0.Add(time.Second), 2))
		junk := [][]byte{
			nil,
			[]byte("junk"),
			[]byte(`{"v":1`),
			[]byte(`{"v":2,"name":"hostbreaker.summary","time":"2025-01-01T00:00:00Z"}`),
			[]byte(`{"v":1,"name":"","time":"2025-01-01T00:00:00Z"}`),
			[]byte(`{"v":1,"name":"x"}`),
			[]byte(`{"v":1,"name":"x","time":"yesterday"}`),
			[]byte(`{"v":1,"name":"x","time":"2025-01-01T00:00:00Z","state":"ajar"}`),
			[]byte(`[]`),
			[]byte(`null`),
		}
		at := t0.Add(time.Second)
		if s.path != "" {
			boltTestRaw(t, s.path, func(tx *bolt.Tx) error {
				b := tx.Bucket(boltJournal)
				for i, v := range junk {
					if err := b.Put(boltJournalKey(at.UnixNano(), 1000+uint64(i)), append([]byte{}, v...)); err != nil {
						return err
					}
				}
				// Keys that AppendEvents does not write: too short, too long.
				if err := b.Put([]byte("x"), newer); err != nil {
					return err
				}
				if err := b.Put(append(boltJournalKey(at.UnixNano(), 1), 0), newer); err != nil {
					return err
				}
				_, err := b.CreateBucket(boltJournalKey(at.UnixNano(), 2000))
				return err
			})
		} else {
			key := s.Store.(*redisStore).redisKey(redisJournal)
			var members []redis.Z
			for i, v := range junk {
				members = append(members, redis.Z{
					Score:  float64(at.UnixMilli()),
					Member: fmt.Sprintf("%06d%032x", 0, i) + string(v),
				})
			}
			// Members too short to hold a tag, one holding an event.
			members = append(members,
				redis.Z{Score: float64(at.UnixMilli()), Member: "x"},
				redis.Z{Score: float64(at.UnixMilli()), Member: string(newer[:redisJournalTagLen-1])},
				redis.Z{Score: float64(at.UnixMilli()), Member: ""},
			)
			if err := testRedisClient(t, s.url).ZAdd(context.Background(), key, members...).Err(); err != nil {
				t.Fatal(err)
			}
		}
		checkIDs(t, "with junk", mustEvents(t, s, time.Time{}), good)
		checkIDs(t, "with junk, since t0+1ns", mustEvents(t, s, t0.Add(1)), good[1:])
		// ReadJournal reads past the junk too.
		evs, err := ReadJournal(context.Background(), s, time.Time{})
		if err != nil {
			t.Fatal(err)
		}
		checkIDs(t, "ReadJournal with junk", evs, good)

		// The junk is dropped by its time (seconds older than the
		// retention: the Redis store counts in milliseconds).
		limits := JournalLimits{Retention: time.Since(t0) - 5*time.Second}
		dropped := mustAppend(t, s, nil, limits)
		if dropped < len(junk)+1 {
			t.Errorf("retention dropped %d, want the first event and %d junk entries or more", dropped, len(junk))
		}
		checkIDs(t, "junk dropped", mustEvents(t, s, time.Time{}), good[1:])
	})
}

// TestJournalRejects checks that a batch with an event that a journal
// cannot hold is an error, and appends nothing.
func TestJournalRejects(t *testing.T) {
	eachJournalStore(t, func(t *testing.T, s journalStore) {
		good := journalTestEvent("p", time.Now(), 0)
		for name, bad := range map[string]Event{
			"no name":   {Time: time.Now(), Process: "p"},
			"zero time": {Name: EventCooldown, Process: "p"},
			"year 2300": {Name: EventCooldown, Time: time.Date(2300, 1, 1, 0, 0, 0, 0, time.UTC)},
			"year 1600": {Name: EventCooldown, Time: time.Date(1600, 1, 1, 0, 0, 0, 0, time.UTC)},
		} {
			if _, err := s.AppendEvents(context.Background(), []Event{good, bad}, JournalLimits{}); err == nil {
				t.Errorf("%s: AppendEvents returned no error", name)
			}
		}
		if evs := mustEvents(t, s, time.Time{}); len(evs) != 0 {
			t.Errorf("rejected batches appended %d events", len(evs))
		}
	})
}

// TestJournalClosed checks that a closed store's journal methods return an
// error, and that a canceled context is an error too.
func TestJournalClosed(t *testing.T) {
	eachJournalStore(t, func(t *testing.T, s journalStore) {
		ctx := context.Background()
		ev := journalTestEvent("p", time.Now(), 0)
		canceled, cancel := context.WithCancel(ctx)
		cancel()
		if _, err := s.AppendEvents(canceled, []Event{ev}, JournalLimits{}); !errors.Is(err, context.Canceled) {
			t.Errorf("AppendEvents with a canceled context: %v", err)
		}
		if _, err := s.Events(canceled, time.Time{}); !errors.Is(err, context.Canceled) {
			t.Errorf("Events with a canceled context: %v", err)
		}
		mustAppend(t, s, []Event{ev}, JournalLimits{})
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		closed := errBoltClosed
		if s.path == "" {
			closed = redis.ErrClosed
		}
		if _, err := s.AppendEvents(ctx, []Event{ev}, JournalLimits{}); !errors.Is(err, closed) {
			t.Errorf("AppendEvents after Close: %v, want %v", err, closed)
		}
		if _, err := s.Events(ctx, time.Time{}); !errors.Is(err, closed) {
			t.Errorf("Events after Close: %v, want %v", err, closed)
		}
		if _, err := ReadJournal(ctx, s, time.Time{}); !errors.Is(err, closed) {
			t.Errorf("ReadJournal after Close: %v, want %v", err, closed)
		}
		// The journal is still there for another store.
		checkIDs(t, "another store", mustEvents(t, s.open(), time.Time{}), []Event{ev})
	})
}

// TestJournalRedisPages checks that the Redis store's Events reads a
// journal larger than a page, where the page ends inside a millisecond and
// where a whole page is one millisecond.
func TestJournalRedisPages(t *testing.T) {
	s := openTestRedis(t, testRedisURL(t))
	t0 := time.Now().Add(-time.Hour).Truncate(time.Millisecond)
	var want []Event
	add := func(tm time.Time) {
		want = append(want, Event{Name: EventCooldown, Time: tm, Process: "p", Note: fmt.Sprint(len(want))})
	}
	for i := range redisJournalPage - 10 {
		add(t0.Add(time.Duration(i) * time.Millisecond))
	}
	t1 := t0.Add(time.Duration(redisJournalPage) * time.Millisecond)
	for i := range 30 { // across the end of the first page
		add(t1.Add(time.Duration(i) * time.Microsecond))
	}
	t2 := t1.Add(time.Second)
	for i := range redisJournalPage + 5 { // more than a page in one millisecond
		add(t2.Add(time.Duration(i) * 10))
	}
	for i := range 5 {
		add(t2.Add(time.Second + time.Duration(i)*time.Millisecond))
	}
	for chunk := range slices.Chunk(slices.Clone(want), 5000) {
		rand.Shuffle(len(chunk), func(i, j int) { chunk[i], chunk[j] = chunk[j], chunk[i] })
		mustAppend(t, s, chunk, JournalLimits{})
	}
	checkIDs(t, "every event", mustEvents(t, s, time.Time{}), want)
	from := redisJournalPage - 10 + 15
	checkIDs(t, "since the middle of the millisecond", mustEvents(t, s, want[from].Time), want[from:])
}

// TestJournalRedisKeys checks that the Redis journal lives in one key under
// the prefix, expiring after the retention, and that its members are the
// tag and the stored event.
func TestJournalRedisKeys(t *testing.T) {
	u := testRedisURL(t)
	s := openTestRedis(t, u)
	ev := journalTestEvent("p", time.Now(), 0)
	mustAppend(t, s, []Event{ev}, JournalLimits{Retention: time.Hour})
	c := rawClient(t)
	ctx := context.Background()
	prefix := prefixOf(t, u)
	keys, err := c.Keys(ctx, globEscape(prefix)+"*").Result()
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{prefix + redisJournal}; !slices.Equal(keys, want) {
		t.Errorf("keys %q, want %q", keys, want)
	}
	ttl, err := c.PTTL(ctx, prefix+redisJournal).Result()
	if err != nil || ttl <= 59*time.Minute || ttl > time.Hour {
		t.Errorf("PTTL %v, %v; want an hour", ttl, err)
	}
	members, err := c.ZRangeWithScores(ctx, prefix+redisJournal, 0, -1).Result()
	if err != nil || len(members) != 1 {
		t.Fatalf("members %v, %v", members, err)
	}
	m := members[0].Member.(string)
	if members[0].Score != float64(ev.Time.UnixMilli()) || !strings.HasSuffix(m, string(encodeEvent(ev))) ||
		len(m) != redisJournalTagLen+len(encodeEvent(ev)) || m[:6] != fmt.Sprintf("%06d", ev.Time.Nanosecond()%1e6) {
		t.Errorf("member %q, score %v", m, members[0].Score)
	}
}

// TestJournalRedisEmptyBatch checks that an empty batch without limits
// sends nothing that fails.
func TestJournalRedisEmptyBatch(t *testing.T) {
	s := openTestRedis(t, testRedisURL(t))
	if n, err := s.AppendEvents(context.Background(), nil, JournalLimits{}); n != 0 || err != nil {
		t.Errorf("AppendEvents(nil): %d, %v", n, err)
	}
}

// journalBenchEvents returns n events of four processes, one a
// millisecond from t0 on, a mix of the event kinds.
func journalBenchEvents(t0 time.Time, n int) []Event {
	evs := make([]Event, n)
	for i := range evs {
		evs[i] = journalTestEvent(fmt.Sprintf("bench-host:%d/t1", i%4), t0.Add(time.Duration(i)*time.Millisecond), i)
	}
	return evs
}

// journalBenchStores runs f against a new bbolt store and a new Redis store.
func journalBenchStores(b *testing.B, f func(b *testing.B, s Store)) {
	b.Run("bbolt", func(b *testing.B) {
		s, err := openBoltStore(boltTestPath(b))
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = s.Close() })
		f(b, s)
	})
	b.Run("redis", func(b *testing.B) {
		prefix := fmt.Sprintf("hbbench:%d-%d:", os.Getpid(), time.Now().UnixNano())
		s, err := OpenStore("redis://" + testRedisAddr + "/0?prefix=" + url.QueryEscape(prefix))
		if err != nil {
			b.Fatal(err)
		}
		c := redis.NewClient(&redis.Options{Addr: testRedisAddr})
		b.Cleanup(func() {
			_ = s.Close()
			ctx := context.Background()
			iter := c.Scan(ctx, 0, globEscape(prefix)+"*", 1000).Iterator()
			for iter.Next(ctx) {
				c.Del(ctx, iter.Val())
			}
			_ = c.Close()
		})
		if err := c.Ping(context.Background()).Err(); err != nil {
			b.Skipf("Redis unreachable: %v", err)
		}
		f(b, s)
	})
}

// journalBenchFill appends n events from t0 on to s, in batches of 5,000.
func journalBenchFill(b *testing.B, s Store, t0 time.Time, n int) {
	for batch := range slices.Chunk(journalBenchEvents(t0, n), 5000) {
		if _, err := s.AppendEvents(context.Background(), batch, JournalLimits{}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkJournalAppend appends a batch of 100 events under the default
// limits, to an empty journal and to a full one (100,000 events, so that
// each batch drops the 100 oldest).
func BenchmarkJournalAppend(b *testing.B) {
	limits := JournalLimits{Retention: defaultJournalRetention, MaxEvents: defaultJournalMax}
	for _, full := range []bool{false, true} {
		name := "empty"
		if full {
			name = "full"
		}
		b.Run(name, func(b *testing.B) {
			journalBenchStores(b, func(b *testing.B, s Store) {
				t0 := time.Now().Add(-time.Hour)
				if full {
					journalBenchFill(b, s, t0, limits.MaxEvents)
				}
				batch := journalBenchEvents(time.Now(), 100)
				b.ReportAllocs()
				for b.Loop() {
					if _, err := s.AppendEvents(context.Background(), batch, limits); err != nil {
						b.Fatal(err)
					}
				}
			})
		})
	}
}

// BenchmarkJournalRead100k reads a journal of 100,000 events since the
// start.
func BenchmarkJournalRead100k(b *testing.B) {
	journalBenchStores(b, func(b *testing.B, s Store) {
		const n = 100_000
		t0 := time.Now().Add(-time.Hour)
		journalBenchFill(b, s, t0, n)
		b.ReportAllocs()
		for b.Loop() {
			evs, err := s.Events(context.Background(), t0)
			if err != nil {
				b.Fatal(err)
			}
			if len(evs) != n {
				b.Fatalf("read %d events, want %d", len(evs), n)
			}
		}
	})
}
