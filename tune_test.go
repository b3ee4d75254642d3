package hostbreaker

import (
	"context"
	"reflect"
	"strings"
	"testing"
	"time"
)

// tuneJournal returns the policy_change events of s's journal.
func tuneJournal(t *testing.T, s Store) []Event {
	t.Helper()
	evs, err := ReadJournal(context.Background(), s, time.Now().Add(-time.Hour))
	if err != nil {
		t.Fatalf("ReadJournal: %v", err)
	}
	var out []Event
	for _, ev := range evs {
		if ev.Name == EventPolicyChange {
			out = append(out, ev)
		}
	}
	return out
}

// tuneEvent is what a test checks of a policy_change event.
type tuneEvent struct {
	Host, Role, Previous, Policy, Note string
}

// checkTuneEvents fails the test unless evs are the events of want, in
// order, each from a tune process at a recent time.
func checkTuneEvents(t *testing.T, evs []Event, want []tuneEvent) {
	t.Helper()
	got := make([]tuneEvent, len(evs))
	for i, ev := range evs {
		got[i] = tuneEvent{ev.Host, ev.Role, ev.PreviousPolicy, ev.Policy, ev.Note}
		if !strings.HasPrefix(ev.Process, "tune:") || strings.Count(ev.Process, ":") < 2 {
			t.Errorf("event %d: Process = %q; want tune:hostname:pid", i, ev.Process)
		}
		if d := time.Since(ev.Time); d < 0 || d > time.Minute {
			t.Errorf("event %d: Time = %v, %v ago", i, ev.Time, d)
		}
	}
	if len(got) == 0 && len(want) == 0 {
		return
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("policy_change events:\n got %q\nwant %q", got, want)
	}
}

