package hostbreaker

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"go.opentelemetry.io/otel/sdk/metric/metricdata"
)

// sendLog is a base that records when requests reach it and answers with
// the status that next returns (200 when nil).
type sendLog struct {
	mu    sync.Mutex
	times []time.Duration // since start
	start time.Time
	next  func(n int) (int, http.Header)
}

func newSendLog() *sendLog { return &sendLog{start: time.Now()} }

func (s *sendLog) RoundTrip(req *http.Request) (*http.Response, error) {
	s.mu.Lock()
	n := len(s.times)
	s.times = append(s.times, time.Since(s.start))
	next := s.next
	s.mu.Unlock()
	code, h := http.StatusOK, http.Header{}
	if next != nil {
		if c, hh := next(n); c != 0 {
			code, h = c, hh
		}
	}
	return &http.Response{StatusCode: code, Header: h, Body: http.NoBody, Request: req}, nil
}

func (s *sendLog) sent() []time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]time.Duration(nil), s.times...)
}

// send sends GET https://host/ through tr with ctx.
func send(ctx context.Context, tr *Transport, host string) error {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+host+"/", nil)
	resp, err := tr.RoundTrip(req)
	if err == nil {
		resp.Body.Close()
	}
	return err
}

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

func newRateTransport(t *testing.T, base http.RoundTripper, c Config, opts ...Option) *Transport {
	t.Helper()
	tr, err := NewTransport(base, append([]Option{WithConfig(c)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	return tr
}

func TestRateLimitConfig(t *testing.T) {
	c, err := ParseConfig([]byte(`
[defaults]
rate = 20
burst = 3
max_wait = "2s"
min_rate = 0.1
throttle_statuses = [429, 420]

[hosts."api.example.org"]
rate = 4.5
adaptive = false

[hosts."free.example.org"]
rate = 0
max_wait = "0s"
`))
	if err != nil {
		t.Fatal(err)
	}
	pt, err := c.validate()
	if err != nil {
		t.Fatal(err)
	}
	d := mustResolve(t, pt, "other.example.org", "metadata")
	if d.Rate != 20 || d.Burst != 3 || d.MaxWait != 2*time.Second || d.MinRate != 0.1 || d.Adaptive != ToggleOn ||
		!d.isThrottle(420) || d.isThrottle(503) {
		t.Errorf("defaults resolved to %+v", d.Policy)
	}
	if a := mustResolve(t, pt, "api.example.org", ""); a.Rate != 4.5 || a.Adaptive != ToggleOff || a.isThrottle(429) {
		t.Errorf("api.example.org resolved to rate %v adaptive %v", a.Rate, a.Adaptive)
	}
	if f := mustResolve(t, pt, "free.example.org", ""); f.Rate != 0 || f.MaxWait != 0 {
		t.Errorf("rate = 0 and max_wait = \"0s\" resolved to rate %v max_wait %v, want unlimited and no wait", f.Rate, f.MaxWait)
	}

	for _, tc := range []struct{ doc, key string }{
		{"[hosts.\"a.test\"]\nfail_max = 3\n[hosts.\"a.test\".roles.artifact]\nrate = 2\n", `hosts."a.test".roles.artifact.rate`},
		{"[defaults.roles.landing]\nburst = 2\n", "defaults.roles.landing.burst"},
		{"[defaults]\nrate = -1\n", "defaults.rate"},
		{"[defaults]\nmin_rate = 0\n", "defaults.min_rate"},
		{"[defaults]\nburst = 0\n", "defaults.burst"},
		{"[defaults]\nthrottle_statuses = [99]\n", "defaults.throttle_statuses"},
	} {
		_, err := ParseConfig([]byte(tc.doc))
		var ce *ConfigError
		if !errors.As(err, &ce) || ce.Key != tc.key || ce.Line == 0 {
			t.Errorf("ParseConfig(%q) = %v, want a ConfigError for %s with its line", tc.doc, err, tc.key)
		}
	}
	if err := (Config{Defaults: Policy{Roles: map[string]Policy{"x": {MaxWait: time.Second}}}}).Validate(); err == nil ||
		!strings.Contains(err.Error(), "defaults.roles.x.max_wait") {
		t.Errorf("a role's max_wait in Go: %v", err)
	}
	// Adaptive can be turned off in Go, and the off wins over a default on.
	pt2, err := Config{Defaults: Policy{Adaptive: ToggleOn}, Hosts: map[string]Policy{"b.test": {Adaptive: ToggleOff}}}.validate()
	if err != nil {
		t.Fatal(err)
	}
	if mustResolve(t, pt2, "b.test", "").Adaptive != ToggleOff {
		t.Error("ToggleOff did not win")
	}
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

func TestRateLimitResetHeaders(t *testing.T) {
	for _, tc := range []struct {
		name   string
		header http.Header
		want   time.Duration // 0: no cooldown
	}{
		{"IETF draft", http.Header{"Ratelimit-Remaining": {"0"}, "Ratelimit-Reset": {"7"}}, 7 * time.Second},
		{"X- headers", http.Header{"X-Ratelimit-Remaining": {"0"}, "X-Ratelimit-Reset": {"30"}}, 30 * time.Second},
		{"capped", http.Header{"Ratelimit-Remaining": {"0"}, "Ratelimit-Reset": {"86400"}}, 15 * time.Minute},
		{"quota left", http.Header{"Ratelimit-Remaining": {"1"}, "Ratelimit-Reset": {"7"}}, 0},
		{"no reset", http.Header{"Ratelimit-Remaining": {"0"}}, 0},
		{"bad reset", http.Header{"Ratelimit-Remaining": {"0"}, "Ratelimit-Reset": {"soon"}}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) { // starts at 2000-01-01T00:00:00Z
				base := newSendLog()
				base.next = func(int) (int, http.Header) { return http.StatusOK, tc.header }
				tr := newRateTransport(t, base, Config{})
				start := time.Now()
				if err := send(context.Background(), tr, "api.test"); err != nil {
					t.Fatal(err)
				}
				err := send(context.Background(), tr, "api.test")
				var oe *OpenError
				switch {
				case tc.want == 0 && err != nil:
					t.Errorf("second request: %v, want it sent", err)
				case tc.want != 0 && (!errors.As(err, &oe) || oe.Reason != ReasonRetryAfter || !oe.Until.Equal(start.Add(tc.want))):
					t.Errorf("second request: %v, want a cooldown until +%v", err, tc.want)
				}
			})
		})
	}
}

func TestRateLimitResetValues(t *testing.T) {
	now := time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		v    string
		want time.Duration
		ok   bool
	}{
		{"7", 7 * time.Second, true},
		{" 60 ", time.Minute, true},
		{strconv.FormatInt(now.Unix()+90, 10), 90 * time.Second, true}, // a Unix time, as GitHub sends
		{strconv.FormatInt(now.Unix()-1, 10), 0, false},                // already past
		{"0", 0, false},
		{"-5", 0, false},
		{"1.5", 0, false},
		{"", 0, false},
		{"99999999999999999999", maxDuration, true},
	} {
		if d, ok := rateLimitReset(tc.v, now); d != tc.want || ok != tc.ok {
			t.Errorf("rateLimitReset(%q) = %v, %v; want %v, %v", tc.v, d, ok, tc.want, tc.ok)
		}
	}
}

