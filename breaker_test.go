package hostbreaker

import (
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
// admit and record alone, and checks the transitions they return: what
// the Transport turns into events.
func TestBreakerStateMachine(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := clock{epoch: time.Now().Add(-time.Second)}
		e := newTestEntry(t, Policy{FailMax: 3, ResetTimeout: 10 * time.Second, SuccessThreshold: 2, TrialCalls: 1})

		admit := func() admission {
			t.Helper()
			adm, tr, rej := e.admit(c)
			if rej != nil || tr.changed() {
				t.Fatalf("admit: %v, %+v; want an admission and no transition", rej, tr)
			}
			return adm
		}
		stale := admit() // admitted before the trip: its outcome must not count
		for i := range 2 {
			if tr := e.record(admit(), outcomeFailure, c); tr.changed() {
				t.Fatalf("failure %d: %+v; want no transition", i+1, tr)
			}
		}
		trip := e.record(admit(), outcomeFailure, c)
		wantUntil := c.now() + int64(10*time.Second)
		if trip.from != StateClosed || trip.to != StateOpen || trip.failures != 3 || trip.until < wantUntil || trip.until > wantUntil+int64(time.Second) {
			t.Fatalf("third failure: %+v; want closed → open after 3 failures, until in 10s (+ jitter ≤ 1s)", trip)
		}

		if tr := e.record(stale, outcomeSuccess, c); tr.changed() || e.successes.Load() != 1 {
			t.Fatalf("stale success: %+v, %d successes; want counted, no transition", tr, e.successes.Load())
		}
		if _, tr, rej := e.admit(c); rej == nil || rej.Reason != ReasonBreakerOpen || !rej.Until.Equal(c.at(trip.until)) || tr.changed() {
			t.Fatalf("admit while open: %v, %+v; want breaker-open until %v", rej, tr, c.at(trip.until))
		}

		time.Sleep(time.Duration(trip.until - c.now()))
		probe, tr, rej := e.admit(c)
		if rej != nil || !probe.probe || tr.from != StateOpen || tr.to != StateHalfOpen {
			t.Fatalf("admit after the open phase: %v, %+v, %+v; want a probe and open → half-open", rej, probe, tr)
		}
		if _, _, rej := e.admit(c); rej == nil || rej.Reason != ReasonHalfOpenFull {
			t.Fatalf("second admit while half-open: %v; want half-open-full (trial_calls 1)", rej)
		}
		if tr := e.record(probe, outcomeSuccess, c); tr.changed() {
			t.Fatalf("first successful probe: %+v; want none (success_threshold 2)", tr)
		}
		probe, _, _ = e.admit(c)
		if tr := e.record(probe, outcomeSuccess, c); tr.from != StateHalfOpen || tr.to != StateClosed {
			t.Fatalf("second successful probe: %+v; want half-open → closed", tr)
		}

		// A failed probe reopens at once, with a failure count of 1.
		for range 3 {
			e.record(admit(), outcomeFailure, c)
		}
		time.Sleep(11 * time.Second)
		probe, _, _ = e.admit(c)
		if tr := e.record(probe, outcomeFailure, c); tr.from != StateHalfOpen || tr.to != StateOpen || tr.failures != 1 {
			t.Fatalf("failed probe: %+v; want half-open → open, 1 failure", tr)
		}

		// A neutral probe gives its slot back, without a transition.
		time.Sleep(11 * time.Second)
		probe, _, _ = e.admit(c)
		if tr := e.record(probe, outcomeNeutral, c); tr.changed() {
			t.Fatalf("neutral probe: %+v; want no transition", tr)
		}
		if _, _, rej := e.admit(c); rej != nil {
			t.Fatalf("admit after a neutral probe: %v; want its slot back", rej)
		}
	})
}
