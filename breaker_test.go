package hostbreaker

// Tests of the breaker of one (host, role), as a state machine on its own
// and through a Transport: tripping on consecutive failures that age,
// half-open probes and trial calls, the success threshold, and the jitter.

import (
	"fmt"
	"net/http"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

// newTestEntry returns the entry of a.test's first role under policy p,
// outside any registry or Transport: the breaker is a state machine of its
// own.
func newTestEntry(t *testing.T, p Policy) *entry {
	t.Helper()
	pt := mustCompile(t, Config{Defaults: p})
	h := newHostState("a.test", 0)
	e := &h.first
	e.host = h
	e.pol.Store(mustResolve(t, pt, "a.test", ""))
	return e
}

// TestBreakerStateMachine walks one breaker through every transition with
// admit and record alone, and checks the transitions they report: what the
// Transport turns into events.
func TestBreakerStateMachine(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := &clock{epoch: time.Now().Add(-time.Second)}
		e := newTestEntry(t, Policy{FailMax: 3, ResetTimeout: 10 * time.Second, SuccessThreshold: 2, TrialCalls: 1})

		admit := func() admission {
			t.Helper()
			adm, halfOpened, rej := e.admit(c)
			if rej != nil || halfOpened {
				t.Fatalf("admit: %v, half-opened %v; want an admission and no transition", rej, halfOpened)
			}
			return adm
		}
		stale := admit() // admitted before the trip: its outcome must not count
		for i := range 2 {
			if tr := e.record(admit(), outcomeFailure, false, c); tr.changed() {
				t.Fatalf("failure %d: %+v; want no transition", i+1, tr)
			}
		}
		trip := e.record(admit(), outcomeFailure, false, c)
		wantUntil := c.now() + int64(10*time.Second)
		if trip.from != StateClosed || trip.to != StateOpen || trip.failures != 3 || trip.until < wantUntil || trip.until > wantUntil+int64(time.Second) {
			t.Fatalf("third failure: %+v; want closed → open after 3 failures, until in 10s (+ jitter ≤ 1s)", trip)
		}

		if tr := e.record(stale, outcomeSuccess, false, c); tr.changed() || e.successes.Load() != 1 {
			t.Fatalf("stale success: %+v, %d successes; want counted, no transition", tr, e.successes.Load())
		}
		if _, halfOpened, rej := e.admit(c); rej == nil || rej.Reason != ReasonBreakerOpen || !rej.Until.Equal(c.at(trip.until)) || halfOpened {
			t.Fatalf("admit while open: %v, half-opened %v; want breaker-open until %v", rej, halfOpened, c.at(trip.until))
		}

		time.Sleep(time.Duration(trip.until - c.now()))
		probe, halfOpened, rej := e.admit(c)
		if rej != nil || !probe.probe || !halfOpened {
			t.Fatalf("admit after the open phase: %v, %+v, half-opened %v; want a probe and open → half-open", rej, probe, halfOpened)
		}
		if _, _, rej := e.admit(c); rej == nil || rej.Reason != ReasonHalfOpenFull {
			t.Fatalf("second admit while half-open: %v; want half-open-full (trial_calls 1)", rej)
		}
		if tr := e.record(probe, outcomeSuccess, false, c); tr.changed() {
			t.Fatalf("first successful probe: %+v; want none (success_threshold 2)", tr)
		}
		probe, _, _ = e.admit(c)
		if tr := e.record(probe, outcomeSuccess, false, c); tr.from != StateHalfOpen || tr.to != StateClosed {
			t.Fatalf("second successful probe: %+v; want half-open → closed", tr)
		}

		// A failed probe reopens at once, with a failure count of 1.
		for range 3 {
			e.record(admit(), outcomeFailure, false, c)
		}
		time.Sleep(11 * time.Second)
		probe, _, _ = e.admit(c)
		if tr := e.record(probe, outcomeFailure, false, c); tr.from != StateHalfOpen || tr.to != StateOpen || tr.failures != 1 {
			t.Fatalf("failed probe: %+v; want half-open → open, 1 failure", tr)
		}

		// A neutral probe gives its slot back, without a transition.
		time.Sleep(11 * time.Second)
		probe, _, _ = e.admit(c)
		if tr := e.record(probe, outcomeNeutral, false, c); tr.changed() {
			t.Fatalf("neutral probe: %+v; want no transition", tr)
		}
		if _, _, rej := e.admit(c); rej != nil {
			t.Fatalf("admit after a neutral probe: %v; want its slot back", rej)
		}
	})
}

