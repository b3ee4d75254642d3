package hostbreaker

// Tests of policies: resolution from the defaults, hosts, wildcards and
// roles, and the live changes of a running Transport (UpdateHostPolicy,
// Policy).

import (
	"errors"
	"net/http"
	"slices"
	"testing"
	"testing/synctest"
	"time"
)

func mustCompile(t *testing.T, c Config) *policyTable {
	t.Helper()
	pt, err := compilePolicies(c)
	if err != nil {
		t.Fatalf("compilePolicies: %v", err)
	}
	return pt
}

func mustResolve(t *testing.T, pt *policyTable, host, role string) *resolved {
	t.Helper()
	r, err := pt.resolve(host, role)
	if err != nil {
		t.Fatalf("resolve(%q, %q): %v", host, role, err)
	}
	return r
}

func TestResolveInheritance(t *testing.T) {
	c, err := ParseConfig([]byte(exampleTOML + `
[defaults.roles.artifact]
success_threshold = 4
reset_timeout = "5s"
[hosts."*.b.example.org"]
fail_max = 9
[hosts."a.example.org"]
trial_calls = 7
[hosts."api.crossref.org:8443"]
fail_max = 11
[hosts."api.crossref.org".roles.metadata]
reset_timeout = "2s"
`))
	if err != nil {
		t.Fatalf("ParseConfig: %v", err)
	}
	pt := mustCompile(t, c)
	type want struct {
		failMax, successThreshold, trialCalls int
		resetTimeout                          time.Duration
	}
	def := want{5, 1, 1, 60 * time.Second}
	tests := []struct {
		host, role string
		want       want
	}{
		{"other.com", "", def},
		{"other.com", "unknown-role", def},
		{"other.com", "metadata", want{3, 1, 1, 60 * time.Second}},       // defaults.roles
		{"other.com", "artifact", want{5, 4, 1, 5 * time.Second}},        // defaults.roles
		{"api.crossref.org", "", want{6, 1, 1, 60 * time.Second}},        // host beats defaults
		{"api.crossref.org", "metadata", want{6, 1, 1, 2 * time.Second}}, // host beats defaults.roles; host.roles on top
		{"api.crossref.org", "artifact", want{6, 4, 2, 5 * time.Second}}, // all four levels
		{"api.crossref.org:8443", "", want{11, 1, 1, 60 * time.Second}},  // exact with port
		{"api.crossref.org:9000", "", want{6, 1, 1, 60 * time.Second}},   // port falls back to the bare entry
		{"api.crossref.org:9000", "artifact", want{6, 4, 2, 5 * time.Second}},
		{"a.example.org", "", want{5, 1, 7, 60 * time.Second}}, // exact beats wildcard
		{"x.example.org", "", want{2, 1, 1, 60 * time.Second}},
		{"x.y.example.org", "metadata", want{2, 1, 1, 60 * time.Second}}, // wildcard beats defaults.roles
		{"x.example.org:8080", "", want{2, 1, 1, 60 * time.Second}},
		{"x.b.example.org", "", want{9, 1, 1, 60 * time.Second}},   // longest wildcard wins
		{"x.y.b.example.org", "", want{9, 1, 1, 60 * time.Second}}, // longest wildcard wins
		{"b.example.org", "", want{2, 1, 1, 60 * time.Second}},     // *.b.example.org does not match b.example.org
		{"example.org", "", def},                                   // *.example.org does not match example.org
		{"notexample.org", "", def},
		{"example.org.evil.com", "", def},
	}
	for _, tc := range tests {
		r := mustResolve(t, pt, tc.host, tc.role)
		got := want{r.FailMax, r.SuccessThreshold, r.TrialCalls, r.ResetTimeout}
		if got != tc.want {
			t.Errorf("resolve(%q, %q) = %+v, want %+v", tc.host, tc.role, got, tc.want)
		}
		if r.Roles != nil {
			t.Errorf("resolve(%q, %q).Roles = %v, want nil", tc.host, tc.role, r.Roles)
		}
		if r.RetryAfterCap != 15*time.Minute || r.HalfOpenJitter != 150*time.Millisecond ||
			!slices.Equal(r.FailureStatuses, wantFailure) || !slices.Equal(r.NeutralStatuses, wantNeutral) {
			t.Errorf("resolve(%q, %q) lost inherited fields: %+v", tc.host, tc.role, r.Policy)
		}
	}
}

