package hostbreaker

import (
	"context"
	"slices"
	"testing"
	"time"
)

// mergePut is one Put of a merge case. Times are offsets from the case's
// base instant t0; the records' Untils are either well past (-time.Minute or
// earlier) or well ahead (an hour or more), so that a store's real clock,
// which reads t0 plus the few milliseconds a case takes, agrees with the
// fixed instants at which hostRecords.merge is called. (The slot case uses
// a minute and ten, as the issue states it: still minutes of margin.)
type mergePut struct {
	host    string // "" means mergeHost
	role    string
	reason  Reason
	until   time.Duration
	at      time.Duration
	source  string
	now     time.Duration // when merge is called; stores run only the cases where it is always 0
	changed bool          // what merge reports
}

// mergeWant is one record that Records must return after a case.
type mergeWant struct {
	host   string // "" means mergeHost
	role   string
	reason Reason
	until  time.Duration
	at     time.Duration
	source string
}

const mergeHost = "api.example.com"

// mergeCases are the rules of Store.Put as sequences of Puts and the
// records that remain. They run against hostRecords.merge, the bbolt store
// and the Redis store (TestMergeRules).
var mergeCases = []struct {
	name string
	puts []mergePut
	want []mergeWant
	now  time.Duration // when the result is read, for hostRecords
}{
	{
		name: "a later automatic cooldown replaces an earlier one",
		puts: []mergePut{
			{reason: ReasonRetryAfter, until: 2 * time.Hour, at: 1 * time.Second, source: "a", changed: true},
			{reason: ReasonRollingWindow, until: 3 * time.Hour, at: 2 * time.Second, source: "b", changed: true},
		},
		want: []mergeWant{{reason: ReasonRollingWindow, until: 3 * time.Hour, at: 2 * time.Second, source: "b"}},
	},
	{
		name: "a shorter automatic cooldown does not shorten, an equal one does not replace",
		puts: []mergePut{
			{reason: ReasonRollingWindow, until: 3 * time.Hour, at: 1 * time.Second, source: "a", changed: true},
			{reason: ReasonRetryAfter, until: 2 * time.Hour, at: 2 * time.Second, source: "b"},
			{reason: ReasonRetryAfter, until: 3 * time.Hour, at: 3 * time.Second, source: "c"},
		},
		want: []mergeWant{{reason: ReasonRollingWindow, until: 3 * time.Hour, at: 1 * time.Second, source: "a"}},
	},
	{
		name: "a manual cooldown replaces a longer one",
		puts: []mergePut{
			{reason: ReasonRetryAfter, until: 3 * time.Hour, at: 1 * time.Second, source: "a", changed: true},
			{reason: ReasonManual, until: time.Hour, at: 2 * time.Second, source: "ops", changed: true},
		},
		want: []mergeWant{{reason: ReasonManual, until: time.Hour, at: 2 * time.Second, source: "ops"}},
	},
	{
		name: "an automatic cooldown replaces a manual one only when it ends later",
		puts: []mergePut{
			{reason: ReasonManual, until: 2 * time.Hour, at: 1 * time.Second, source: "ops", changed: true},
			{reason: ReasonRetryAfter, until: time.Hour, at: 2 * time.Second, source: "a"},
			{reason: ReasonRollingWindow, until: 3 * time.Hour, at: 3 * time.Second, source: "b", changed: true},
		},
		want: []mergeWant{{reason: ReasonRollingWindow, until: 3 * time.Hour, at: 3 * time.Second, source: "b"}},
	},
	{
		name: "the same manual cooldown twice changes nothing the second time",
		puts: []mergePut{
			{reason: ReasonManual, until: 2 * time.Hour, at: 1 * time.Second, source: "ops", changed: true},
			{reason: ReasonManual, until: 2 * time.Hour, at: 1 * time.Second, source: "ops"},
		},
		want: []mergeWant{{reason: ReasonManual, until: 2 * time.Hour, at: 1 * time.Second, source: "ops"}},
	},
	{
		name: "an expired manual cooldown does not delete the live one",
		puts: []mergePut{
			{reason: ReasonManual, until: time.Hour, at: 1 * time.Second, source: "ops", changed: true},
			{reason: ReasonManual, until: -time.Minute, at: 2 * time.Second, source: "late"},
		},
		want: []mergeWant{{reason: ReasonManual, until: time.Hour, at: 1 * time.Second, source: "ops"}},
	},
	{
		name: "an expired cooldown on an empty host writes nothing",
		puts: []mergePut{
			{reason: ReasonRetryAfter, until: -time.Minute, at: 1 * time.Second, source: "a"},
			{reason: ReasonBreakerOpen, role: "r", until: -time.Hour, at: 2 * time.Second, source: "a"},
		},
	},
	{
		name: "a trip of the no-role breaker and a host-wide cooldown are different slots",
		puts: []mergePut{
			{reason: ReasonRetryAfter, until: 10 * time.Minute, at: 1 * time.Second, source: "ra", changed: true},
			{reason: ReasonBreakerOpen, until: time.Minute, at: 2 * time.Second, source: "trip", changed: true},
		},
		want: []mergeWant{
			{reason: ReasonRetryAfter, until: 10 * time.Minute, at: 1 * time.Second, source: "ra"},
			{reason: ReasonBreakerOpen, until: time.Minute, at: 2 * time.Second, source: "trip"},
		},
	},
	{
		name: "a trip does not replace a manual cooldown, nor a manual cooldown a trip",
		puts: []mergePut{
			{reason: ReasonBreakerOpen, until: 3 * time.Hour, at: 1 * time.Second, source: "trip", changed: true},
			{reason: ReasonManual, until: time.Hour, at: 2 * time.Second, source: "ops", changed: true},
			{reason: ReasonBreakerOpen, until: 4 * time.Hour, at: 3 * time.Second, source: "trip2", changed: true},
		},
		want: []mergeWant{
			{reason: ReasonManual, until: time.Hour, at: 2 * time.Second, source: "ops"},
			{reason: ReasonBreakerOpen, until: 4 * time.Hour, at: 3 * time.Second, source: "trip2"},
		},
	},
	{
		name: "each role is a slot of its own, and so is each host",
		puts: []mergePut{
			{reason: ReasonBreakerOpen, role: "read", until: time.Hour, at: 1 * time.Second, source: "a", changed: true},
			{reason: ReasonBreakerOpen, role: "write", until: 2 * time.Hour, at: 1 * time.Second, source: "a", changed: true},
			{reason: ReasonRetryAfter, until: 3 * time.Hour, at: 1 * time.Second, source: "a", changed: true},
			{host: mergeHost + ":8080", reason: ReasonRetryAfter, until: time.Hour, at: 1 * time.Second, source: "a", changed: true},
		},
		want: []mergeWant{
			{reason: ReasonBreakerOpen, role: "read", until: time.Hour, at: 1 * time.Second, source: "a"},
			{reason: ReasonBreakerOpen, role: "write", until: 2 * time.Hour, at: 1 * time.Second, source: "a"},
			{reason: ReasonRetryAfter, until: 3 * time.Hour, at: 1 * time.Second, source: "a"},
			{host: mergeHost + ":8080", reason: ReasonRetryAfter, until: time.Hour, at: 1 * time.Second, source: "a"},
		},
	},
	{
		name: "a reset deletes every record of the host written at or before it, whatever its slot",
		puts: []mergePut{
			{reason: ReasonRetryAfter, until: 2 * time.Hour, at: 1 * time.Second, source: "a", changed: true},
			{reason: ReasonBreakerOpen, until: 2 * time.Hour, at: 2 * time.Second, source: "a", changed: true},
			{reason: ReasonBreakerOpen, role: "r", until: 2 * time.Hour, at: 3 * time.Second, source: "a", changed: true},
			{reason: ReasonManual, role: "x", until: 2 * time.Hour, at: 5 * time.Second, source: "after", changed: true},
			{host: "other.example", reason: ReasonManual, until: 2 * time.Hour, at: 1 * time.Second, source: "a", changed: true},
			{host: mergeHost + ":8080", reason: ReasonManual, until: 2 * time.Hour, at: 1 * time.Second, source: "a", changed: true},
			{reason: ReasonReset, until: time.Hour, at: 3 * time.Second, source: "ops", changed: true},
		},
		want: []mergeWant{
			{reason: ReasonReset, until: time.Hour, at: 3 * time.Second, source: "ops"},
			{reason: ReasonManual, role: "x", until: 2 * time.Hour, at: 5 * time.Second, source: "after"},
			{host: "other.example", reason: ReasonManual, until: 2 * time.Hour, at: 1 * time.Second, source: "a"},
			{host: mergeHost + ":8080", reason: ReasonManual, until: 2 * time.Hour, at: 1 * time.Second, source: "a"},
		},
	},
	{
		name: "a record written at or before the marker is dropped when it arrives after it",
		puts: []mergePut{
			{reason: ReasonReset, until: time.Hour, at: 5 * time.Second, source: "ops", changed: true},
			{reason: ReasonManual, until: 2 * time.Hour, at: 5 * time.Second, source: "same-at"},
			{reason: ReasonBreakerOpen, until: 2 * time.Hour, at: 4 * time.Second, source: "before"},
			{reason: ReasonRetryAfter, until: 2 * time.Hour, at: 6 * time.Second, source: "after", changed: true},
		},
		want: []mergeWant{
			{reason: ReasonReset, until: time.Hour, at: 5 * time.Second, source: "ops"},
			{reason: ReasonRetryAfter, until: 2 * time.Hour, at: 6 * time.Second, source: "after"},
		},
	},
	{
		name: "an older reset deletes what it covers but keeps the newer marker",
		puts: []mergePut{
			{reason: ReasonReset, until: time.Hour, at: 5 * time.Second, source: "new", changed: true},
			{reason: ReasonRetryAfter, until: 2 * time.Hour, at: 6 * time.Second, source: "a", changed: true},
			{reason: ReasonReset, until: 2 * time.Hour, at: 3 * time.Second, source: "old"},
		},
		want: []mergeWant{
			{reason: ReasonReset, until: time.Hour, at: 5 * time.Second, source: "new"},
			{reason: ReasonRetryAfter, until: 2 * time.Hour, at: 6 * time.Second, source: "a"},
		},
	},
	{
		name: "a newer reset replaces the marker",
		puts: []mergePut{
			{reason: ReasonReset, until: 2 * time.Hour, at: 3 * time.Second, source: "old", changed: true},
			{reason: ReasonBreakerOpen, until: 2 * time.Hour, at: 4 * time.Second, source: "a", changed: true},
			{reason: ReasonReset, until: time.Hour, at: 5 * time.Second, source: "new", changed: true},
		},
		want: []mergeWant{{reason: ReasonReset, until: time.Hour, at: 5 * time.Second, source: "new"}},
	},
	{
		name: "an expired reset deletes but leaves no marker, and keeps the live one",
		puts: []mergePut{
			{reason: ReasonReset, until: time.Hour, at: 1 * time.Second, source: "live", changed: true},
			{reason: ReasonRetryAfter, until: 2 * time.Hour, at: 2 * time.Second, source: "a", changed: true},
			{reason: ReasonBreakerOpen, role: "r", until: 2 * time.Hour, at: 4 * time.Second, source: "a", changed: true},
			{reason: ReasonReset, until: -time.Minute, at: 3 * time.Second, source: "expired", changed: true},
		},
		want: []mergeWant{
			{reason: ReasonReset, until: time.Hour, at: 1 * time.Second, source: "live"},
			{reason: ReasonBreakerOpen, role: "r", until: 2 * time.Hour, at: 4 * time.Second, source: "a"},
		},
	},
	{
		name: "an expired reset on an empty host writes nothing",
		puts: []mergePut{
			{reason: ReasonReset, until: -time.Minute, at: 3 * time.Second, source: "expired"},
		},
	},
	// The cases below move merge's clock, so they run on hostRecords only.
	{
		name: "expired records are dropped and then no longer compared with",
		puts: []mergePut{
			{reason: ReasonRetryAfter, until: 2 * time.Hour, at: 1 * time.Second, source: "long", changed: true},
			{reason: ReasonRetryAfter, until: 3 * time.Hour, at: 2 * time.Hour, now: 2 * time.Hour, source: "short", changed: true},
			{reason: ReasonBreakerOpen, until: 4 * time.Hour, at: 3 * time.Hour, now: 3 * time.Hour, source: "trip", changed: true},
		},
		now: 3 * time.Hour,
		want: []mergeWant{
			{reason: ReasonBreakerOpen, until: 4 * time.Hour, at: 3 * time.Hour, source: "trip"},
		},
	},
	{
		name: "a marker that expired no longer drops records written before it",
		puts: []mergePut{
			{reason: ReasonReset, until: time.Hour, at: 5 * time.Second, source: "ops", changed: true},
			{reason: ReasonManual, until: 3 * time.Hour, at: 4 * time.Second, now: 30 * time.Minute, source: "early"},
			{reason: ReasonManual, until: 3 * time.Hour, at: 4 * time.Second, now: 2 * time.Hour, source: "early", changed: true},
		},
		now:  2 * time.Hour,
		want: []mergeWant{{reason: ReasonManual, until: 3 * time.Hour, at: 4 * time.Second, source: "early"}},
	},
}

