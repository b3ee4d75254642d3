package hostbreaker

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/hashicorp/go-retryablehttp"
)

// hitServer is an httptest server that counts its requests, records when
// each arrived, and answers the nth (from 0) with respond(n, w).
type hitServer struct {
	*httptest.Server
	hits  atomic.Int32
	mu    sync.Mutex
	times []time.Time
}

func newHitServer(t *testing.T, respond func(n int, w http.ResponseWriter)) *hitServer {
	t.Helper()
	s := &hitServer{}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		s.times = append(s.times, time.Now())
		s.mu.Unlock()
		respond(int(s.hits.Add(1))-1, w)
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *hitServer) arrivals() []time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]time.Time(nil), s.times...)
}

// newRetryTestClient returns a retry client over a new Transport with cfg,
// with the given waits and retries.
func newRetryTestClient(t *testing.T, cfg Config, waitMin, waitMax time.Duration, retryMax int) (*Transport, *retryablehttp.Client) {
	t.Helper()
	tr, err := NewTransport(nil, WithConfig(cfg))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	c := NewRetryClient(tr)
	c.RetryWaitMin, c.RetryWaitMax, c.RetryMax = waitMin, waitMax, retryMax
	return tr, c
}

func retryGet(t *testing.T, c *retryablehttp.Client, u string) (*http.Response, error) {
	t.Helper()
	req, err := retryablehttp.NewRequestWithContext(context.Background(), http.MethodGet, u, nil)
	if err != nil {
		t.Fatal(err)
	}
	return c.Do(req)
}

func TestNewRetryClientSettings(t *testing.T) {
	tr, err := NewTransport(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	c := NewRetryClient(tr)
	d := retryablehttp.NewClient()
	if c.HTTPClient.Transport != tr {
		t.Errorf("HTTPClient.Transport = %T, want the Transport", c.HTTPClient.Transport)
	}
	if c.HTTPClient.Timeout != 30*time.Second {
		t.Errorf("HTTPClient.Timeout = %v, want 30s", c.HTTPClient.Timeout)
	}
	if c.Logger != nil {
		t.Errorf("Logger = %v, want nil", c.Logger)
	}
	if c.RetryWaitMin != d.RetryWaitMin || c.RetryWaitMax != d.RetryWaitMax || c.RetryMax != d.RetryMax {
		t.Errorf("waits and retries = %v %v %d, want retryablehttp's defaults %v %v %d",
			c.RetryWaitMin, c.RetryWaitMax, c.RetryMax, d.RetryWaitMin, d.RetryWaitMax, d.RetryMax)
	}
	if c.CheckRetry == nil || c.Backoff == nil || c.ErrorHandler == nil {
		t.Error("CheckRetry, Backoff or ErrorHandler not set")
	}
}

// hangingBase is the base of a host that never answers: it counts the
// request, then blocks until the request's context is done.
func hangingBase(hits *atomic.Int32) http.RoundTripper {
	return roundTripperFunc(func(r *http.Request) (*http.Response, error) {
		hits.Add(1)
		<-r.Context().Done()
		return nil, r.Context().Err()
	})
}

// unavailableBase answers every request 503, counting them in hits.
func unavailableBase(hits *atomic.Int32) http.RoundTripper {
	return roundTripperFunc(func(r *http.Request) (*http.Response, error) {
		hits.Add(1)
		return &http.Response{StatusCode: http.StatusServiceUnavailable, Status: "503 Service Unavailable",
			Header: http.Header{}, Body: http.NoBody, Request: r}, nil
	})
}

// A host that never answers does not block Do: each attempt ends at the
// client's timeout (30s by default) and counts as a failure, so the
// breaker opens at fail_max and the next attempt is rejected.
func TestRetryClientTimesOutHungHost(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var hits atomic.Int32
		cfg := DefaultConfig()
		cfg.Defaults.FailMax = 2
		tr, err := NewTransport(hangingBase(&hits), WithConfig(cfg))
		if err != nil {
			t.Fatal(err)
		}
		defer tr.Close()
		c := NewRetryClient(tr)
		c.RetryWaitMin, c.RetryWaitMax, c.RetryMax = time.Second, time.Second, 4
		// Only a guard: without a client timeout, the first attempt would
		// hang until this deadline.
		ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
		defer cancel()
		req, err := retryablehttp.NewRequestWithContext(ctx, http.MethodGet, "http://hung.test/x", nil)
		if err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		resp, err := c.Do(req)
		elapsed := time.Since(start)
		if resp != nil {
			t.Errorf("resp = %v, want nil", resp.Status)
		}
		// 30s, a backoff of 1s, 30s: the breaker opens; a backoff of 1s
		// (an attempt without a response tells Backoff no host), and the
		// third attempt is rejected at once.
		if want := 62 * time.Second; elapsed != want {
			t.Errorf("Do took %v, want %v (two attempts of 30s, each followed by a backoff of 1s)", elapsed, want)
		}
		if n := hits.Load(); n != 2 {
			t.Errorf("attempts that reached the host = %d, want 2", n)
		}
		if oe, ok := errors.AsType[*OpenError](err); !ok || oe.Reason != ReasonBreakerOpen {
			t.Errorf("err = %v, want the breaker open", err)
		}
		if re, ok := errors.AsType[*RetryError](err); !ok || re.Attempts != 3 {
			t.Errorf("RetryError = %+v, want 3 attempts (one rejected)", re)
		}
	})
}