func TestTuneClamps(t *testing.T) {
	eachJournalStore(t, func(t *testing.T, s journalStore) {
		ctx := context.Background()
		advice := []Advice{
			{Host: "a.example", Key: "fail_max", Current: "5", Proposed: "1", Reason: "opens ≥ 3"},
			{Host: "b.example", Key: "fail_max", Current: "5", Proposed: "50", Reason: "few opens"},
			{Host: "c.example", Key: "reset_timeout", Current: "60s", Proposed: "5s", Reason: "median Retry-After 5s"},
			{Host: "d.example", Key: "reset_timeout", Current: "60s", Proposed: `"20m"`, Reason: "long outages"},
			{Host: "e.example", Key: "success_threshold", Current: "1", Proposed: "0", Reason: "r"},
			{Host: "f.example", Key: "trial_calls", Current: "1", Proposed: "9", Reason: ""},
			{Host: "g.example", Key: "reset_timeout", Current: "60s", Proposed: "45s", Reason: "within bounds"},
			{Host: "h.example", Key: "fail_max", Current: "5", Proposed: "3 # a comment", Reason: "within bounds"},
		}
		got, err := Tune(ctx, s, advice, Config{}, "test")
		if err != nil {
			t.Fatalf("Tune: %v", err)
		}
		want := []Advice{
			{Host: "a.example", Key: "fail_max", Current: "5", Proposed: "2", Reason: "opens ≥ 3; clamped to [2, 10]"},
			{Host: "b.example", Key: "fail_max", Current: "5", Proposed: "10", Reason: "few opens; clamped to [2, 10]"},
			{Host: "c.example", Key: "reset_timeout", Current: "60s", Proposed: "15s", Reason: "median Retry-After 5s; clamped to [15s, 10m0s]"},
			{Host: "d.example", Key: "reset_timeout", Current: "60s", Proposed: "10m0s", Reason: "long outages; clamped to [15s, 10m0s]"},
			{Host: "e.example", Key: "success_threshold", Current: "1", Proposed: "1", Reason: "r; clamped to [1, 3]"},
			{Host: "f.example", Key: "trial_calls", Current: "1", Proposed: "3", Reason: "clamped to [1, 3]"},
			{Host: "g.example", Key: "reset_timeout", Current: "60s", Proposed: "45s", Reason: "within bounds"},
			{Host: "h.example", Key: "fail_max", Current: "5", Proposed: "3", Reason: "within bounds"},
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("Tune returned\n%+v\nwant\n%+v", got, want)
		}
		checkOverrides(t, mustOverrides(t, s), map[string]Policy{
			"a.example": {FailMax: 2},
			"b.example": {FailMax: 10},
			"c.example": {ResetTimeout: 15 * time.Second},
			"d.example": {ResetTimeout: 10 * time.Minute},
			"e.example": {SuccessThreshold: 1},
			"f.example": {TrialCalls: 3},
			"g.example": {ResetTimeout: 45 * time.Second},
			"h.example": {FailMax: 3},
		})
		checkTuneEvents(t, tuneJournal(t, s), []tuneEvent{
			{"a.example", "", "fail_max = 5", "fail_max = 2", "test: opens ≥ 3; clamped to [2, 10]"},
			{"b.example", "", "fail_max = 5", "fail_max = 10", "test: few opens; clamped to [2, 10]"},
			{"c.example", "", `reset_timeout = "1m0s"`, `reset_timeout = "15s"`, "test: median Retry-After 5s; clamped to [15s, 10m0s]"},
			{"d.example", "", `reset_timeout = "1m0s"`, `reset_timeout = "10m0s"`, "test: long outages; clamped to [15s, 10m0s]"},
			{"e.example", "", "success_threshold = 1", "success_threshold = 1", "test: r; clamped to [1, 3]"},
			{"f.example", "", "trial_calls = 1", "trial_calls = 3", "test: clamped to [1, 3]"},
			{"g.example", "", `reset_timeout = "1m0s"`, `reset_timeout = "45s"`, "test: within bounds"},
			{"h.example", "", "fail_max = 5", "fail_max = 3", "test: within bounds"},
		})

		// Custom bounds.
		cfg := Config{Tune: TuneBounds{
			FailMax: [2]int{4, 6}, ResetTimeout: [2]time.Duration{30 * time.Second, 2 * time.Minute},
			SuccessThreshold: [2]int{2, 2}, TrialCalls: [2]int{2, 5},
		}}
		got, err = Tune(ctx, s, []Advice{
			{Host: "x.example", Key: "fail_max", Proposed: "3", Reason: "r"},
			{Host: "x.example", Key: "reset_timeout", Proposed: "5m", Reason: "r"},
			{Host: "x.example", Key: "success_threshold", Proposed: "1", Reason: "r"},
			{Host: "x.example", Key: "trial_calls", Proposed: "4", Reason: "r"},
		}, cfg, "")
		if err != nil {
			t.Fatalf("Tune with custom bounds: %v", err)
		}
		var reasons []string
		for _, a := range got {
			reasons = append(reasons, a.Proposed+" "+a.Reason)
		}
		if want := []string{"4 r; clamped to [4, 6]", "2m0s r; clamped to [30s, 2m0s]", "2 r; clamped to [2, 2]", "4 r"}; !reflect.DeepEqual(reasons, want) {
			t.Errorf("custom bounds: got %q, want %q", reasons, want)
		}
		if o := mustOverrides(t, s)["x.example"]; !reflect.DeepEqual(o, Policy{FailMax: 4, ResetTimeout: 2 * time.Minute, SuccessThreshold: 2, TrialCalls: 4}) {
			t.Errorf("override of x.example = %+v", o)
		}
		// Without a Current, the previous value is unknown; without a note,
		// the Note is the reason.
		evs := tuneJournal(t, s)
		checkTuneEvents(t, evs[len(evs)-4:], []tuneEvent{
			{"x.example", "", "", "fail_max = 4", "r; clamped to [4, 6]"},
			{"x.example", "", "", `reset_timeout = "2m0s"`, "r; clamped to [30s, 2m0s]"},
			{"x.example", "", "", "success_threshold = 2", "r; clamped to [2, 2]"},
			{"x.example", "", "", "trial_calls = 4", "r"},
		})

		// Invalid bounds are an error, and write nothing.
		if _, err := Tune(ctx, s, []Advice{{Host: "y.example", Key: "fail_max", Proposed: "3"}},
			Config{Tune: TuneBounds{FailMax: [2]int{6, 4}}}, ""); err == nil {
			t.Error("Tune with bounds [6, 4] = nil error")
		}
		if _, ok := mustOverrides(t, s)["y.example"]; ok {
			t.Error("Tune with invalid bounds wrote an override")
		}
	})
}

