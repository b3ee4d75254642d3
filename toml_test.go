package hostbreaker

// Tests of the TOML configuration: ParseConfig and LoadConfig, each
// section, and the errors that name their key and line.

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// exampleTOML is the full example configuration of the docs.
const exampleTOML = `max_hosts = 10000
[defaults]
fail_max = 5
reset_timeout = "60s"
success_threshold = 1
trial_calls = 1
retry_after_cap = "15m"
half_open_jitter = "150ms"
failure_statuses = [408, 429, 500, 502, 503, 504]
neutral_statuses = [400, 401, 403, 404, 410, 451]
[defaults.roles.metadata]
fail_max = 3
[rolling]
enabled = true
threshold_failures = 3
window = "10s"
cooldown = "30s"
[hosts."api.crossref.org"]
fail_max = 6
[hosts."api.crossref.org".roles.artifact]
trial_calls = 2
[hosts."*.example.org"]
fail_max = 2
[store]
url = "/tmp/x.db"
share_trips = true
poll_interval = "2s"
fleet_start = false
`

func TestParseConfigExample(t *testing.T) {
	c, err := ParseConfig([]byte(exampleTOML))
	if err != nil {
		t.Fatalf("ParseConfig(example): %v", err)
	}
	want := Config{
		MaxHosts: 10000,
		Defaults: Policy{
			FailMax: 5, ResetTimeout: 60 * time.Second, SuccessThreshold: 1, TrialCalls: 1,
			RetryAfterCap: 15 * time.Minute, HalfOpenJitter: 150 * time.Millisecond,
			FailureStatuses: wantFailure, NeutralStatuses: wantNeutral,
			Rate: -1, Burst: 1, MaxWait: 5 * time.Second, Adaptive: ToggleOn, MinRate: 0.5, ThrottleStatuses: []int{429},
			FailureRate: -1, MinRequests: 20, Window: 60 * time.Second, SlowCall: -1, SlowCallRate: -1, Mode: ModeEnforce,
			Roles: map[string]Policy{"metadata": {FailMax: 3}},
		},
		Hosts: map[string]Policy{
			"api.crossref.org": {FailMax: 6, Roles: map[string]Policy{"artifact": {TrialCalls: 2}}},
			"*.example.org":    {FailMax: 2},
		},
		Rolling: Rolling{Enabled: true, ThresholdFailures: 3, Window: 10 * time.Second, Cooldown: 30 * time.Second},
		Store:   StoreConfig{URL: "/tmp/x.db", ShareTrips: true, PollInterval: 2 * time.Second, NoFleetStart: true},
	}
	if !reflect.DeepEqual(c, want) {
		t.Errorf("ParseConfig(example) =\n%+v\nwant\n%+v", c, want)
	}
	if err := c.Validate(); err != nil {
		t.Errorf("Validate: %v", err)
	}
}

func TestParseConfigEmpty(t *testing.T) {
	for _, doc := range []string{"", "\n", "# only a comment\n"} {
		c, err := ParseConfig([]byte(doc))
		if err != nil {
			t.Fatalf("ParseConfig(%q): %v", doc, err)
		}
		if want := DefaultConfig(); !reflect.DeepEqual(c, want) {
			t.Errorf("ParseConfig(%q) = %+v, want DefaultConfig() %+v", doc, c, want)
		}
	}
}