// A rejection is not retried: Do returns at once, with no backoff sleep,
// an error that matches ErrOpen and gives the *OpenError.
func TestRetryClientRejectionNotRetried(t *testing.T) {
	srv := newHitServer(t, func(int, http.ResponseWriter) {})
	// Every backoff would be at least a second.
	tr, c := newRetryTestClient(t, DefaultConfig(), time.Second, time.Second, 4)
	if err := tr.Open(srv.URL, time.Minute, "maintenance"); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	resp, err := retryGet(t, c, srv.URL)
	elapsed := time.Since(start)
	if resp != nil {
		t.Errorf("resp = %v, want nil", resp.Status)
	}
	if !errors.Is(err, ErrOpen) {
		t.Fatalf("err = %v, want ErrOpen", err)
	}
	oe, ok := errors.AsType[*OpenError](err)
	if !ok || oe.Reason != ReasonManual {
		t.Errorf("OpenError = %+v, want reason %s", oe, ReasonManual)
	}
	re, ok := errors.AsType[*RetryError](err)
	if !ok || re.Attempts != 1 || re.StatusCode != 0 || re.Method != http.MethodGet {
		t.Errorf("RetryError = %+v, want 1 attempt of a GET without status", re)
	}
	if n := srv.hits.Load(); n != 0 {
		t.Errorf("server hits = %d, want 0", n)
	}
	if elapsed > 500*time.Millisecond {
		t.Errorf("Do took %v: it slept a backoff (≥ 1s)", elapsed)
	}
}

// A request whose turn at the host's limiter is beyond max_wait is
// rejected as rate-limited, and Do returns at once: no backoff, no retry.
func TestRetryClientRateLimitedNotRetried(t *testing.T) {
	srv := newHitServer(t, func(int, http.ResponseWriter) {})
	_, c := newRetryTestClient(t, Config{Defaults: Policy{Rate: 0.1, MaxWait: -1}}, time.Second, time.Second, 4)
	if resp, err := retryGet(t, c, srv.URL); err != nil {
		t.Fatal(err)
	} else {
		resp.Body.Close()
	}
	start := time.Now()
	_, err := retryGet(t, c, srv.URL)
	elapsed := time.Since(start)
	oe, ok := errors.AsType[*OpenError](err)
	if !errors.Is(err, ErrOpen) || !ok || oe.Reason != ReasonRateLimited || oe.Until.Before(start.Add(9*time.Second)) {
		t.Fatalf("second Do: %v, want rate-limited until about 10s from now", err)
	}
	if n := srv.hits.Load(); n != 1 {
		t.Errorf("server hits = %d, want 1", n)
	}
	if elapsed > 500*time.Millisecond {
		t.Errorf("Do took %v: it slept a backoff (≥ 1s)", elapsed)
	}
}