// TestTuneMerges checks that Tune merges its changes into the existing
// overrides, per role, that hosts are normalized and wildcards kept, that
// the previous value is the override's when there is one, and that a
// change to the value that the override already holds is no change.
func TestTuneMerges(t *testing.T) {
	eachJournalStore(t, func(t *testing.T, s journalStore) {
		ctx := context.Background()
		mustPutOverride(t, s, "api.example.org", Policy{
			FailMax: 4,
			Roles:   map[string]Policy{"pdf": {TrialCalls: 2}, "metadata": {ResetTimeout: time.Minute}},
		})
		mustPutOverride(t, s, "other.example", Policy{FailMax: 7})
		advice := []Advice{
			{Host: "https://API.example.org:443/works", Role: "pdf", Key: "fail_max", Current: "5", Proposed: "3", Reason: "pdf opens"},
			{Host: "api.example.org", Role: "metadata", Key: "reset_timeout", Current: "30s", Proposed: "45s", Reason: "retry-after"},
			{Host: "api.example.org", Key: "success_threshold", Current: "1", Proposed: "2", Reason: "half-open failures"},
			{Host: "api.example.org", Key: "fail_max", Current: "5", Proposed: "3", Reason: "opens"},
			{Host: "api.example.org", Role: "pdf", Key: "trial_calls", Current: "1", Proposed: "2", Reason: "same as stored"},
			{Host: "*.Example.NET", Role: "pdf", Key: "trial_calls", Current: "1", Proposed: "2", Reason: "wildcard"},
			{Host: "*.example.net", Role: "pdf", Key: "trial_calls", Current: "1", Proposed: "3", Reason: "later wins"},
		}
		got, err := Tune(ctx, s, advice, Config{}, "merge")
		if err != nil {
			t.Fatalf("Tune: %v", err)
		}
		var hosts []string
		for _, a := range got {
			hosts = append(hosts, a.Host+"/"+a.Role+"/"+a.Key+"="+a.Proposed)
		}
		if want := []string{
			"api.example.org/pdf/fail_max=3", "api.example.org/metadata/reset_timeout=45s",
			"api.example.org//success_threshold=2", "api.example.org//fail_max=3",
			"*.example.net/pdf/trial_calls=2", "*.example.net/pdf/trial_calls=3",
		}; !reflect.DeepEqual(hosts, want) {
			t.Errorf("Tune returned %q, want %q", hosts, want)
		}
		checkOverrides(t, mustOverrides(t, s), map[string]Policy{
			"api.example.org": {
				FailMax: 3, SuccessThreshold: 2,
				Roles: map[string]Policy{
					"pdf":      {FailMax: 3, TrialCalls: 2},
					"metadata": {ResetTimeout: 45 * time.Second},
				},
			},
			"other.example": {FailMax: 7},
			"*.example.net": {Roles: map[string]Policy{"pdf": {TrialCalls: 3}}},
		})
		checkTuneEvents(t, tuneJournal(t, s), []tuneEvent{
			{"api.example.org", "pdf", "fail_max = 5", "fail_max = 3", "merge: pdf opens"},
			{"api.example.org", "metadata", `reset_timeout = "1m0s"`, `reset_timeout = "45s"`, "merge: retry-after"},
			{"api.example.org", "", "success_threshold = 1", "success_threshold = 2", "merge: half-open failures"},
			{"api.example.org", "", "fail_max = 4", "fail_max = 3", "merge: opens"},
			{"*.example.net", "pdf", "trial_calls = 1", "trial_calls = 2", "merge: wildcard"},
			{"*.example.net", "pdf", "trial_calls = 2", "trial_calls = 3", "merge: later wins"},
		})

		// Advice that changes nothing writes and journals nothing.
		got, err = Tune(ctx, s, []Advice{{Host: "other.example", Key: "fail_max", Current: "7", Proposed: "7"}}, Config{}, "again")
		if err != nil || len(got) != 0 {
			t.Errorf("Tune of the value in place = %+v, %v; want nothing", got, err)
		}
		if n := len(tuneJournal(t, s)); n != 6 {
			t.Errorf("%d policy_change events; want 6", n)
		}
	})
}

