package hostbreaker

import (
	"context"
	"errors"
	"math"
	"net/http"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"go.opentelemetry.io/otel/sdk/metric/metricdata"
)

// rateEvents collects the rate_change events of a Transport.
type rateEvents struct {
	mu  sync.Mutex
	evs []Event
}

func (r *rateEvents) handle(ev Event) {
	if ev.Name == EventRateChange {
		r.mu.Lock()
		r.evs = append(r.evs, ev)
		r.mu.Unlock()
	}
}

func (r *rateEvents) notes() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, ev := range r.evs {
		out = append(out, ev.Note)
	}
	return out
}

func TestConfiguredRatePaces(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		base := newSendLog()
		tr := newRateTransport(t, base, Config{Defaults: Policy{Rate: 10, Burst: 3}})
		for range 6 {
			if err := send(context.Background(), tr, "a.test"); err != nil {
				t.Fatal(err)
			}
		}
		want := []time.Duration{0, 0, 0, 100 * time.Millisecond, 200 * time.Millisecond, 300 * time.Millisecond}
		if got := base.sent(); !equalDurations(got, want) {
			t.Errorf("sent at %v, want %v", got, want)
		}
		if s := tr.Snapshot(); len(s) != 1 || s[0].Rate != 10 {
			t.Errorf("Snapshot = %+v, want Rate 10", s)
		}
		// An unlimited host costs nothing: it has no limiter at all.
		tr2 := newRateTransport(t, base, Config{})
		send(context.Background(), tr2, "b.test")
		if h := tr2.reg.host("b.test"); h == nil || h.lim.Load() != nil {
			t.Error("an unlimited host has a limiter")
		}
	})
}

func equalDurations(a, b []time.Duration) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestRateLimitedRejection(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		base := newSendLog()
		tr := newRateTransport(t, base, Config{Defaults: Policy{Rate: 1, MaxWait: 2 * time.Second}})
		start := time.Now()
		var wg sync.WaitGroup
		errs := make([]error, 4)
		for i := range errs {
			wg.Go(func() { errs[i] = send(context.Background(), tr, "a.test") })
			synctest.Wait() // one at a time, in order
		}
		wg.Wait()
		for i := range 3 {
			if errs[i] != nil {
				t.Errorf("request %d: %v", i, errs[i])
			}
		}
		var oe *OpenError
		if !errors.As(errs[3], &oe) || !errors.Is(errs[3], ErrOpen) || oe.Reason != ReasonRateLimited || !oe.Until.Equal(start.Add(3*time.Second)) {
			t.Fatalf("4th request: %v, want rate-limited until +3s", errs[3])
		}
		if got := base.sent(); !equalDurations(got, []time.Duration{0, time.Second, 2 * time.Second}) {
			t.Errorf("sent at %v", got)
		}
		// A request may wait at most half the time left before its
		// deadline: its turn is 1s away, so a 1.5s deadline rejects it at
		// once, and the turn stays free; a 2s deadline lets it wait.
		// Now is 2s (the third request went then); the next turn is 3s.
		ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
		defer cancel()
		before := time.Now()
		err := send(ctx, tr, "a.test")
		if !errors.As(err, &oe) || oe.Reason != ReasonRateLimited || time.Since(before) != 0 {
			t.Errorf("request whose turn is beyond half its deadline: %v after %v", err, time.Since(before))
		}
		ctx2, cancel2 := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel2()
		if err := send(ctx2, tr, "a.test"); err != nil || base.sent()[3] != 3*time.Second {
			t.Errorf("the next request: %v, sent at %v; want at 3s", err, base.sent())
		}
		if s := tr.Snapshot(); s[0].Rejected != 2 {
			t.Errorf("Rejected = %d, want 2", s[0].Rejected)
		}
	})
}

func TestCanceledWaitGivesItsTurnBack(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		base := newSendLog()
		tr := newRateTransport(t, base, Config{Defaults: Policy{Rate: 1}})
		send(context.Background(), tr, "a.test") // at 0
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error)
		go func() { done <- send(ctx, tr, "a.test") }() // its turn: 1s
		time.Sleep(500 * time.Millisecond)
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Fatalf("canceled wait: %v", err)
		}
		send(context.Background(), tr, "a.test")
		if got := base.sent(); !equalDurations(got, []time.Duration{0, time.Second}) {
			t.Errorf("sent at %v, want [0s 1s]: the canceled turn is given back", got)
		}
	})
}