// A 429 with Retry-After: 1 cools the host for a second; the client waits
// exactly that (RetryWaitMax 2s allows it) and the next attempt succeeds.
func TestRetryClientWaitsForRetryAfter(t *testing.T) {
	srv := newHitServer(t, func(n int, w http.ResponseWriter) {
		if n == 0 {
			w.Header().Set("Retry-After", "1")
			w.WriteHeader(http.StatusTooManyRequests)
		}
	})
	_, c := newRetryTestClient(t, DefaultConfig(), 10*time.Millisecond, 2*time.Second, 4)
	resp, err := retryGet(t, c, srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("status = %d, want 200", resp.StatusCode)
	}
	at := srv.arrivals()
	if len(at) != 2 {
		t.Fatalf("server hits = %d, want 2", len(at))
	}
	// No earlier than the Retry-After; no later than it plus the margin
	// (2 %) and generous scheduling slack.
	if gap := at[1].Sub(at[0]); gap < time.Second || gap > 2*time.Second {
		t.Errorf("second attempt %v after the first, want in [1s, 2s]", gap)
	}
}

// A 429 with Retry-After: 60 and RetryWaitMax 200ms: the client does not
// sleep a minute (go-retryablehttp#247); the next attempt meets the
// cooldown, is rejected, and Do stops with ErrOpen.
func TestRetryClientLongRetryAfterStops(t *testing.T) {
	srv := newHitServer(t, func(n int, w http.ResponseWriter) {
		w.Header().Set("Retry-After", "60")
		w.WriteHeader(http.StatusTooManyRequests)
	})
	_, c := newRetryTestClient(t, DefaultConfig(), 10*time.Millisecond, 200*time.Millisecond, 4)
	start := time.Now()
	resp, err := retryGet(t, c, srv.URL)
	elapsed := time.Since(start)
	if resp != nil {
		t.Errorf("resp = %v, want nil", resp.Status)
	}
	if elapsed > time.Second {
		t.Errorf("Do took %v, want under a second", elapsed)
	}
	if !errors.Is(err, ErrOpen) {
		t.Fatalf("err = %v, want ErrOpen", err)
	}
	oe, ok := errors.AsType[*OpenError](err)
	if !ok || oe.Reason != ReasonRetryAfter {
		t.Fatalf("OpenError = %+v, want reason %s", oe, ReasonRetryAfter)
	}
	if left := time.Until(oe.Until); left < 55*time.Second || left > 61*time.Second {
		t.Errorf("Until is %v away, want about 60s", left)
	}
	if re, ok := errors.AsType[*RetryError](err); !ok || re.Attempts != 2 {
		t.Errorf("RetryError = %+v, want 2 attempts (one rejected)", re)
	}
	if n := srv.hits.Load(); n != 1 {
		t.Errorf("server hits = %d, want 1", n)
	}
}

// 5xx without Retry-After: retried with backoff, every attempt counted by
// the breaker; at fail_max it opens and Do stops with ErrOpen.
func TestRetryClient5xxOpensBreaker(t *testing.T) {
	const failMax = 3
	srv := newHitServer(t, func(n int, w http.ResponseWriter) {
		w.WriteHeader(http.StatusInternalServerError)
	})
	cfg := DefaultConfig()
	cfg.Defaults.FailMax = failMax
	const waitMin = 10 * time.Millisecond
	_, c := newRetryTestClient(t, cfg, waitMin, 50*time.Millisecond, 10)
	start := time.Now()
	resp, err := retryGet(t, c, srv.URL)
	elapsed := time.Since(start)
	if resp != nil {
		t.Errorf("resp = %v, want nil", resp.Status)
	}
	if !errors.Is(err, ErrOpen) {
		t.Fatalf("err = %v, want ErrOpen", err)
	}
	if oe, ok := errors.AsType[*OpenError](err); !ok || oe.Reason != ReasonBreakerOpen {
		t.Errorf("OpenError = %+v, want reason %s", oe, ReasonBreakerOpen)
	}
	if n := srv.hits.Load(); n != failMax {
		t.Errorf("server hits = %d, want fail_max %d", n, failMax)
	}
	if re, ok := errors.AsType[*RetryError](err); !ok || re.Attempts != failMax+1 {
		t.Errorf("RetryError = %+v, want %d attempts", re, failMax+1)
	}
	// A backoff (≥ waitMin) between the failures; none before the rejection.
	if elapsed < (failMax-1)*waitMin {
		t.Errorf("Do took %v: less than %d backoffs of at least %v", elapsed, failMax-1, waitMin)
	}
	at := srv.arrivals()
	for i := 1; i < len(at); i++ {
		if gap := at[i].Sub(at[i-1]); gap < waitMin {
			t.Errorf("attempt %d came %v after the previous one, want ≥ %v", i+1, gap, waitMin)
		}
	}
}

