package hostbreaker

import (
	"math"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"
)

// leakyBucket is nginx's limit_req: a request is accepted when the excess
// (in requests) after leaking at rate since the last accepted request is at
// most burst; an accepted request with excess waits excess/rate (nginx
// delays it, without nodelay); others get 429, with Retry-After when
// retryAfter > 0.
type leakyBucket struct {
	rate       float64
	burst      float64
	retryAfter int
	nodelay    bool // answer at once within the burst, as limit_req's nodelay does

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
	if excess > 1 && !b.nodelay {
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

// slidingWindow is HAProxy's http_req_rate(period) with `deny if
// sc_http_req_rate(0) gt limit`, as its freq_ctr computes it: the requests
// of the current period plus those of the previous one weighted by the
// part of it still inside the sliding window, rounded down. Tracking counts every
// request before the check, the refused ones too, so a client that keeps
// sending above the limit keeps it full. 429s carry Retry-After when
// retryAfter > 0.
type slidingWindow struct {
	limit      int
	period     time.Duration
	retryAfter int

	mu         sync.Mutex
	start      time.Time // of the current period; zero before the first request
	curr, prev int
	served     int
	rejected   int
}

func (w *slidingWindow) RoundTrip(req *http.Request) (*http.Response, error) {
	w.mu.Lock()
	now := time.Now()
	if w.start.IsZero() {
		w.start = now
	}
	if el := now.Sub(w.start); el >= w.period {
		w.prev = w.curr
		if el >= 2*w.period {
			w.prev = 0
		}
		w.curr = 0
		w.start = w.start.Add(el - el%w.period)
	}
	w.curr++
	// freq_ctr_total: the previous period's share, rounded down.
	rate := w.curr + int(int64(w.prev)*int64(w.period-now.Sub(w.start))/int64(w.period))
	if rate > w.limit {
		w.rejected++
		w.mu.Unlock()
		h := http.Header{}
		if w.retryAfter > 0 {
			h.Set("Retry-After", strconv.Itoa(w.retryAfter))
		}
		return &http.Response{StatusCode: http.StatusTooManyRequests, Header: h, Body: http.NoBody, Request: req}, nil
	}
	w.served++
	w.mu.Unlock()
	time.Sleep(time.Millisecond)
	return &http.Response{StatusCode: http.StatusOK, Header: http.Header{}, Body: http.NoBody, Request: req}, nil
}

// simLimiter is a simulated server limiter with its counts.
type simLimiter interface {
	http.RoundTripper
	counts() (served, rejected int)
}

func (b *leakyBucket) counts() (int, int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.served, b.rejected
}

func (w *slidingWindow) counts() (int, int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.served, w.rejected
}

// TestSimulatedLimiters runs hostbreaker on its defaults (no rate
// configured) against in-process models of the real limiters of the
// benchmark, for 30 s of fake time with 8 workers: nginx limit_req without
// Retry-After (burst 0 and 5 nodelay at 5 r/s; burst 0 at 50 r/s) and
// HAProxy's sliding window (5 per second) without and with Retry-After: 1.
// A throttle must slow the host down, not shut it off: most of what the
// host allows is served, at most one 429 for every 5 served, and the
// learnt rate, sampled each second after the first 10 s, stays near the
// limit. The models have no timing noise, but goroutines are scheduled in
// varying order, so the bounds sit below what the runs reach (logged);
// bench/ measures the targets against the real servers.
func TestSimulatedLimiters(t *testing.T) {
	for _, tc := range []struct {
		name      string
		srv       func() simLimiter
		allowed   float64 // requests per second
		burst     float64
		minServed float64 // share of the allowed requests
	}{
		{"nginx 5 r/s burst 0", func() simLimiter { return &leakyBucket{rate: 5} }, 5, 0, 0.84},
		{"nginx 5 r/s burst 5", func() simLimiter { return &leakyBucket{rate: 5, burst: 5, nodelay: true} }, 5, 5, 0.95},
		{"haproxy 5/s", func() simLimiter { return &slidingWindow{limit: 5, period: time.Second} }, 5, 0, 0.87},
		{"haproxy 5/s Retry-After 1", func() simLimiter { return &slidingWindow{limit: 5, period: time.Second, retryAfter: 1} }, 5, 0, 0.8},
		{"nginx 50 r/s burst 0", func() simLimiter { return &leakyBucket{rate: 50} }, 50, 0, 0.85},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				srv := tc.srv()
				start := time.Now()
				tr, err := NewTransport(srv, WithEventHandler(func(ev Event) {
					switch ev.Name {
					case EventRateChange:
						t.Logf("%6.2fs %s: %.2f -> %.2f r/s (anchored on %.2f)", ev.Time.Sub(start).Seconds(), ev.Note, ev.PreviousRate, ev.Rate, ev.LastMax)
					case EventStateChange, EventCooldown:
						t.Logf("%6.2fs %s %s %s", ev.Time.Sub(start).Seconds(), ev.Name, ev.State, ev.Reason)
					}
				}))
				if err != nil {
					t.Fatal(err)
				}
				defer tr.Close()
				const d = 30 * time.Second
				lo, hi := math.Inf(1), 0.0
				stop := make(chan struct{})
				sampled := make(chan struct{})
				go func() {
					defer close(sampled)
					tick := time.NewTicker(time.Second)
					defer tick.Stop()
					for i := 1; ; i++ {
						select {
						case <-stop:
							return
						case <-tick.C:
						}
						if i <= 10 {
							continue
						}
						r := 0.0
						for _, s := range tr.Snapshot() {
							r = s.Rate
						}
						lo, hi = min(lo, r), max(hi, r)
					}
				}()
				crawl(t, tr, "http://limited.test/x", 8, d)
				close(stop)
				<-sampled
				served, rejected := srv.counts()
				allowed := tc.allowed*d.Seconds() + tc.burst
				share := float64(served) / allowed
				t.Logf("served %d (%.0f%% of %.0f allowed), 429s %d (1 per %.1f served), learnt rate after 10s %.2f–%.2f (%.2f×–%.2f×)",
					served, 100*share, allowed, rejected, float64(served)/max(float64(rejected), 1), lo, hi, lo/tc.allowed, hi/tc.allowed)
				if share < tc.minServed || rejected*5 > served || lo < 0.6*tc.allowed || hi > 1.2*tc.allowed {
					t.Errorf("want ≥ %.0f%% served, at most 1 429 per 5 served, learnt rate within 0.6×–1.2× of %v", 100*tc.minServed, tc.allowed)
				}
			})
		})
	}
}