func TestAdaptiveLimiterLearns(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		base := newSendLog()
		base.next = func(n int) (int, http.Header) {
			if n >= 10 && n < 14 {
				time.Sleep(10 * time.Millisecond) // all four are in flight
				return http.StatusTooManyRequests, http.Header{}
			}
			return 0, nil
		}
		var evs rateEvents
		tr := newRateTransport(t, base, Config{}, WithEventHandler(evs.handle))
		for range 10 {
			send(context.Background(), tr, "a.test")
		}
		if tr.reg.host("a.test").lim.Load() != nil {
			t.Fatal("a limiter before any throttle")
		}
		// Four requests in flight together all get 429: one episode, one decrease.
		var wg sync.WaitGroup
		for range 4 {
			wg.Go(func() { send(context.Background(), tr, "a.test") })
		}
		wg.Wait()
		synctest.Wait()
		if got := evs.notes(); len(got) != 1 || got[0] != "throttled" {
			t.Fatalf("rate events %v, want one throttled", got)
		}
		rate := tr.Snapshot()[0].Rate
		if rate <= 0 {
			t.Fatalf("Status.Rate = %v after a throttle", rate)
		}
		// The rate grows back along the curve while the host serves.
		for range 40 {
			send(context.Background(), tr, "a.test")
		}
		if r := tr.Snapshot()[0].Rate; r <= rate {
			t.Errorf("rate %v after 40 successes, not above %v", r, rate)
		}
		// Adaptive off: a throttle gives no limiter.
		tr2 := newRateTransport(t, base, Config{Defaults: Policy{Adaptive: ToggleOff}})
		base.next = func(int) (int, http.Header) { return http.StatusTooManyRequests, http.Header{} }
		send(context.Background(), tr2, "b.test")
		if tr2.reg.host("b.test").lim.Load() != nil {
			t.Error("adaptive off, yet a limiter")
		}
	})
}

func TestRetryAfterStaysAuthoritative(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		base := newSendLog()
		base.next = func(n int) (int, http.Header) {
			if n == 3 {
				return http.StatusTooManyRequests, http.Header{"Retry-After": {"2"}}
			}
			return 0, nil
		}
		tr := newRateTransport(t, base, Config{Defaults: Policy{Rate: 50, Burst: 5}})
		for range 4 {
			send(context.Background(), tr, "a.test") // the 4th gets the 429 at 0s
		}
		var oe *OpenError
		if err := send(context.Background(), tr, "a.test"); !errors.As(err, &oe) || oe.Reason != ReasonRetryAfter {
			t.Fatalf("during the Retry-After: %v", err)
		}
		time.Sleep(time.Until(oe.Until))
		// Workers that slept until the cooldown's end are let go one at a
		// time at the learnt rate, not as a burst of 5.
		var wg sync.WaitGroup
		for range 5 {
			wg.Go(func() { send(context.Background(), tr, "a.test") })
		}
		wg.Wait()
		got := base.sent()[4:]
		rate := tr.Snapshot()[0].Rate
		if got[0] != 2*time.Second {
			t.Errorf("first request after the cooldown at %v, want 2s", got[0])
		}
		for i := 1; i < len(got); i++ {
			if gap := got[i] - got[i-1]; gap < time.Duration(float64(time.Second)/rate)-time.Millisecond {
				t.Errorf("requests after the cooldown at %v: gap %v under 1/rate (rate %.2f)", got, gap, rate)
				break
			}
		}
	})
}

func TestLearntLimitExpires(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		base := newSendLog()
		base.next = func(n int) (int, http.Header) {
			if n == 1 {
				return http.StatusTooManyRequests, http.Header{}
			}
			return 0, nil
		}
		var evs rateEvents
		tr := newRateTransport(t, base, Config{}, WithEventHandler(evs.handle))
		send(context.Background(), tr, "a.test")
		send(context.Background(), tr, "a.test")
		if tr.reg.host("a.test").lim.Load() == nil {
			t.Fatal("no limiter after a throttle")
		}
		time.Sleep(14 * time.Minute)
		send(context.Background(), tr, "a.test")
		if tr.reg.host("a.test").lim.Load() == nil {
			t.Fatal("the limiter was dropped before 15 minutes")
		}
		time.Sleep(2*time.Minute + time.Second)
		synctest.Wait()
		if tr.reg.host("a.test").lim.Load() != nil || tr.Snapshot()[0].Rate != 0 {
			t.Error("the limiter was kept after 15 minutes without a throttle")
		}
		if n := evs.notes(); n[len(n)-1] != "expired" {
			t.Errorf("rate events %v, want the last expired", n)
		}
	})
}