// When the retries run out on a 429 or 5xx, Do's error names the last
// status and gives it through *RetryError.
func TestRetryClientGivingUpNamesLastStatus(t *testing.T) {
	for _, code := range []int{http.StatusServiceUnavailable, http.StatusTooManyRequests, http.StatusBadGateway} {
		t.Run(fmt.Sprint(code), func(t *testing.T) {
			srv := newHitServer(t, func(n int, w http.ResponseWriter) { w.WriteHeader(code) })
			cfg := DefaultConfig()
			cfg.Defaults.FailMax = 10 // the breaker stays closed
			_, c := newRetryTestClient(t, cfg, 10*time.Millisecond, 20*time.Millisecond, 2)
			resp, err := retryGet(t, c, srv.URL)
			if resp != nil {
				t.Errorf("resp = %v, want nil", resp.Status)
			}
			status := fmt.Sprintf("%d %s", code, http.StatusText(code))
			want := "GET " + srv.URL + " giving up after 3 attempts: last status " + status
			if err == nil || err.Error() != want {
				t.Errorf("err = %v, want %q", err, want)
			}
			re, ok := errors.AsType[*RetryError](err)
			if !ok || re.StatusCode != code || re.Status != status || re.Attempts != 3 || re.Err != nil {
				t.Errorf("RetryError = %+v, want status %d after 3 attempts", re, code)
			}
			if errors.Is(err, ErrOpen) {
				t.Error("err matches ErrOpen")
			}
			if n := srv.hits.Load(); n != 3 {
				t.Errorf("server hits = %d, want 3", n)
			}
		})
	}
}

// A context cancelled by the server's first answer stops the client with
// the context's error.
func TestRetryClientContextCanceled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	srv := newHitServer(t, func(n int, w http.ResponseWriter) {
		cancel()
		w.WriteHeader(http.StatusServiceUnavailable)
	})
	_, c := newRetryTestClient(t, DefaultConfig(), 10*time.Millisecond, 20*time.Millisecond, 4)
	req, err := retryablehttp.NewRequestWithContext(ctx, http.MethodGet, srv.URL, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Do(req)
	if !errors.Is(err, context.Canceled) {
		t.Errorf("err = %v, want context.Canceled", err)
	}
	// Whether the cancellation ended the attempt or came with its
	// response, the RetryError names the request.
	if re, ok := errors.AsType[*RetryError](err); !ok || re.Method != http.MethodGet || re.URL != srv.URL {
		t.Errorf("err = %v, want a RetryError for GET %s", err, srv.URL)
	}
	if n := srv.hits.Load(); n != 1 {
		t.Errorf("server hits = %d, want 1", n)
	}
}

// The URL of the requests in the RetryError tests, and how a RetryError
// gives it: without its password, as go-retryablehttp writes it.
const (
	secretURL   = "http://user:secret@a.test/x?q=1"
	redactedURL = "http://user:xxxxx@a.test/x?q=1"
)

// doRetry sends method secretURL with ctx through a retry client over base
// (RetryWaitMin and RetryWaitMax wait, RetryMax retries) and returns Do's
// error, and how long Do took. Run it in a synctest bubble.
func doRetry(t *testing.T, ctx context.Context, base http.RoundTripper, method string, wait time.Duration, retries int) (time.Duration, error) {
	t.Helper()
	tr, err := NewTransport(base)
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	c := NewRetryClient(tr)
	c.RetryWaitMin, c.RetryWaitMax, c.RetryMax = wait, wait, retries
	req, err := retryablehttp.NewRequestWithContext(ctx, method, secretURL, nil)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	resp, err := c.Do(req)
	if resp != nil {
		resp.Body.Close()
		t.Errorf("resp = %v, want nil", resp.Status)
	}
	return time.Since(start), err
}

