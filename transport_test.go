package hostbreaker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"
	"unsafe"
)

// fakeHosts is a base RoundTripper that answers for any host with what
// its handler returns, counting the requests that reach it per host.
type fakeHosts struct {
	mu      sync.Mutex
	handler func(req *http.Request) (*http.Response, error)
	calls   map[string]int
}

func newFakeHosts(h func(req *http.Request) (*http.Response, error)) *fakeHosts {
	return &fakeHosts{handler: h, calls: make(map[string]int)}
}

func (f *fakeHosts) RoundTrip(req *http.Request) (*http.Response, error) {
	f.mu.Lock()
	f.calls[req.URL.Host]++
	h := f.handler
	f.mu.Unlock()
	return h(req)
}

func (f *fakeHosts) set(h func(req *http.Request) (*http.Response, error)) {
	f.mu.Lock()
	f.handler = h
	f.mu.Unlock()
}

func (f *fakeHosts) count(host string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls[host]
}

func status(code int, header ...string) func(*http.Request) (*http.Response, error) {
	return func(req *http.Request) (*http.Response, error) {
		h := http.Header{}
		for i := 0; i+1 < len(header); i += 2 {
			h.Set(header[i], header[i+1])
		}
		return &http.Response{StatusCode: code, Header: h, Body: io.NopCloser(strings.NewReader("body")), Request: req}, nil
	}
}

// client returns an http.Client over a new Transport on base with config c.
func client(t *testing.T, base http.RoundTripper, c Config) (*http.Client, *Transport) {
	t.Helper()
	tr, err := NewTransport(base, WithConfig(c))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	return &http.Client{Transport: tr}, tr
}

// get sends GET url with role and returns the status (0 on error) and error.
func get(t *testing.T, c *http.Client, role, url string) (int, error) {
	t.Helper()
	req, err := http.NewRequestWithContext(WithRole(context.Background(), role), http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0, err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode, nil
}

// mustReject asserts that err is an *OpenError with reason and returns it.
func mustReject(t *testing.T, err error, reason Reason) *OpenError {
	t.Helper()
	if !errors.Is(err, ErrOpen) {
		t.Fatalf("err = %v, want ErrOpen", err)
	}
	var oe *OpenError
	if !errors.As(err, &oe) {
		t.Fatalf("err = %v, not an *OpenError", err)
	}
	if oe.Reason != reason {
		t.Fatalf("reason = %q, want %q (err %v)", oe.Reason, reason, err)
	}
	return oe
}

// result is what do returns: the status (0 on error) and the error.
type result struct {
	code int
	err  error
}

func do(t *testing.T, c *http.Client, role, url string) result {
	t.Helper()
	code, err := get(t, c, role, url)
	return result{code, err}
}

func mustPass(t *testing.T, r result, want int) {
	t.Helper()
	if r.err != nil || r.code != want {
		t.Fatalf("got (%d, %v), want (%d, nil)", r.code, r.err, want)
	}
}

// quick is a policy with no jitter, for exact timing.
func quick(failMax int, reset time.Duration) Config {
	return Config{Defaults: Policy{FailMax: failMax, ResetTimeout: reset, HalfOpenJitter: -1}}
}

// mustState asserts the effective state of (host, role).
func mustState(t *testing.T, tr *Transport, host, role string, want State) {
	t.Helper()
	if s := stateOf(t, tr, host, role); s.State != want {
		t.Fatalf("state of (%s, %q) = %v, want %v", host, role, s.State, want)
	}
}

func stateOf(t *testing.T, tr *Transport, host, role string) Status {
	t.Helper()
	for _, s := range tr.Snapshot() {
		if s.Host == host && s.Role == role {
			return s
		}
	}
	t.Fatalf("no status for (%s, %q) in %+v", host, role, tr.Snapshot())
	return Status{}
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

func TestRetryAfterCooldowns(t *testing.T) {
	for _, tc := range []struct {
		name   string
		code   int
		header func(now time.Time) string
		want   time.Duration // 0: no cooldown
	}{
		{"429 seconds", 429, func(time.Time) string { return "120" }, 120 * time.Second},
		{"503 seconds", 503, func(time.Time) string { return "7" }, 7 * time.Second},
		{"503 http-date", 503, func(now time.Time) string { return now.Add(90 * time.Second).UTC().Format(http.TimeFormat) }, 90 * time.Second},
		{"capped", 429, func(time.Time) string { return "86400" }, 15 * time.Minute},
		{"too large to represent", 429, func(time.Time) string { return "99999999999999999999999" }, 15 * time.Minute},
		{"zero", 429, func(time.Time) string { return "0" }, 0},
		{"negative", 429, func(time.Time) string { return "-5" }, 0},
		{"past date", 503, func(now time.Time) string { return now.Add(-time.Hour).UTC().Format(http.TimeFormat) }, 0},
		{"garbage", 429, func(time.Time) string { return "soon" }, 0},
		{"missing", 429, nil, 0},
		{"other status", 500, func(time.Time) string { return "120" }, 0},
		{"success status", 200, func(time.Time) string { return "120" }, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				base := newFakeHosts(nil)
				base.set(func(req *http.Request) (*http.Response, error) {
					if tc.header == nil {
						return status(tc.code)(req)
					}
					return status(tc.code, "Retry-After", tc.header(time.Now()))(req)
				})
				c, tr := client(t, base, Config{})
				start := time.Now()
				mustPass(t, do(t, c, RoleMetadata, "https://api.test/"), tc.code)
				base.set(status(200))
				r := do(t, c, RoleArtifact, "https://api.test/") // another role of the host
				if tc.want == 0 {
					mustPass(t, r, 200)
					return
				}
				oe := mustReject(t, r.err, ReasonRetryAfter)
				if want := start.Add(tc.want); !oe.Until.Equal(want) {
					t.Errorf("until = %v, want %v", oe.Until, want)
				}
				if s := stateOf(t, tr, "api.test", RoleArtifact); s.State != StateOpen || s.Reason != ReasonRetryAfter {
					t.Errorf("status = %+v", s)
				}
				mustPass(t, do(t, c, RoleArtifact, "https://other.test/"), 200)
				time.Sleep(tc.want)
				mustPass(t, do(t, c, RoleArtifact, "https://api.test/"), 200)
			})
		})
	}
}