// TestTuneRefuses checks that advice Tune cannot apply is an error naming
// it, and that nothing is written then, not even the valid advice.
func TestTuneRefuses(t *testing.T) {
	eachJournalStore(t, func(t *testing.T, s journalStore) {
		ctx := context.Background()
		valid := Advice{Host: "ok.example", Key: "fail_max", Current: "5", Proposed: "3", Reason: "r"}
		for _, c := range []struct {
			name   string
			advice []Advice
			want   []string // in the error
		}{
			{"unlimited rate", []Advice{valid, {Host: "ok.example", Key: "rate", Current: "10", Proposed: "0"}}, []string{"rate = 0", "unlimited", "advice 1"}},
			{"negative rate", []Advice{valid, {Host: "ok.example", Key: "rate", Proposed: "-2"}}, []string{"rate = -2", "advice 1"}},
			{"rate as a string", []Advice{valid, {Host: "ok.example", Key: "rate", Proposed: `"5"`}}, []string{"rate", "advice 1"}},
			{"infinite rate", []Advice{valid, {Host: "ok.example", Key: "rate", Proposed: "inf"}}, []string{"rate", "advice 1"}},
			{"rate in a role", []Advice{valid, {Host: "ok.example", Role: "pdf", Key: "rate", Proposed: "5"}}, []string{"host-wide", `"pdf"`, "advice 1"}},
			{"unknown keys", []Advice{valid, {Host: "ok.example", Key: "bogus", Proposed: "1"}, {Host: "ok.example", Key: "retry_after_cap", Proposed: `"1m"`}},
				[]string{`"bogus"`, `"retry_after_cap"`, "advice 1", "advice 2"}},
			{"rate and unknown", []Advice{{Host: "ok.example", Role: "pdf", Key: "rate", Proposed: "8"}, valid, {Host: "ok.example", Key: "FAIL_MAX", Proposed: "3"}},
				[]string{"advice 0", `"FAIL_MAX"`, "advice 2"}},
			{"bad host", []Advice{valid, {Host: "a b", Key: "fail_max", Proposed: "3"}}, []string{"a b"}},
			{"empty host", []Advice{valid, {Key: "fail_max", Proposed: "3"}}, []string{"advice 1"}},
			{"bad wildcard", []Advice{valid, {Host: "*.example.org:443", Key: "fail_max", Proposed: "3"}}, []string{"wildcard"}},
			{"bad count", []Advice{valid, {Host: "ok.example", Key: "trial_calls", Proposed: "2.5"}}, []string{"trial_calls"}},
			{"count as duration", []Advice{valid, {Host: "ok.example", Key: "fail_max", Proposed: `"3s"`}}, []string{"fail_max"}},
			{"bad duration", []Advice{valid, {Host: "ok.example", Key: "reset_timeout", Proposed: "soon"}}, []string{"reset_timeout"}},
			{"duration as count", []Advice{valid, {Host: "ok.example", Key: "reset_timeout", Proposed: "45"}}, []string{"reset_timeout"}},
			{"empty value", []Advice{valid, {Host: "ok.example", Key: "fail_max"}}, []string{"fail_max"}},
			{"two values", []Advice{valid, {Host: "ok.example", Key: "fail_max", Proposed: "3\nreset_timeout = \"1s\""}}, []string{"fail_max"}},
			{"bad role", []Advice{valid, {Host: "ok.example", Role: "a\x00b", Key: "fail_max", Proposed: "3"}}, []string{"role"}},
		} {
			got, err := Tune(ctx, s, c.advice, Config{}, "refused")
			if err == nil {
				t.Errorf("%s: Tune = %+v, nil; want an error", c.name, got)
				continue
			}
			if got != nil {
				t.Errorf("%s: Tune returned %+v with its error", c.name, got)
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("%s: error %q does not name %s", c.name, err, w)
				}
			}
		}
		checkOverrides(t, mustOverrides(t, s), nil)
		checkTuneEvents(t, tuneJournal(t, s), nil)
	})
}