// checkRetryError checks that err is a *RetryError for method secretURL
// after attempts, that matches target and does not show the password.
func checkRetryError(t *testing.T, err error, method string, attempts int, target error) {
	t.Helper()
	re, ok := errors.AsType[*RetryError](err)
	if !ok {
		t.Fatalf("err = %v (%T), want a *RetryError", err, err)
	}
	if re.Method != method || re.URL != redactedURL || re.Attempts != attempts {
		t.Errorf("RetryError Method %q URL %q Attempts %d, want %q %q %d", re.Method, re.URL, re.Attempts, method, redactedURL, attempts)
	}
	if want := method + " " + redactedURL + " giving up after "; !strings.HasPrefix(err.Error(), want) {
		t.Errorf("err = %q, want it to start with %q", err, want)
	}
	if strings.Contains(err.Error(), "secret") {
		t.Errorf("err = %q shows the password", err)
	}
	if target != nil && !errors.Is(err, target) {
		t.Errorf("err = %v, want it to match %v", err, target)
	}
}

// A context cancelled while an attempt waits for the host: the RetryError
// names the request.
func TestRetryErrorCanceledDuringAttempt(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var hits atomic.Int32
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		time.AfterFunc(5*time.Second, cancel)
		took, err := doRetry(t, ctx, hangingBase(&hits), http.MethodGet, time.Second, 4)
		checkRetryError(t, err, http.MethodGet, 1, context.Canceled)
		if took != 5*time.Second || hits.Load() != 1 {
			t.Errorf("Do took %v and sent %d attempts, want 5s and 1", took, hits.Load())
		}
	})
}

// A context deadline that passes while an attempt waits for the host: the
// RetryError names the request.
func TestRetryErrorDeadlineDuringAttempt(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var hits atomic.Int32
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		took, err := doRetry(t, ctx, hangingBase(&hits), http.MethodPost, time.Second, 4)
		checkRetryError(t, err, http.MethodPost, 1, context.DeadlineExceeded)
		if took != 10*time.Second || hits.Load() != 1 {
			t.Errorf("Do took %v and sent %d attempts, want 10s and 1", took, hits.Load())
		}
	})
}

// A context deadline that passes during the backoff sleep: go-retryablehttp
// returns the context's error itself there, without calling its
// ErrorHandler (docs/retries.md says so), so there is no RetryError to name
// the request; Do returns at the deadline, not at the end of the sleep.
// Should a RetryError come, it must name the request.
func TestRetryErrorDeadlineDuringBackoff(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var hits atomic.Int32
		base := unavailableBase(&hits)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		took, err := doRetry(t, ctx, base, http.MethodGet, time.Minute, 4)
		if _, ok := errors.AsType[*RetryError](err); ok {
			checkRetryError(t, err, http.MethodGet, 1, context.DeadlineExceeded)
		} else if err != context.DeadlineExceeded {
			t.Errorf("err = %v, want the context's error as is", err)
		}
		if took != 10*time.Second || hits.Load() != 1 {
			t.Errorf("Do took %v and sent %d attempts, want 10s and 1", took, hits.Load())
		}
	})
}

// Retries that run out on a 503: the RetryError names the request and the
// last status, and has no Err.
func TestRetryErrorExhausted(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var hits atomic.Int32
		base := unavailableBase(&hits)
		took, err := doRetry(t, context.Background(), base, http.MethodDelete, time.Second, 2)
		checkRetryError(t, err, http.MethodDelete, 3, nil)
		if re, ok := errors.AsType[*RetryError](err); !ok || re.StatusCode != 503 || re.Status != "503 Service Unavailable" || re.Err != nil {
			t.Errorf("RetryError = %+v, want the last status 503 and no Err", re)
		}
		if took != 2*time.Second || hits.Load() != 3 {
			t.Errorf("Do took %v and sent %d attempts, want 2s and 3", took, hits.Load())
		}
	})
}

