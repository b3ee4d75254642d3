package hostbreaker

// Tests of the breaker rules beyond fail_max (breaker.go), each through an
// http.Client: failure_rate with min_requests and window, slow_call_rate,
// max_reset_timeout, and shadow mode (its glue is in transport.go).

import (
	"errors"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"
)

// ruleClient returns an http.Client over a Transport with config c whose
// events go to the returned log.
func ruleClient(t *testing.T, base http.RoundTripper, c Config, opts ...Option) (*http.Client, *Transport, *eventLog) {
	t.Helper()
	log := &eventLog{}
	tr, err := NewTransport(base, append([]Option{WithConfig(c), WithEventHandler(log.add)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	return &http.Client{Transport: tr}, tr, log
}

// pattern is a base whose n-th request (from 0) fails with a 500 when
// fail(n), and succeeds otherwise.
func pattern(fail func(n int) bool) (roundTripperFunc, *atomic.Int64) {
	var n atomic.Int64
	return func(req *http.Request) (*http.Response, error) {
		i := int(n.Add(1) - 1)
		if fail(i) {
			return status(500)(req)
		}
		return status(200)(req)
	}, &n
}

// opened returns the state-change events to open in log.
func opened(log *eventLog) []Event {
	var out []Event
	for _, ev := range log.named(EventStateChange) {
		if ev.State == StateOpen {
			out = append(out, ev)
		}
	}
	return out
}

// TestFailureRateOpensOnInterleavedFailures: a host that fails 40 % of its
// requests, never twice in a row, never trips fail_max; with failure_rate
// 0.4 it opens once min_requests outcomes are in the window, and the event
// names the rule and the figures.
func TestFailureRateOpensOnInterleavedFailures(t *testing.T) {
	every := func(n int) bool { return n%5 == 0 || n%5 == 3 } // F S S F S: 2 of 5
	for _, tc := range []struct {
		name string
		rate float64
		want State
	}{
		{"fail_max only", 0, StateClosed},
		{"failure_rate 0.4", 0.4, StateOpen},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				base, _ := pattern(every)
				c := quick(3, time.Minute)
				c.Defaults.FailureRate, c.Defaults.MinRequests = tc.rate, 10
				cl, tr, log := ruleClient(t, base, c)
				for i := range 9 {
					want := 200
					if every(i) {
						want = 500
					}
					mustPass(t, do(t, cl, "", "https://a.test/"), want)
				}
				mustState(t, tr, "a.test", "", StateClosed) // 4 of 9: below min_requests
				do(t, cl, "", "https://a.test/")            // the 10th: 4 of 10 failed
				for range 20 {
					do(t, cl, "", "https://a.test/")
				}
				mustState(t, tr, "a.test", "", tc.want)
				synctest.Wait()
				ev := opened(log)
				if tc.want == StateClosed {
					if len(ev) != 0 {
						t.Fatalf("opened: %+v", ev)
					}
					return
				}
				if len(ev) != 1 || ev[0].Note != "failure_rate: 4 of 10 requests failed in 60s" || ev[0].Failures != 4 {
					t.Fatalf("open events = %+v, want one with note %q", ev, "failure_rate: 4 of 10 requests failed in 60s")
				}
				if s := stateOf(t, tr, "a.test", ""); s.Failures != 4 || s.Successes != 6 || s.Rejected != 20 {
					t.Errorf("counts = %+v, want 4 failures, 6 successes, 20 rejected", s)
				}
			})
		})
	}
}

// TestFailureRateWindow: outcomes older than window leave it, a bucket at a
// time, so old failures do not add up with new successes.
func TestFailureRateWindow(t *testing.T) {
	for _, tc := range []struct {
		name  string
		pause time.Duration
		want  State
	}{
		{"within the window", time.Second, StateOpen},
		{"after the window", 11 * time.Second, StateClosed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				base, _ := pattern(func(n int) bool { return n < 2 })
				c := quick(100, time.Minute)
				c.Defaults.FailureRate, c.Defaults.MinRequests, c.Defaults.Window = 0.5, 4, 10*time.Second
				cl, tr, _ := ruleClient(t, base, c)
				do(t, cl, "", "https://a.test/")
				do(t, cl, "", "https://a.test/")
				time.Sleep(tc.pause)
				do(t, cl, "", "https://a.test/")
				do(t, cl, "", "https://a.test/")
				mustState(t, tr, "a.test", "", tc.want)
			})
		})
	}
}