// record returns the Record that p describes, at base instant t0.
func (p mergePut) record(t0 time.Time) Record {
	host := p.host
	if host == "" {
		host = mergeHost
	}
	return Record{Host: host, Role: p.role, Reason: p.reason, Until: t0.Add(p.until), At: t0.Add(p.at), Source: p.source}
}

// record returns the Record that w describes, at base instant t0.
func (w mergeWant) record(t0 time.Time) Record {
	return mergePut{host: w.host, role: w.role, reason: w.reason, until: w.until, at: w.at, source: w.source}.record(t0)
}

// clockFree reports whether every merge of the case happens at t0, so
// that it can run against a store's real clock.
func clockFree(puts []mergePut, now time.Duration) bool {
	return now == 0 && !slices.ContainsFunc(puts, func(p mergePut) bool { return p.now != 0 })
}

// TestMergeRules runs each merge case against hostRecords.merge at fixed
// instants, and against a fresh bbolt file and a fresh Redis prefix.
func TestMergeRules(t *testing.T) {
	t.Run("hostRecords", func(t *testing.T) {
		t0 := time.Date(2030, 1, 2, 3, 4, 5, 6, time.UTC)
		for _, c := range mergeCases {
			t.Run(c.name, func(t *testing.T) {
				hosts := make(map[string]*hostRecords)
				for i, p := range c.puts {
					r := p.record(t0)
					h := hosts[r.Host]
					if h == nil {
						h = &hostRecords{}
						hosts[r.Host] = h
					}
					if changed := h.merge(r, t0.Add(p.now)); changed != p.changed {
						t.Errorf("put %d (%s from %q): changed = %v, want %v", i, r.Reason, r.Source, changed, p.changed)
					}
				}
				var got, want []Record
				for _, h := range hosts {
					got = h.appendTo(got, t0.Add(c.now))
				}
				for _, w := range c.want {
					want = append(want, w.record(t0))
				}
				checkRecords(t, got, want)
			})
		}
	})
	stores := []struct {
		name string
		open func(t *testing.T) Store
	}{
		{"bbolt", func(t *testing.T) Store { return boltTestOpen(t, boltTestPath(t)) }},
		{"redis", func(t *testing.T) Store { return openTestRedis(t, testRedisURL(t)) }},
		{"redis-cluster", func(t *testing.T) Store { return openTestRedis(t, testRedisClusterURL(t)) }},
		{"redis-sentinel", func(t *testing.T) Store { return openTestRedis(t, testRedisSentinelURL(t)) }},
	}
	for _, st := range stores {
		t.Run(st.name, func(t *testing.T) {
			for _, c := range mergeCases {
				if !clockFree(c.puts, c.now) {
					continue
				}
				t.Run(c.name, func(t *testing.T) {
					s := st.open(t)
					ctx := context.Background()
					t0 := time.Now()
					for _, p := range c.puts {
						if err := s.Put(ctx, p.record(t0)); err != nil {
							t.Fatalf("Put(%+v): %v", p.record(t0), err)
						}
					}
					got, err := s.Records(ctx)
					if err != nil {
						t.Fatalf("Records: %v", err)
					}
					var want []Record
					for _, w := range c.want {
						want = append(want, w.record(t0))
					}
					checkRecords(t, got, want)
				})
			}
		})
	}
}