func TestRetryPolicy(t *testing.T) {
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	rejection := &url.Error{Op: "Get", URL: "http://x", Err: &OpenError{Host: "x", Reason: ReasonBreakerOpen}}
	refused := &url.Error{Op: "Get", URL: "http://x", Err: errors.New("connection refused")}
	resp := func(code int) *http.Response { return &http.Response{StatusCode: code, Header: http.Header{}} }
	for _, tc := range []struct {
		name    string
		ctx     context.Context
		resp    *http.Response
		err     error
		retry   bool
		wantErr error
	}{
		{"rejection", context.Background(), nil, rejection, false, rejection},
		{"bare rejection", context.Background(), nil, &OpenError{}, false, ErrOpen},
		{"cancelled", cancelled, resp(503), nil, false, context.Canceled},
		{"cancelled rejection", cancelled, nil, rejection, false, context.Canceled},
		{"connection error", context.Background(), nil, refused, true, nil},
		{"429", context.Background(), resp(429), nil, true, nil},
		{"503", context.Background(), resp(503), nil, true, nil},
		{"501", context.Background(), resp(501), nil, false, nil},
		{"404", context.Background(), resp(404), nil, false, nil},
		{"200", context.Background(), resp(200), nil, false, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			retry, err := RetryPolicy(tc.ctx, tc.resp, tc.err)
			if retry != tc.retry {
				t.Errorf("retry = %v, want %v", retry, tc.retry)
			}
			switch {
			case tc.wantErr == nil && err != nil:
				t.Errorf("err = %v, want nil", err)
			case tc.wantErr != nil && !errors.Is(err, tc.wantErr):
				t.Errorf("err = %v, want %v", err, tc.wantErr)
			}
		})
	}
	if _, err := RetryPolicy(cancelled, nil, nil); err != cancelled.Err() {
		t.Errorf("err = %v, want the context's error as is", err)
	}
	// An attempt that failed with a *url.Error: the context's error in a
	// *url.Error for the same request.
	_, err := RetryPolicy(cancelled, nil, refused)
	if ue, ok := errors.AsType[*url.Error](err); !ok || ue.Op != "Get" || ue.URL != "http://x" || ue.Err != cancelled.Err() {
		t.Errorf("err = %#v, want the context's error in a *url.Error for Get http://x", err)
	}
}