// TestSlowCallRate: responses whose headers take longer than slow_call
// count towards slow_call_rate, which opens the breaker although every
// response is a 200; without slow_call_rate they change nothing.
func TestSlowCallRate(t *testing.T) {
	for _, tc := range []struct {
		name string
		rate float64
		want State
	}{
		{"slow_call alone", 0, StateClosed},
		{"slow_call_rate 0.5", 0.5, StateOpen},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				var n atomic.Int64
				base := roundTripperFunc(func(req *http.Request) (*http.Response, error) {
					if n.Add(1)%2 == 1 {
						time.Sleep(3 * time.Second) // slow: 1st, 3rd, …
					} else {
						time.Sleep(time.Second)
					}
					return status(200)(req)
				})
				c := quick(5, time.Minute)
				c.Defaults.SlowCall, c.Defaults.SlowCallRate, c.Defaults.MinRequests = 2*time.Second, tc.rate, 4
				cl, tr, log := ruleClient(t, base, c)
				for range 4 {
					mustPass(t, do(t, cl, "", "https://a.test/"), 200)
				}
				mustState(t, tr, "a.test", "", tc.want)
				synctest.Wait()
				if tc.want == StateOpen {
					want := "slow_call_rate: 2 of 4 requests slower than 2s in 60s"
					if ev := opened(log); len(ev) != 1 || ev[0].Note != want || ev[0].Failures != 2 {
						t.Fatalf("open events = %+v, want one with note %q", ev, want)
					}
				}
			})
		})
	}
}

// TestMaxResetTimeout: each failed probe doubles the open time up to
// max_reset_timeout, and a breaker that closed starts again from
// reset_timeout; without max_reset_timeout the open time stays fixed.
func TestMaxResetTimeout(t *testing.T) {
	for _, tc := range []struct {
		name string
		max  time.Duration
		want []time.Duration // the open times: the trip, then each failed probe
	}{
		{"fixed", 0, []time.Duration{10 * time.Second, 10 * time.Second, 10 * time.Second, 10 * time.Second}},
		{"doubling to 35s", 35 * time.Second, []time.Duration{10 * time.Second, 20 * time.Second, 35 * time.Second, 35 * time.Second}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				base := newFakeHosts(status(500))
				c := quick(1, 10*time.Second)
				c.Defaults.MaxResetTimeout = tc.max
				cl, _, _ := ruleClient(t, base, c)
				openFor := func() time.Duration {
					t.Helper()
					_, err := get(t, cl, "", "https://a.test/")
					return time.Until(mustReject(t, err, ReasonBreakerOpen).Until)
				}
				var got []time.Duration
				do(t, cl, "", "https://a.test/") // trips
				for range len(tc.want) {
					d := openFor()
					got = append(got, d)
					time.Sleep(d)
					if code, _ := get(t, cl, "", "https://a.test/"); code != 500 { // the probe fails
						t.Fatalf("probe: got %d", code)
					}
				}
				for i := range got {
					if got[i] != tc.want[i] {
						t.Fatalf("open times = %v, want %v", got, tc.want)
					}
				}
				// The host heals: the probe closes the breaker, and the next
				// trip starts from reset_timeout again.
				time.Sleep(openFor())
				base.set(status(200))
				mustPass(t, do(t, cl, "", "https://a.test/"), 200)
				base.set(status(500))
				do(t, cl, "", "https://a.test/")
				if d := openFor(); d != 10*time.Second {
					t.Fatalf("open time after closing = %v, want 10s", d)
				}
			})
		})
	}
}

