package hostbreaker

// Tests of the published configurations (store_config.go), of the stores'
// PublishConfig and Configs, and of the Transport's side: it publishes its
// configuration, withdraws it on Close, and journals a policy change when
// it starts with another configuration than the one that ran before.

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"
)

// testPolicyConfig has every level a value in force can come from:
// defaults with a role, an exact host with a role, a host:port, a
// wildcard, a host whose rate is unlimited under a limited default.
func testPolicyConfig() Config {
	return Config{
		Defaults: Policy{FailMax: 4, ResetTimeout: 10 * time.Second, Rate: 20, RetryAfterCap: time.Minute,
			Roles: map[string]Policy{RoleLanding: {ResetTimeout: time.Minute, FailureStatuses: []int{500}}}},
		Hosts: map[string]Policy{
			"api.example.org":      {FailMax: 7, Roles: map[string]Policy{RoleArtifact: {TrialCalls: 2, SuccessThreshold: 2}}},
			"api.example.org:8443": {ResetTimeout: 45 * time.Second},
			"*.cdn.example.net":    {FailMax: 9, Rate: 2.5, MaxWait: time.Second},
			"free.example.com":     {Rate: RateUnlimited, Burst: 3},
		},
	}
}

// The tables round-trip through the stored form: every (host, role)
// resolves to the same tunable values as in the Transport's table.
func TestPublishedConfigRoundTrip(t *testing.T) {
	pt := mustCompile(t, testPolicyConfig())
	over, _, err := pt.withUpdate("api.example.org", Policy{FailMax: 3})
	if err != nil {
		t.Fatal(err)
	}
	c := PublishedConfig{Source: "web-1#1", Hash: configHash(pt), Values: true, Configured: configTables(pt),
		InForce: configTables(over), Published: time.Unix(1700000000, 5)}
	got, err := decodeConfig(encodeConfig(c, time.Unix(1700000060, 0)))
	if err != nil {
		t.Fatal(err)
	}
	if got.Source != c.Source || got.Hash != c.Hash || !got.Published.Equal(c.Published) || !got.Expires.Equal(time.Unix(1700000060, 0)) || !got.Values {
		t.Fatalf("decoded %+v", got)
	}
	for _, tc := range []struct {
		tables [2]*policyTable
		cfg    Config
	}{{[2]*policyTable{pt}, got.Configured}, {[2]*policyTable{over}, got.InForce}} {
		back := mustCompile(t, tc.cfg)
		for _, host := range []string{"api.example.org", "api.example.org:8443", "x.cdn.example.net", "free.example.com", "other.test"} {
			for _, role := range []string{"", RoleLanding, RoleArtifact, "custom"} {
				want, _ := tc.tables[0].resolve(host, role)
				have, _ := back.resolve(host, role)
				for _, k := range tunableKeys {
					if currentValue(want.Policy, k) != currentValue(have.Policy, k) {
						t.Errorf("(%s, %q) %s: %s decoded, %s in force", host, role, k,
							formatValue(k, currentValue(have.Policy, k)), formatValue(k, currentValue(want.Policy, k)))
					}
				}
			}
		}
	}
	// Too large a configuration is not stored.
	big := Config{Hosts: map[string]Policy{}}
	for i := range 60000 {
		big.Hosts[fmt.Sprintf("host-%d.example.org", i)] = Policy{FailMax: 3, ResetTimeout: time.Minute, SuccessThreshold: 2}
	}
	c.Configured, c.InForce = big, big
	if _, err := checkPublishedConfig(c, time.Minute, time.Now()); err == nil {
		t.Error("a configuration larger than maxConfigBytes was accepted")
	}
}

// FuzzDecodeConfig: the stored form of a configuration is untrusted; its
// decoder never panics, and what it accepts encodes back to a value it
// decodes the same.
func FuzzDecodeConfig(f *testing.F) {
	pt, _ := compilePolicies(testPolicyConfig())
	c := PublishedConfig{Source: "web-1#1", Hash: "0123456789ab", Values: true, Configured: configTables(pt),
		InForce: configTables(pt), Published: time.Unix(1700000000, 0)}
	f.Add(encodeConfig(c, time.Unix(1700000060, 0)))
	c.Values = false
	f.Add(encodeConfig(c, time.Unix(1700000060, 0)))
	for _, s := range []string{
		`{"v":1,"source":"s","hash":"ab","published":1,"expires":2}`,
		`{"v":1,"source":"s","hash":"AB","published":1,"expires":2}`,
		`{"v":1,"source":"s","hash":"ab","published":1,"expires":2,"configured":"defaults.fail_max = 3\n","in_force":"hosts.\"a.test\".failure_statuses = [500]\n"}`,
		`{"v":1,"source":"s","hash":"ab","published":1,"expires":2,"configured":"defaults.fail_max = 0\n","in_force":"defaults.fail_max = 3\n"}`,
		`{"v":1,"source":"s","hash":"ab","published":1,"expires":2,"configured":"hosts.\"*.x\".roles.a.rate = 3\n","in_force":"x = 1"}`,
		`{"v":1,"source":"s","hash":"ab","published":1,"expires":2,"configured":"[store]\nurl = \"redis://x\"\n","in_force":"[hosts.\"A..\"]\nfail_max = 1"}`,
		`{"v":2}`, `null`, `[]`, ``,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := decodeConfig(data)
		if err != nil {
			return
		}
		if c.Source == "" || !validHash(c.Hash) {
			t.Fatalf("accepted %+v", c)
		}
		if c.Values {
			if _, err := c.Configured.validate(); err != nil {
				t.Fatalf("accepted a configured table that does not compile: %v", err)
			}
			if err := onlyPublished("hosts", Policy{Roles: c.InForce.Hosts}); err != nil && len(c.InForce.Hosts) > 0 {
				for key, p := range c.InForce.Hosts {
					if err := onlyPublished(key, p); err != nil {
						t.Fatalf("accepted a field a configuration does not publish: %v", err)
					}
				}
			}
		}
		again, err := decodeConfig(encodeConfig(c, c.Expires))
		if err != nil {
			t.Fatalf("re-decoding what was accepted: %v", err)
		}
		if configTOML(again.Configured) != configTOML(c.Configured) || configTOML(again.InForce) != configTOML(c.InForce) {
			t.Fatalf("not stable:\n%s\n%s", configTOML(c.InForce), configTOML(again.InForce))
		}
	})
}