// TestMergeChangedAndOrder checks what the Transport's queue relies on:
// appendTo lists the marker first, and merging a hostRecords' list into an
// empty one reproduces it.
func TestMergeChangedAndOrder(t *testing.T) {
	t0 := time.Date(2030, 1, 2, 3, 4, 5, 6, time.UTC)
	var h hostRecords
	if !h.empty(t0) {
		t.Fatal("zero hostRecords is not empty")
	}
	for _, p := range []mergePut{
		{reason: ReasonBreakerOpen, role: "r", until: 2 * time.Hour, at: 6 * time.Second},
		{reason: ReasonRetryAfter, until: 2 * time.Hour, at: 7 * time.Second},
		{reason: ReasonReset, until: time.Hour, at: 5 * time.Second},
	} {
		h.merge(p.record(t0), t0)
	}
	list := h.appendTo(nil, t0)
	if len(list) != 3 || list[0].Reason != ReasonReset {
		t.Fatalf("appendTo = %s, want the marker first and 3 records", formatRecords(list))
	}
	var again hostRecords
	for _, r := range list {
		again.merge(r, t0)
	}
	checkRecords(t, again.appendTo(nil, t0), list)
	if h.empty(t0) || !h.empty(t0.Add(2*time.Hour)) {
		t.Error("empty: wrong before or after every Until")
	}
	if got := h.appendTo(nil, t0.Add(90*time.Minute)); len(got) != 2 {
		t.Errorf("appendTo after the marker expired = %s", formatRecords(got))
	}
}