func TestRetryAfterExtendsButNeverShortens(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		base := newFakeHosts(status(429, "Retry-After", "60"))
		c, tr := client(t, base, Config{Defaults: Policy{FailMax: 100}})
		start := time.Now()
		get(t, c, "", "https://a.test/")
		// A shorter Retry-After from a request already in flight never shortens it.
		tr.RoundTrip(mustRequest(t, "https://a.test/")) // rejected
		e := tr.reg.lookup("a.test", "")
		tr.obeyRetryAfter("a.test", e.pol.Load(), &http.Response{StatusCode: 429, Header: http.Header{"Retry-After": {"10"}}})
		oe := mustReject(t, do(t, c, "", "https://a.test/").err, ReasonRetryAfter)
		if !oe.Until.Equal(start.Add(60 * time.Second)) {
			t.Errorf("until = %v, want start+60s", oe.Until.Sub(start))
		}
		tr.obeyRetryAfter("a.test", e.pol.Load(), &http.Response{StatusCode: 503, Header: http.Header{"Retry-After": {"300"}}})
		oe = mustReject(t, do(t, c, "", "https://a.test/").err, ReasonRetryAfter)
		if !oe.Until.Equal(start.Add(300 * time.Second)) {
			t.Errorf("until = %v, want start+300s", oe.Until.Sub(start))
		}
	})
}

func mustRequest(t *testing.T, url string) *http.Request {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	return req
}