func FuzzRateLimitReset(f *testing.F) {
	for _, s := range []string{"7", "0", "", " 30 ", "946684860", "99999999999999999999", "-1", "1.5", "Wed, 21 Oct 2015 07:28:00 GMT"} {
		f.Add(s)
	}
	now := time.Date(2026, 11, 28, 0, 0, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, v string) {
		d, ok := rateLimitReset(v, now)
		if ok && d <= 0 {
			t.Errorf("rateLimitReset(%q) = %v, true: not positive", v, d)
		}
		if !ok && d > 0 {
			t.Errorf("rateLimitReset(%q) = %v, false", v, d)
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
			with.reserve(0, 0)
		}
		c, ok, _, _ := with.reserve(0, 0)
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
			without.reserve(0, 0)
		}
		without.mu.Lock()
		without.setRateLocked(rate, 50*ms)
		without.mu.Unlock()

		got, _, _, _ := with.reserve(50*ms, 0)
		want, _, _, _ := without.reserve(50*ms, 0)
		if got.at != want.at {
			t.Errorf("rate 10 → %v: the next turn after C's cancel is at %v, want %v as if C had never reserved",
				rate, time.Duration(got.at), time.Duration(want.at))
		}
		if got.lim != with {
			t.Errorf("the turn names another limiter")
		}
	}
}
