package hostbreaker

// Tests of outcome classification (statuses, transport errors, timeouts)
// and of host name normalization.

import (
	"context"
	"errors"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"testing/synctest"
	"time"
)

func TestNormalizeHost(t *testing.T) {
	long63 := strings.Repeat("a", 63)
	long64 := strings.Repeat("a", 64)
	tests := []struct {
		scheme, in string
		want       string // "" means an error
	}{
		{"https", "example.com", "example.com"},
		{"https", "EXAMPLE.com", "example.com"},
		{"https", "example.com.", "example.com"},
		{"https", "Example.COM.", "example.com"},
		{"https", "example.com:443", "example.com"},
		{"http", "example.com:80", "example.com"},
		{"http", "example.com:443", "example.com:443"},
		{"https", "example.com:80", "example.com:80"},
		{"wss", "example.com:443", "example.com"},
		{"ws", "example.com:80", "example.com"},
		{"", "example.com:443", "example.com:443"},
		{"https", "example.com:8443", "example.com:8443"},
		{"https", "EXAMPLE.com.:8443", "example.com:8443"},
		{"https", "example.com:08443", "example.com:8443"},
		{"https", "example.com:0443", "example.com"},
		{"https", "example.com:", "example.com"},
		{"https", "192.0.2.1", "192.0.2.1"},
		{"https", "192.0.2.1:443", "192.0.2.1"},
		{"http", "[::1]:8080", "[::1]:8080"},
		{"https", "[::1]:443", "[::1]"},
		{"https", "[::1]", "[::1]"},
		{"https", "::1", "[::1]"},
		{"https", "[2001:DB8::1]", "[2001:db8::1]"},
		{"http", "[FE80::1%eth0]:8080", "[fe80::1%eth0]:8080"},
		{"https", "[fe80::1%Eth0]:443", "[fe80::1%Eth0]"},
		{"https", "2001:DB8::1", "[2001:db8::1]"},
		{"https", "bücher.example", "xn--bcher-kva.example"},
		{"https", "BÜCHER.example.", "xn--bcher-kva.example"},
		{"https", "bücher.example:8443", "xn--bcher-kva.example:8443"},
		{"https", long63 + ".com", long63 + ".com"},
		{"https", "", ""},
		{"https", ":8443", ""}, // port without a host
		{"https", ".", ""},
		{"https", "a..b", ""},
		{"https", ".example.com", ""},
		{"https", "example.com..", ""},
		{"https", "exa mple.com", ""},
		{"https", "exa/mple.com", ""},
		{"https", "example.com:99999", ""},
		{"https", "example.com:65536", ""},
		{"https", "example.com:abc", ""},
		{"https", "example.com:-1", ""},
		{"https", "example.com:+1", ""},
		{"https", long64 + ".com", ""},
		{"https", long64, ""},
		{"https", strings.Repeat("a.", 127) + "ab", ""}, // 256 bytes
		{"https", "[::1", ""},
		{"https", "[::1]x", ""},
		{"https", "[::1]%eth0", ""},
		{"https", "[]", ""},
		{"https", "[g::1]", ""},
	}
	for _, tc := range tests {
		got, err := normalizeHost(tc.scheme, tc.in)
		if tc.want == "" {
			if err == nil {
				t.Errorf("normalizeHost(%q, %q) = %q, want an error", tc.scheme, tc.in, got)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("normalizeHost(%q, %q) = %q, %v; want %q", tc.scheme, tc.in, got, err, tc.want)
		}
	}
}

func TestNormalizeHostCanonicalNoAlloc(t *testing.T) {
	for _, in := range []string{"example.com", "api.crossref.org", "a-b_c.d9.example", "192.0.2.1", "xn--bcher-kva.example"} {
		var out string
		var err error
		allocs := testing.AllocsPerRun(100, func() { out, err = normalizeHost("https", in) })
		if err != nil || out != in {
			t.Errorf("normalizeHost(%q) = %q, %v", in, out, err)
		}
		if allocs != 0 {
			t.Errorf("normalizeHost(%q): %v allocations, want 0", in, allocs)
		}
	}
}

func FuzzNormalizeHost(f *testing.F) {
	for _, s := range [][2]string{
		{"https", "example.com"}, {"https", "EXAMPLE.com"}, {"https", "example.com."},
		{"https", "example.com:443"}, {"http", "example.com:80"}, {"http", "example.com:443"},
		{"https", ":8443"}, {"http", "[::1]:8080"}, {"https", "[::1]:443"}, {"", "::1"},
		{"https", "bücher.example"}, {"", ""}, {"https", "a..b"}, {"https", "exa mple.com"},
		{"https", "example.com:99999"}, {"https", "example.com:abc"}, {"ws", "A.B.C.:0080"},
		{"https", "bücher.example。"}, {"https", "[2001:DB8::1]:00443"},
	} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, scheme, hostport string) {
		out, err := normalizeHost(scheme, hostport)
		if err != nil {
			if out != "" {
				t.Fatalf("normalizeHost(%q, %q) = %q with error %v", scheme, hostport, out, err)
			}
			return
		}
		if out == "" {
			t.Fatalf("normalizeHost(%q, %q) = \"\", nil", scheme, hostport)
		}
		if strings.HasSuffix(out, ".") {
			t.Fatalf("normalizeHost(%q, %q) = %q: trailing dot", scheme, hostport, out)
		}
		if strings.IndexFunc(out, func(r rune) bool { return r >= 'A' && r <= 'Z' }) >= 0 {
			t.Fatalf("normalizeHost(%q, %q) = %q: upper case", scheme, hostport, out)
		}
		again, err := normalizeHost(scheme, out)
		if err != nil || again != out {
			t.Fatalf("normalizeHost(%q, %q) = %q, but normalizeHost(%q, %q) = %q, %v", scheme, hostport, out, scheme, out, again, err)
		}
	})
}

