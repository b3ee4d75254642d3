package hostbreaker

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"
)

// logBuffer is a slog handler's output that tests read.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) count(s string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return strings.Count(b.buf.String(), s)
}

func (b *logBuffer) logger() *slog.Logger { return slog.New(slog.NewTextHandler(b, nil)) }

// hang is a base handler that waits until the request's context is done.
func hang(req *http.Request) (*http.Response, error) {
	<-req.Context().Done()
	return nil, req.Context().Err()
}

type timeoutError struct{}

func (timeoutError) Error() string   { return "i/o timeout" }
func (timeoutError) Timeout() bool   { return true }
func (timeoutError) Temporary() bool { return true }

var _ net.Error = timeoutError{}

// Item 1: a timeout is a failure, whichever timer fires; fail_max of them
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

// Item 2: a base that returns (nil, nil) gives its half-open slot back and
// the caller an error.
func TestNilResponseAndNilError(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		base := newFakeHosts(status(500))
		c, tr := client(t, base, quick(1, 10*time.Second))
		get(t, c, "", "https://a.test/")
		mustReject(t, do(t, c, "", "https://a.test/").err, ReasonBreakerOpen)
		time.Sleep(10 * time.Second)
		base.set(func(*http.Request) (*http.Response, error) { return nil, nil })
		for range 3 { // each probe gives its slot back: never half-open-full
			resp, err := tr.RoundTrip(mustRequest(t, "https://a.test/"))
			if resp != nil || err == nil || errors.Is(err, ErrOpen) || !strings.Contains(err.Error(), "nil *Response") {
				t.Fatalf("RoundTrip = %v, %v", resp, err)
			}
		}
		base.set(status(200))
		mustPass(t, do(t, c, "", "https://a.test/"), 200)
		mustState(t, tr, "a.test", "", StateClosed)
	})
}

// Item 3: a usable Retry-After is obeyed exactly and counts neither for the
// breaker nor for the rolling window.
func TestRetryAfterIsNeutralAndExact(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cfg := quick(5, time.Minute)
		cfg.Rolling = Rolling{Enabled: true, ThresholdFailures: 3, Window: time.Minute, Cooldown: time.Hour}
		base := newFakeHosts(status(429, "Retry-After", "1"))
		c, tr := client(t, base, cfg)
		for i := range 8 {
			mustPass(t, do(t, c, "", "https://a.test/"), 429)
			time.Sleep(time.Second - time.Millisecond)
			mustReject(t, do(t, c, "", "https://a.test/").err, ReasonRetryAfter)
			time.Sleep(time.Millisecond) // exactly one second after the 429
			if i == 7 {
				base.set(status(200))
			}
		}
		mustPass(t, do(t, c, "", "https://a.test/"), 200)
		if s := stateOf(t, tr, "a.test", ""); s.State != StateClosed || s.Failures != 0 || s.Neutral != 8 {
			t.Fatalf("status = %+v", s)
		}
		// Without a usable Retry-After, the status lists decide: 503 fails,
		// for the rolling window too.
		base.set(status(503, "Retry-After", "soon"))
		for range 3 {
			mustPass(t, do(t, c, "", "https://b.test/"), 503)
		}
		mustReject(t, do(t, c, "", "https://b.test/").err, ReasonRollingWindow)
		if s := stateOf(t, tr, "b.test", ""); s.Failures != 3 {
			t.Fatalf("status = %+v", s)
		}
	})
}