func TestUpdateHostPolicyStartsAndDropsLimiters(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var evs rateEvents
		tr := newRateTransport(t, newSendLog(), Config{}, WithEventHandler(evs.handle))
		send(context.Background(), tr, "a.test")
		if err := tr.UpdateHostPolicy("a.test", Policy{Rate: 2}); err != nil {
			t.Fatal(err)
		}
		if s := tr.Snapshot(); s[0].Rate != 2 {
			t.Errorf("Rate %v after UpdateHostPolicy(rate 2)", s[0].Rate)
		}
		// A host paced only at its configured rate is not published
		// (the configuration says it already); one that learnt a rate is.
		if s := tr.statuses(true); len(s) != 0 {
			t.Errorf("published %+v for a configured rate", s)
		}
		if err := tr.UpdateHostPolicy("a.test", Policy{Rate: -1}); err != nil {
			t.Fatal(err)
		}
		if s := tr.Snapshot(); s[0].Rate != 0 || tr.reg.host("a.test").lim.Load() != nil {
			t.Errorf("Rate %v after UpdateHostPolicy(unlimited)", s[0].Rate)
		}
		synctest.Wait()
		if got := evs.notes(); len(got) != 2 || got[0] != "configured" || got[1] != "configured" {
			t.Errorf("rate events %v", got)
		}
		if err := tr.UpdateHostPolicy("a.test", Policy{Roles: map[string]Policy{"r": {Rate: 1}}}); err == nil {
			t.Error("a rate in a role was accepted")
		}
	})
}

func TestRateGauge(t *testing.T) {
	tr, reader, _ := metricTransport(t, newSendLog(), Config{Hosts: map[string]Policy{"limited.test": {Rate: 3}}})
	send(context.Background(), tr, "limited.test")
	send(context.Background(), tr, "free.test")
	m, ok := collect(t, reader)["hostbreaker.rate"]
	if !ok {
		t.Fatal("no hostbreaker.rate")
	}
	g, ok := m.Data.(metricdata.Gauge[float64])
	if !ok || m.Unit != "{request}/s" || len(g.DataPoints) != 1 {
		t.Fatalf("hostbreaker.rate = %+v (unit %q), want one point", m.Data, m.Unit)
	}
	dp := g.DataPoints[0]
	if v, _ := dp.Attributes.Value(keyServerAddress); v.AsString() != "limited.test" || dp.Value != 3 {
		t.Errorf("point %v = %v, want limited.test 3", dp.Attributes, dp.Value)
	}
}

func TestFleetSharesLearntRate(t *testing.T) {
	storeKinds(t, func(t *testing.T, url string) {
		throttling := newSendLog()
		throttling.next = func(n int) (int, http.Header) {
			if n >= 20 {
				return http.StatusTooManyRequests, http.Header{}
			}
			return 0, nil
		}
		a := sharedTransport(t, url, 50*time.Millisecond, throttling, Config{})
		for range 21 {
			send(context.Background(), a, "api.test")
		}
		learnt := a.Snapshot()[0].Rate
		if learnt <= 0 {
			t.Fatal("A learnt no rate")
		}
		if s := a.statuses(true); len(s) != 1 || s[0].Rate != learnt {
			t.Fatalf("A publishes %+v, want its learnt rate", s)
		}
		b := sharedTransport(t, url, 50*time.Millisecond, newSendLog(), Config{})
		deadline := time.Now().Add(bound(url, 50*time.Millisecond))
		for {
			if _, ok := b.fleetRate("api.test"); ok {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("B never read A's learnt rate")
			}
			time.Sleep(10 * time.Millisecond)
		}
		// B meets the host: it starts from the fleet's rate shared by two.
		send(context.Background(), b, "api.test")
		got := b.Snapshot()[0].Rate
		t.Logf("A learnt %.3f r/s; B starts at %.3f", learnt, got)
		if want := max(learnt/2, 0.5); got < want*0.5 || got > want*1.5 {
			t.Errorf("B starts at %.3f r/s, want about %.3f (A's %.3f shared by 2)", got, want, learnt)
		}
		// A is throttled again, later: B, which has a limiter now, takes
		// the fleet's newer learning at a poll.
		before := b.reg.host("api.test").lim.Load().status().throttled
		time.Sleep(10 * time.Millisecond) // a later wall-clock throttle
		send(context.Background(), a, "api.test")
		for deadline := time.Now().Add(bound(url, 50*time.Millisecond)); ; time.Sleep(10 * time.Millisecond) {
			if b.reg.host("api.test").lim.Load().status().throttled > before {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("B never adopted A's newer throttle")
			}
		}
	})
}

