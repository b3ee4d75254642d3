package hostbreaker

// Tests of event.go: the stored encoding of events and the journal reader
// (ReadJournal, decodeJournal).

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"
)

// TestReadJournal checks that ReadJournal merges the events of two
// processes, appended through two stores, in order of Time, then Process,
// then Name.
func TestReadJournal(t *testing.T) {
	eachJournalStore(t, func(t *testing.T, s journalStore) {
		a, b := s.Store, s.open()
		t0 := time.Now().Add(-time.Minute)
		ev := func(process, name string, d time.Duration) Event {
			return Event{Name: name, Time: t0.Add(d), Process: process, Host: "a.example"}
		}
		want := []Event{
			ev("a", EventCooldown, 0),
			ev("a", EventStateChange, 0),
			ev("b", EventCooldown, 0),
			ev("b", EventCooldown, 0), // a twin, kept
			ev("b", EventSummary, 0),
			ev("a", EventSummary, 1),
			ev("b", EventReset, 2),
			ev("a", EventReset, time.Millisecond),
			ev("b", EventCooldown, time.Millisecond+1),
			ev("a", EventStateChange, time.Second),
			ev("b", EventStateChange, time.Second),
		}
		// Each process appends its events, in reverse order, in two batches.
		var fromA, fromB []Event
		for _, e := range slices.Backward(want) {
			if e.Process == "a" {
				fromA = append(fromA, e)
			} else {
				fromB = append(fromB, e)
			}
		}
		ctx := context.Background()
		mustAppend(t, b, fromB[:3], JournalLimits{})
		mustAppend(t, a, fromA, JournalLimits{})
		mustAppend(t, b, fromB[3:], JournalLimits{})
		for _, st := range []Store{a, b} {
			got, err := ReadJournal(ctx, st, time.Time{})
			if err != nil {
				t.Fatal(err)
			}
			checkIDs(t, "ReadJournal", got, want)
			got, err = ReadJournal(ctx, st, t0.Add(1))
			if err != nil {
				t.Fatal(err)
			}
			checkIDs(t, "ReadJournal since t0+1ns", got, want[5:])
		}
	})
}

// TestDecodeJournal checks decodeJournal on a read large enough to be
// decoded on several goroutines: it keeps the events that decode and are
// at or after since, in order, and puts an event out of place in time
// order.
func TestDecodeJournal(t *testing.T) {
	t0 := time.Now()
	n := 3*decodeJournalMin + 17
	var values [][]byte
	var want []Event
	for i := range n {
		ev := Event{Name: EventCooldown, Time: t0.Add(time.Duration(i) * time.Microsecond), Note: fmt.Sprint(i)}
		switch {
		case i%1000 == 999:
			values = append(values, []byte("junk"))
		case i < 100:
			old := ev
			old.Time = t0.Add(-time.Hour)
			values = append(values, encodeEvent(old))
		default:
			values = append(values, encodeEvent(ev))
			want = append(want, ev)
		}
	}
	late := Event{Name: EventReset, Time: t0.Add(time.Duration(n/2) * time.Microsecond), Note: "late"}
	values = append(values, encodeEvent(late))
	want = slices.Insert(want, slices.IndexFunc(want, func(ev Event) bool { return ev.Time.After(late.Time) }), late)
	got := decodeJournal(values, t0)
	checkIDs(t, "decodeJournal", got, want)
}

func FuzzDecodeEvent(f *testing.F) {
	t0 := time.Date(2025, 3, 1, 12, 0, 0, 123456789, time.UTC)
	for i := range 5 {
		f.Add(encodeEvent(journalTestEvent("host:1/t1", t0, i)))
	}
	f.Add(encodeEvent(Event{Name: EventCooldown, Time: t0.In(time.FixedZone("x", 5*3600+30*60))}))
	f.Add([]byte(`{"v":1,"name":"x","time":"2025-01-01T00:00:00-00:00","until":"0001-01-01T00:00:00Z"}`))
	f.Add([]byte(`{"v":1,"name":"x","time":"2025-01-01T00:00:00Z","state":"open","summary":{"outcomes":[{"k":9,"n":1,"t":"2025-01-01T00:00:00Z"}]}}`))
	f.Add([]byte(`{"v":2,"name":"x","time":"2025-01-01T00:00:00Z"}`))
	f.Add([]byte(`{"v":1,"Name":"x","NAME":"y","time":"2025-01-01T00:00:00Z","time":"2026-01-01T00:00:00Z"}`))
	f.Add([]byte(`{"v":1,"name":"x","time":"9999-12-31T23:59:59.999999999+23:59"}`))
	f.Add([]byte(`{"v":1,"name":"x","time":"2025-01-01T00:00:00Z","retry_after":-9223372036854775808}`))
	f.Add([]byte(`{"v":1,"name":"x","time":"2025-01-01T00:00:00Z","summary":null}`))
	f.Add([]byte("junk"))
	f.Add([]byte(`null`))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		ev, err := decodeEvent(data)
		if err != nil {
			return
		}
		if ev.Name == "" || ev.Time.IsZero() {
			t.Fatalf("decoded an event without a name or time: %+v", ev)
		}
		// What decodes encodes, and decodes again to the same encoding.
		enc := encodeEvent(ev)
		ev2, err := decodeEvent(enc)
		if err != nil {
			t.Fatalf("re-encoded %q does not decode: %v", enc, err)
		}
		if enc2 := encodeEvent(ev2); string(enc2) != string(enc) {
			t.Fatalf("encoding not stable:\n  %s\n  %s", enc, enc2)
		}
	})
}