// Item 5: host states held for cooldowns only are bounded, the cooldown
// that ends soonest goes first, counted and logged, and expired ones go.
func TestCooldownOnlyHostsAreBounded(t *testing.T) {
	url := testRedisURL(t)
	s, err := OpenStore(url)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	now := time.Now()
	const n = 5000
	for i := range n {
		r := Record{Host: fmt.Sprintf("h%d.test", i), Reason: ReasonRetryAfter,
			Until: now.Add(time.Hour + time.Duration(i)*time.Second), At: now, Source: "other"}
		if err := s.Put(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	var logs logBuffer
	tr, err := NewTransport(newFakeHosts(status(200)), WithStore(s), WithLogger(logs.logger()),
		WithConfig(Config{MaxHosts: 10, Store: StoreConfig{PollInterval: time.Hour}}))
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	bound := tr.reg.maxBare
	if bound != minBareHosts {
		t.Fatalf("bound = %d, want %d", bound, minBareHosts)
	}
	tr.reg.mu.Lock()
	nhosts, nbare := tr.reg.nhosts, tr.reg.nbare
	tr.reg.mu.Unlock()
	if nhosts != bound || nbare != bound {
		t.Fatalf("host states = %d (%d bare), want %d", nhosts, nbare, bound)
	}
	if got := tr.cooldownsDropped.Load(); got != n-uint64(bound) {
		t.Fatalf("dropped = %d, want %d", got, n-bound)
	}
	c := &http.Client{Transport: tr}
	// The latest-ending cooldowns are kept, the soonest-ending dropped.
	_, err = c.Get(fmt.Sprintf("https://h%d.test/", n-1))
	mustReject(t, err, ReasonRetryAfter)
	if _, err := c.Get("https://h0.test/"); err != nil {
		t.Fatalf("h0 (soonest, dropped): %v", err)
	}
	tr.Close()
	if logs.count("dropped the cooldowns that end soonest") != 1 {
		t.Errorf("no log of the dropped cooldowns")
	}
}

func TestExpiredCooldownOnlyHostsAreDropped(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tr, err := NewTransport(newFakeHosts(status(200)), WithConfig(Config{MaxHosts: 10}))
		if err != nil {
			t.Fatal(err)
		}
		defer tr.Close()
		for i := range 100 {
			if err := tr.Open(fmt.Sprintf("h%d.test", i), time.Second, ""); err != nil {
				t.Fatal(err)
			}
		}
		time.Sleep(bareSweepInterval + time.Second)
		synctest.Wait()
		tr.reg.mu.Lock()
		defer tr.reg.mu.Unlock()
		if tr.reg.nhosts != 0 || tr.reg.nbare != 0 {
			t.Fatalf("host states = %d (%d bare), want 0", tr.reg.nhosts, tr.reg.nbare)
		}
	})
}

// Item 5: distinct roles do not grow memory past the bound: entries,
// interned names and cached policies.
func TestManyRolesStayBounded(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cfg := Config{MaxHosts: 100, Defaults: Policy{Roles: map[string]Policy{RoleMetadata: {FailMax: 2}}}}
		c, tr := client(t, newFakeHosts(status(200)), cfg)
		for i := range 20000 {
			mustPass(t, do(t, c, fmt.Sprintf("role-%d", i), "https://a.test/"), 200)
		}
		mustPass(t, do(t, c, RoleMetadata, "https://a.test/"), 200)
		tr.reg.mu.Lock()
		n, roles := tr.reg.n, len(tr.reg.roles)
		tr.reg.mu.Unlock()
		if n > 100 || roles > 100 {
			t.Fatalf("entries %d, interned roles %d; want at most 100", n, roles)
		}
		cached := 0
		tr.policies.Load().cache.Range(func(any, any) bool { cached++; return true })
		if cached > 2 { // the unnamed roles share one, metadata has its own
			t.Fatalf("cached policies = %d, want at most 2", cached)
		}
	})
}

