package hostbreaker

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"
)

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

// Tune's overrides reach a running Transport through the store: applied
// live, breaker state kept, a policy change event, and a revert brings the
// configuration's values back.
func TestTunedOverridesApplyLive(t *testing.T) {
	storeKinds(t, func(t *testing.T, url string) {
		var got eventLog
		cfg := Config{Defaults: Policy{FailMax: 2, ResetTimeout: time.Hour, HalfOpenJitter: -1},
			Store: StoreConfig{URL: url, PollInterval: 50 * time.Millisecond}}
		tr, err := NewTransport(newFakeHosts(status(500)), WithConfig(cfg), WithEventHandler(got.add))
		if err != nil {
			t.Fatal(err)
		}
		defer tr.Close()
		c := &http.Client{Transport: tr}
		do(t, c, RoleLanding, "https://a.test/")
		do(t, c, RoleLanding, "https://a.test/")
		mustState(t, tr, "a.test", RoleLanding, StateOpen)

		s, err := OpenStore(url)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		ctx := context.Background()
		advice := []Advice{{Host: "a.test", Role: RoleLanding, Key: "reset_timeout", Current: "1h0m0s", Proposed: "2m", Reason: "test"},
			{Host: "a.test", Key: "fail_max", Current: "2", Proposed: "4", Reason: "test"}}
		if _, err := Tune(ctx, s, advice, cfg, "live"); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		waitPolicy := func(role string, ok func(Policy) bool) {
			t.Helper()
			for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
				p, _ := tr.Policy("a.test", role)
				if ok(p) {
					return
				}
				if time.Now().After(deadline) {
					t.Fatalf("policy of (a.test, %q) = %+v", role, p)
				}
			}
		}
		waitPolicy(RoleLanding, func(p Policy) bool { return p.ResetTimeout == 2*time.Minute && p.FailMax == 4 })
		t.Logf("%s: a tuned override applied after %v", url[:5], time.Since(start))
		mustState(t, tr, "a.test", RoleLanding, StateOpen) // state kept
		if p, _ := tr.Policy("a.test", ""); p.ResetTimeout != time.Hour || p.FailMax != 4 {
			t.Fatalf("the no-role policy = %+v", p)
		}
		if err := RevertTuning(ctx, s, "all", "back"); err != nil {
			t.Fatal(err)
		}
		waitPolicy(RoleLanding, func(p Policy) bool { return p.ResetTimeout == time.Hour && p.FailMax == 2 })
		mustState(t, tr, "a.test", RoleLanding, StateOpen)
		tr.Close()
		var applied int
		for _, ev := range got.named(EventPolicyChange) {
			if ev.Host == "a.test" && ev.Remote {
				applied++
			}
		}
		if applied != 2 { // the tune and the revert
			t.Errorf("policy changes applied from the store = %d, want 2", applied)
		}
	})
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