func TestBreakerOpensAfterFailMaxConsecutiveFailures(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		base := newFakeHosts(status(500))
		c, tr := client(t, base, quick(3, time.Minute))
		for range 3 {
			mustPass(t, do(t, c, RoleMetadata, "https://a.test/x"), 500)
		}
		start := time.Now()
		_, err := get(t, c, RoleMetadata, "https://a.test/x")
		oe := mustReject(t, err, ReasonBreakerOpen)
		if oe.Host != "a.test" || oe.Role != RoleMetadata || !oe.Until.Equal(start.Add(time.Minute)) {
			t.Errorf("OpenError = %+v, want a.test/metadata until %v", oe, start.Add(time.Minute))
		}
		if n := base.count("a.test"); n != 3 {
			t.Errorf("base called %d times, want 3", n)
		}
		// Other roles of the host and other hosts are not affected.
		base.set(status(200))
		mustPass(t, do(t, c, RoleArtifact, "https://a.test/x"), 200)
		mustPass(t, do(t, c, RoleMetadata, "https://b.test/x"), 200)
		s := stateOf(t, tr, "a.test", RoleMetadata)
		if s.State != StateOpen || s.Reason != ReasonBreakerOpen || s.Failures != 3 || s.Rejected != 1 || s.Requests != 4 {
			t.Errorf("status = %+v", s)
		}
	})
}

func TestSuccessResetsFailureCount(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		base := newFakeHosts(status(500))
		c, _ := client(t, base, quick(3, time.Minute))
		seq := []int{500, 500, 200, 500, 500, 200, 500, 500}
		for _, code := range seq {
			base.set(status(code))
			mustPass(t, do(t, c, "", "https://a.test/"), code)
		}
		base.set(status(500))
		mustPass(t, do(t, c, "", "https://a.test/"), 500) // third in a row
		_, err := get(t, c, "", "https://a.test/")
		mustReject(t, err, ReasonBreakerOpen)
	})
}

// Failures age. An entry whose last failure is older than its
// reset_timeout is idle and evictable, and its failure count is forgotten.
func TestFailuresAge(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		base := newFakeHosts(status(500))
		c, tr := client(t, base, Config{MaxHosts: 10, Defaults: Policy{FailMax: 2, ResetTimeout: time.Minute, HalfOpenJitter: -1}})
		for i := range 10 {
			mustPass(t, do(t, c, "", fmt.Sprintf("https://h%d.test/", i)), 500)
		}
		// The registry is full of failing entries: a new host goes untracked.
		base.set(status(200))
		mustPass(t, do(t, c, "", "https://new.test/"), 200)
		if tr.untracked.Load() != 1 {
			t.Fatalf("untracked = %d, want 1", tr.untracked.Load())
		}
		time.Sleep(time.Minute + time.Second)
		mustPass(t, do(t, c, "", "https://new.test/"), 200)
		if tr.untracked.Load() != 1 {
			t.Fatalf("after aging, untracked = %d, want 1 (the aged entries are evictable)", tr.untracked.Load())
		}
		// A failure older than reset_timeout does not add up with a new one.
		base.set(status(500))
		mustPass(t, do(t, c, "", "https://new.test/"), 500)
		time.Sleep(time.Minute + time.Second)
		mustPass(t, do(t, c, "", "https://new.test/"), 500)
		mustState(t, tr, "new.test", "", StateClosed)
		mustPass(t, do(t, c, "", "https://new.test/"), 500)
		mustState(t, tr, "new.test", "", StateOpen)
	})
}

func TestHalfOpenProbeClosesOrReopens(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		base := newFakeHosts(status(503))
		c, tr := client(t, base, quick(2, 10*time.Second))
		get(t, c, "", "http://a.test/")
		get(t, c, "", "http://a.test/")
		mustState(t, tr, "a.test", "", StateOpen)
		time.Sleep(10*time.Second - time.Nanosecond)
		_, err := get(t, c, "", "http://a.test/")
		mustReject(t, err, ReasonBreakerOpen)
		time.Sleep(time.Nanosecond)
		// The delay has passed: Snapshot reports the effective state.
		mustState(t, tr, "a.test", "", StateHalfOpen)
		// A failed probe reopens for another reset_timeout.
		mustPass(t, do(t, c, "", "http://a.test/"), 503)
		reopened := time.Now()
		oe := mustReject(t, do(t, c, "", "http://a.test/").err, ReasonBreakerOpen)
		if !oe.Until.Equal(reopened.Add(10 * time.Second)) {
			t.Errorf("until = %v, want %v", oe.Until, reopened.Add(10*time.Second))
		}
		time.Sleep(10 * time.Second)
		base.set(status(200))
		mustPass(t, do(t, c, "", "http://a.test/"), 200) // probe succeeds: closed
		mustState(t, tr, "a.test", "", StateClosed)
		for range 5 {
			mustPass(t, do(t, c, "", "http://a.test/"), 200)
		}
	})
}