// Item 6: counts have upper bounds; errors name the key and the line.
func TestCountUpperBounds(t *testing.T) {
	for _, tc := range []struct{ toml, key string }{
		{"[defaults]\nfail_max = 1073741824\n", "defaults.fail_max"},
		{"[defaults]\nsuccess_threshold = 1001\n", "defaults.success_threshold"},
		{"[hosts.\"a.test\".roles.x]\ntrial_calls = 1001\n", `hosts."a.test".roles.x.trial_calls`},
		{"[rolling]\nthreshold_failures = 5000\n", "rolling.threshold_failures"},
	} {
		_, err := ParseConfig([]byte(tc.toml))
		var ce *ConfigError
		if !errors.As(err, &ce) || ce.Key != tc.key || ce.Line != 2 || !strings.Contains(ce.Msg, "at most 1000") {
			t.Errorf("%q: err = %v, want %s at line 2", tc.toml, err, tc.key)
		}
	}
	if err := (Config{Defaults: Policy{FailMax: 1 << 30}}).Validate(); err == nil {
		t.Error("FailMax 2^30 accepted")
	}
	if err := (Config{Defaults: Policy{FailMax: 1000, TrialCalls: 1000, SuccessThreshold: 1000}}).Validate(); err != nil {
		t.Errorf("1000 refused: %v", err)
	}
}

// Item 7: failures age. An entry whose last failure is older than its
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

// Item 7: a registry full of failing entries makes new hosts cheap, not a
// sweep under the registry lock each.
func TestFullRegistryNewHostsAreCheap(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const n = 10000
		var failing atomic.Bool
		failing.Store(true)
		ok, fail := cannedBase(200), cannedBase(500)
		base := roundTripperFunc(func(req *http.Request) (*http.Response, error) {
			if failing.Load() {
				return fail(req)
			}
			return ok(req)
		})
		tr, err := NewTransport(base, WithConfig(Config{MaxHosts: n, Defaults: Policy{ResetTimeout: time.Hour}}))
		if err != nil {
			t.Fatal(err)
		}
		defer tr.Close()
		for i := range n {
			tr.RoundTrip(mustRequest(t, fmt.Sprintf("https://h%d.test/", i)))
		}
		failing.Store(false)
		reqs := make([]*http.Request, 200)
		for i := range reqs {
			reqs[i] = mustRequest(t, fmt.Sprintf("https://new%d.test/", i))
		}
		tr.RoundTrip(reqs[0]) // the one sweep
		i := 1
		allocs := testing.AllocsPerRun(100, func() {
			tr.RoundTrip(reqs[i])
			i++
		})
		if allocs > 2 {
			t.Fatalf("a new host on a full registry costs %.0f allocations, want at most 2", allocs)
		}
		if got := tr.untracked.Load(); got != 102 {
			t.Fatalf("untracked = %d, want 102", got)
		}
	})
}

// Item 8: with the registry full of protected entries, a host in cooldown
// is still rejected, and a Retry-After still cools a host; requests sent
// without a breaker are counted and logged, rate-limited.
func TestFullRegistryStillObeysCooldowns(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var logs logBuffer
		base := newFakeHosts(status(500))
		tr, err := NewTransport(base, WithLogger(logs.logger()),
			WithConfig(Config{MaxHosts: 2, Defaults: Policy{FailMax: 1, ResetTimeout: time.Hour}}))
		if err != nil {
			t.Fatal(err)
		}
		defer tr.Close()
		c := &http.Client{Transport: tr}
		get(t, c, "", "https://a.test/")
		get(t, c, "", "https://b.test/")
		if err := tr.Open("x.test", time.Minute, "maintenance"); err != nil {
			t.Fatal(err)
		}
		mustReject(t, do(t, c, "", "https://x.test/").err, ReasonManual)
		base.set(status(429, "Retry-After", "30"))
		mustPass(t, do(t, c, "", "https://y.test/"), 429)
		mustReject(t, do(t, c, "", "https://y.test/").err, ReasonRetryAfter)
		base.set(status(200))
		for range 10 {
			mustPass(t, do(t, c, "", "https://z.test/"), 200)
		}
		if got := tr.untracked.Load(); got != 11 {
			t.Fatalf("untracked = %d, want 11", got)
		}
		synctest.Wait()
		if got := logs.count("registry full"); got != 1 {
			t.Fatalf("logged %d times, want 1", got)
		}
	})
}