// TestCanceledTurnAfterRateChange: a turn canceled after the rate changed
// gives back exactly the room it held, so that the next turn is where it
// would have been had the canceled one never been reserved, whichever way
// the rate moved.
func TestCanceledTurnAfterRateChange(t *testing.T) {
	pt := mustCompile(t, Config{Defaults: Policy{Rate: 10, MaxWait: time.Minute}})
	p := mustResolve(t, pt, "a.test", "")
	ms := int64(time.Millisecond)
	for _, rate := range []float64{5, 20} {
		// with: A, B and C reserve at 0; the rate changes at 50ms; C cancels.
		with := newLimiter(p, 0, 10)
		for range 2 {
			reserveTurn(with, 0)
		}
		c, ok := reserveTurn(with, 0)
		if !ok || c.at != 200*ms {
			t.Fatalf("C's turn %v, %v; want 200ms", time.Duration(c.at), ok)
		}
		with.mu.Lock()
		with.setRateLocked(rate, 50*ms)
		with.mu.Unlock()
		c.cancel()
		// without: only A and B reserve.
		without := newLimiter(p, 0, 10)
		for range 2 {
			reserveTurn(without, 0)
		}
		without.mu.Lock()
		without.setRateLocked(rate, 50*ms)
		without.mu.Unlock()

		got, _ := reserveTurn(with, 50*ms)
		want, _ := reserveTurn(without, 50*ms)
		if got.at != want.at {
			t.Errorf("rate 10 → %v: the next turn after C's cancel is at %v, want %v as if C had never reserved",
				rate, time.Duration(got.at), time.Duration(want.at))
		}
		if got.lim != with {
			t.Errorf("the turn names another limiter")
		}
	}
}

// TestTurnsKeepTheirSpacing: when the rate changes, the turns already
// handed out keep their times and the next turn keeps the new interval
// after the last of them, up or down. (Rescaling the whole backlog once
// put a new turn before turns already given, and requests went out 4–12 ms
// apart where the interval was 20 ms.)
func TestTurnsKeepTheirSpacing(t *testing.T) {
	ms := int64(time.Millisecond)
	for _, tc := range []struct {
		to       float64
		interval int64
	}{{50, 20 * ms}, {2, 500 * ms}} {
		pt := mustCompile(t, Config{Defaults: Policy{Rate: 100, MaxWait: time.Minute, Adaptive: ToggleOff}})
		l := newLimiter(mustResolve(t, pt, "a.test", ""), 0, 100)
		l.mu.Lock()
		l.setRateLocked(10, 0)
		l.mu.Unlock()
		var last int64
		for i := range 3 {
			tn, ok := reserveTurn(l, 0)
			if !ok || tn.at != int64(i)*100*ms {
				t.Fatalf("turn %d at %v, %v; want %v", i, time.Duration(tn.at), ok, time.Duration(int64(i)*100*ms))
			}
			last = tn.at
		}
		l.mu.Lock()
		l.setRateLocked(tc.to, 0)
		l.mu.Unlock()
		tn, _ := reserveTurn(l, 0)
		if want := last + tc.interval; tn.at != want {
			t.Errorf("rate 10 → %v: the next turn is at %v, want %v (the last turn given, %v, plus the new interval)",
				tc.to, time.Duration(tn.at), time.Duration(want), time.Duration(last))
		}
	}
}

// reserveTurn reserves a turn at l at now, with no deadline.
func reserveTurn(l *limiter, now int64) (turn, bool) {
	tn, _, _, ok, _, _ := l.reserve(now, now, 0)
	return tn, ok
}

