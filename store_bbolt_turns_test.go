package hostbreaker

import (
	"bytes"
	"context"
	"fmt"
	"math"
	"os"
	"testing"
	"time"
)

// TestBoltTurnsKeepManyHosts: ten thousand hosts take two turns each of
// their buckets, one every 10 s, in a bbolt store's turns file, and then a
// third: each host's third turn is 20 s after its first, whatever the
// others did to the table (with a table of 16,384 slots probed 16 at a
// time, some hosts lost theirs). And the turns of two stores of one file
// (two processes, as far as the file lock knows) come from the same
// bucket.
func TestBoltTurnsKeepManyHosts(t *testing.T) {
	const nHosts = 10000
	path := boltTestPath(t)
	a, b := boltTestOpen(t, path), boltTestOpen(t, path)
	ctx := context.Background()
	for _, s := range []*boltStore{a, b} {
		for i := range nHosts {
			if _, ok, err := s.takeTurn(ctx, fmt.Sprintf("h%d.test", i), 10*time.Second, time.Minute); err != nil || !ok {
				t.Fatalf("takeTurn: %v, %v", ok, err)
			}
		}
	}
	for i := range nHosts {
		wait, ok, err := a.takeTurn(ctx, fmt.Sprintf("h%d.test", i), 10*time.Second, time.Minute)
		if err != nil || !ok {
			t.Fatalf("takeTurn: %v, %v", ok, err)
		}
		// the third turn of the host: 20 s after the first, less the time
		// the test took since (a few seconds at most).
		if wait < 10*time.Second || wait > 20*time.Second {
			t.Fatalf("host %d: third turn %v from now, want between 10 s and 20 s", i, wait)
		}
	}
	if wait, ok, err := a.takeTurn(ctx, "h0.test", time.Second, 500*time.Millisecond); err != nil || ok || wait < time.Second {
		t.Errorf("a turn further than the longest wait: %v, %v, %v; want not taken, more than 1 s away", wait, ok, err)
	}
}

// TestBoltTurnsFileNotOurs: a file in the way of the turns file that is
// not one is left as it is, and a turn fails with an error naming it (the
// requests then pace alone); a store that is closed fails its turns too.
func TestBoltTurnsFileNotOurs(t *testing.T) {
	path := boltTestPath(t)
	junk := []byte("someone else's file")
	if err := os.WriteFile(path+".turns", junk, 0o600); err != nil {
		t.Fatal(err)
	}
	s := boltTestOpen(t, path)
	_, _, err := s.takeTurn(context.Background(), "api.test", time.Second, time.Minute)
	if err == nil || !bytes.Contains([]byte(err.Error()), []byte("not a turns file")) {
		t.Errorf("takeTurn over a foreign file: %v, want an error that says it is not a turns file", err)
	}
	if got, _ := os.ReadFile(path + ".turns"); !bytes.Equal(got, junk) {
		t.Errorf("the foreign file was changed: %q", got)
	}
	s.Close()
	if _, err := s.startTurn(context.Background(), "api.test", "p", startTake, time.Minute); err == nil {
		t.Error("startTurn of a closed store: no error")
	}
}

// TestBoltStartCountsProcesses: the fleet's start in a bbolt store counts
// each process once, however many turns it takes, and a throttle's stop
// tells every process the rate the start had reached and how many took
// part; a turn after the stop is at an eighth of that rate.
func TestBoltStartCountsProcesses(t *testing.T) {
	path := boltTestPath(t)
	a, b := boltTestOpen(t, path), boltTestOpen(t, path)
	ctx := context.Background()
	for range 3 {
		for _, p := range []struct {
			s   *boltStore
			src string
		}{{a, "a"}, {b, "b"}, {b, "c"}} {
			if r, err := p.s.startTurn(ctx, "api.test", p.src, startTake, time.Minute); err != nil || r.code != startRamp {
				t.Fatalf("take: %+v, %v", r, err)
			}
		}
	}
	stop, err := a.startTurn(ctx, "api.test", "a", startStop, 0)
	if err != nil || stop.code != startHeld || stop.procs != 3 || stop.reached < fleetStartRate || stop.reached > 2*fleetStartRate {
		t.Fatalf("stop: %+v, %v; want held, 3 processes, the start's rate (4 r/s doubling every 500 ms, stopped at once)", stop, err)
	}
	r1, err1 := b.startTurn(ctx, "api.test", "b", startTake, time.Minute)
	r2, err2 := b.startTurn(ctx, "api.test", "c", startTake, time.Minute)
	if err1 != nil || err2 != nil || r1.code != startHeld || r2.code != startHeld || r1.procs != 3 || r1.reached != stop.reached {
		t.Fatalf("turns after the stop: %+v, %+v (%v, %v); want held, as the stop said", r1, r2, err1, err2)
	}
	want := time.Duration(float64(time.Second) / math.Max(stop.reached/8, 1))
	if d := r2.wait - r1.wait; d < want*9/10 || d > want*11/10 {
		t.Errorf("held turns %v apart, want %v (an eighth of the rate reached)", d, want)
	}
	if r, err := a.startTurn(ctx, "other.test", "a", startCheck, time.Minute); err != nil || r.code != startDone {
		t.Errorf("check of a host with no start: %+v, %v; want done", r, err)
	}
}