// TestAppendStored checks that the read path of Records (appendStored)
// agrees with the write path of Put (loadStored), with and without its
// shortcut: distinct slots and no marker; two records in one slot; a
// marker that covers a record; junk and records of another host.
func TestAppendStored(t *testing.T) {
	t0 := time.Date(2030, 1, 2, 3, 4, 5, 6, time.UTC)
	rec := func(p mergePut) []byte { return encodeRecord(p.record(t0)) }
	marker := rec(mergePut{reason: ReasonReset, until: time.Hour, at: 5 * time.Second})
	for name, c := range map[string]struct {
		entries map[string][]byte
		marker  []byte
	}{
		"distinct slots": {entries: map[string][]byte{
			"c:":  rec(mergePut{reason: ReasonRetryAfter, until: time.Hour, at: time.Second}),
			"b:":  rec(mergePut{reason: ReasonBreakerOpen, until: time.Hour, at: time.Second}),
			"b:r": rec(mergePut{reason: ReasonBreakerOpen, role: "r", until: time.Hour, at: time.Second}),
		}},
		"one slot twice": {entries: map[string][]byte{
			"":   rec(mergePut{reason: ReasonRetryAfter, until: 2 * time.Hour, at: time.Second}),
			"c:": rec(mergePut{reason: ReasonRollingWindow, until: time.Hour, at: 2 * time.Second}),
		}},
		"a marker": {marker: marker, entries: map[string][]byte{
			"c:": rec(mergePut{reason: ReasonRetryAfter, until: time.Hour, at: time.Second}),
			"b:": rec(mergePut{reason: ReasonBreakerOpen, until: time.Hour, at: 6 * time.Second}),
		}},
		"junk": {marker: []byte("junk"), entries: map[string][]byte{
			"c:":  rec(mergePut{host: "other.example", reason: ReasonRetryAfter, until: time.Hour, at: time.Second}),
			"x":   []byte("{"),
			"r":   marker,
			"b:":  rec(mergePut{reason: ReasonBreakerOpen, until: -time.Minute, at: time.Second}),
			"b:r": rec(mergePut{reason: ReasonBreakerOpen, role: "r", until: time.Hour, at: time.Second}),
		}},
	} {
		t.Run(name, func(t *testing.T) {
			h, _ := loadStored(mergeHost, c.entries, c.marker, t0)
			var values [][]byte
			for _, v := range c.entries {
				values = append(values, v)
			}
			checkRecords(t, appendStored(nil, mergeHost, values, c.marker, t0), h.appendTo(nil, t0))
		})
	}
}