// Item 9: a 429 with Retry-After that arrives after its entry was evicted
// still cools the host.
func TestEvictedInFlightRequestStillCools(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		release := make(chan struct{})
		base := newFakeHosts(func(req *http.Request) (*http.Response, error) {
			if req.URL.Host == "slow.test" {
				<-release
				return status(429, "Retry-After", "60")(req)
			}
			return status(200)(req)
		})
		c, tr := client(t, base, Config{MaxHosts: 1})
		done := make(chan result)
		go func() { done <- do(t, c, "", "https://slow.test/") }()
		synctest.Wait() // slow.test is in flight
		mustPass(t, do(t, c, "", "https://other.test/"), 200)
		if tr.reg.lookup("slow.test", "") != nil {
			t.Fatal("slow.test was not evicted")
		}
		close(release)
		mustPass(t, <-done, 429)
		mustReject(t, do(t, c, "", "https://slow.test/").err, ReasonRetryAfter)
	})
}

// Item 11: a reset read from the store clears only what was decided at or
// before it: a local cooldown set after the reset survives the next poll.
func TestRemoteResetKeepsNewerLocalCooldown(t *testing.T) {
	// bbolt, polled only when the test says: no change signal reaches t2
	// before its cooldown is set.
	path := filepath.Join(t.TempDir(), "hb.db")
	cfg := Config{Store: StoreConfig{URL: path, PollInterval: time.Hour}}
	t1, err := NewTransport(newFakeHosts(status(200)), WithConfig(cfg))
	if err != nil {
		t.Fatal(err)
	}
	defer t1.Close()
	t2, err := NewTransport(newFakeHosts(status(429, "Retry-After", "600")), WithConfig(cfg))
	if err != nil {
		t.Fatal(err)
	}
	defer t2.Close()
	ctx := context.Background()
	resetAt := func() time.Time { // the reset marker's At, once written
		s, err := OpenStore(path)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		recs, _ := s.Records(ctx)
		for _, r := range recs {
			if r.Reason == ReasonReset {
				return r.At
			}
		}
		return time.Time{}
	}
	waitReset := func(after time.Time) {
		t.Helper()
		for deadline := time.Now().Add(30 * time.Second); !resetAt().After(after); time.Sleep(10 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatal("the reset never reached the store")
			}
		}
	}
	if err := t1.Reset("a.test"); err != nil {
		t.Fatal(err)
	}
	waitReset(time.Time{})
	first := resetAt()
	c2 := &http.Client{Transport: t2}
	mustPass(t, do(t, c2, "", "https://a.test/"), 429) // decided after the reset
	if err := t2.pull(ctx); err != nil {
		t.Fatal(err)
	}
	mustReject(t, do(t, c2, "", "https://a.test/").err, ReasonRetryAfter)
	// A reset decided after the cooldown clears it.
	if err := t1.Reset("a.test"); err != nil {
		t.Fatal(err)
	}
	waitReset(first)
	if err := t2.pull(ctx); err != nil {
		t.Fatal(err)
	}
	if r := do(t, c2, "", "https://a.test/"); r.err != nil {
		t.Fatalf("after a newer reset: %v", r.err)
	}
}

// Item 14: once UpdateHostPolicy returns, every entry of the host, old or
// created concurrently, uses the new policy.
func TestUpdateHostPolicyIsAtomicWithNewEntries(t *testing.T) {
	tr, err := NewTransport(newFakeHosts(status(200)), WithConfig(Config{MaxHosts: 2000}))
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	var stop atomic.Bool
	var wg sync.WaitGroup
	for g := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; !stop.Load(); i++ {
				req := mustRequest(t, "https://a.test/")
				req = req.WithContext(WithRole(req.Context(), fmt.Sprintf("r%d-%d", g, i)))
				tr.RoundTrip(req)
			}
		}()
	}
	defer func() { stop.Store(true); wg.Wait() }()
	for i := 2; i < 300; i++ {
		if err := tr.UpdateHostPolicy("a.test", Policy{FailMax: i}); err != nil {
			t.Fatal(err)
		}
		_, entries := tr.reg.hostEntries("a.test")
		for _, e := range entries {
			if got := e.pol.Load().FailMax; got != i {
				t.Fatalf("update %d: entry %q has fail_max %d", i, e.role, got)
			}
		}
	}
}

