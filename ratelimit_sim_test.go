package hostbreaker

import (
	"net/http"
	"strconv"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

// leakyBucket is nginx's limit_req: a request is accepted when the excess
// (in requests) after leaking at rate since the last accepted request is at
// most burst; an accepted request with excess waits excess/rate (nginx
// delays it, without nodelay); others get 429 with Retry-After.
type leakyBucket struct {
	rate       float64
	burst      float64
	retryAfter int

	mu       sync.Mutex
	excess   float64
	last     time.Time
	served   int
	rejected int
}

func (b *leakyBucket) RoundTrip(req *http.Request) (*http.Response, error) {
	b.mu.Lock()
	now := time.Now()
	excess := 1.0 // this request's, plus what has not leaked of earlier ones
	if !b.last.IsZero() {
		excess += max(b.excess-b.rate*now.Sub(b.last).Seconds(), 0)
	}
	if excess > b.burst+1+1e-9 {
		b.rejected++
		b.mu.Unlock()
		h := http.Header{}
		if b.retryAfter > 0 {
			h.Set("Retry-After", strconv.Itoa(b.retryAfter))
		}
		return &http.Response{StatusCode: http.StatusTooManyRequests, Header: h, Body: http.NoBody, Request: req}, nil
	}
	b.excess, b.last = excess, now
	b.served++
	b.mu.Unlock()
	if excess > 1 {
		time.Sleep(time.Duration((excess - 1) / b.rate * float64(time.Second)))
	}
	time.Sleep(time.Millisecond) // the server's own time
	return &http.Response{StatusCode: http.StatusOK, Header: http.Header{}, Body: http.NoBody, Request: req}, nil
}

// TestSimulatedLimitReq runs the limiter's arithmetic against an
// in-process nginx limit_req (5 r/s, 429 with Retry-After: 1) for 30 s of
// fake time, 8 workers: the targets of the protection benchmark, checked
// here on every run. The benchmark (bench/) runs the same against a real
// nginx.
func TestSimulatedLimitReq(t *testing.T) {
	for _, tc := range []struct {
		name      string
		burst     float64
		pol       Policy
		minServed float64 // share of the allowed requests
		max429    int
	}{
		// The bare client provokes hundreds of thousands of 429s here;
		// ≤ 1 % of that is thousands. The bounds are far tighter.
		{"burst 5, defaults", 5, Policy{}, 0.80, 30},
		{"burst 0, rate 10% under the limit", 0, Policy{Rate: 4.5}, 0.85, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				srv := &leakyBucket{rate: 5, burst: tc.burst, retryAfter: 1}
				start := time.Now()
				tr, err := NewTransport(srv, WithConfig(Config{Defaults: tc.pol}), WithEventHandler(func(ev Event) {
					if ev.Name == EventRateChange {
						t.Logf("%6.2fs %s: %.2f -> %.2f r/s (anchored on %.2f)", ev.Time.Sub(start).Seconds(), ev.Note, ev.PreviousRate, ev.Rate, ev.LastMax)
					}
				}))
				if err != nil {
					t.Fatal(err)
				}
				defer tr.Close()
				const d = 30 * time.Second
				crawl(t, tr, "http://limited.test/x", 8, d)
				allowed := 5*d.Seconds() + tc.burst
				share := float64(srv.served) / allowed
				t.Logf("served %d (%.0f%% of %.0f allowed), 429s %d", srv.served, 100*share, allowed, srv.rejected)
				if share < tc.minServed || srv.rejected > tc.max429 {
					t.Errorf("served %.0f%% (want ≥ %.0f%%) with %d 429s (want ≤ %d)", 100*share, 100*tc.minServed, srv.rejected, tc.max429)
				}
			})
		})
	}
}
