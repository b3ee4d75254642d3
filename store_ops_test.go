package hostbreaker

// The tests of store_ops.go: OpenHost and ResetHost against a real bbolt
// file and a real Redis, with a Transport sharing the store that obeys
// them, and the records a Transport writes for Open and Reset, which they
// must match. The merge rules of Put are tested in store_merge_test.go.

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// opsSource is the Source of the records the tests write as an operator:
// not the source of any Transport, which would skip them.
const opsSource = "ops-test"

// openTestStore opens the store at url and closes it when the test ends.
func openTestStore(t *testing.T, url string) Store {
	t.Helper()
	s, err := OpenStore(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestOpenHost(t *testing.T) {
	storeKinds(t, func(t *testing.T, url string) {
		const poll = 50 * time.Millisecond
		ctx := context.Background()
		tr := sharedTransport(t, url, poll, newFakeHosts(status(200)), quick(2, time.Hour))
		s := openTestStore(t, url)
		if v := verdict(tr, "api.example.org", ""); v != "" {
			t.Fatalf("before OpenHost: rejected (%s)", v)
		}

		at := time.Now()
		r, err := OpenHost(ctx, s, at, "https://API.Example.org:443/works", time.Hour, "vendor maintenance", opsSource)
		if err != nil {
			t.Fatal(err)
		}
		want := Record{Host: "api.example.org", Reason: ReasonManual, Until: at.Add(time.Hour), At: at,
			Note: "vendor maintenance", Source: opsSource}
		if !sameRecord(r, want) {
			t.Errorf("OpenHost returned %+v, want %+v", r, want)
		}
		checkRecords(t, mustRecords(t, s), []Record{want})
		waitVerdict(t, tr, "api.example.org", ReasonManual, bound(url, poll))
		if st := stateOf(t, tr, "api.example.org", ""); st.Note != "vendor maintenance" {
			t.Errorf("the Transport's status: %+v, want the note", st)
		}

		// A manual cooldown replaces a longer one; d is capped at MaxOpen;
		// a zero at is now.
		before := time.Now()
		r, err = OpenHost(ctx, s, time.Time{}, "api.example.org", 100*365*24*time.Hour, "", opsSource)
		if err != nil {
			t.Fatal(err)
		}
		if r.At.Before(before) || r.At.After(time.Now()) || r.Until.Sub(r.At) != MaxOpen {
			t.Errorf("OpenHost at zero for 100 years: %+v, want At now and Until MaxOpen later", r)
		}
		checkRecords(t, mustRecords(t, s), []Record{r})

		// Refused arguments write nothing.
		for _, c := range []struct {
			host string
			d    time.Duration
		}{{"bad host!", time.Hour}, {"*.example.org", time.Hour}, {"b.example.org", 0}, {"b.example.org", -time.Minute}} {
			if r, err := OpenHost(ctx, s, at, c.host, c.d, "", opsSource); err == nil {
				t.Errorf("OpenHost(%q, %v) wrote %+v, want an error", c.host, c.d, r)
			}
		}
		checkRecords(t, mustRecords(t, s), []Record{r})
	})
}

func TestResetHost(t *testing.T) {
	storeKinds(t, func(t *testing.T, url string) {
		const poll = 50 * time.Millisecond
		ctx := context.Background()
		base := newFakeHosts(status(200))
		tr := sharedTransport(t, url, poll, base, quick(2, time.Hour))
		s := openTestStore(t, url)

		// A breaker of the Transport's own that failures opened, and a
		// manual cooldown from the store.
		base.set(status(500))
		for range 2 {
			verdict(tr, "api.example.org", RoleLanding)
		}
		if v := verdict(tr, "api.example.org", RoleLanding); v != ReasonBreakerOpen {
			t.Fatalf("landing after 2 failures: %q, want the breaker open", v)
		}
		base.set(status(200))
		if _, err := OpenHost(ctx, s, time.Now(), "api.example.org", time.Hour, "", opsSource); err != nil {
			t.Fatal(err)
		}
		waitVerdict(t, tr, "api.example.org", ReasonManual, bound(url, poll))

		at := time.Now()
		r, err := ResetHost(ctx, s, at, "https://api.example.org/", opsSource)
		if err != nil {
			t.Fatal(err)
		}
		want := Record{Host: "api.example.org", Reason: ReasonReset, Until: at.Add(resetRetention), At: at, Source: opsSource}
		if !sameRecord(r, want) {
			t.Errorf("ResetHost returned %+v, want %+v", r, want)
		}
		checkRecords(t, mustRecords(t, s), []Record{want}) // the cooldown is gone
		waitVerdict(t, tr, "api.example.org", "", bound(url, poll))
		if v := verdict(tr, "api.example.org", RoleLanding); v != "" {
			t.Errorf("landing after ResetHost: %q, want the breaker closed", v)
		}

		if r, err := ResetHost(ctx, s, at, "bad host!", opsSource); err == nil {
			t.Errorf("ResetHost(bad host!) wrote %+v, want an error", r)
		}
		checkRecords(t, mustRecords(t, s), []Record{want})
	})
}

// TestOpsWriteWhatTransportsShare checks that OpenHost and ResetHost write
// the records that a Transport with the store writes for Open and Reset,
// but for the times and the source.
func TestOpsWriteWhatTransportsShare(t *testing.T) {
	storeKinds(t, func(t *testing.T, url string) {
		ctx := context.Background()
		tr := sharedTransport(t, url, time.Hour, newFakeHosts(status(200)), Config{})
		s := openTestStore(t, url)
		// shared waits for the Transport's record of host, which its
		// background goroutine writes soon after the call.
		shared := func(host string, reset bool) Record {
			t.Helper()
			for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
				if r, ok := find(mustRecords(t, s), host, "", reset); ok {
					return r
				}
				if time.Now().After(deadline) {
					t.Fatalf("the Transport wrote no record of %s (reset %v) in 10s", host, reset)
				}
			}
		}
		// same compares the records but for their times and source, and
		// checks that they last d, within tolerance.
		same := func(op string, got, want Record, d, tolerance time.Duration) {
			t.Helper()
			got.Source, want.Source = "", ""
			if got.Until.Sub(got.At) != d {
				t.Errorf("%s: the operator's record lasts %v, want %v", op, got.Until.Sub(got.At), d)
			}
			if l := want.Until.Sub(want.At); l < d-tolerance || l > d {
				t.Errorf("%s: the Transport's record lasts %v, want %v", op, l, d)
			}
			got.At, got.Until, want.At, want.Until = time.Time{}, time.Time{}, time.Time{}, time.Time{}
			if got != want {
				t.Errorf("%s: OpenHost/ResetHost wrote %+v, the Transport %+v", op, got, want)
			}
		}

		if err := tr.Open("t.example.org", 20*time.Minute, "note"); err != nil {
			t.Fatal(err)
		}
		fromTransport := shared("t.example.org", false)
		r, err := OpenHost(ctx, s, time.Now(), "o.example.org", 20*time.Minute, "note", opsSource)
		if err != nil {
			t.Fatal(err)
		}
		r.Host = fromTransport.Host
		same("open", r, fromTransport, 20*time.Minute, time.Second)

		if err := tr.Reset("t.example.org"); err != nil {
			t.Fatal(err)
		}
		fromTransport = shared("t.example.org", true)
		if r, err = ResetHost(ctx, s, time.Now(), "o.example.org", opsSource); err != nil {
			t.Fatal(err)
		}
		r.Host = fromTransport.Host
		same("reset", r, fromTransport, resetRetention, 0)
	})
}

// An operator pauses a host for every process that shares a store, then
// resets it, without a Transport of its own: as cmd/breaker does.
func ExampleOpenHost() {
	dir, err := os.MkdirTemp("", "hostbreaker-example-")
	if err != nil {
		panic(err)
	}
	defer os.RemoveAll(dir)
	s, err := OpenStore(filepath.Join(dir, "hostbreaker.db"))
	if err != nil {
		panic(err)
	}
	defer s.Close()
	ctx := context.Background()

	r, err := OpenHost(ctx, s, time.Now(), "https://API.example.org/works", 30*time.Minute, "vendor maintenance", "ops@laptop")
	if err != nil {
		panic(err)
	}
	fmt.Println(r.Host, r.Reason, r.Until.Sub(r.At), r.Note)
	if _, err := ResetHost(ctx, s, time.Now(), "api.example.org", "ops@laptop"); err != nil {
		panic(err)
	}
	recs, err := s.Records(ctx)
	if err != nil {
		panic(err)
	}
	for _, r := range recs {
		fmt.Println(r.Host, r.Reason) // only the reset marker is left
	}
	// Output:
	// api.example.org manual 30m0s vendor maintenance
	// api.example.org reset
}