// Items 15 and 16: an update applies to exactly the entries that the
// config key would match, old and new; wildcards work; errors are
// *ConfigError values.
func TestUpdateHostPolicyMatchesLikeConfigKeys(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cfg := Config{Hosts: map[string]Policy{"c.test:8443": {FailMax: 7}}}
		c, tr := client(t, newFakeHosts(status(200)), cfg)
		hosts := []string{"a.test", "a.test:8080", "b.a.test", "c.test", "c.test:8443", "x.example.org", "example.org"}
		for _, h := range hosts {
			mustPass(t, do(t, c, "", "https://"+h+"/"), 200)
		}
		if err := tr.UpdateHostPolicy("A.test.", Policy{FailMax: 2}); err != nil {
			t.Fatal(err)
		}
		if err := tr.UpdateHostPolicy("c.test", Policy{FailMax: 3}); err != nil {
			t.Fatal(err)
		}
		if err := tr.UpdateHostPolicy("*.example.org", Policy{FailMax: 4}); err != nil {
			t.Fatal(err)
		}
		mustPass(t, do(t, c, RoleArtifact, "https://y.example.org/"), 200) // created after
		want := map[string]int{"a.test": 2, "a.test:8080": 2, "b.a.test": 5, "c.test": 3, "c.test:8443": 7,
			"x.example.org": 4, "y.example.org": 4, "example.org": 5}
		for h, fm := range want {
			_, entries := tr.reg.hostEntries(h)
			if len(entries) == 0 {
				t.Fatalf("no entry for %s", h)
			}
			for _, e := range entries {
				if got := e.pol.Load().FailMax; got != fm {
					t.Errorf("%s %q: fail_max %d, want %d", h, e.role, got, fm)
				}
			}
		}
		for _, tc := range []struct {
			host string
			p    Policy
		}{
			{"", Policy{FailMax: 1}},
			{"*.", Policy{FailMax: 1}},
			{"*.a.test:80", Policy{FailMax: 1}},
			{"a b.test", Policy{FailMax: 1}},
			{"a.test", Policy{FailMax: -1}},
			{"a.test", Policy{FailMax: 5000}},
			{"*.example.org", Policy{FailureStatuses: []int{404}}}, // 404 is also neutral
		} {
			var ce *ConfigError
			if err := tr.UpdateHostPolicy(tc.host, tc.p); !errors.As(err, &ce) {
				t.Errorf("UpdateHostPolicy(%q, %+v) = %v, want a *ConfigError", tc.host, tc.p, err)
			}
		}
	})
}

// Item 17: Open and Reset report a bad host.
func TestOpenAndResetErrors(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		_, tr := client(t, newFakeHosts(status(200)), Config{})
		for _, h := range []string{"", "*.example.org", "http://[::1", "a b.test", "https://"} {
			if err := tr.Open(h, time.Minute, ""); err == nil {
				t.Errorf("Open(%q) = nil", h)
			}
			if err := tr.Reset(h); err == nil {
				t.Errorf("Reset(%q) = nil", h)
			}
		}
		if err := tr.Open("a.test", 0, ""); err == nil {
			t.Error("Open for 0 = nil")
		}
		if err := tr.Open("https://user@A.test:443/x", time.Minute, ""); err != nil {
			t.Errorf("Open(URL) = %v", err)
		}
		mustState(t, tr, "a.test", "", StateOpen)
		if err := tr.Reset("a.test"); err != nil {
			t.Error(err)
		}
	})
}

// Item 18: IPv6 zone literals work as in net/http.
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

