package hostbreaker

// Tests of host cooldowns: Retry-After and RateLimit-Reset obedience and
// their parsers, the rolling window, and the operators' Open and Reset.

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"testing/synctest"
	"time"
)

// retryNow is a Monday.
var retryNow = time.Date(2024, time.January, 1, 0, 0, 0, 0, time.UTC)

func TestRetryAfterValues(t *testing.T) {
	tests := []struct {
		value string
		want  time.Duration
		ok    bool
	}{
		{"120", 120 * time.Second, true},
		{"1", time.Second, true},
		{"  120  ", 120 * time.Second, true},
		{"\t5\r\n", 5 * time.Second, true},
		{"007", 7 * time.Second, true},
		{"0", 0, false},
		{"000", 0, false},
		{"-5", 0, false},
		{"+5", 0, false},
		{"1.5", 0, false},
		{"1e3", 0, false},
		{"12 34", 0, false},
		{"9223372036", 9223372036 * time.Second, true}, // largest whole second that fits
		{"9223372037", maxDuration, true},
		{"18446744073709551615", maxDuration, true},                 // max uint64
		{"99999999999999999999", maxDuration, true},                 // overflows uint64
		{"Mon, 01 Jan 2024 00:02:00 GMT", 2 * time.Minute, true},    // IMF-fixdate
		{"  Mon, 01 Jan 2024 00:02:00 GMT ", 2 * time.Minute, true}, // with spaces
		{"Monday, 01-Jan-24 00:02:00 GMT", 2 * time.Minute, true},   // RFC 850
		{"Mon Jan  1 00:02:00 2024", 2 * time.Minute, true},         // asctime
		{"Tue, 02 Jan 2024 00:00:00 GMT", 24 * time.Hour, true},     // a day later
		{"Mon, 01 Jan 2024 00:00:01 GMT", time.Second, true},        // just after now
		{"Mon, 01 Jan 2024 00:00:00 GMT", 0, false},                 // exactly now
		{"Sun, 31 Dec 2023 23:59:00 GMT", 0, false},                 // past
		{"Sunday, 31-Dec-23 23:59:00 GMT", 0, false},                // past, RFC 850
		{"Fri, 31 Dec 9999 23:59:59 GMT", maxDuration, true},        // beyond a Duration
		{"Mon, 01 Jan 2024 00:02:00", 0, false},                     // no zone
		{"2024-01-01T00:02:00Z", 0, false},                          // RFC 3339 is not an HTTP-date
		{"soon", 0, false},
		{"garbage, 01 Jan", 0, false},
		{"", 0, false},
		{"   ", 0, false},
	}
	for _, tc := range tests {
		d, ok := retryAfter(tc.value, retryNow)
		if d != tc.want || ok != tc.ok {
			t.Errorf("retryAfter(%q) = %v, %v; want %v, %v", tc.value, d, ok, tc.want, tc.ok)
		}
	}
}

func FuzzRetryAfter(f *testing.F) {
	for _, s := range []string{
		"120", " 120 ", "0", "-5", "1.5", "9223372036", "9223372037", "99999999999999999999",
		"Mon, 01 Jan 2024 00:02:00 GMT", "Monday, 01-Jan-24 00:02:00 GMT", "Mon Jan  1 00:02:00 2024",
		"Sun, 31 Dec 2023 23:59:00 GMT", "Fri, 31 Dec 9999 23:59:59 GMT", "", "garbage",
	} {
		f.Add(s)
	}
	maxSecs := uint64(maxDuration / time.Second)
	f.Fuzz(func(t *testing.T, value string) {
		d, ok := retryAfter(value, retryNow)
		if ok && d <= 0 {
			t.Fatalf("retryAfter(%q) = %v, true: want > 0", value, d)
		}
		if !ok && d != 0 {
			t.Fatalf("retryAfter(%q) = %v, false: want 0", value, d)
		}
		if isDigits(value) {
			n, err := strconv.ParseUint(value, 10, 64)
			switch {
			case err != nil: // too large for a uint64
				if d != maxDuration || !ok {
					t.Fatalf("retryAfter(%q) = %v, %v; want maxDuration, true", value, d, ok)
				}
			case n == 0:
				if ok {
					t.Fatalf("retryAfter(%q) = %v, true; want not ok", value, d)
				}
			case n > maxSecs:
				if d != maxDuration || !ok {
					t.Fatalf("retryAfter(%q) = %v, %v; want maxDuration, true", value, d, ok)
				}
			default:
				if want := time.Duration(n) * time.Second; d != want || !ok {
					t.Fatalf("retryAfter(%q) = %v, %v; want %v, true", value, d, ok, want)
				}
			}
		}
		if tm, err := http.ParseTime(strings.TrimSpace(value)); err == nil && !isDigits(strings.TrimSpace(value)) {
			if want := tm.Sub(retryNow); want > 0 != ok || (ok && d != want) {
				t.Fatalf("retryAfter(%q) = %v, %v; date is %v from now", value, d, ok, want)
			}
		}
	})
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

// A usable Retry-After is obeyed exactly and counts neither for the
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

// A 429 with Retry-After that arrives after its entry was evicted
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

// With the registry full of protected entries, a host in cooldown
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

// Open and Reset report a bad host.
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