func TestRollingWindow(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		base := newFakeHosts(status(500))
		cfg := Config{
			Defaults: Policy{FailMax: 100},
			Rolling:  Rolling{Enabled: true, ThresholdFailures: 3, Window: 10 * time.Second, Cooldown: 30 * time.Second},
		}
		c, tr := client(t, base, cfg)
		// Failures spread wider than the window do not trip it.
		for range 4 {
			get(t, c, RoleLanding, "https://a.test/")
			time.Sleep(6 * time.Second)
		}
		mustPass(t, do(t, c, RoleLanding, "https://a.test/"), 500)
		// Three failures of the host within 10s, across roles, do.
		time.Sleep(20 * time.Second)
		get(t, c, RoleLanding, "https://a.test/")
		time.Sleep(4 * time.Second)
		get(t, c, RoleMetadata, "https://a.test/")
		time.Sleep(4 * time.Second)
		get(t, c, RoleArtifact, "https://a.test/")
		tripped := time.Now()
		oe := mustReject(t, do(t, c, "", "https://a.test/").err, ReasonRollingWindow)
		if !oe.Until.Equal(tripped.Add(30 * time.Second)) {
			t.Errorf("until = %v, want %v", oe.Until, tripped.Add(30*time.Second))
		}
		if s := stateOf(t, tr, "a.test", RoleMetadata); s.Reason != ReasonRollingWindow {
			t.Errorf("status = %+v", s)
		}
		// The window was emptied when it tripped: one failure after the
		// cooldown does not trip it again.
		time.Sleep(30 * time.Second)
		mustPass(t, do(t, c, RoleLanding, "https://a.test/"), 500)
		mustPass(t, do(t, c, RoleLanding, "https://a.test/"), 500)
		base.set(status(200))
		mustPass(t, do(t, c, RoleLanding, "https://a.test/"), 200)
	})
}

func TestRollingWindowDisabledByDefault(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		base := newFakeHosts(status(500))
		c, _ := client(t, base, Config{Defaults: Policy{FailMax: 1000}})
		for range 50 {
			mustPass(t, do(t, c, "", "https://a.test/"), 500)
		}
	})
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

func TestRolePolicies(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cfg, err := ParseConfig([]byte(`
[defaults]
fail_max = 5
half_open_jitter = "0s"
[defaults.roles.metadata]
fail_max = 2
[hosts."api.crossref.org"]
fail_max = 4
[hosts."api.crossref.org".roles.artifact]
fail_max = 1
[hosts."*.example.org"]
fail_max = 3
`))
		if err != nil {
			t.Fatal(err)
		}
		base := newFakeHosts(status(500))
		c, _ := client(t, base, cfg)
		for _, tc := range []struct {
			role, url string
			failMax   int
		}{
			{"", "https://plain.test/", 5},
			{RoleMetadata, "https://plain.test/", 2},
			{"", "https://api.crossref.org/", 4},
			{RoleMetadata, "https://api.crossref.org/", 4}, // host beats defaults.roles
			{RoleArtifact, "https://api.crossref.org/", 1},
			{"", "https://a.example.org/", 3},
			{"", "https://example.org/", 5}, // wildcard does not match the apex
		} {
			for i := range tc.failMax {
				if _, err := get(t, c, tc.role, tc.url); err != nil {
					t.Fatalf("%s %q: rejected after %d failures, want %d: %v", tc.url, tc.role, i, tc.failMax, err)
				}
			}
			mustReject(t, do(t, c, tc.role, tc.url).err, ReasonBreakerOpen)
		}
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

func TestOpenAndReset(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		base := newFakeHosts(status(500))
		cfg := quick(2, time.Hour)
		cfg.Rolling = Rolling{Enabled: true, ThresholdFailures: 3, Window: time.Minute, Cooldown: time.Hour}
		c, tr := client(t, base, cfg)
		start := time.Now()
		tr.Open("quiet.test", 5*time.Minute, "maintenance")
		oe := mustReject(t, do(t, c, RoleLanding, "https://quiet.test/").err, ReasonManual)
		if !oe.Until.Equal(start.Add(5 * time.Minute)) {
			t.Errorf("until = %v", oe.Until)
		}
		if s := stateOf(t, tr, "quiet.test", RoleLanding); s.Note != "maintenance" || s.Reason != ReasonManual {
			t.Errorf("status = %+v", s)
		}
		// Reset clears the cooldown, the open breaker and the rolling window.
		get(t, c, RoleMetadata, "https://sick.test/")
		get(t, c, RoleMetadata, "https://sick.test/") // breaker open; 2 failures in the window
		tr.Open("sick.test", time.Hour, "")
		tr.Reset("https://SICK.test/path")
		tr.Reset("quiet.test")
		mustPass(t, do(t, c, RoleLanding, "https://quiet.test/"), 500)
		mustPass(t, do(t, c, RoleMetadata, "https://sick.test/"), 500)
		// One more failure would trip the rolling window had Reset not emptied it.
		mustPass(t, do(t, c, RoleLanding, "https://sick.test/"), 500)
		if s := stateOf(t, tr, "sick.test", RoleMetadata); s.State != StateClosed {
			t.Errorf("status = %+v", s)
		}
		// A manual open replaces even a longer cooldown; d <= 0 does nothing.
		tr.Open("quiet.test", time.Minute, "")
		tr.Open("quiet.test", 0, "")
		oe = mustReject(t, do(t, c, "", "https://quiet.test/").err, ReasonManual)
		if !oe.Until.Equal(time.Now().Add(time.Minute)) {
			t.Errorf("until = %v", oe.Until)
		}
	})
}