func TestStatusSetClassify(t *testing.T) {
	s := newStatusSet([]int{100, 127, 128, 500, 503, 599}, []int{191, 192, 404})
	tests := []struct {
		code int
		want outcome
	}{
		{100, outcomeFailure}, {127, outcomeFailure}, {128, outcomeFailure},
		{500, outcomeFailure}, {503, outcomeFailure}, {599, outcomeFailure},
		{191, outcomeNeutral}, {192, outcomeNeutral}, {404, outcomeNeutral},
		{200, outcomeSuccess}, {126, outcomeSuccess}, {129, outcomeSuccess}, {501, outcomeSuccess},
		{0, outcomeSuccess}, {63, outcomeSuccess}, {64, outcomeSuccess}, {99, outcomeSuccess},
		{600, outcomeSuccess}, {639, outcomeSuccess}, {640, outcomeSuccess}, {703, outcomeSuccess},
		{1000, outcomeSuccess}, {-1, outcomeSuccess}, {-64, outcomeSuccess}, {-500, outcomeSuccess},
		{1 << 40, outcomeSuccess}, {math.MaxInt, outcomeSuccess}, {math.MinInt, outcomeSuccess},
	}
	for _, tc := range tests {
		if got := s.classify(tc.code); got != tc.want {
			t.Errorf("classify(%d) = %v, want %v", tc.code, got, tc.want)
		}
	}
	var empty statusSet
	for _, c := range []int{-1, 0, 100, 404, 503, 639, 640} {
		if got := empty.classify(c); got != outcomeSuccess {
			t.Errorf("empty.classify(%d) = %v", c, got)
		}
	}
	// The built-in lists, through a compiled policy.
	pt, err := compilePolicies(Config{})
	if err != nil {
		t.Fatal(err)
	}
	r, err := pt.resolve("example.com", "")
	if err != nil {
		t.Fatal(err)
	}
	for c := 0; c < 700; c++ {
		want := outcomeSuccess
		switch {
		case containsInt(wantFailure, c):
			want = outcomeFailure
		case containsInt(wantNeutral, c):
			want = outcomeNeutral
		}
		if got := r.statuses.classify(c); got != want {
			t.Errorf("default classify(%d) = %v, want %v", c, got, want)
		}
	}
}

func containsInt(s []int, v int) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