// Both stores: PublishConfig replaces a source's configuration, Configs
// returns it running until its ttl, then stopped; at most configKeep
// stopped are kept; invalid ones are refused.
func TestStoreConfigs(t *testing.T) {
	storeKinds(t, func(t *testing.T, url string) {
		s, err := OpenStore(url)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		ctx := context.Background()
		pt := mustCompile(t, testPolicyConfig())
		c := PublishedConfig{Source: "web-1#1", Hash: "0123456789ab", Values: true, Configured: configTables(pt),
			InForce: configTables(pt), Published: time.Now()}
		if err := s.PublishConfig(ctx, c, time.Hour); err != nil {
			t.Fatal(err)
		}
		c2 := c
		c2.Source, c2.Hash, c2.Values, c2.Configured, c2.InForce = "web-2#1", "ab", false, Config{}, Config{}
		if err := s.PublishConfig(ctx, c2, time.Hour); err != nil {
			t.Fatal(err)
		}
		got, err := s.Configs(ctx)
		if err != nil || len(got) != 2 {
			t.Fatalf("Configs = %+v, %v", got, err)
		}
		for _, g := range got {
			if !g.Running(time.Now()) || g.Expires.Before(time.Now().Add(59*time.Minute)) {
				t.Errorf("%s: expires %v, want in an hour", g.Source, g.Expires)
			}
			if g.Source == c.Source && (!g.Values || configTOML(g.InForce) != configTOML(c.InForce)) {
				t.Errorf("web-1's tables: %+v", g)
			}
			if g.Source == c2.Source && g.Values {
				t.Errorf("web-2 has values: %+v", g)
			}
		}
		for _, bad := range []PublishedConfig{{Hash: "ab", Published: time.Now()}, {Source: "x", Hash: "XY", Published: time.Now()},
			{Source: "x", Hash: "ab"}} {
			if err := s.PublishConfig(ctx, bad, time.Hour); err == nil {
				t.Errorf("PublishConfig(%+v) accepted", bad)
			}
		}
		// Stopped: kept, not running; the newest configKeep only.
		for i := range configKeep + 3 {
			c2.Source = fmt.Sprintf("gone-%02d", i)
			if err := s.PublishConfig(ctx, c2, time.Millisecond); err != nil {
				t.Fatal(err)
			}
			time.Sleep(2 * time.Millisecond)
		}
		c2.Source = "last"
		if err := s.PublishConfig(ctx, c2, time.Hour); err != nil {
			t.Fatal(err)
		}
		got, err = s.Configs(ctx)
		if err != nil {
			t.Fatal(err)
		}
		running, stopped := 0, map[string]bool{}
		for _, g := range got {
			if g.Running(time.Now()) {
				running++
			} else {
				stopped[g.Source] = true
			}
		}
		if running != 3 || len(stopped) != configKeep || stopped["gone-00"] || !stopped[fmt.Sprintf("gone-%02d", configKeep+2)] {
			t.Errorf("%d running, %d stopped (%v), want 3 and the newest %d", running, len(stopped), stopped, configKeep)
		}
	})
}