type idleCloser struct {
	roundTripperFunc
	closed atomic.Int32
}

func (c *idleCloser) CloseIdleConnections() { c.closed.Add(1) }

// Item 20.
func TestCloseIdleConnectionsForwards(t *testing.T) {
	base := &idleCloser{roundTripperFunc: cannedBase(200)}
	tr, err := NewTransport(base)
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	(&http.Client{Transport: tr}).CloseIdleConnections()
	if base.closed.Load() != 1 {
		t.Fatal("CloseIdleConnections not forwarded")
	}
	tr2, _ := NewTransport(cannedBase(200)) // a base without it: no panic
	defer tr2.Close()
	tr2.CloseIdleConnections()
}

// Item 24: ParseConfig checks [store] url and names its line.
func TestParseConfigChecksStoreURL(t *testing.T) {
	for _, u := range []string{"::::not a url", "ftp://x/y", "bolt://host/x.db", "redis://127.0.0.1:6379/0?prefix="} {
		_, err := ParseConfig([]byte("[store]\nshare_trips = true\nurl = \"" + u + "\"\n"))
		var ce *ConfigError
		if !errors.As(err, &ce) || ce.Key != "store.url" || ce.Line != 3 {
			t.Errorf("url %q: err = %v, want store.url at line 3", u, err)
		}
	}
	if _, err := ParseConfig([]byte("[store]\nurl = \"/var/lib/x/hb.db\"\nrequired = true\n")); err != nil {
		t.Errorf("valid: %v", err)
	}
}

// Item 25: a store that cannot be reached is visible without a logger, and
// required makes NewTransport fail.
func TestStoreErrAndRequired(t *testing.T) {
	dead := "redis://127.0.0.1:1/0?prefix=dead:"
	if _, err := NewTransport(nil, WithConfig(Config{Store: StoreConfig{URL: dead, Required: true}})); err == nil {
		t.Fatal("required store that cannot be read: NewTransport succeeded")
	}
	tr, err := NewTransport(newFakeHosts(status(200)), WithConfig(Config{Store: StoreConfig{URL: dead}}))
	if err != nil {
		t.Fatal(err)
	}
	if tr.StoreErr() == nil {
		t.Error("StoreErr = nil with a dead store")
	}
	mustPass(t, do(t, &http.Client{Transport: tr}, "", "https://a.test/"), 200)
	tr.Close()

	missing := t.TempDir() + "/no/such/dir/hb.db"
	tr, err = NewTransport(newFakeHosts(status(200)), WithConfig(Config{Store: StoreConfig{URL: missing}}))
	if err != nil {
		t.Fatal(err)
	}
	if err := tr.StoreErr(); err == nil || !strings.Contains(err.Error(), "no/such/dir") {
		t.Errorf("StoreErr = %v", err)
	}
	tr.Close()

	tr, err = NewTransport(newFakeHosts(status(200)), WithConfig(Config{Store: StoreConfig{URL: testRedisURL(t), Required: true}}))
	if err != nil {
		t.Fatal(err)
	}
	if err := tr.StoreErr(); err != nil {
		t.Errorf("StoreErr = %v with a live store", err)
	}
	tr.Close()
}

// Item 28: a half-open probe that has not completed after reset_timeout
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