func TestParseConfigAbsentAndExplicitZero(t *testing.T) {
	tests := []struct {
		name  string
		doc   string
		check func(t *testing.T, c Config, r *resolved)
	}{
		{"absent keys keep defaults", "[defaults]\nfail_max = 7\n", func(t *testing.T, c Config, r *resolved) {
			want := builtinPolicy()
			want.FailMax = 7
			if !reflect.DeepEqual(c.Defaults, want) {
				t.Errorf("Defaults = %+v, want %+v", c.Defaults, want)
			}
			want.Rate = 0 // resolved: unlimited is 0, and so are the rules that are off
			want.FailureRate, want.SlowCall, want.SlowCallRate = 0, 0, 0
			want.MaxResetTimeout = want.ResetTimeout // unset: no growth
			if !reflect.DeepEqual(r.Policy, want) {
				t.Errorf("resolved = %+v, want %+v", r.Policy, want)
			}
		}},
		{"half_open_jitter 0s", "[defaults]\nhalf_open_jitter = \"0s\"\n", func(t *testing.T, c Config, r *resolved) {
			if c.Defaults.HalfOpenJitter >= 0 {
				t.Errorf("Defaults.HalfOpenJitter = %v, want negative (explicit zero)", c.Defaults.HalfOpenJitter)
			}
			if r.HalfOpenJitter != 0 {
				t.Errorf("resolved HalfOpenJitter = %v, want 0", r.HalfOpenJitter)
			}
			if r.RetryAfterCap != defaultRetryAfterCap {
				t.Errorf("resolved RetryAfterCap = %v, want default", r.RetryAfterCap)
			}
		}},
		{"retry_after_cap 0s", "[defaults]\nretry_after_cap = \"0s\"\n", func(t *testing.T, c Config, r *resolved) {
			if c.Defaults.RetryAfterCap >= 0 {
				t.Errorf("Defaults.RetryAfterCap = %v, want negative (explicit zero)", c.Defaults.RetryAfterCap)
			}
			if r.RetryAfterCap != 0 {
				t.Errorf("resolved RetryAfterCap = %v, want 0", r.RetryAfterCap)
			}
			if r.HalfOpenJitter != defaultHalfOpenJitter {
				t.Errorf("resolved HalfOpenJitter = %v, want default", r.HalfOpenJitter)
			}
		}},
		{"neutral_statuses empty", "[defaults]\nneutral_statuses = []\n", func(t *testing.T, c Config, r *resolved) {
			if c.Defaults.NeutralStatuses == nil || len(c.Defaults.NeutralStatuses) != 0 {
				t.Errorf("Defaults.NeutralStatuses = %#v, want empty non-nil", c.Defaults.NeutralStatuses)
			}
			if r.NeutralStatuses == nil || len(r.NeutralStatuses) != 0 {
				t.Errorf("resolved NeutralStatuses = %#v, want empty non-nil", r.NeutralStatuses)
			}
			for _, code := range wantNeutral {
				if got := r.statuses.classify(code); got != outcomeSuccess {
					t.Errorf("classify(%d) = %v, want success", code, got)
				}
			}
			if got := r.statuses.classify(503); got != outcomeFailure {
				t.Errorf("classify(503) = %v, want failure", got)
			}
		}},
		{"failure_statuses empty", "[defaults]\nfailure_statuses = []\n", func(t *testing.T, c Config, r *resolved) {
			if c.Defaults.FailureStatuses == nil || len(c.Defaults.FailureStatuses) != 0 {
				t.Errorf("Defaults.FailureStatuses = %#v, want empty non-nil", c.Defaults.FailureStatuses)
			}
			if got := r.statuses.classify(503); got != outcomeSuccess {
				t.Errorf("classify(503) = %v, want success", got)
			}
		}},
		{"host explicit zero jitter overrides default", "[hosts.\"a.com\"]\nhalf_open_jitter = \"0s\"\n", func(t *testing.T, c Config, r *resolved) {
			if r.HalfOpenJitter != defaultHalfOpenJitter {
				t.Errorf("other host HalfOpenJitter = %v, want default", r.HalfOpenJitter)
			}
			pt := mustCompile(t, c)
			if got := mustResolve(t, pt, "a.com", "").HalfOpenJitter; got != 0 {
				t.Errorf("a.com HalfOpenJitter = %v, want 0", got)
			}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := ParseConfig([]byte(tc.doc))
			if err != nil {
				t.Fatalf("ParseConfig: %v", err)
			}
			pt := mustCompile(t, c)
			tc.check(t, c, mustResolve(t, pt, "other.example.net", ""))
		})
	}
}