// A Transport publishes its configuration, with the tuned overrides it
// applied, and withdraws it on Close; restarted with another
// configuration, it journals what changed, once.
func TestConfigPublishedAndChangeAtStart(t *testing.T) {
	storeKinds(t, func(t *testing.T, url string) {
		ctx := context.Background()
		s, err := OpenStore(url)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		if err := s.PutOverride(ctx, "tuned.example", Policy{FailMax: 8}); err != nil {
			t.Fatal(err)
		}
		start := func(cfg Config, log *eventLog) *Transport {
			cfg.Telemetry.Process = "crawler"
			cfg.Store = StoreConfig{URL: url, PollInterval: 20 * time.Millisecond}
			tr, err := NewTransport(newFakeHosts(status(http.StatusOK)), WithConfig(cfg), WithEventHandler(log.add))
			if err != nil {
				t.Fatal(err)
			}
			return tr
		}
		waitConfig := func(hash string) PublishedConfig {
			t.Helper()
			for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
				cs, _ := s.Configs(ctx)
				for _, c := range cs {
					if strings.HasPrefix(c.Source, "crawler#") && c.Hash == hash && c.Running(time.Now()) {
						return c
					}
				}
				if time.Now().After(deadline) {
					t.Fatalf("no running configuration %s: %+v", hash, cs)
				}
			}
		}
		cfg1 := Config{Defaults: Policy{FailMax: 4, ResetTimeout: 10 * time.Second},
			Hosts: map[string]Policy{"slow.example": {ResetTimeout: time.Minute, Roles: map[string]Policy{RoleLanding: {FailMax: 2}}}}}
		var log1 eventLog
		tr1 := start(cfg1, &log1)
		c1 := waitConfig(configHash(mustCompile(t, cfg1)))
		in, _ := mustCompile(t, c1.InForce).resolve("tuned.example", "")
		if in.FailMax != 8 {
			t.Errorf("published in force: tuned.example fail_max %d, want the override's 8", in.FailMax)
		}
		if err := tr1.Close(); err != nil {
			t.Fatal(err)
		}
		if ch := startChanges(&log1); len(ch) != 0 {
			t.Errorf("the first start journaled %+v", ch)
		}
		cs, _ := s.Configs(ctx)
		if len(cs) != 1 || cs[0].Running(time.Now()) {
			t.Fatalf("after Close: %+v, want one configuration, stopped", cs)
		}

		// Restarted with the same configuration: nothing changed.
		var log2 eventLog
		tr2 := start(cfg1, &log2)
		waitConfig(c1.Hash)
		tr2.Close()
		if n := len(startChanges(&log2)); n != 0 {
			t.Errorf("restart with the same configuration journaled %d policy changes", n)
		}

		// Restarted with another: the changes, before and after, in the
		// journal of the store.
		cfg3 := Config{Defaults: Policy{FailMax: 6, ResetTimeout: 10 * time.Second},
			Hosts: map[string]Policy{"slow.example": {ResetTimeout: 2 * time.Minute, Roles: map[string]Policy{RoleLanding: {FailMax: 2}}}}}
		var log3 eventLog
		tr3 := start(cfg3, &log3)
		waitConfig(configHash(mustCompile(t, cfg3)))
		tr3.Close()
		evs, err := ReadJournal(ctx, s, time.Time{})
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]Event{}
		for _, ev := range evs {
			if ev.Name == EventPolicyChange && strings.HasPrefix(ev.Note, "configuration changed at start") {
				got[ev.Host] = ev
			}
		}
		if ev := got["*"]; ev.PreviousPolicy != "fail_max = 4" || ev.Policy != "fail_max = 6" {
			t.Errorf("defaults change: %q → %q", ev.PreviousPolicy, ev.Policy)
		}
		if ev := got["slow.example"]; ev.PreviousPolicy != `reset_timeout = "1m0s"` || ev.Policy != `reset_timeout = "2m0s"` {
			t.Errorf("slow.example change: %q → %q", ev.PreviousPolicy, ev.Policy)
		}
		if len(got) != 2 {
			t.Errorf("policy changes at start: %+v, want the defaults' and slow.example's", got)
		}
		// advise judges the changed keys on what came after.
		pc := readPolicyChanges(evs)
		if !pc.cutoff("slow.example", RoleLanding, keyResetTimeout).Equal(got["slow.example"].Time) ||
			!pc.cutoff("other.example", "", keyFailMax).Equal(got["*"].Time) ||
			!pc.cutoff("other.example", "", keyTrialCalls).IsZero() {
			t.Errorf("cutoffs: %v", pc)
		}

		// The configuration before it, without values: one change of
		// every host, that says so.
		c0 := PublishedConfig{Source: "crawler#0", Hash: "abcdef", Published: time.Now()}
		if err := s.PublishConfig(ctx, c0, time.Nanosecond); err != nil {
			t.Fatal(err)
		}
		var log4 eventLog
		tr4 := start(cfg3, &log4)
		waitConfig(configHash(mustCompile(t, cfg3)))
		tr4.Close()
		ch := startChanges(&log4)
		if len(ch) != 1 || ch[0].Host != "*" || !strings.Contains(ch[0].Note, "the values before are unknown") ||
			!strings.Contains(ch[0].Policy, "fail_max = 6") || ch[0].PreviousPolicy != "" {
			t.Errorf("change from unknown values: %+v", ch)
		}
	})
}

// startChanges returns the policy changes that a Transport journaled at
// start (not those it applied from the store's overrides).
func startChanges(l *eventLog) []Event {
	var out []Event
	for _, ev := range l.named(EventPolicyChange) {
		if strings.HasPrefix(ev.Note, "configuration changed at start") {
			out = append(out, ev)
		}
	}
	return out
}
