package hostbreaker

// Tests of Config: its defaults, its validation (the bounds of each field),
// and the errors that name their key.

import (
	"errors"
	"math"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

var (
	wantFailure = []int{408, 429, 500, 502, 503, 504}
	wantNeutral = []int{400, 401, 403, 404, 410, 451}
)

func TestDefaultConfig(t *testing.T) {
	c := DefaultConfig()
	d := c.Defaults
	for _, tc := range []struct {
		name      string
		got, want any
	}{
		{"fail_max", d.FailMax, 5},
		{"reset_timeout", d.ResetTimeout, 60 * time.Second},
		{"success_threshold", d.SuccessThreshold, 1},
		{"trial_calls", d.TrialCalls, 1},
		{"retry_after_cap", d.RetryAfterCap, 15 * time.Minute},
		{"half_open_jitter", d.HalfOpenJitter, 150 * time.Millisecond},
		{"failure_statuses", d.FailureStatuses, wantFailure},
		{"neutral_statuses", d.NeutralStatuses, wantNeutral},
		{"roles", len(d.Roles), 0},
		{"hosts", len(c.Hosts), 0},
		{"rolling", c.Rolling, Rolling{}},
		{"rolling enabled", c.Rolling.Enabled, false},
		{"max_hosts", c.MaxHosts, 10000},
		{"store", c.Store, StoreConfig{}},
	} {
		if !reflect.DeepEqual(tc.got, tc.want) {
			t.Errorf("DefaultConfig().%s = %v, want %v", tc.name, tc.got, tc.want)
		}
	}
	if err := c.Validate(); err != nil {
		t.Errorf("DefaultConfig().Validate() = %v", err)
	}
	if err := (Config{}).Validate(); err != nil {
		t.Errorf("Config{}.Validate() = %v", err)
	}
	// DefaultConfig returns fresh slices: mutating one must not affect the next.
	c.Defaults.FailureStatuses[0] = 999
	if got := DefaultConfig().Defaults.FailureStatuses; !slices.Equal(got, wantFailure) {
		t.Errorf("DefaultConfig shares its status slice: %v", got)
	}
}

func TestValidateErrors(t *testing.T) {
	tests := []struct {
		name string
		c    Config
		key  string // "" means valid
	}{
		{"zero", Config{}, ""},
		{"zero fields inherit", Config{Defaults: Policy{FailMax: 0, ResetTimeout: 0, SuccessThreshold: 0, TrialCalls: 0}}, ""},
		{"negative jitter and cap mean zero", Config{Defaults: Policy{HalfOpenJitter: -1, RetryAfterCap: -time.Second}}, ""},
		{"empty lists", Config{Defaults: Policy{FailureStatuses: []int{}, NeutralStatuses: []int{}}}, ""},
		{"bounds 100 and 599", Config{Defaults: Policy{FailureStatuses: []int{100, 599}}}, ""},
		{"fail_max -1", Config{Defaults: Policy{FailMax: -1}}, "defaults.fail_max"},
		{"reset_timeout -1ns", Config{Defaults: Policy{ResetTimeout: -1}}, "defaults.reset_timeout"},
		{"success_threshold -1", Config{Defaults: Policy{SuccessThreshold: -1}}, "defaults.success_threshold"},
		{"trial_calls -1", Config{Defaults: Policy{TrialCalls: -1}}, "defaults.trial_calls"},
		{"role fail_max -1", Config{Defaults: Policy{Roles: map[string]Policy{"m": {FailMax: -1}}}}, "defaults.roles.m.fail_max"},
		{"host fail_max -1", Config{Hosts: map[string]Policy{"a.com": {FailMax: -1}}}, `hosts."a.com".fail_max`},
		{"host role trial_calls -1", Config{Hosts: map[string]Policy{"a.com": {Roles: map[string]Policy{"r": {TrialCalls: -1}}}}}, `hosts."a.com".roles.r.trial_calls`},
		{"failure 600", Config{Defaults: Policy{FailureStatuses: []int{600}}}, "defaults.failure_statuses"},
		{"failure 99", Config{Defaults: Policy{FailureStatuses: []int{99}}}, "defaults.failure_statuses"},
		{"neutral -1", Config{Defaults: Policy{NeutralStatuses: []int{-1}}}, "defaults.neutral_statuses"},
		{"neutral 640", Config{Defaults: Policy{NeutralStatuses: []int{640}}}, "defaults.neutral_statuses"},
		{"neutral huge", Config{Hosts: map[string]Policy{"a.com": {NeutralStatuses: []int{1 << 40}}}}, `hosts."a.com".neutral_statuses`},
		{"overlap", Config{Defaults: Policy{FailureStatuses: []int{404}}}, "defaults"},
		{"overlap host", Config{Defaults: Policy{NeutralStatuses: []int{}}, Hosts: map[string]Policy{"a.com": {NeutralStatuses: []int{503}}}}, `hosts."a.com"`},
		{"overlap host role", Config{Hosts: map[string]Policy{"a.com": {Roles: map[string]Policy{"r": {FailureStatuses: []int{400}}}}}}, `hosts."a.com".roles.r`},
		{"nested roles", Config{Defaults: Policy{Roles: map[string]Policy{"r": {Roles: map[string]Policy{"s": {}}}}}}, "defaults.roles.r.roles"},
		{"max_hosts -1", Config{MaxHosts: -1}, "max_hosts"},
		{"rolling threshold -1", Config{Rolling: Rolling{ThresholdFailures: -1}}, "rolling.threshold_failures"},
		{"rolling window -1", Config{Rolling: Rolling{Window: -1}}, "rolling.window"},
		{"rolling cooldown -1", Config{Rolling: Rolling{Cooldown: -1}}, "rolling.cooldown"},
		{"store poll -1", Config{Store: StoreConfig{PollInterval: -1}}, "store.poll_interval"},
		{"bad host", Config{Hosts: map[string]Policy{"bad host!": {}}}, `hosts."bad host!"`},
		{"bad wildcard", Config{Hosts: map[string]Policy{"*.": {}}}, `hosts."*."`},
		{"empty host", Config{Hosts: map[string]Policy{"": {}}}, `hosts.""`},
		{"duplicate host", Config{Hosts: map[string]Policy{"Example.com": {}, "example.com.": {}}}, `hosts."example.com."`},
		{"rate unlimited", Config{Defaults: Policy{Rate: -1e-12}}, ""},
		{"rate at the lower bound", Config{Defaults: Policy{Rate: 0.001, MinRate: 0.001}}, ""},
		{"rate below the lower bound", Config{Defaults: Policy{Rate: 1e-12}}, "defaults.rate"},
		{"rate just below the lower bound", Config{Hosts: map[string]Policy{"a.com": {Rate: 0.000999}}}, `hosts."a.com".rate`},
		{"rate smallest float", Config{Defaults: Policy{Rate: math.SmallestNonzeroFloat64}}, "defaults.rate"},
		{"min_rate below the lower bound", Config{Defaults: Policy{MinRate: 1e-12}}, "defaults.min_rate"},
		{"host min_rate below the lower bound", Config{Hosts: map[string]Policy{"a.com": {MinRate: 0.0005}}}, `hosts."a.com".min_rate`},
		{"min_rate NaN", Config{Defaults: Policy{MinRate: math.NaN()}}, "defaults.min_rate"},
		{"tune min_rate below the lower bound", Config{Tune: TuneBounds{MinRate: 1e-9}}, "tune.min_rate"},
		{"tune min_rate NaN", Config{Tune: TuneBounds{MinRate: math.NaN()}}, "tune.min_rate"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.c.Validate()
			if tc.key == "" {
				if err != nil {
					t.Fatalf("Validate() = %v, want nil", err)
				}
				return
			}
			var ce *ConfigError
			if !errors.As(err, &ce) {
				t.Fatalf("Validate() = %v (%T), want *ConfigError", err, err)
			}
			if ce.Key != tc.key || ce.Line != 0 {
				t.Errorf("Validate() Key %q Line %d, want %q 0 (%v)", ce.Key, ce.Line, tc.key, err)
			}
			if !strings.Contains(err.Error(), tc.key) || strings.Contains(err.Error(), "line ") {
				t.Errorf("Error() = %q", err.Error())
			}
		})
	}
}

func TestConfigErrorString(t *testing.T) {
	for _, tc := range []struct {
		e    ConfigError
		want string
	}{
		{ConfigError{Key: "defaults.fail_max", Line: 3, Msg: "bad"}, "hostbreaker: config: line 3: defaults.fail_max: bad"},
		{ConfigError{Key: "max_hosts", Msg: "bad"}, "hostbreaker: config: max_hosts: bad"},
		{ConfigError{Msg: "bad"}, "hostbreaker: config: bad"},
	} {
		if got := tc.e.Error(); got != tc.want {
			t.Errorf("Error() = %q, want %q", got, tc.want)
		}
	}
}

// Counts have upper bounds; errors name the key and the line.
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