// markedLine returns the 1-based line of doc that contains "#<", or 0.
func markedLine(doc string) int {
	for i, l := range strings.Split(doc, "\n") {
		if strings.Contains(l, "#<") {
			return i + 1
		}
	}
	return 0
}

func TestParseConfigErrors(t *testing.T) {
	// In each doc the expected line carries the comment "#<".
	tests := []struct {
		name string
		doc  string
		keys []string // Key must be one of these
		// typeErr: the TOML decoder's own type error; Key/Line may be in the message only.
		typeErr bool
	}{
		{"fail_max 0", "[defaults]\nreset_timeout = \"1s\"\nfail_max = 0 #<\n", []string{"defaults.fail_max"}, false},
		{"trial_calls 0 host role", `[hosts."api.crossref.org"]
fail_max = 6
[hosts."api.crossref.org".roles.artifact]
fail_max = 2
trial_calls = 0 #<
`, []string{`hosts."api.crossref.org".roles.artifact.trial_calls`}, false},
		{"success_threshold -1", "[defaults]\nsuccess_threshold = -1 #<\n", []string{"defaults.success_threshold"}, false},
		{"reset_timeout 0s", "\n[defaults]\n\nreset_timeout = \"0s\" #<\n", []string{"defaults.reset_timeout"}, false},
		{"reset_timeout -5s", "[defaults]\nreset_timeout = \"-5s\" #<\n", []string{"defaults.reset_timeout"}, false},
		{"half_open_jitter -1s", "[defaults]\nfail_max = 2\nhalf_open_jitter = \"-1s\" #<\n", []string{"defaults.half_open_jitter"}, false},
		{"retry_after_cap -1s host", "[hosts.\"a.com\"]\nretry_after_cap = \"-1s\" #<\n", []string{`hosts."a.com".retry_after_cap`}, false},
		{"reset_timeout banana", "[defaults]\nfail_max = 2\nreset_timeout = \"banana\" #<\n", []string{"defaults.reset_timeout"}, false},
		{"reset_timeout banana host", "max_hosts = 3\n[hosts.\"api.crossref.org\"]\nreset_timeout = \"banana\" #<\n", []string{`hosts."api.crossref.org".reset_timeout`}, false},
		{"fail_max string", "[defaults]\n\nfail_max = \"x\" #<\n", []string{"defaults.fail_max"}, false},
		{"duplicate wildcard", "[hosts.\"*.Example.org\"]\nfail_max = 2\n[hosts.\"*.example.org.\"] #<\nfail_max = 3\n", []string{`hosts."*.example.org."`}, false},
		{"wildcard with port", "[hosts.\"*.x.org:8443\"] #<\nfail_max = 2\n", []string{`hosts."*.x.org:8443"`}, false},
		{"status 600", "[defaults]\nfailure_statuses = [500, 600] #<\n", []string{"defaults.failure_statuses"}, false},
		{"status 99", "[defaults]\nneutral_statuses = [99, 404] #<\n", []string{"defaults.neutral_statuses"}, false},
		{"status 600 host role", "[hosts.\"a.com\".roles.r]\nfailure_statuses = [600] #<\n", []string{`hosts."a.com".roles.r.failure_statuses`}, false},
		{"overlap same level", "[defaults] #<\nfailure_statuses = [500]\nneutral_statuses = [500]\n", []string{"defaults"}, false},
		{"overlap with built-in neutral", "[defaults] #<\nfailure_statuses = [404]\n", []string{"defaults"}, false},
		{"overlap defaults role", "[defaults]\nfail_max = 2\n[defaults.roles.metadata] #<\nneutral_statuses = [503]\n", []string{"defaults.roles.metadata"}, false},
		{"overlap across levels", `[defaults]
failure_statuses = [404, 500]
neutral_statuses = []
[hosts."api.crossref.org"] #<
neutral_statuses = [404]
`, []string{`hosts."api.crossref.org"`}, false},
		{"overlap across levels host role", `[defaults]
neutral_statuses = [400]
[hosts."api.crossref.org"]
fail_max = 3
[hosts."api.crossref.org".roles.artifact] #<
failure_statuses = [400]
`, []string{`hosts."api.crossref.org".roles.artifact`}, false},
		{"unknown host key", "[hosts.\"api.crossref.org\"]\nfail_max = 2\nfail_maxx = 3 #<\n", []string{`hosts."api.crossref.org".fail_maxx`}, false},
		{"unknown top-level table", "max_hosts = 5\n[bogus] #<\nx = 1\n", []string{"bogus"}, false},
		{"unknown top-level key", "max_hosts = 5\nmaxhosts = 5 #<\n", []string{"maxhosts"}, false},
		{"unknown defaults key", "[defaults]\nfail_max = 2\nfailmax = 3 #<\n", []string{"defaults.failmax"}, false},
		{"max_hosts 0", "\nmax_hosts = 0 #<\n", []string{"max_hosts"}, false},
		{"rolling threshold 0", "[rolling]\nenabled = true\nthreshold_failures = 0 #<\n", []string{"rolling.threshold_failures"}, false},
		{"rolling window 0s", "[rolling]\nenabled = true\nwindow = \"0s\" #<\n", []string{"rolling.window"}, false},
		{"rolling cooldown -1s", "[rolling]\ncooldown = \"-1s\" #<\n", []string{"rolling.cooldown"}, false},
		{"store poll -1s", "[store]\nurl = \"/tmp/x.db\"\npoll_interval = \"-1s\" #<\n", []string{"store.poll_interval"}, false},
		{"bad host key", "[defaults]\nfail_max = 2\n[hosts.\"bad host!\"] #<\nfail_max = 3\n", []string{`hosts."bad host!"`}, false},
		{"bad host key roles only", "[hosts.\"bad host!\".roles.r] #<\nfail_max = 3\n", []string{`hosts."bad host!"`}, false},
		{"bad wildcard", "[hosts.\"*.\"] #<\nfail_max = 3\n", []string{`hosts."*."`}, false},
		{"duplicate normalized hosts", "[hosts.\"Example.com\"] #<\nfail_max = 2\n[hosts.\"example.com.\"] #<\nfail_max = 3\n", []string{`hosts."Example.com"`, `hosts."example.com."`}, false},
		{"nested roles dotted", "[defaults.roles.metadata]\nfail_max = 3\nroles.inner.fail_max = 2 #<\n", []string{"defaults.roles.metadata.roles"}, false},
		{"nested roles table", "[defaults.roles.metadata]\nfail_max = 3\n[defaults.roles.metadata.roles] #<\ninner = {fail_max = 2}\n", []string{"defaults.roles.metadata.roles"}, false},
		{"nested roles sub-table", "[defaults.roles.metadata]\nfail_max = 3\n[defaults.roles.metadata.roles.inner] #<\nfail_max = 2\n", []string{"defaults.roles.metadata.roles"}, false},
		{"nested roles empty sub-table", "[defaults.roles.metadata]\nfail_max = 3\n[defaults.roles.metadata.roles.inner] #<\n", []string{"defaults.roles.metadata.roles"}, false},
		{"rate below the lower bound", "[defaults]\nfail_max = 2\nrate = 1e-12 #<\n", []string{"defaults.rate"}, false},
		{"rate below the lower bound host", "[hosts.\"a.com\"]\nburst = 2\nrate = 0.0009 #<\n", []string{`hosts."a.com".rate`}, false},
		{"min_rate below the lower bound", "[defaults]\nmin_rate = 1e-11 #<\n", []string{"defaults.min_rate"}, false},
		{"min_rate below the lower bound host", "[defaults]\nrate = 5\n[hosts.\"a.com\"]\nmin_rate = 0.0001 #<\n", []string{`hosts."a.com".min_rate`}, false},
		{"tune min_rate below the lower bound", "[tune]\nrate_step = 0.5\nmin_rate = 1e-9 #<\n", []string{"tune.min_rate"}, false},
		{"failure_rate above 1", "[defaults]\nfail_max = 2\nfailure_rate = 1.5 #<\n", []string{"defaults.failure_rate"}, false},
		{"failure_rate negative role", "[hosts.\"a.com\".roles.r]\nfailure_rate = -0.1 #<\n", []string{`hosts."a.com".roles.r.failure_rate`}, false},
		{"slow_call_rate above 1", "[defaults]\nslow_call = \"2s\"\nslow_call_rate = 2 #<\n", []string{"defaults.slow_call_rate"}, false},
		{"slow_call_rate without slow_call", "[hosts.\"a.com\"]\nfail_max = 3\nslow_call_rate = 0.5 #<\n", []string{`hosts."a.com".slow_call_rate`}, false},
		{"min_requests 0", "[defaults]\nmin_requests = 0 #<\n", []string{"defaults.min_requests"}, false},
		{"window 0s", "[defaults]\nfailure_rate = 0.5\nwindow = \"0s\" #<\n", []string{"defaults.window"}, false},
		{"window too short", "[hosts.\"a.com\"]\nwindow = \"5ms\" #<\n", []string{`hosts."a.com".window`}, false},
		{"max_reset_timeout 0s", "[defaults]\nmax_reset_timeout = \"0s\" #<\n", []string{"defaults.max_reset_timeout"}, false},
		{"slow_call negative", "[defaults]\nslow_call = \"-1s\" #<\n", []string{"defaults.slow_call"}, false},
		{"mode unknown", "[hosts.\"a.com\"]\nfail_max = 2\nmode = \"loud\" #<\n", []string{`hosts."a.com".mode`}, false},
		{"mode in a role", "[hosts.\"a.com\".roles.r]\nmode = \"shadow\" #<\n", []string{`hosts."a.com".roles.r.mode`}, false},
		{"failure_rate string host", "[hosts.\"a.com\"]\nfail_max = 2\nfailure_rate = \"x\" #<\n", []string{`hosts."a.com".failure_rate`}, false},
		{"max_concurrent float host role", "[hosts.\"a.com\".roles.\"x y\"]\nfail_max = 2\nmax_concurrent = 1.5 #<\n", []string{`hosts."a.com".roles."x y".max_concurrent`}, false},
		{"mode int host", "[hosts.'a.com']\nmode = 1 #<\n", []string{`hosts."a.com".mode`}, false},
		{"syntax error", "[defaults]\nfail_max = = 3 #<\n", nil, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseConfig([]byte(tc.doc))
			if err == nil {
				t.Fatalf("ParseConfig succeeded, want error")
			}
			var ce *ConfigError
			if !errors.As(err, &ce) {
				t.Fatalf("error %T %v is not a *ConfigError", err, err)
			}
			msg := err.Error()
			if tc.typeErr {
				want := markedLine(tc.doc)
				if ce.Line != want && !strings.Contains(msg, "line "+strconv.Itoa(want)) {
					t.Errorf("error %q (Line %d): want line %d", msg, ce.Line, want)
				}
				if !strings.Contains(msg, tc.keys[0]) {
					t.Errorf("error %q does not name key %s", msg, tc.keys[0])
				}
				return
			}
			if tc.keys != nil {
				i := slices.Index(tc.keys, ce.Key)
				if i < 0 {
					t.Fatalf("Key = %q, want one of %q (error %q)", ce.Key, tc.keys, msg)
				}
				if !strings.Contains(msg, ce.Key) {
					t.Errorf("error %q does not contain its key %s", msg, ce.Key)
				}
			}
			// The expected line: the marked line, or for several marks (either
			// key accepted) the one that goes with the key reported.
			var lines []int
			for i, l := range strings.Split(tc.doc, "\n") {
				if strings.Contains(l, "#<") {
					lines = append(lines, i+1)
				}
			}
			want := lines[0]
			if len(lines) > 1 {
				want = lines[slices.Index(tc.keys, ce.Key)]
			}
			if ce.Line != want {
				t.Errorf("Line = %d, want %d (error %q)", ce.Line, want, msg)
			}
			if !strings.Contains(msg, "line "+strconv.Itoa(want)) {
				t.Errorf("error %q does not contain \"line %d\"", msg, want)
			}
		})
	}
}