// Item 10: a shared trip of the no-role breaker and a host-wide
// Retry-After cooldown are different records, through the queue and the
// store, and both reach another process.
func TestNoRoleTripKeepsHostCooldown(t *testing.T) {
	path := filepath.Join(t.TempDir(), "hb.db")
	cfg := Config{Defaults: Policy{FailMax: 1, ResetTimeout: time.Hour},
		Store: StoreConfig{URL: path, PollInterval: time.Hour, ShareTrips: true}}
	t1, err := NewTransport(newFakeHosts(status(429, "Retry-After", "600")), WithConfig(cfg))
	if err != nil {
		t.Fatal(err)
	}
	t2, err := NewTransport(newFakeHosts(status(500)), WithConfig(cfg))
	if err != nil {
		t.Fatal(err)
	}
	mustPass(t, do(t, &http.Client{Transport: t1}, "", "https://a.test/"), 429)
	mustPass(t, do(t, &http.Client{Transport: t2}, "", "https://a.test/"), 500) // trips t2's "" breaker
	t1.Close()
	t2.Close() // both flush
	s, err := OpenStore(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	recs, err := s.Records(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var cooldown, trip bool
	for _, r := range recs {
		cooldown = cooldown || r.Host == "a.test" && r.Role == "" && r.Reason == ReasonRetryAfter
		trip = trip || r.Host == "a.test" && r.Role == "" && r.Reason == ReasonBreakerOpen
	}
	if !cooldown || !trip {
		t.Fatalf("records = %+v, want the host's retry-after cooldown and the no-role trip", recs)
	}
	t3, err := NewTransport(newFakeHosts(status(200)), WithConfig(cfg))
	if err != nil {
		t.Fatal(err)
	}
	defer t3.Close()
	c3 := &http.Client{Transport: t3}
	mustReject(t, do(t, c3, RoleArtifact, "https://a.test/").err, ReasonRetryAfter) // host-wide
	if err := t3.Reset("a.test"); err != nil {
		t.Fatal(err)
	}
}

// The registry's counts and bounds hold under concurrent traffic that
// creates, evicts, cools and resets hosts, with policy updates alongside.
func TestRegistryInvariantsUnderConcurrency(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var n atomic.Int64
		base := roundTripperFunc(func(req *http.Request) (*http.Response, error) {
			switch n.Add(1) % 7 {
			case 0:
				return nil, timeoutError{}
			case 1:
				return status(429, "Retry-After", "2")(req)
			case 2, 3:
				return status(500)(req)
			}
			return status(200)(req)
		})
		tr, err := NewTransport(base, WithConfig(Config{MaxHosts: 4,
			Defaults: Policy{FailMax: 2, ResetTimeout: 3 * time.Second, TrialCalls: 2}}))
		if err != nil {
			t.Fatal(err)
		}
		defer tr.Close()
		var wg sync.WaitGroup
		for g := range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range 300 {
					host := fmt.Sprintf("h%d.test", (g*7+i)%20)
					req := mustRequest(t, "https://"+host+"/")
					req = req.WithContext(WithRole(req.Context(), fmt.Sprintf("r%d", i%3)))
					tr.RoundTrip(req)
					switch i % 50 {
					case 10:
						tr.Open(host, time.Second, "")
					case 20:
						tr.Reset(host)
					case 30:
						tr.UpdateHostPolicy(host, Policy{FailMax: 1 + i%3})
					case 40:
						tr.UpdateHostPolicy("*.test", Policy{TrialCalls: 1 + i%2})
					}
					time.Sleep(100 * time.Millisecond)
				}
			}()
		}
		wg.Wait()
		r := tr.reg
		r.mu.Lock()
		defer r.mu.Unlock()
		hosts, bare, entries := 0, 0, 0
		r.tab.Load().each(func(h *hostState) {
			hosts++
			if h.bare() {
				bare++
			}
			h.each(func(e *entry) {
				entries++
				if e.evicted() || e.host != h {
					t.Errorf("entry (%s, %q) listed but evicted or of another host", h.name, e.role)
				}
			})
		})
		if hosts != r.nhosts || bare != r.nbare || entries != r.n {
			t.Fatalf("counted hosts %d, bare %d, entries %d; registry says %d, %d, %d", hosts, bare, entries, r.nhosts, r.nbare, r.n)
		}
		if r.n > r.max || r.nbare > r.maxBare || len(r.roles) > r.max {
			t.Fatalf("bounds: %d entries (max %d), %d bare (max %d), %d roles", r.n, r.max, r.nbare, r.maxBare, len(r.roles))
		}
	})
}