func TestUpdateHostPolicy(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		base := newFakeHosts(status(500))
		c, tr := client(t, base, quick(5, time.Minute))
		get(t, c, "", "https://a.test/")
		get(t, c, "", "https://a.test/")
		// Lowering fail_max applies to the next decision; the two failures are kept.
		if err := tr.UpdateHostPolicy("a.test", Policy{FailMax: 3}); err != nil {
			t.Fatal(err)
		}
		get(t, c, "", "https://a.test/")
		opened := time.Now()
		mustReject(t, do(t, c, "", "https://a.test/").err, ReasonBreakerOpen)
		// An open breaker stays open until its deadline, even when the
		// reset timeout changes.
		if err := tr.UpdateHostPolicy("a.test", Policy{ResetTimeout: time.Hour, Roles: map[string]Policy{RoleArtifact: {FailMax: 1}}}); err != nil {
			t.Fatal(err)
		}
		oe := mustReject(t, do(t, c, "", "https://a.test/").err, ReasonBreakerOpen)
		if !oe.Until.Equal(opened.Add(time.Minute)) {
			t.Errorf("until = %v, want %v", oe.Until, opened.Add(time.Minute))
		}
		// The role override applies and FailMax 3 from the first update is kept.
		get(t, c, RoleArtifact, "https://a.test/")
		mustReject(t, do(t, c, RoleArtifact, "https://a.test/").err, ReasonBreakerOpen)
		for range 3 {
			get(t, c, RoleLanding, "https://a.test/")
		}
		mustReject(t, do(t, c, RoleLanding, "https://a.test/").err, ReasonBreakerOpen)
		// Cooldowns are kept across updates.
		tr.Open("b.test", time.Minute, "")
		if err := tr.UpdateHostPolicy("b.test", Policy{FailMax: 9}); err != nil {
			t.Fatal(err)
		}
		mustReject(t, do(t, c, "", "https://b.test/").err, ReasonManual)
		// Invalid policies are rejected and change nothing.
		for _, p := range []Policy{
			{FailMax: -1},
			{NeutralStatuses: []int{500}},
			{FailureStatuses: []int{700}},
			{Roles: map[string]Policy{"x": {TrialCalls: -2}}},
		} {
			var ce *ConfigError
			if err := tr.UpdateHostPolicy("c.test", p); !errors.As(err, &ce) {
				t.Errorf("UpdateHostPolicy(%+v) = %v, want a *ConfigError", p, err)
			}
		}
		time.Sleep(time.Minute)
		base.set(status(200))
		mustPass(t, do(t, c, "", "https://a.test/"), 200)
	})
}