func TestLoadConfig(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "breaker.toml")
	if err := os.WriteFile(good, []byte(exampleTOML), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := LoadConfig(good)
	if err != nil {
		t.Fatalf("LoadConfig: %v", err)
	}
	want, err := ParseConfig([]byte(exampleTOML))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(c, want) {
		t.Errorf("LoadConfig = %+v, want %+v", c, want)
	}

	bad := filepath.Join(dir, "bad.toml")
	if err := os.WriteFile(bad, []byte("[defaults]\nfail_max = 0\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = LoadConfig(bad)
	var ce *ConfigError
	if !errors.As(err, &ce) || ce.Key != "defaults.fail_max" || ce.Line != 2 {
		t.Errorf("LoadConfig(bad) = %v, want *ConfigError at line 2", err)
	}
	if err != nil && !strings.Contains(err.Error(), bad) {
		t.Errorf("LoadConfig(bad) = %q, want the path in it", err)
	}

	_, err = LoadConfig(filepath.Join(dir, "missing.toml"))
	if err == nil || !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("LoadConfig(missing) = %v, want an error wrapping fs.ErrNotExist", err)
	}
}

var fuzzConfigSeeds = []string{
	exampleTOML,
	"[defaults]\nfailure_rate = 0.4\nmin_requests = 10\nwindow = \"30s\"\nmax_reset_timeout = \"10m\"\n",
	"[defaults]\nslow_call = \"2s\"\nslow_call_rate = 0.5\n[hosts.\"a.com\"]\nmode = \"shadow\"\nslow_call = \"0s\"\n",
	"[hosts.\"a.com\".roles.r]\nfailure_rate = 0\nslow_call_rate = 0.5\n",
	"[hosts.\"a.com\"]\nmode = \"loud\"\nwindow = \"1ms\"\nmax_reset_timeout = \"1s\"\nreset_timeout = \"1m\"\n",
	"[defaults]\nfailure_rate = nan\nslow_call_rate = inf\nmin_requests = 1000001\n",
	"",
	"[defaults]\nfail_max = 0\n",
	"[defaults]\nreset_timeout = \"banana\"\n",
	"[defaults]\nfail_max = \"x\"\n",
	"[defaults]\nfailure_statuses = [404]\n",
	"[defaults]\nhalf_open_jitter = \"0s\"\nretry_after_cap = \"0s\"\nneutral_statuses = []\n",
	"[hosts.\"bad host!\"]\nfail_max = 1\n",
	"[hosts.\"*.\"]\n",
	"[hosts.\"Example.com\"]\n[hosts.\"example.com.\"]\n",
	"[hosts.\"*.a.b\"]\nfail_max=2\n[hosts.\"x.a.b:8443\"]\nroles.r.trial_calls=3\n",
	"[defaults.roles.m.roles.x]\nfail_max = 1\n",
	"[rolling]\nwindow = \"0s\"\n",
	"[store]\npoll_interval = \"-1s\"\n",
	"max_hosts = 0\n",
	"max_hosts = 99999999999999999999\n",
	"[[defaults]]\n",
	"hosts = 3\n",
	"[bogus]\n",
	"= =\n[",
}

// FuzzParseConfig: ParseConfig never panics, fails only with *ConfigError,
// and what it accepts validates, compiles and resolves to sane policies.
func FuzzParseConfig(f *testing.F) {
	for _, s := range fuzzConfigSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := ParseConfig(data)
		if err != nil {
			var ce *ConfigError
			if !errors.As(err, &ce) {
				t.Fatalf("error %T %v is not a *ConfigError", err, err)
			}
			if n := bytes.Count(data, []byte("\n")) + 1; ce.Line < 0 || ce.Line > n {
				t.Fatalf("Line %d outside the document's %d lines: %v", ce.Line, n, err)
			}
			return
		}
		if err := c.Validate(); err != nil {
			t.Fatalf("ParseConfig succeeded but Validate() = %v", err)
		}
		pt, err := compilePolicies(c)
		if err != nil {
			t.Fatalf("ParseConfig succeeded but compilePolicies = %v", err)
		}
		if c.MaxHosts < 1 {
			t.Fatalf("MaxHosts = %d", c.MaxHosts)
		}
		hosts := []string{"example.com", "a.b.example.org:8443"}
		for k := range c.Hosts {
			k = strings.TrimPrefix(k, "*.")
			h, err := normalizeHost("", k)
			if err != nil {
				t.Fatalf("host key %q accepted but does not normalize: %v", k, err)
			}
			hosts = append(hosts, h, "x."+h)
		}
		roles := []string{"", "zz"}
		for r := range c.Defaults.Roles {
			roles = append(roles, r)
		}
		for _, p := range c.Hosts {
			for r := range p.Roles {
				roles = append(roles, r)
			}
		}
		for _, h := range hosts {
			for _, role := range roles {
				r, err := pt.resolve(h, role)
				if err != nil {
					t.Fatalf("resolve(%q, %q): %v", h, role, err)
				}
				checkResolved(t, h, role, r)
			}
		}
	})
}