func TestTrialCallsLimitConcurrentProbes(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		release := make(chan struct{})
		base := newFakeHosts(status(500))
		cfg := quick(1, time.Second)
		cfg.Defaults.TrialCalls = 2
		cfg.Defaults.SuccessThreshold = 2
		c, tr := client(t, base, cfg)
		get(t, c, RoleArtifact, "https://a.test/")
		time.Sleep(time.Second)
		base.set(func(req *http.Request) (*http.Response, error) {
			<-release
			return status(200)(req)
		})
		var wg sync.WaitGroup
		for range 2 {
			wg.Go(func() { mustPass(t, do(t, c, RoleArtifact, "https://a.test/"), 200) })
		}
		synctest.Wait() // both probes are in the base
		mustReject(t, do(t, c, RoleArtifact, "https://a.test/").err, ReasonHalfOpenFull)
		close(release)
		wg.Wait()
		mustState(t, tr, "a.test", RoleArtifact, StateClosed)
	})
}

func TestSuccessThreshold(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		base := newFakeHosts(status(500))
		cfg := quick(1, time.Second)
		cfg.Defaults.SuccessThreshold = 2
		c, tr := client(t, base, cfg)
		get(t, c, "", "https://a.test/")
		time.Sleep(time.Second)
		base.set(status(200))
		mustPass(t, do(t, c, "", "https://a.test/"), 200)
		mustState(t, tr, "a.test", "", StateHalfOpen)
		mustPass(t, do(t, c, "", "https://a.test/"), 200)
		mustState(t, tr, "a.test", "", StateClosed)
	})
}

func TestNeutralProbeFreesItsSlot(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		base := newFakeHosts(status(500))
		c, tr := client(t, base, quick(1, time.Second))
		get(t, c, "", "https://a.test/")
		time.Sleep(time.Second)
		base.set(status(404))
		mustPass(t, do(t, c, "", "https://a.test/"), 404) // neutral: decides nothing
		mustState(t, tr, "a.test", "", StateHalfOpen)
		base.set(status(200))
		mustPass(t, do(t, c, "", "https://a.test/"), 200) // the slot was given back
		mustState(t, tr, "a.test", "", StateClosed)
	})
}

func TestPanickingProbeFreesItsSlot(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		base := newFakeHosts(status(500))
		c, tr := client(t, base, quick(1, time.Second))
		get(t, c, "", "https://a.test/")
		time.Sleep(time.Second)
		base.set(func(*http.Request) (*http.Response, error) { panic("base bug") })
		func() {
			defer func() { recover() }()
			req, _ := http.NewRequest(http.MethodGet, "https://a.test/", nil)
			tr.RoundTrip(req)
		}()
		base.set(status(200))
		mustPass(t, do(t, c, "", "https://a.test/"), 200)
		mustState(t, tr, "a.test", "", StateClosed)
	})
}

// A half-open probe that has not completed after reset_timeout
// no longer holds its slot, and its late outcome is dropped.
func TestStuckProbeFreesItsSlot(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		release := make(chan struct{})
		base := newFakeHosts(status(500))
		c, tr := client(t, base, quick(1, 10*time.Second))
		get(t, c, "", "https://a.test/")
		time.Sleep(10 * time.Second)
		base.set(func(req *http.Request) (*http.Response, error) {
			<-release
			return status(500)(req)
		})
		done := make(chan result)
		go func() { done <- do(t, c, "", "https://a.test/") }() // the probe hangs
		synctest.Wait()
		mustReject(t, do(t, c, "", "https://a.test/").err, ReasonHalfOpenFull)
		time.Sleep(10*time.Second - time.Millisecond)
		mustReject(t, do(t, c, "", "https://a.test/").err, ReasonHalfOpenFull)
		time.Sleep(time.Millisecond)
		base.set(status(200))
		mustPass(t, do(t, c, "", "https://a.test/"), 200) // a new probe closes it
		mustState(t, tr, "a.test", "", StateClosed)
		close(release)
		mustPass(t, <-done, 500) // the stuck probe's late failure is stale
		mustState(t, tr, "a.test", "", StateClosed)
	})
}

func TestHalfOpenJitter(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		base := newFakeHosts(status(500))
		cfg := Config{Defaults: Policy{FailMax: 1, ResetTimeout: 10 * time.Second, HalfOpenJitter: time.Second}}
		c, _ := client(t, base, cfg)
		seen := map[time.Duration]bool{}
		for i := range 20 {
			url := fmt.Sprintf("https://h%d.test/", i)
			get(t, c, "", url)
			oe := mustReject(t, do(t, c, "", url).err, ReasonBreakerOpen)
			d := time.Until(oe.Until)
			if d < 10*time.Second || d > 11*time.Second {
				t.Fatalf("open for %v, want within [10s, 11s]", d)
			}
			seen[d] = true
		}
		if len(seen) < 2 {
			t.Errorf("20 breakers opened for the same time %v: no jitter", seen)
		}
		time.Sleep(11 * time.Second)
		base.set(status(200))
		for i := range 20 {
			mustPass(t, do(t, c, "", fmt.Sprintf("https://h%d.test/", i)), 200)
		}
	})
}