func TestMaxHostsEvictsOnlyIdleEntries(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		base := newFakeHosts(func(req *http.Request) (*http.Response, error) {
			if strings.HasPrefix(req.URL.Host, "sick") {
				return status(500)(req)
			}
			return status(200)(req)
		})
		cfg := quick(1, time.Hour)
		cfg.MaxHosts = 16
		c, tr := client(t, base, cfg)
		get(t, c, "", "https://sick.test/")
		tr.Open("cooling.test", time.Hour, "")
		get(t, c, "", "https://cooling.test/")
		for i := range 200 {
			mustPass(t, do(t, c, "", fmt.Sprintf("https://h%d.test/", i)), 200)
		}
		snap := tr.Snapshot()
		if len(snap) > 16 {
			t.Errorf("%d entries tracked, want at most 16", len(snap))
		}
		mustReject(t, do(t, c, "", "https://sick.test/").err, ReasonBreakerOpen)
		mustReject(t, do(t, c, "", "https://cooling.test/").err, ReasonManual)
	})
}

func TestSnapshotIsSorted(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c, tr := client(t, newFakeHosts(status(200)), Config{})
		for _, u := range []string{"https://b.test/", "https://a.test/", "https://c.test/"} {
			for _, role := range []string{RoleLanding, "", RoleArtifact} {
				get(t, c, role, u)
			}
		}
		tr.Open("z.test", time.Minute, "")
		var got []string
		for _, s := range tr.Snapshot() {
			got = append(got, s.Host+"/"+s.Role)
		}
		want := "a.test/,a.test/artifact,a.test/landing,b.test/,b.test/artifact,b.test/landing,c.test/,c.test/artifact,c.test/landing,z.test/"
		if strings.Join(got, ",") != want {
			t.Errorf("snapshot order:\n got %s\nwant %s", strings.Join(got, ","), want)
		}
	})
}

// Contract tests: the http.RoundTripper rules hold on every path.

func TestRejectedRequestBodyIsClosed(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		_, tr := client(t, newFakeHosts(status(200)), Config{})
		tr.Open("a.test", time.Minute, "")
		body := &trackedBody{Reader: strings.NewReader("payload")}
		req, _ := http.NewRequest(http.MethodPost, "https://a.test/", body)
		if _, err := tr.RoundTrip(req); !errors.Is(err, ErrOpen) {
			t.Fatalf("err = %v", err)
		}
		if !body.closed.Load() {
			t.Error("rejected request's body was not closed")
		}
	})
}

type trackedBody struct {
	io.Reader
	closed atomic.Bool
}

func (b *trackedBody) Close() error { b.closed.Store(true); return nil }

func TestRequestIsNotModified(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var seen *http.Request
		base := newFakeHosts(func(req *http.Request) (*http.Response, error) {
			seen = req
			return status(200)(req)
		})
		_, tr := client(t, base, Config{})
		ctx := WithRole(context.Background(), RoleArtifact)
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "https://EXAMPLE.com:443/a?b=c", nil)
		req.Header.Set("X-Test", "1")
		before := fmt.Sprintf("%v %v %v %v", req.Method, req.URL.String(), req.Host, req.Header)
		resp, err := tr.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if after := fmt.Sprintf("%v %v %v %v", req.Method, req.URL.String(), req.Host, req.Header); after != before {
			t.Errorf("request changed:\n%s\n%s", before, after)
		}
		if seen != req {
			t.Error("base did not get the caller's request")
		}
	})
}

func TestResponsesAreReturnedWhateverTheirStatus(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		_, tr := client(t, newFakeHosts(nil), Config{})
		for _, code := range []int{200, 404, 429, 500, 503} {
			want := &http.Response{StatusCode: code, Body: http.NoBody, Header: http.Header{}}
			tr.base.(*fakeHosts).set(func(*http.Request) (*http.Response, error) { return want, nil })
			got, err := tr.RoundTrip(mustRequest(t, fmt.Sprintf("https://h%d.test/", code)))
			if err != nil || got != want {
				t.Errorf("status %d: got (%p, %v), want the base's response", code, got, err)
			}
		}
		// A response with a nil body and a transport error pass through too.
		tr.base.(*fakeHosts).set(func(*http.Request) (*http.Response, error) {
			return &http.Response{StatusCode: 204}, nil
		})
		if resp, err := tr.RoundTrip(mustRequest(t, "https://nil.test/")); err != nil || resp.Body != nil {
			t.Errorf("nil body: got (%v, %v)", resp, err)
		}
		boom := errors.New("boom")
		tr.base.(*fakeHosts).set(func(*http.Request) (*http.Response, error) { return nil, boom })
		if _, err := tr.RoundTrip(mustRequest(t, "https://err.test/")); !errors.Is(err, boom) {
			t.Errorf("err = %v, want the base's error", err)
		}
	})
}