// TestTuneRate checks that Tune writes a rate override to the Hosts key,
// merged into its override, clamped to at least min_rate and, but for a
// first limit on an unlimited key, to a step of at most rate_step from
// the rate in force (the configuration's, under the stored overrides, a
// wildcard's included), journals each change, and that RevertTuning
// removes it.
func TestTuneRate(t *testing.T) {
	eachJournalStore(t, func(t *testing.T, s journalStore) {
		ctx := context.Background()
		cfg := Config{Hosts: map[string]Policy{"conf.example": {Rate: 10}, "*.wild.example": {FailMax: 4}}}
		mustPutOverride(t, s, "merged.example", Policy{FailMax: 3, Roles: map[string]Policy{"pdf": {TrialCalls: 2}}})
		mustPutOverride(t, s, "*.wild.example", Policy{Rate: 8})
		other := s.open()

		got, err := Tune(ctx, s, []Advice{
			{Host: "https://A.example/x", Key: "rate", Current: "0", Proposed: "1.2", Reason: "12 of 200 requests (6 %) answered 429"},
			{Host: "b.example", Key: "rate", Current: "0", Proposed: "0.01", Reason: "too slow"},
			{Host: "conf.example", Key: "rate", Current: "10", Proposed: "20", Reason: "too fast"},
			{Host: "conf.example", Key: "fail_max", Current: "5", Proposed: "3", Reason: "opens"},
			{Host: "merged.example", Key: "rate", Current: "0", Proposed: "4", Reason: "first limit"},
			{Host: "x.wild.example", Key: "rate", Current: "8", Proposed: "2", Reason: "under the wildcard's"},
			{Host: "*.wild.example", Key: "rate", Current: "8", Proposed: "8.8", Reason: "recovery"},
		}, cfg, "rates")
		if err != nil {
			t.Fatalf("Tune: %v", err)
		}
		var written []string
		for _, a := range got {
			written = append(written, a.Host+" "+a.Key+"="+a.Proposed+" ("+a.Reason+")")
		}
		if want := []string{
			"a.example rate=1.2 (12 of 200 requests (6 %) answered 429)",
			"b.example rate=0.05 (too slow; clamped to [0.05, 1e+06])",
			"conf.example rate=12.5 (too fast; clamped to [7.5, 12.5])",
			"conf.example fail_max=3 (opens)",
			"merged.example rate=4 (first limit)",
			"x.wild.example rate=6 (under the wildcard's; clamped to [6, 10])",
			"*.wild.example rate=8.8 (recovery)",
		}; !reflect.DeepEqual(written, want) {
			t.Errorf("Tune wrote\n%q\nwant\n%q", written, want)
		}
		want := map[string]Policy{
			"a.example":      {Rate: 1.2},
			"b.example":      {Rate: 0.05},
			"conf.example":   {Rate: 12.5, FailMax: 3},
			"merged.example": {FailMax: 3, Rate: 4, Roles: map[string]Policy{"pdf": {TrialCalls: 2}}},
			"x.wild.example": {Rate: 6},
			"*.wild.example": {Rate: 8.8},
		}
		checkOverrides(t, mustOverrides(t, other), want)
		checkTuneEvents(t, tuneJournal(t, s), []tuneEvent{
			{"a.example", "", "rate = 0", "rate = 1.2", "rates: 12 of 200 requests (6 %) answered 429"},
			{"b.example", "", "rate = 0", "rate = 0.05", "rates: too slow; clamped to [0.05, 1e+06]"},
			{"conf.example", "", "rate = 10", "rate = 12.5", "rates: too fast; clamped to [7.5, 12.5]"},
			{"conf.example", "", "fail_max = 5", "fail_max = 3", "rates: opens"},
			{"merged.example", "", "rate = 0", "rate = 4", "rates: first limit"},
			{"x.wild.example", "", "rate = 8", "rate = 6", "rates: under the wildcard's; clamped to [6, 10]"},
			{"*.wild.example", "", "rate = 8", "rate = 8.8", "rates: recovery"},
		})

		// The step is from the rate in force, the override's now, with
		// custom bounds; the value in place is no change.
		cfg.Tune = TuneBounds{RateStep: 0.5, MinRate: 1}
		got, err = Tune(ctx, s, []Advice{
			{Host: "a.example", Key: "rate", Current: "1.2", Proposed: "0.1", Reason: "r"},
			{Host: "merged.example", Key: "rate", Current: "4", Proposed: "4"},
			{Host: "conf.example", Key: "rate", Current: "12.5", Proposed: "100", Reason: "r"},
		}, cfg, "")
		if err != nil {
			t.Fatalf("Tune with custom bounds: %v", err)
		}
		if len(got) != 2 || got[0].Proposed != "1" || got[0].Reason != "r; clamped to [1, 1.8]" ||
			got[1].Proposed != "18.75" || got[1].Reason != "r; clamped to [6.25, 18.75]" {
			t.Errorf("custom bounds: got %+v", got)
		}
		evs := tuneJournal(t, s)
		checkTuneEvents(t, evs[len(evs)-2:], []tuneEvent{
			{"a.example", "", "rate = 1.2", "rate = 1", "r; clamped to [1, 1.8]"},
			{"conf.example", "", "rate = 12.5", "rate = 18.75", "r; clamped to [6.25, 18.75]"},
		})

		// A rate in force below min_rate leaves no step within the bounds;
		// rate advice needs a valid configuration. Neither writes anything.
		mustPutOverride(t, s, "slow.example", Policy{Rate: 0.1})
		for _, c := range []struct {
			name string
			cfg  Config
			want string
		}{
			{"no value", Config{Tune: TuneBounds{MinRate: 0.5}}, "advice 1 (slow.example rate): no rate within [0.5, 0.125]: a step of at most 25 % from 0.1"},
			{"invalid config", Config{Defaults: Policy{FailMax: -1}}, "rate advice needs a valid configuration"},
		} {
			got, err := Tune(ctx, s, []Advice{
				{Host: "a.example", Key: "fail_max", Proposed: "4"},
				{Host: "slow.example", Key: "rate", Proposed: "0.12"},
			}, c.cfg, "")
			if err == nil || got != nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("%s: Tune = %+v, %v; want an error that says %q", c.name, got, err, c.want)
			}
		}
		checkOverrides(t, mustOverrides(t, other), map[string]Policy{
			"a.example": {Rate: 1}, "b.example": {Rate: 0.05}, "conf.example": {Rate: 18.75, FailMax: 3},
			"merged.example": want["merged.example"], "x.wild.example": {Rate: 6}, "*.wild.example": {Rate: 8.8},
			"slow.example": {Rate: 0.1},
		})

		// RevertTuning removes the rate with the rest of the key's override.
		n := len(tuneJournal(t, s))
		if err := RevertTuning(ctx, s, "merged.example", "back"); err != nil {
			t.Fatal(err)
		}
		if err := RevertTuning(ctx, s, "a.example", "back"); err != nil {
			t.Fatal(err)
		}
		if o := mustOverrides(t, other); len(o) != 5 || !reflect.DeepEqual(o["conf.example"], Policy{Rate: 18.75, FailMax: 3}) {
			t.Errorf("after the reverts: %+v", o)
		}
		checkTuneEvents(t, tuneJournal(t, s)[n:], []tuneEvent{
			{"merged.example", "", "fail_max = 3\nrate = 4\nroles.pdf.trial_calls = 2", "", "back: tuning reverted"},
			{"a.example", "", "rate = 1", "", "back: tuning reverted"},
		})
	})
}