func TestClassification(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		base := newFakeHosts(status(404))
		c, tr := client(t, base, quick(2, time.Minute))
		for range 10 { // neutral statuses count neither way
			mustPass(t, do(t, c, "", "https://a.test/"), 404)
		}
		base.set(status(302))
		mustPass(t, do(t, c, "", "https://a.test/"), 302) // other statuses are successes
		s := stateOf(t, tr, "a.test", "")
		if s.State != StateClosed || s.Neutral != 10 || s.Successes != 1 || s.Failures != 0 {
			t.Fatalf("status = %+v", s)
		}
		// A transport error is a failure...
		base.set(func(*http.Request) (*http.Response, error) { return nil, errors.New("connection refused") })
		get(t, c, "", "https://b.test/")
		get(t, c, "", "https://b.test/")
		mustReject(t, do(t, c, "", "https://b.test/").err, ReasonBreakerOpen)
		// ...unless the caller gave up: it canceled its own context (a
		// deadline that has not passed does not make that a timeout).
		base.set(func(req *http.Request) (*http.Response, error) {
			<-req.Context().Done()
			return nil, req.Context().Err()
		})
		for range 5 {
			ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "https://c.test/", nil)
			go func() {
				synctest.Wait()
				cancel()
			}()
			if _, err := c.Do(req); !errors.Is(err, context.Canceled) {
				t.Fatalf("err = %v", err)
			}
		}
		if s := stateOf(t, tr, "c.test", ""); s.State != StateClosed || s.Neutral != 5 {
			t.Fatalf("status = %+v", s)
		}
	})
}

// hang is a base handler that waits until the request's context is done.
func hang(req *http.Request) (*http.Response, error) {
	<-req.Context().Done()
	return nil, req.Context().Err()
}

// A timeout is a failure, whichever timer fires; fail_max of them
// open the breaker.
func TestTimeoutsTripTheBreaker(t *testing.T) {
	cases := []struct {
		name string
		do   func(t *testing.T, tr *Transport) error
	}{
		{"client timeout", func(t *testing.T, tr *Transport) error {
			c := &http.Client{Transport: tr, Timeout: 5 * time.Second}
			_, err := c.Get("https://a.test/")
			return err
		}},
		{"context deadline", func(t *testing.T, tr *Transport) error {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "https://a.test/", nil)
			_, err := (&http.Client{Transport: tr}).Do(req)
			return err
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				tr, err := NewTransport(newFakeHosts(hang), WithConfig(quick(5, time.Minute)))
				if err != nil {
					t.Fatal(err)
				}
				defer tr.Close()
				for i := range 5 {
					if err := tc.do(t, tr); errors.Is(err, ErrOpen) || err == nil {
						t.Fatalf("request %d: err = %v, want a timeout", i, err)
					}
				}
				mustReject(t, tc.do(t, tr), ReasonBreakerOpen)
			})
		})
	}
	t.Run("error with Timeout", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			base := newFakeHosts(func(*http.Request) (*http.Response, error) {
				return nil, &net.OpError{Op: "read", Net: "tcp", Err: timeoutError{}}
			})
			c, _ := client(t, base, quick(5, time.Minute))
			for range 5 {
				get(t, c, "", "https://a.test/")
			}
			mustReject(t, do(t, c, "", "https://a.test/").err, ReasonBreakerOpen)
		})
	})
	t.Run("http.Transport response header timeout", func(t *testing.T) {
		release := make(chan struct{})
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			select {
			case <-release:
			case <-r.Context().Done():
			}
		}))
		defer srv.Close()
		defer close(release)
		base := &http.Transport{ResponseHeaderTimeout: 20 * time.Millisecond}
		defer base.CloseIdleConnections()
		tr, err := NewTransport(base, WithConfig(quick(5, time.Hour)))
		if err != nil {
			t.Fatal(err)
		}
		defer tr.Close()
		c := &http.Client{Transport: tr}
		for i := range 5 {
			if _, err := c.Get(srv.URL); err == nil || errors.Is(err, ErrOpen) {
				t.Fatalf("request %d: err = %v, want a timeout", i, err)
			}
		}
		_, err = c.Get(srv.URL)
		mustReject(t, err, ReasonBreakerOpen)
	})
}