func TestInvalidHostIsAClearError(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		base := newFakeHosts(status(200))
		_, tr := client(t, base, Config{})
		req := mustRequest(t, "https://ok.test/")
		req.URL.Host = "bad host"
		if _, err := tr.RoundTrip(req); err == nil || !strings.Contains(err.Error(), "bad host") {
			t.Errorf("err = %v", err)
		}
		if base.count("bad host") != 0 {
			t.Error("base was called")
		}
	})
}

func TestNilBaseUsesDefaultTransport(t *testing.T) {
	tr, err := NewTransport(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	if tr.base != http.DefaultTransport {
		t.Error("nil base is not http.DefaultTransport")
	}
	if _, err := NewTransport(nil, WithConfig(Config{Defaults: Policy{FailMax: -1}}), nil); err == nil {
		t.Error("invalid config accepted")
	}
}

func TestCloseIsIdempotent(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tr, err := NewTransport(newFakeHosts(status(200)))
		if err != nil {
			t.Fatal(err)
		}
		tr.Close()
		tr.Close()
		resp, err := tr.RoundTrip(mustRequest(t, "https://a.test/"))
		if err != nil || resp.StatusCode != 200 {
			t.Errorf("after Close: (%v, %v)", resp, err)
		}
	})
}

// TestThroughRealServers runs a real http.Client against loopback servers.
func TestThroughRealServers(t *testing.T) {
	var sickHits atomic.Int64
	sick := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sickHits.Add(1)
		w.WriteHeader(http.StatusBadGateway)
	}))
	defer sick.Close()
	limited := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Retry-After", "3600")
		w.WriteHeader(http.StatusTooManyRequests)
	}))
	defer limited.Close()
	tr, err := NewTransport(nil, WithConfig(quick(3, time.Hour)))
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	c := &http.Client{Transport: tr}
	for range 10 {
		get(t, c, RoleLanding, sick.URL)
	}
	if n := sickHits.Load(); n != 3 {
		t.Errorf("sick server got %d requests, want 3", n)
	}
	mustPass(t, do(t, c, RoleMetadata, limited.URL), 429)
	mustReject(t, do(t, c, RoleArtifact, limited.URL).err, ReasonRetryAfter)
}

func TestConcurrentTrafficIsRaceFree(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var n atomic.Int64
		base := newFakeHosts(func(req *http.Request) (*http.Response, error) {
			if n.Add(1)%3 == 0 {
				return status(500)(req)
			}
			return status(200)(req)
		})
		cfg := quick(2, time.Second)
		cfg.MaxHosts = 8
		cfg.Rolling.Enabled = true
		c, tr := client(t, base, cfg)
		var wg sync.WaitGroup
		for w := range 8 {
			wg.Go(func() {
				for i := range 200 {
					get(t, c, []string{"", RoleMetadata, RoleArtifact}[i%3], fmt.Sprintf("https://h%d.test/", (w+i)%12))
					if i%50 == 0 {
						time.Sleep(time.Second)
					}
				}
			})
		}
		wg.Go(func() {
			for i := range 20 {
				tr.Snapshot()
				tr.UpdateHostPolicy("h1.test", Policy{FailMax: 1 + i%3})
				tr.Reset("h2.test")
				time.Sleep(100 * time.Millisecond)
			}
		})
		wg.Wait()
	})
}