// TestTuneEmpty checks that Tune with no advice writes nothing.
func TestTuneEmpty(t *testing.T) {
	eachJournalStore(t, func(t *testing.T, s journalStore) {
		ctx := context.Background()
		for _, advice := range [][]Advice{nil, {}} {
			got, err := Tune(ctx, s, advice, Config{}, "nothing")
			if err != nil || got != nil {
				t.Errorf("Tune(%#v) = %+v, %v; want nil, nil", advice, got, err)
			}
		}
		checkOverrides(t, mustOverrides(t, s), nil)
		if evs, err := ReadJournal(ctx, s, time.Time{}); err != nil || len(evs) != 0 {
			t.Errorf("journal = %+v, %v; want nothing", evs, err)
		}
		if s.path != "" {
			if keys := boltTestKeys(t, s.path, boltOverrides); len(keys) != 0 {
				t.Errorf("overrides bucket holds %q", keys)
			}
		}
	})
}

// TestTuneNoJournal checks that Tune writes overrides but no event when
// the configuration turns the journal off.
func TestTuneNoJournal(t *testing.T) {
	eachJournalStore(t, func(t *testing.T, s journalStore) {
		ctx := context.Background()
		cfg := Config{Telemetry: TelemetryConfig{NoJournal: true}}
		if _, err := Tune(ctx, s, []Advice{{Host: "a.example", Key: "fail_max", Proposed: "3"}}, cfg, ""); err != nil {
			t.Fatal(err)
		}
		checkOverrides(t, mustOverrides(t, s), map[string]Policy{"a.example": {FailMax: 3}})
		checkTuneEvents(t, tuneJournal(t, s), nil)
	})
}