// TestKnownLimitProbesInSteps learns a 5 r/s host (nginx limit_req
// without a burst), which then stops limiting: the limiter probes past the
// limit it knows in steps, never more than a step of 10 % between two
// samples 5 s apart (an uncapped probe of 5 % a second compounded runs 28 %
// in 5 s, and against a host with a burst, which absorbs a probe for
// seconds, ran to 1.3× the limit), and yet keeps climbing, a step at a
// time, while the host serves each.
func TestKnownLimitProbesInSteps(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		bucket := &leakyBucket{rate: 5}
		var open atomic.Bool
		ok := func(req *http.Request) (*http.Response, error) {
			time.Sleep(time.Millisecond)
			return &http.Response{StatusCode: http.StatusOK, Header: http.Header{}, Body: http.NoBody, Request: req}, nil
		}
		tr, err := NewTransport(roundTripperFunc(func(req *http.Request) (*http.Response, error) {
			if open.Load() {
				return ok(req)
			}
			return bucket.RoundTrip(req)
		}))
		if err != nil {
			t.Fatal(err)
		}
		defer tr.Close()
		learnt, wg := learnLimit(t, tr, 90*time.Second)
		open.Store(true)
		samples := sampleRate(tr, 65)
		wg.Wait()
		t.Logf("learnt %.2f r/s; after the host stopped limiting: %.2f", learnt, samples)
		for i := 5; i < len(samples); i++ {
			if samples[i] > 1.12*samples[i-5] {
				t.Fatalf("rate %.2f at %ds, %.2f× the %.2f of 5 s before: want at most 1.12× (one step, 1.1×)", samples[i], i+1, samples[i]/samples[i-5], samples[i-5])
			}
		}
		if end := samples[len(samples)-1]; end < 1.5*learnt {
			t.Errorf("rate %.2f after 65 s of a host that stopped limiting at %.2f: want ≥ 1.5× (it climbs, a step at a time)", end, learnt)
		}
	})
}

// TestKnownLimitDoesNotCreep learns a 5 r/s host (nginx limit_req without
// a burst); then the client needs less, one request every 400 ms, for a
// minute. The host refuses none of them, but serves no more than the limit
// either: the limit the limiter knows must not climb a step each time its
// probe goes unrefused (it did, 1.1× every 18 s, so that a client that
// needed more again met the host at 1.5× its limit).
func TestKnownLimitDoesNotCreep(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		bucket := &leakyBucket{rate: 5}
		tr, err := NewTransport(bucket)
		if err != nil {
			t.Fatal(err)
		}
		defer tr.Close()
		learnt, wg := learnLimit(t, tr, 20*time.Second)
		wg.Wait()
		wg.Go(func() {
			for range 150 {
				req, _ := http.NewRequest(http.MethodGet, "http://limited.test/x", nil)
				if resp, err := tr.RoundTrip(req); err == nil {
					resp.Body.Close()
				}
				time.Sleep(400 * time.Millisecond)
			}
		})
		samples := sampleRate(tr, 60)
		wg.Wait()
		t.Logf("learnt %.2f r/s; then at 2.5 r/s: %.2f", learnt, samples)
		if hi := slices.Max(samples); hi > knownStep*learnt*1.02 {
			t.Errorf("rate %.2f while the client sent 2.5 r/s to a host it learnt at %.2f: want at most one step above, %.2f", hi, learnt, knownStep*learnt)
		}
	})
}

// learnLimit crawls http://limited.test/x through tr with 8 workers for d
// (at least 20 s) and returns, 20 s in, the highest rate of the host over
// the last 5 s, with the crawl's group to wait for.
func learnLimit(t *testing.T, tr *Transport, d time.Duration) (float64, *sync.WaitGroup) {
	wg := new(sync.WaitGroup)
	wg.Go(func() { crawl(t, tr, "http://limited.test/x", 8, d) })
	var learnt float64
	for i := range 20 {
		time.Sleep(time.Second)
		if i >= 15 {
			learnt = max(learnt, rateOf(tr, "limited.test"))
		}
	}
	return learnt, wg
}

// sampleRate returns the rate of limited.test through tr once a second for
// n seconds.
func sampleRate(tr *Transport, n int) []float64 {
	samples := make([]float64, 0, n)
	for range n {
		time.Sleep(time.Second)
		samples = append(samples, rateOf(tr, "limited.test"))
	}
	return samples
}