// TestShadowMode: a host in shadow mode decides as in enforce mode (its
// breaker opens, its cooldowns start, events and Snapshot say so) but
// sends every request, and counts those it would have rejected.
func TestShadowMode(t *testing.T) {
	for _, mode := range []Mode{ModeEnforce, ModeShadow} {
		t.Run(mode.String(), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				base := newFakeHosts(status(500))
				c := quick(2, time.Minute)
				c.Hosts = map[string]Policy{"a.test": {Mode: mode}}
				cl, tr, log := ruleClient(t, base, c)
				var rejected int
				for range 6 {
					if _, err := get(t, cl, "", "https://a.test/"); errors.Is(err, ErrOpen) {
						rejected++
					}
				}
				// A Retry-After cooldown, too.
				base.set(status(503, "Retry-After", "120"))
				get(t, cl, "other", "https://a.test/")
				base.set(status(200))
				_, err := get(t, cl, "other", "https://a.test/")
				s := stateOf(t, tr, "a.test", "")
				synctest.Wait()
				if ev := opened(log); len(ev) != 1 || ev[0].Note != "fail_max: 2 consecutive failures" {
					t.Errorf("open events = %+v", ev)
				}
				if s.State != StateOpen {
					t.Errorf("state = %v, want open in either mode", s.State)
				}
				switch mode {
				case ModeEnforce:
					if rejected != 4 || base.count("a.test") != 3 || !errors.Is(err, ErrOpen) || s.Shadow || s.WouldReject != 0 {
						t.Errorf("enforce: rejected %d, sent %d, err %v, status %+v", rejected, base.count("a.test"), err, s)
					}
				case ModeShadow:
					if rejected != 0 || base.count("a.test") != 8 || err != nil || !s.Shadow || s.WouldReject != 4 || s.Rejected != 0 || s.Failures != 6 {
						t.Errorf("shadow: rejected %d, sent %d, err %v, status %+v", rejected, base.count("a.test"), err, s)
					}
					if o := stateOf(t, tr, "a.test", "other"); o.WouldReject != 1 || o.State != StateOpen || o.Reason != ReasonRetryAfter {
						t.Errorf("shadow, role other after Retry-After: %+v", o)
					}
				}
			})
		})
	}
}

// TestShadowModeWouldRejectMetric: hostbreaker.would_reject counts, by
// reason, what a shadow host sent instead of rejecting.
func TestShadowModeWouldRejectMetric(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := quick(1, time.Minute)
		c.Defaults.Mode = ModeShadow
		_, reader, cl := metricTransport(t, newFakeHosts(status(500)), c)
		for range 3 {
			do(t, cl, "", "https://a.test/")
		}
		pts := collect(t, reader).points(t, "hostbreaker.would_reject")
		var total int64
		for k, v := range pts {
			if !strings.Contains(k, "breaker-open") {
				t.Errorf("would_reject point %s = %d: want reason breaker-open", k, v)
			}
			total += v
		}
		if total != 2 {
			t.Fatalf("would_reject = %v, want 2 in all", pts)
		}
	})
}

// BenchmarkRoundTripRules measures the healthy path of a host that uses
// the new rules: failure_rate (every outcome goes to the window, under the
// entry's lock), slow_call (two clock reads), a classifier, and shadow mode
// (which costs nothing while closed). Compare with BenchmarkRoundTrip's
// hosts=1/hostbreaker.
func BenchmarkRoundTripRules(b *testing.B) {
	reqs := benchRequests(b, 1)
	for _, v := range []struct {
		name string
		pol  Policy
		opts []Option
	}{
		{"failure_rate", Policy{FailureRate: 0.5}, nil},
		{"slow_call", Policy{SlowCall: time.Second}, nil},
		{"classifier", Policy{}, []Option{WithClassifier(func(*http.Request, *http.Response, error) Outcome { return CountDefault })}},
		{"shadow", Policy{Mode: ModeShadow}, nil},
	} {
		tr, err := NewTransport(cannedBase(200), append([]Option{WithConfig(Config{Defaults: v.pol})}, v.opts...)...)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { tr.Close() })
		b.Run(v.name, func(b *testing.B) { roundTrips(b, tr, reqs) })
	}
}