func TestBackoffWithoutBlock(t *testing.T) {
	tr, err := NewTransport(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	req := httptest.NewRequest(http.MethodGet, "http://calm.example/", nil)
	for _, tc := range []struct {
		lo, hi  time.Duration
		attempt int
		resp    *http.Response
		min     time.Duration
		max     time.Duration
	}{
		{10 * time.Millisecond, time.Second, 0, nil, 10 * time.Millisecond, 10 * time.Millisecond},
		{10 * time.Millisecond, time.Second, 3, nil, 40 * time.Millisecond, 80 * time.Millisecond},
		{10 * time.Millisecond, time.Second, 20, nil, 500 * time.Millisecond, time.Second},
		{10 * time.Millisecond, time.Second, 1000, nil, 500 * time.Millisecond, time.Second},
		{time.Second, 100 * time.Millisecond, 2, nil, 100 * time.Millisecond, 100 * time.Millisecond},
		{0, time.Second, 5, nil, 0, 0},
		// The header alone does nothing: the Transport did not see it.
		{10 * time.Millisecond, time.Second, 1, &http.Response{StatusCode: 429, Request: req,
			Header: http.Header{"Retry-After": {"3600"}}}, 10 * time.Millisecond, 20 * time.Millisecond},
	} {
		for range 20 {
			if d := tr.Backoff(tc.lo, tc.hi, tc.attempt, tc.resp); d < tc.min || d > tc.max {
				t.Errorf("Backoff(%v, %v, %d) = %v, want in [%v, %v]", tc.lo, tc.hi, tc.attempt, d, tc.min, tc.max)
			}
		}
	}
}

// Backoff waits out a cooldown that ends within hi and returns 0 for one
// that ends later, whatever the status; an open breaker counts too.
func TestBackoffBlocked(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Defaults.FailMax = 1
	cfg.Defaults.ResetTimeout = time.Hour
	base := roundTripperFunc(func(r *http.Request) (*http.Response, error) {
		return &http.Response{StatusCode: 500, Header: http.Header{}, Body: http.NoBody, Request: r}, nil
	})
	tr, err := NewTransport(base, WithConfig(cfg))
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	respFor := func(u string, ctx context.Context) *http.Response {
		req := httptest.NewRequest(http.MethodGet, u, nil).WithContext(ctx)
		return &http.Response{StatusCode: 503, Header: http.Header{}, Request: req}
	}
	if err := tr.Open("short.example", 300*time.Millisecond, ""); err != nil {
		t.Fatal(err)
	}
	if d := tr.Backoff(time.Millisecond, time.Second, 0, respFor("http://short.example/", context.Background())); d < 250*time.Millisecond || d > 310*time.Millisecond {
		t.Errorf("short cooldown: Backoff = %v, want about 300ms", d)
	}
	if d := tr.Backoff(time.Millisecond, 100*time.Millisecond, 0, respFor("http://short.example/", context.Background())); d != 0 {
		t.Errorf("cooldown past hi: Backoff = %v, want 0", d)
	}
	// Open the artifact breaker of breaker.example with one failure.
	ctx := WithRole(context.Background(), RoleArtifact)
	req := httptest.NewRequest(http.MethodGet, "http://breaker.example/", nil).WithContext(ctx)
	if resp, err := tr.RoundTrip(req); err != nil {
		t.Fatal(err)
	} else {
		resp.Body.Close()
	}
	if d := tr.Backoff(time.Millisecond, time.Second, 0, respFor("http://breaker.example/", ctx)); d != 0 {
		t.Errorf("open breaker: Backoff = %v, want 0", d)
	}
	// Another role of the host is not blocked.
	if d := tr.Backoff(time.Millisecond, time.Millisecond, 0, respFor("http://breaker.example/", context.Background())); d != time.Millisecond {
		t.Errorf("other role: Backoff = %v, want the exponential 1ms", d)
	}
}

func TestRetryErrorMessage(t *testing.T) {
	rej := &url.Error{Op: "Get", URL: "http://x/", Err: &OpenError{Host: "x", Reason: ReasonManual}}
	_, err := RetryErrorHandler(nil, rej, 1)
	want := `GET http://x/ giving up after 1 attempt: Get "http://x/": hostbreaker: x (role ""): manual`
	if err.Error() != want {
		t.Errorf("err = %q, want %q", err, want)
	}
	if !strings.Contains(err.Error(), "1 attempt:") || !errors.Is(err, ErrOpen) {
		t.Errorf("err = %v, want ErrOpen", err)
	}
	_, err = RetryErrorHandler(nil, nil, 2)
	if err.Error() != "giving up after 2 attempts" {
		t.Errorf("err = %q", err)
	}
	// net/http writes a password as "***"; a RetryError as go-retryablehttp
	// does, whether the URL comes from an error or a response.
	_, err = RetryErrorHandler(nil, &url.Error{Op: "Get", URL: "http://u:***@x/p", Err: context.Canceled}, 1)
	if re, ok := errors.AsType[*RetryError](err); !ok || re.Method != "GET" || re.URL != "http://u:xxxxx@x/p" {
		t.Errorf("from a *url.Error: %v, want GET http://u:xxxxx@x/p", err)
	}
	req := httptest.NewRequest(http.MethodPut, "http://u:pw@x/p", nil)
	_, err = RetryErrorHandler(&http.Response{StatusCode: 502, Request: req}, nil, 1)
	if re, ok := errors.AsType[*RetryError](err); !ok || re.Method != "PUT" || re.URL != "http://u:xxxxx@x/p" || re.Status != "502 Bad Gateway" {
		t.Errorf("from a response: %v, want PUT http://u:xxxxx@x/p and the status", err)
	}
}