// ParseConfig checks [store] url and names its line.
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
	if a := mustResolve(t, pt, "api.example.org", ""); a.Rate != 4.5 || a.Adaptive != ToggleOff || !a.isThrottle(429) {
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

func TestTelemetryConfig(t *testing.T) {
	c, err := ParseConfig([]byte("[telemetry]\nprocess = \"harvester-3\"\nmax_hosts = 50\nsummary_interval = \"30s\"\njournal = false\njournal_retention = \"2h\"\njournal_max_events = 500\n"))
	if err != nil {
		t.Fatal(err)
	}
	want := TelemetryConfig{Process: "harvester-3", MaxHosts: 50, SummaryInterval: 30 * time.Second, NoJournal: true,
		JournalRetention: 2 * time.Hour, JournalMaxEvents: 500}
	if c.Telemetry != want {
		t.Fatalf("telemetry = %+v", c.Telemetry)
	}
	for _, bad := range []string{"max_hosts = 0", "summary_interval = \"0s\"", "journal_max_events = -1", "journal_retention = \"-1h\"", "nosuch = 1"} {
		_, err := ParseConfig([]byte("[telemetry]\n" + bad + "\n"))
		var ce *ConfigError
		if !errors.As(err, &ce) || ce.Line != 2 || !strings.HasPrefix(ce.Key, "telemetry.") {
			t.Errorf("%q: %v", bad, err)
		}
	}
}

func TestTuneConfig(t *testing.T) {
	c, err := ParseConfig([]byte("[tune]\nfail_max = [3, 8]\nreset_timeout = [\"20s\", \"5m\"]\nsuccess_threshold = [1, 2]\ntrial_calls = [1, 2]\nrate_step = 0.1\nmin_rate = 0.5\n"))
	if err != nil {
		t.Fatal(err)
	}
	want := TuneBounds{FailMax: [2]int{3, 8}, ResetTimeout: [2]time.Duration{20 * time.Second, 5 * time.Minute},
		SuccessThreshold: [2]int{1, 2}, TrialCalls: [2]int{1, 2}, RateStep: 0.1, MinRate: 0.5}
	if c.Tune != want {
		t.Fatalf("tune = %+v", c.Tune)
	}
	if d := (TuneBounds{}).withDefaults(); d.FailMax != [2]int{2, 10} || d.ResetTimeout != [2]time.Duration{15 * time.Second, 10 * time.Minute} ||
		d.SuccessThreshold != [2]int{1, 3} || d.TrialCalls != [2]int{1, 3} || d.RateStep != 0.25 || d.MinRate != 0.05 {
		t.Fatalf("defaults = %+v", d)
	}
	for _, bad := range []string{"fail_max = [8, 3]", "fail_max = [0, 3]", "reset_timeout = [\"5m\", \"1m\"]", "rate_step = 0", "min_rate = -1", "trial_calls = [1, 2000]", "nosuch = 1"} {
		_, err := ParseConfig([]byte("[tune]\n" + bad + "\n"))
		var ce *ConfigError
		if !errors.As(err, &ce) || ce.Line != 2 || !strings.HasPrefix(ce.Key, "tune.") {
			t.Errorf("%q: %v", bad, err)
		}
	}
}

// TestParseConfigBreakerRules: the keys of the rate rules, the growing open
// time and the mode parse at every level they may be set, resolve per
// (host, role), and are written back as TOML by policy changes.
func TestParseConfigBreakerRules(t *testing.T) {
	doc := `[defaults]
failure_rate = 0.5
min_requests = 30
window = "2m"
max_reset_timeout = "10m"
[defaults.roles.artifact]
slow_call = "20s"
slow_call_rate = 0.8
[hosts."a.com"]
mode = "shadow"
failure_rate = 0
slow_call = "3s"
slow_call_rate = 0.25
[hosts."a.com".roles.landing]
window = "30s"
min_requests = 5
max_reset_timeout = "1m"
failure_rate = 0.9
`
	c, err := ParseConfig([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	pt := mustCompile(t, c)
	for _, tc := range []struct {
		host, role string
		want       func(p *resolved) bool
	}{
		{"b.com", "", func(p *resolved) bool {
			return p.FailureRate == 0.5 && p.MinRequests == 30 && p.Window == 2*time.Minute && p.MaxResetTimeout == 10*time.Minute &&
				p.SlowCall == 0 && p.SlowCallRate == 0 && p.Mode == ModeEnforce && p.windowed && !p.shadow
		}},
		{"b.com", "artifact", func(p *resolved) bool {
			return p.SlowCall == 20*time.Second && p.SlowCallRate == 0.8 && p.FailureRate == 0.5
		}},
		{"a.com", "", func(p *resolved) bool {
			return p.FailureRate == 0 && p.SlowCall == 3*time.Second && p.SlowCallRate == 0.25 && p.shadow && p.windowed
		}},
		{"a.com", "landing", func(p *resolved) bool {
			return p.FailureRate == 0.9 && p.Window == 30*time.Second && p.MinRequests == 5 && p.MaxResetTimeout == time.Minute && p.shadow
		}},
	} {
		p, err := pt.resolve(tc.host, tc.role)
		if err != nil {
			t.Fatal(err)
		}
		if !tc.want(p) {
			t.Errorf("(%s, %q) resolved to %+v", tc.host, tc.role, p.Policy)
		}
	}
	got := policyTOML(c.Hosts["a.com"], c.Hosts["a.com"])
	want := `failure_rate = 0
slow_call = "3s"
slow_call_rate = 0.25
mode = "shadow"
roles.landing.failure_rate = 0.9
roles.landing.min_requests = 5
roles.landing.window = "30s"
roles.landing.max_reset_timeout = "1m0s"`
	if got != want {
		t.Errorf("policyTOML =\n%s\nwant\n%s", got, want)
	}
	// What policyTOML writes parses back to the same policy.
	back, err := ParseConfig([]byte("[hosts.\"a.com\"]\n" + got + "\n"))
	if err != nil {
		t.Fatalf("ParseConfig(policyTOML): %v", err)
	}
	if !reflect.DeepEqual(back.Hosts["a.com"], c.Hosts["a.com"]) {
		t.Errorf("round trip: %+v, want %+v", back.Hosts["a.com"], c.Hosts["a.com"])
	}
}