// TestTuneStoreFails checks that Tune returns the error of a store it
// cannot read, and writes nothing.
func TestTuneStoreFails(t *testing.T) {
	s := boltTestOpen(t, boltTestPath(t))
	_ = s.Close()
	got, err := Tune(context.Background(), s, []Advice{{Host: "a.example", Key: "fail_max", Proposed: "3"}}, Config{}, "")
	if err == nil || got != nil {
		t.Errorf("Tune on a closed store = %+v, %v; want an error", got, err)
	}
	if err := RevertTuning(context.Background(), s, "all", ""); err == nil {
		t.Error("RevertTuning on a closed store = nil")
	}
}

func TestRevertTuning(t *testing.T) {
	eachJournalStore(t, func(t *testing.T, s journalStore) {
		ctx := context.Background()
		mustPutOverride(t, s, "api.example.org", Policy{FailMax: 3, Roles: map[string]Policy{"pdf": {ResetTimeout: 45 * time.Second}}})
		mustPutOverride(t, s, "*.example.net", Policy{TrialCalls: 2})
		mustPutOverride(t, s, "b.example", Policy{SuccessThreshold: 2})
		other := s.open()

		if err := RevertTuning(ctx, s, "HTTPS://API.Example.org/", "operator"); err != nil {
			t.Fatalf("RevertTuning(one): %v", err)
		}
		checkOverrides(t, mustOverrides(t, other), map[string]Policy{"*.example.net": {TrialCalls: 2}, "b.example": {SuccessThreshold: 2}})
		checkTuneEvents(t, tuneJournal(t, s), []tuneEvent{
			{"api.example.org", "", "fail_max = 3\nroles.pdf.reset_timeout = \"45s\"", "", "operator: tuning reverted"},
		})
		// A key without an override: no error, no event.
		if err := RevertTuning(ctx, s, "api.example.org", "again"); err != nil {
			t.Fatalf("RevertTuning of a key without an override: %v", err)
		}
		if err := RevertTuning(ctx, s, "bad host", ""); err == nil {
			t.Error("RevertTuning of an invalid host = nil")
		}
		if n := len(tuneJournal(t, s)); n != 1 {
			t.Errorf("%d events; want 1", n)
		}

		if err := RevertTuning(ctx, s, "all", ""); err != nil {
			t.Fatalf("RevertTuning(all): %v", err)
		}
		checkOverrides(t, mustOverrides(t, other), nil)
		checkTuneEvents(t, tuneJournal(t, s)[1:], []tuneEvent{
			{"*.example.net", "", "trial_calls = 2", "", "tuning reverted"},
			{"b.example", "", "success_threshold = 2", "", "tuning reverted"},
		})
		if err := RevertTuning(ctx, s, "all", ""); err != nil {
			t.Fatalf("RevertTuning(all) of nothing: %v", err)
		}
		if n := len(tuneJournal(t, s)); n != 3 {
			t.Errorf("%d events; want 3", n)
		}

		// Tune, revert, tune again: the previous value comes from the advice again.
		adv := []Advice{{Host: "c.example", Key: "fail_max", Current: "5", Proposed: "3", Reason: "r"}}
		for range 2 {
			if _, err := Tune(ctx, s, adv, Config{}, "n"); err != nil {
				t.Fatal(err)
			}
			if err := RevertTuning(ctx, s, "c.example", "n"); err != nil {
				t.Fatal(err)
			}
		}
		checkTuneEvents(t, tuneJournal(t, s)[3:], []tuneEvent{
			{"c.example", "", "fail_max = 5", "fail_max = 3", "n: r"},
			{"c.example", "", "fail_max = 3", "", "n: tuning reverted"},
			{"c.example", "", "fail_max = 5", "fail_max = 3", "n: r"},
			{"c.example", "", "fail_max = 3", "", "n: tuning reverted"},
		})
	})
}