func TestRollingWindowIsEmptiedWhenItTrips(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		base := newFakeHosts(status(500))
		cfg := Config{
			Defaults: Policy{FailMax: 100},
			Rolling:  Rolling{Enabled: true, ThresholdFailures: 3, Window: time.Minute, Cooldown: 10 * time.Second},
		}
		c, _ := client(t, base, cfg)
		for range 3 {
			mustPass(t, do(t, c, "", "https://a.test/"), 500)
		}
		mustReject(t, do(t, c, "", "https://a.test/").err, ReasonRollingWindow)
		// The cooldown ends while the three failures are still inside the
		// window: were they kept, the next failure would trip it again.
		time.Sleep(10 * time.Second)
		mustPass(t, do(t, c, "", "https://a.test/"), 500)
		mustPass(t, do(t, c, "", "https://a.test/"), 500)
		mustPass(t, do(t, c, "", "https://a.test/"), 500)
		mustReject(t, do(t, c, "", "https://a.test/").err, ReasonRollingWindow)
	})
}

// TestHotFieldsLayout pins the layout that keeps the healthy path to one
// 128-byte block: the host state's first line and its first entry's.
func TestHotFieldsLayout(t *testing.T) {
	var e entry
	var h hostState
	if end := unsafe.Offsetof(e.mark) + unsafe.Sizeof(e.mark); end > 64 {
		t.Errorf("entry's hot fields end at byte %d, past the first cache line", end)
	}
	if end := unsafe.Offsetof(h.nameBuf) + unsafe.Sizeof(h.nameBuf); end > 64 {
		t.Errorf("hostState's hot fields end at byte %d, past the first cache line", end)
	}
	if off := unsafe.Offsetof(h.first); off != 64 {
		t.Errorf("hostState.first at byte %d, want 64", off)
	}
	// The 128- and 384-byte size classes place objects on 64- and 128-byte
	// boundaries (the next smaller classes, 112 and 352, do not).
	if s := unsafe.Sizeof(e); s <= 112 || s > 128 {
		t.Errorf("sizeof(entry) = %d, want in (112, 128]", s)
	}
	if s := unsafe.Sizeof(h); s != 384 {
		t.Errorf("sizeof(hostState) = %d, want 384", s)
	}
}

func TestTransportKeepsItsOwnCopyOfTheConfig(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		statuses := []int{500}
		cfg := Config{Hosts: map[string]Policy{"a.test": {FailMax: 1, FailureStatuses: statuses,
			Roles: map[string]Policy{RoleArtifact: {FailMax: 2}}}}}
		c, _ := client(t, newFakeHosts(status(500)), cfg)
		statuses[0] = 404 // the caller changes its Config afterwards
		cfg.Hosts["a.test"].Roles[RoleArtifact] = Policy{FailMax: 10}
		mustPass(t, do(t, c, "", "https://a.test/"), 500)
		mustReject(t, do(t, c, "", "https://a.test/").err, ReasonBreakerOpen)
		mustPass(t, do(t, c, RoleArtifact, "https://a.test/"), 500)
		mustPass(t, do(t, c, RoleArtifact, "https://a.test/"), 500)
		mustReject(t, do(t, c, RoleArtifact, "https://a.test/").err, ReasonBreakerOpen)
	})
}

func TestHugeDurationsAreCapped(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cfg := Config{Defaults: Policy{FailMax: 1, ResetTimeout: time.Duration(1<<63 - 1), RetryAfterCap: time.Duration(1<<63 - 1),
			HalfOpenJitter: time.Duration(1<<63 - 1)}}
		base := newFakeHosts(status(500))
		c, tr := client(t, base, cfg)
		start := time.Now()
		for _, tc := range []struct {
			host   string
			reason Reason
			setup  func()
		}{
			{"open.test", ReasonManual, func() { tr.Open("open.test", time.Duration(1<<63-1), "") }},
			{"trip.test", ReasonBreakerOpen, func() { get(t, c, "", "https://trip.test/") }},
			{"ra.test", ReasonRetryAfter, func() {
				base.set(status(429, "Retry-After", "99999999999999999999"))
				get(t, c, "", "https://ra.test/")
			}},
		} {
			tc.setup()
			oe := mustReject(t, do(t, c, "", "https://"+tc.host+"/").err, tc.reason)
			if want := start.Add(MaxOpen); !oe.Until.Equal(want) {
				t.Errorf("%s: until %v, want now + 10 years (%v)", tc.host, oe.Until, want)
			}
		}
	})
}