func TestHostNormalization(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		base := newFakeHosts(status(500))
		c, tr := client(t, base, quick(3, time.Minute))
		get(t, c, "", "https://EXAMPLE.com/")
		get(t, c, "", "https://example.com./")
		get(t, c, "", "https://example.com:443/")
		mustReject(t, do(t, c, "", "https://Example.COM/").err, ReasonBreakerOpen)
		// A non-default port is another host, and 443 is not http's default.
		mustPass(t, do(t, c, "", "https://example.com:8443/"), 500)
		mustPass(t, do(t, c, "", "http://example.com:443/"), 500)
		mustReject(t, do(t, c, "", "https://example.com:443/").err, ReasonBreakerOpen)
		var hosts []string
		for _, s := range tr.Snapshot() {
			hosts = append(hosts, s.Host)
		}
		if got := strings.Join(hosts, ","); got != "example.com,example.com:443,example.com:8443" {
			t.Errorf("hosts = %s", got)
		}
	})
}

// IPv6 zone literals work as in net/http.
func TestIPv6ZoneLiteral(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		base := newFakeHosts(status(500))
		c, tr := client(t, base, quick(1, time.Minute))
		mustPass(t, do(t, c, "", "http://[FE80::1%25eth0]:8080/"), 500)
		mustReject(t, do(t, c, "", "http://[fe80::1%25eth0]:8080/x").err, ReasonBreakerOpen)
		mustState(t, tr, "[fe80::1%eth0]:8080", "", StateOpen)
		// Another zone is another host.
		mustPass(t, do(t, c, "", "http://[fe80::1%25eth1]:8080/"), 500)
	})
}

// TestThrottleClassification checks how a throttle (429) without a usable
// Retry-After counts, through a Transport: neutral while the host's limiter
// can still slow down, a failure once the host keeps throttling at
// min_rate (so that a host answering 429 to everything still ends up
// paused), a failure without adaptive learning, and never a success
// whatever the status lists say.
func TestThrottleClassification(t *testing.T) {
	always429 := roundTripperFunc(func(req *http.Request) (*http.Response, error) {
		return &http.Response{StatusCode: http.StatusTooManyRequests, Header: http.Header{}, Body: http.NoBody, Request: req}, nil
	})
	status := func(tr *Transport) Status {
		for _, s := range tr.Snapshot() {
			if s.Role == "" && s.Host == "a.test" {
				return s
			}
		}
		return Status{}
	}
	t.Run("a throttle the limiter acts on is neutral", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			n := 0
			base := roundTripperFunc(func(req *http.Request) (*http.Response, error) {
				n++
				code := http.StatusOK
				if n%4 == 0 {
					code = http.StatusTooManyRequests // every 4th: the host slows the client down
				}
				return &http.Response{StatusCode: code, Header: http.Header{}, Body: http.NoBody, Request: req}, nil
			})
			tr := newRateTransport(t, base, DefaultConfig())
			for range 40 {
				if err := send(context.Background(), tr, "a.test"); err != nil {
					t.Fatalf("request %d: %v", n, err)
				}
			}
			if s := status(tr); s.Failures != 0 || s.Neutral != 10 || s.State != StateClosed || s.Rate == 0 {
				t.Errorf("status %+v; want 10 neutral throttles, no failure, closed, a learnt rate", s)
			}
		})
	})
	t.Run("a host that throttles at min_rate fails", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			tr := newRateTransport(t, always429, DefaultConfig())
			for i := 0; i < 10 && status(tr).State == StateClosed; i++ {
				send(context.Background(), tr, "a.test")
			}
			s := status(tr)
			// The first throttle starts the limiter at min_rate (nothing
			// succeeded), the next ends its slow start: neutral. Each one
			// after, paced at min_rate, fails.
			if s.Neutral > 2 || s.Failures != defaultFailMax || s.State != StateOpen || s.Reason != ReasonBreakerOpen {
				t.Errorf("status %+v; want at most 2 neutral, %d failures, open", s, defaultFailMax)
			}
			if s.Rate != defaultMinRate {
				t.Errorf("rate %v, want min_rate %v", s.Rate, defaultMinRate)
			}
		})
	})
	t.Run("without learning a throttle fails", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			tr := newRateTransport(t, always429, Config{Defaults: Policy{Adaptive: ToggleOff}})
			for range defaultFailMax {
				send(context.Background(), tr, "a.test")
			}
			if s := status(tr); s.Failures != defaultFailMax || s.State != StateOpen || s.Rate != 0 {
				t.Errorf("status %+v; want %d failures, open, no limiter", s, defaultFailMax)
			}
		})
	})
	t.Run("a throttle is never a success", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			// 429 in no status list: the lists would make it a success.
			c := Config{Defaults: Policy{Adaptive: ToggleOff, FailureStatuses: []int{500}, NeutralStatuses: []int{404}}}
			tr := newRateTransport(t, always429, c)
			send(context.Background(), tr, "a.test")
			if s := status(tr); s.Successes != 0 || s.Failures != 1 {
				t.Errorf("status %+v; want the 429 counted a failure, not a success", s)
			}
		})
	})
}