func TestResolveNormalizedHostKeys(t *testing.T) {
	c := Config{Hosts: map[string]Policy{
		"API.Crossref.org.": {FailMax: 6},
		"*.EXAMPLE.org":     {FailMax: 2},
		"::1":               {FailMax: 8},
		"bücher.example":    {FailMax: 4},
	}}
	if err := c.Validate(); err != nil {
		t.Fatalf("Validate: %v", err)
	}
	pt := mustCompile(t, c)
	for _, tc := range []struct {
		host string
		want int
	}{
		{"api.crossref.org", 6},
		{"api.crossref.org:8443", 6},
		{"a.example.org", 2},
		{"a.b.example.org", 2},
		{"example.org", 5},
		{"[::1]:8080", 8}, // falls back to the "::1" entry
		{"[::1]", 8},
		{"[::2]", 5},
		{"xn--bcher-kva.example", 4},
	} {
		if got := mustResolve(t, pt, tc.host, "").FailMax; got != tc.want {
			t.Errorf("resolve(%q).FailMax = %d, want %d", tc.host, got, tc.want)
		}
	}
}

// A bracketed IPv6 host key with a port (see TestNormalizeHost).
func TestResolveIPv6PortHostKey(t *testing.T) {
	c := Config{Hosts: map[string]Policy{"[::1]:8080": {FailMax: 8}, "[::1]": {FailMax: 7}}}
	pt, err := compilePolicies(c)
	if err != nil {
		t.Fatalf("compilePolicies: %v", err)
	}
	for _, tc := range []struct {
		host string
		want int
	}{{"[::1]:8080", 8}, {"[::1]:9090", 7}, {"[::1]", 7}} {
		if got := mustResolve(t, pt, tc.host, "").FailMax; got != tc.want {
			t.Errorf("resolve(%q).FailMax = %d, want %d", tc.host, got, tc.want)
		}
	}
}

func TestResolveSharesPointers(t *testing.T) {
	c, err := ParseConfig([]byte(exampleTOML))
	if err != nil {
		t.Fatal(err)
	}
	pt := mustCompile(t, c)
	same := [][]string{
		{"a.example.org", "b.example.org", "a.b.example.org", "c.example.org:8443"},
		{"api.crossref.org", "api.crossref.org:8443", "api.crossref.org:1"},
		{"one.com", "two.com", "example.org", "[::1]:80"},
	}
	for _, role := range []string{"", "metadata", "artifact", "other"} {
		var firsts []*resolved
		for _, group := range same {
			first := mustResolve(t, pt, group[0], role)
			for _, h := range group[1:] {
				if r := mustResolve(t, pt, h, role); r != first {
					t.Errorf("role %q: resolve(%q) and resolve(%q) differ: %p vs %p", role, group[0], h, first, r)
				}
			}
			firsts = append(firsts, first)
		}
		if firsts[0] == firsts[1] || firsts[1] == firsts[2] || firsts[0] == firsts[2] {
			t.Errorf("role %q: different entries share a *resolved", role)
		}
	}
	if mustResolve(t, pt, "one.com", "") == mustResolve(t, pt, "one.com", "metadata") {
		t.Error("different roles share a *resolved")
	}
}