// A request whose turn comes less than an interval after the request
// before it actually went (its timer fired late) waits for the interval: a
// limiter without a burst counts the time between arrivals, not between
// turns. A configured burst keeps its bucket.
func TestLateRequestKeepsSpacing(t *testing.T) {
	ms := int64(time.Millisecond)
	for _, burst := range []int{1, 2} {
		pt := mustCompile(t, Config{Defaults: Policy{Rate: 10, Burst: burst, MaxWait: time.Minute, Adaptive: ToggleOff}})
		l := newLimiter(mustResolve(t, pt, "a.test", ""), ms, 10)
		a, _ := reserveTurn(l, ms)
		b, _ := reserveTurn(l, ms)
		if later, took := a.take(a.at + 30*ms); !took || later != 0 {
			t.Fatalf("burst %d: first turn taken 30ms late: took %v, later %v", burst, took, time.Duration(later))
		}
		later, took := b.take(b.at)
		if burst > 1 {
			if !took || b.at != a.at {
				t.Errorf("burst %d: second turn at +%v: took %v, want taken with the first", burst, time.Duration(b.at-a.at), took)
			}
			continue
		}
		if want := a.at + 130*ms; b.at != a.at+100*ms || took || later != want {
			t.Fatalf("burst 1: second turn at +%v: took %v, later +%v; want it at +100ms, deferred to +130ms (an interval after the first went)",
				time.Duration(b.at-a.at), took, time.Duration(later-a.at))
		}
		if _, took := b.take(later); !took {
			t.Errorf("burst 1: second turn not taken at +%v", time.Duration(later-a.at))
		}
	}
}

// TestAnchorCountsWholeSlots paces a host at 20 r/s, which serves every
// request, then throttles it with a cooldown at an instant that is not on
// a slot's boundary: the limit is anchored just under the 20 r/s served
// (costlyMargin), whatever the instant. Counting the slots of the span
// but dividing by the whole span once anchored it up to a quarter lower
// when the span was a second.
func TestAnchorCountsWholeSlots(t *testing.T) {
	for _, off := range []int64{0, 1, 66, 125, 249} {
		p := &resolved{Policy: Policy{Adaptive: ToggleOn, MinRate: 0.5, MaxWait: time.Second}}
		start := int64(100 * time.Second)
		l := newLimiter(p, start, 20)
		l.throttle(0, start, 0, 0, 429) // learning, in slow start
		at := start + int64(2*time.Second)
		now := at + int64(3*time.Second) + off*int64(time.Millisecond)
		sent := at
		for ; sent+int64(time.Millisecond) < now; sent += int64(50 * time.Millisecond) {
			l.success(sent, sent+int64(time.Millisecond))
		}
		l.throttle(sent, sent+int64(time.Millisecond), now+int64(time.Second), 0, 429) // ends slow start, costly
		if want := costlyMargin * 20; math.Abs(l.lastMax-want) > 0.02*want {
			t.Errorf("throttle %d ms past a slot: anchored on %.2f r/s, want %.2f (%v × the 20 r/s served)", off, l.lastMax, want, costlyMargin)
		}
	}
}

// TestFleetSlowStartStartsFromTheRateSent: a process in slow start that
// sent nothing for seconds joins a fleet's slow start from the rate it
// could have reached, which is at most twice what it sent (as growLocked
// caps it), not from where the doubling curve would be by then. Taking the
// uncapped curve once made an idle process's rate 14,336 r/s four seconds
// after a host refused it at 10 r/s.
func TestFleetSlowStartStartsFromTheRateSent(t *testing.T) {
	for _, probe := range []bool{false, true} {
		p := &resolved{Policy: Policy{Adaptive: ToggleOn, MinRate: 0.5, MaxWait: time.Minute}}
		start := int64(100 * time.Second)
		l := newLimiter(p, start, 10)
		now := start
		for range 10 { // 10 r/s for a second
			tn, ok := reserveTurn(l, now)
			if !ok {
				t.Fatal("no turn")
			}
			now = tn.at
			tn.take(now)
			l.success(now, now+int64(time.Millisecond))
		}
		l.throttle(now, now+int64(time.Millisecond), 0, 0, 429) // slow start
		l.mu.Lock()
		sent := l.measured
		l.mu.Unlock()
		l.fleetSlowStart(2, 0.25, probe, now+int64(4*time.Second))
		if r := l.status().rate; r > 2*sent {
			t.Errorf("probe %v: idle for 4 s after sending %.1f r/s, the fleet's slow start set %.1f r/s", probe, sent, r)
		}
	}
}