// deadlineCase is a case of the caller's-deadline rule (classify.go,
// callersDeadline): a request sent to a host under slowCall, in a job with
// left to run (no job deadline when 0), through an http.Client with
// timeout, and the state its end leaves the breaker in (fail_max 1).
type deadlineCase struct {
	name                    string
	slowCall, left, timeout time.Duration
	want                    State
}

// deadlineCases are the cases that hold wherever the deadline ends the
// request: at the headers and while its body is read.
var deadlineCases = []deadlineCase{
	{"job deadline after 500ms", 0, 500 * time.Millisecond, 0, StateClosed},
	{"job deadline after 2s", 0, 2 * time.Second, 0, StateOpen},
	{"job deadline after 2s, slow_call 5s", 5 * time.Second, 2 * time.Second, 0, StateClosed},
	{"job deadline after 6s, slow_call 5s", 5 * time.Second, 6 * time.Second, 0, StateOpen},
	{"http.Client.Timeout 500ms", 0, 0, 500 * time.Millisecond, StateOpen},
	{"job deadline with http.Client.Timeout", 0, 500 * time.Millisecond, time.Minute, StateOpen},
}

// doInJob sends a GET for https://a.test/ to base through a Transport of
// fail_max 1 with tc's slow_call (and max_concurrent 4 when watch, so that
// every body is watched), in a job with tc.left to run, through an
// http.Client with tc.timeout; it returns the Transport (closed when the
// test ends) and what the client returned. Call it in a synctest bubble.
func doInJob(t *testing.T, base http.RoundTripper, tc deadlineCase, watch bool) (*Transport, *http.Response, error) {
	t.Helper()
	c := quick(1, time.Minute)
	c.Defaults.SlowCall = tc.slowCall
	if watch {
		c.Defaults.MaxConcurrent = 4
	}
	tr, err := NewTransport(base, WithConfig(c))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	ctx := context.Background()
	if tc.left > 0 {
		job, cancel := context.WithTimeout(ctx, 10*time.Minute)
		t.Cleanup(cancel)
		time.Sleep(10*time.Minute - tc.left) // the job has been running
		ctx = job
	}
	cl := &http.Client{Transport: tr, Timeout: tc.timeout}
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "https://a.test/", nil)
	resp, err := cl.Do(req)
	return tr, resp, err
}

// TestCallersDeadlineIsNeutral: a deadline of the caller's (a job-wide
// context) that ends a request before it has waited the host's slow_call
// (1s when unset) is the caller's, not the host's: neutral. A longer wait,
// http.Client.Timeout and the base's own timeouts stay failures.
func TestCallersDeadlineIsNeutral(t *testing.T) {
	hung := roundTripperFunc(func(req *http.Request) (*http.Response, error) {
		<-req.Context().Done()
		return nil, req.Context().Err()
	})
	headerTimeout := roundTripperFunc(func(req *http.Request) (*http.Response, error) {
		time.Sleep(200 * time.Millisecond)
		return nil, timeoutError{} // as ResponseHeaderTimeout: the context is still live
	})
	type withBase struct {
		deadlineCase
		base http.RoundTripper
	}
	var cases []withBase
	for _, tc := range deadlineCases {
		cases = append(cases, withBase{tc, hung})
	}
	cases = append(cases, withBase{deadlineCase{"base timeout within a job", 0, time.Minute, 0, StateOpen}, headerTimeout})
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				tr, _, err := doInJob(t, tc.base, tc.deadlineCase, false)
				if err == nil {
					t.Fatal("request succeeded")
				}
				s := stateOf(t, tr, "a.test", "")
				if s.State != tc.want {
					t.Fatalf("state = %v, want %v (%+v)", s.State, tc.want, s)
				}
				if tc.want == StateClosed && s.Neutral != 1 {
					t.Errorf("neutral = %d, want 1", s.Neutral)
				}
			})
		})
	}
}