func TestParseTuneValue(t *testing.T) {
	for _, c := range []struct {
		key, s string
		want   Policy
		ok     bool
	}{
		{"fail_max", "5", Policy{FailMax: 5}, true},
		{"fail_max", " 5 ", Policy{FailMax: 5}, true},
		{"fail_max", "1_0", Policy{FailMax: 10}, true},
		{"fail_max", "0x10", Policy{FailMax: 16}, true},
		{"fail_max", "0", Policy{FailMax: -1}, true}, // out of range, not "inherit"
		{"fail_max", "-7", Policy{FailMax: -1}, true},
		{"fail_max", "99999999999999999", Policy{FailMax: maxCount + 1}, true},
		{"success_threshold", "2", Policy{SuccessThreshold: 2}, true},
		{"trial_calls", "3", Policy{TrialCalls: 3}, true},
		{"reset_timeout", "45s", Policy{ResetTimeout: 45 * time.Second}, true},
		{"reset_timeout", `"45s"`, Policy{ResetTimeout: 45 * time.Second}, true},
		{"reset_timeout", `'1m30s'`, Policy{ResetTimeout: 90 * time.Second}, true},
		{"reset_timeout", "0s", Policy{ResetTimeout: -1}, true},
		{"reset_timeout", "-5s", Policy{ResetTimeout: -1}, true},
		{"fail_max", "", Policy{}, false},
		{"fail_max", "five", Policy{}, false},
		{"fail_max", "5.0", Policy{}, false},
		{"fail_max", `"5"`, Policy{}, false},
		{"fail_max", "true", Policy{}, false},
		{"fail_max", "[5]", Policy{}, false},
		{"fail_max", "5\nx = 1", Policy{}, false},
		{"reset_timeout", "", Policy{}, false},
		{"reset_timeout", "45", Policy{}, false},
		{"reset_timeout", `"soon"`, Policy{}, false},
		{"reset_timeout", "99999999999h", Policy{}, false},
		{"rate", "5", Policy{Rate: 5}, true},
		{"rate", "2.5", Policy{Rate: 2.5}, true},
		{"rate", " 0.05 ", Policy{Rate: 0.05}, true},
		{"rate", "1e7", Policy{Rate: 1e7}, true}, // out of range; the bounds clamp it
		{"rate", "1_000", Policy{Rate: 1000}, true},
		{"rate", "0", Policy{}, false}, // unlimited
		{"rate", "0.0", Policy{}, false},
		{"rate", "-1", Policy{}, false},
		{"rate", "nan", Policy{}, false},
		{"rate", "inf", Policy{}, false},
		{"rate", `"5"`, Policy{}, false},
		{"rate", "5/s", Policy{}, false},
		{"rate", "", Policy{}, false},
	} {
		got, err := parseTuneValue(c.key, c.s)
		if (err == nil) != c.ok || c.ok && !reflect.DeepEqual(got, c.want) {
			t.Errorf("parseTuneValue(%s, %q) = %+v, %v; want %+v, ok %v", c.key, c.s, got, err, c.want, c.ok)
		}
	}
}

// TestTuneRefusesUntunedKeys: the keys Advise leaves alone (docs/advise.md)
// cannot be written as overrides either, so they need no tune bounds.
func TestTuneRefusesUntunedKeys(t *testing.T) {
	for _, p := range []Policy{
		{FailureRate: 0.5}, {SlowCallRate: 0.5, SlowCall: time.Second}, {MinRequests: 5}, {Window: time.Minute},
		{MaxResetTimeout: time.Hour}, {MaxConcurrent: 4}, {Mode: ModeShadow},
		{Roles: map[string]Policy{"feed": {FailureRate: 0.5}}},
	} {
		if _, err := tunedPolicy(p); err == nil || !strings.Contains(err.Error(), "can be tuned") {
			t.Errorf("tunedPolicy(%+v) = %v, want a refusal", p, err)
		}
	}
}