func checkResolved(t *testing.T, host, role string, r *resolved) {
	t.Helper()
	p := r.Policy
	if p.FailMax < 1 || p.ResetTimeout <= 0 || p.SuccessThreshold < 1 || p.TrialCalls < 1 ||
		p.RetryAfterCap < 0 || p.HalfOpenJitter < 0 || p.Roles != nil {
		t.Fatalf("resolve(%q, %q) = %+v: not fully set", host, role, p)
	}
	for _, c := range p.FailureStatuses {
		if c < 100 || c > 599 || slices.Contains(p.NeutralStatuses, c) {
			t.Fatalf("resolve(%q, %q): bad failure status %d", host, role, c)
		}
		if r.statuses.classify(c) != outcomeFailure {
			t.Fatalf("resolve(%q, %q): %d not classified as failure", host, role, c)
		}
	}
	for _, c := range p.NeutralStatuses {
		if c < 100 || c > 599 {
			t.Fatalf("resolve(%q, %q): bad neutral status %d", host, role, c)
		}
		if r.statuses.classify(c) != outcomeNeutral {
			t.Fatalf("resolve(%q, %q): %d not classified as neutral", host, role, c)
		}
	}
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

func TestTransportPolicy(t *testing.T) {
	cfg := Config{Defaults: Policy{FailMax: 4, Roles: map[string]Policy{RoleMetadata: {TrialCalls: 2}}},
		Hosts: map[string]Policy{"a.test": {ResetTimeout: 30 * time.Second}}}
	tr, err := NewTransport(nil, WithConfig(cfg))
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	p, err := tr.Policy("https://A.test:443/x", RoleMetadata)
	if err != nil {
		t.Fatal(err)
	}
	if p.FailMax != 4 || p.ResetTimeout != 30*time.Second || p.TrialCalls != 2 || p.SuccessThreshold != 1 ||
		p.Roles != nil || len(p.FailureStatuses) == 0 {
		t.Fatalf("Policy = %+v", p)
	}
	if err := tr.UpdateHostPolicy("a.test", Policy{FailMax: 7}); err != nil {
		t.Fatal(err)
	}
	if p, _ := tr.Policy("a.test", ""); p.FailMax != 7 || p.ResetTimeout != 30*time.Second {
		t.Fatalf("after UpdateHostPolicy: %+v", p)
	}
	if _, err := tr.Policy("", ""); err == nil {
		t.Fatal("Policy of an empty host: no error")
	}
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

// An update applies to exactly the entries that the
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

// A positive rate or min_rate below minRateBound would overflow the
// limiter's interval (1e9/r ns) and pace nothing: UpdateHostPolicy refuses
// it with a *ConfigError naming the key, and the policy in force stays.
func TestUpdateHostPolicyRateLowerBound(t *testing.T) {
	base := roundTripperFunc(func(r *http.Request) (*http.Response, error) {
		return &http.Response{StatusCode: 200, Header: http.Header{}, Body: http.NoBody, Request: r}, nil
	})
	tr, err := NewTransport(base, WithConfig(Config{Defaults: Policy{Rate: 2}}))
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	for _, tc := range []struct {
		p   Policy
		key string
	}{
		{Policy{Rate: 1e-12}, `hosts."a.test".rate`},
		{Policy{Rate: 0.0009, MinRate: 0.0009}, `hosts."a.test".rate`},
		{Policy{MinRate: 1e-12}, `hosts."a.test".min_rate`},
		{Policy{FailMax: 3, MinRate: 0.0009}, `hosts."a.test".min_rate`},
	} {
		err := tr.UpdateHostPolicy("a.test", tc.p)
		if ce, ok := errors.AsType[*ConfigError](err); !ok || ce.Key != tc.key {
			t.Errorf("UpdateHostPolicy(%+v) = %v, want a *ConfigError for %s", tc.p, err, tc.key)
		}
		if p, err := tr.Policy("a.test", ""); err != nil || p.Rate != 2 || p.MinRate != defaultMinRate || p.FailMax != defaultFailMax {
			t.Errorf("after UpdateHostPolicy(%+v): Policy = %+v, %v; want the configured one", tc.p, p, err)
		}
	}
	if err := tr.UpdateHostPolicy("a.test", Policy{Rate: 0.001}); err != nil {
		t.Fatalf("UpdateHostPolicy at the lower bound: %v", err)
	}
	if p, _ := tr.Policy("a.test", ""); p.Rate != 0.001 {
		t.Errorf("after UpdateHostPolicy: rate %v, want 0.001", p.Rate)
	}
}

// TestRateUnlimitedRoundTrips: Rate has one meaning in Go and in
// Transport.Policy: RateUnlimited for a host without a limit (rate = 0 in
// TOML), so that a Policy read back and given to UpdateHostPolicy keeps the
// host unlimited instead of inheriting the default rate. The other rules
// that are off read back as off the same way.
func TestRateUnlimitedRoundTrips(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c, err := ParseConfig([]byte("[defaults]\nrate = 5\nfailure_rate = 0.5\n[hosts.\"a.test\"]\nrate = 0\nfailure_rate = 0\n"))
		if err != nil {
			t.Fatal(err)
		}
		if got := c.Hosts["a.test"].Rate; got != RateUnlimited {
			t.Fatalf("TOML rate = 0 parsed as %v, want RateUnlimited", got)
		}
		_, tr := client(t, newFakeHosts(status(200)), c)
		p, err := tr.Policy("a.test", "")
		if err != nil {
			t.Fatal(err)
		}
		if p.Rate != RateUnlimited || p.FailureRate != -1 || p.SlowCall != -1 || p.SlowCallRate != -1 {
			t.Fatalf("Policy(a.test) = rate %v, failure_rate %v, slow_call %v, slow_call_rate %v; want RateUnlimited and -1s",
				p.Rate, p.FailureRate, p.SlowCall, p.SlowCallRate)
		}
		if err := tr.UpdateHostPolicy("a.test", Policy{Rate: p.Rate, FailureRate: p.FailureRate}); err != nil {
			t.Fatal(err)
		}
		if q, _ := tr.Policy("a.test", ""); q.Rate != RateUnlimited || q.FailureRate != -1 {
			t.Fatalf("after UpdateHostPolicy with the Policy read back: rate %v, failure_rate %v", q.Rate, q.FailureRate)
		}
		if q, _ := tr.Policy("b.test", ""); q.Rate != 5 || q.FailureRate != 0.5 {
			t.Fatalf("b.test: rate %v, failure_rate %v, want the defaults 5 and 0.5", q.Rate, q.FailureRate)
		}
	})
}