// FuzzTurnSlot: whatever bytes a slot of the turns file holds, a turn,
// a slow-down and every operation of the start read it without a panic,
// never report a negative wait, and never take a turn further than the
// longest wait.
func FuzzTurnSlot(f *testing.F) {
	var seed [turnSlotSize]byte
	f.Add(bytes.Clone(seed[:]), int64(1e15), int64(1e5))
	sl := turnSlot{key: 3, tat: 1e15 + 5e5, slow: 0.5, slowEnd: 2e15, f: 1e15 - 1e6, n: 7, end: 2e15}
	sl.encode(seed[:])
	f.Add(bytes.Clone(seed[:]), int64(1e15), int64(1e6))
	sl.x, sl.reached, sl.held, sl.h, sl.np = 1e15-1, 16, 2, 1e15+1e9, 24
	sl.encode(seed[:])
	f.Add(bytes.Clone(seed[:]), int64(1e15), int64(1e6))
	for i := range seed {
		seed[i] = 0xff
	}
	f.Add(bytes.Clone(seed[:]), int64(1), int64(math.MaxInt64/4))
	f.Fuzz(func(t *testing.T, b []byte, now, maxWait int64) {
		if len(b) < turnSlotSize || now <= 0 || now > 1<<60 || maxWait < 0 || maxWait > maxTurnWait {
			return
		}
		tf := &turnFile{}
		check := func(what string, wait time.Duration, taken bool) {
			if wait < 0 || taken && wait > time.Duration(maxWait)*time.Microsecond {
				t.Fatalf("%s: wait %v (taken %v), longest %v µs", what, wait, taken, maxWait)
			}
		}
		s := decodeTurnSlot(b)
		w, ok := s.take(1e5, maxWait, now)
		check("take", time.Duration(w)*time.Microsecond, ok)
		for _, op := range []startOp{startTake, startCheck, startStop, startTake} {
			s := decodeTurnSlot(b)
			r := s.startOp(tf, "api.test", "p", op, maxWait, now)
			check(startOps[op], r.wait, r.code == startRamp || r.code == startHeld)
			if r.reached < 0 || math.IsNaN(r.reached) || math.IsInf(r.reached, 0) || (r.code == startHeld && r.procs < 1) {
				t.Fatalf("%s: reply %+v", startOps[op], r)
			}
			var out [turnSlotSize]byte
			s.encode(out[:])
			if decodeTurnSlot(out[:]) != s {
				t.Fatalf("%s: slot %+v does not read back", startOps[op], s)
			}
		}
	})
}

// TestBoltStartKeepsTheHold: a fleet's start that begins at a host whose
// shared bucket a Retry-After holds (a process new to the host, under
// another's cooldown) keeps the hold in the host's slot of the turns
// file, which the slot shares: the requests that waited for their turns
// still ask for it, and are rejected until it ends.
func TestBoltStartKeepsTheHold(t *testing.T) {
	s := boltTestOpen(t, boltTestPath(t))
	ctx := context.Background()
	if err := s.slowTurns(ctx, "api.test", 1, 0, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if r, err := s.startTurn(ctx, "api.test", "a", startTake, time.Minute); err != nil || r.code != startRamp {
		t.Fatalf("take: %+v, %v", r, err)
	}
	if hold, err := s.turnHold(ctx, "api.test"); err != nil || hold < 4*time.Second || hold > 5*time.Second {
		t.Errorf("hold after the start's first turn: %v, %v; want the 5 s of the Retry-After", hold, err)
	}
}
