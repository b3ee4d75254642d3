package hostbreaker

// Tests of store.go's stored encodings: the fuzzers of cooldown records and
// published states.

import (
	"reflect"
	"testing"
	"time"
)

func FuzzDecodeRecord(f *testing.F) {
	at := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, r := range []Record{
		{Host: "example.com", Reason: ReasonRetryAfter, Until: at.Add(time.Minute), At: at},
		{Host: "api.crossref.org:8443", Role: "metadata", Reason: ReasonManual, Until: at.Add(time.Hour), At: at, Note: "maintenance ☃", Source: "host-1/42"},
		{Host: "[::1]:8080", Reason: ReasonReset, Until: at.Add(time.Second), At: at.Add(time.Nanosecond)},
		{Host: "xn--bcher-kva.example", Reason: ReasonRollingWindow, Until: at, At: at},
		{Host: "example.com", Reason: ReasonBreakerOpen, Role: "artifact", Until: at, At: at},
	} {
		f.Add(encodeRecord(r))
	}
	for _, s := range []string{
		``, `null`, `{}`, `[]`, `{"v":2,"host":"example.com","reason":"manual","until":1,"at":1}`,
		`{"v":1,"host":"EXAMPLE.com","reason":"manual","until":1,"at":1}`,
		`{"v":1,"host":"example.com","reason":"bogus","until":1,"at":1}`,
		`{"v":1,"host":"example.com","reason":"manual","until":0,"at":1}`,
		`{"v":1,"host":"example.com","reason":"manual","until":1,"at":1,"note":"\ud800\u0000"}`,
		`{"v":1,"host":"example.com","reason":"manual","until":9223372036854775807,"at":1,"extra":true}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := decodeRecord(data)
		if err != nil {
			return
		}
		enc := encodeRecord(r)
		r2, err := decodeRecord(enc)
		if err != nil {
			t.Fatalf("decodeRecord(encodeRecord(%+v)) = %v (encoded %s)", r, err, enc)
		}
		if !recordsEqual(r, r2) {
			t.Fatalf("round trip changed the record:\n%+v\n%+v", r, r2)
		}
		if r.Until.IsZero() || r.At.IsZero() {
			t.Fatalf("decoded zero times: %+v", r)
		}
	})
}

func recordsEqual(a, b Record) bool {
	return a.Host == b.Host && a.Role == b.Role && a.Reason == b.Reason && a.Until.Equal(b.Until) &&
		a.At.Equal(b.At) && a.Note == b.Note && a.Source == b.Source
}

func FuzzDecodeStates(f *testing.F) {
	at := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	f.Add(encodeStates("host-1/42", nil, at))
	f.Add(encodeStates("host-1/42", []PublishedState{
		{Host: "example.com", State: StateClosed},
		{Host: "api.crossref.org", Role: "metadata", State: StateOpen, Until: at.Add(time.Minute), Reason: ReasonBreakerOpen},
		{Host: "[::1]:8080", State: StateHalfOpen, Reason: ReasonHalfOpenFull},
		{Host: "b.example", State: StateOpen, ConfigHash: "abc", ConfiguredRate: 5,
			Policy: Policy{FailMax: 4, ResetTimeout: time.Second, SuccessThreshold: 1, TrialCalls: 1, Rate: 2}},
		{Host: "c.example", State: StateClosed, Rate: 0.2, LastMax: 0.25, Throttled: at, Sending: true, Served: 0.55,
			FleetLimit: 4.5, FleetThrottled: at, FleetSource: "host-2/7", FleetKnown: true},
		{Host: "d.example", State: StateClosed, Sending: true,
			FleetLimit: 4.25, FleetThrottled: at, FleetSource: "host-3/9", FleetStart: true},
	}, at.Add(time.Minute)))
	for _, s := range []string{
		``, `null`, `{}`, `{"v":1,"source":"s","expires":1,"states":null}`,
		`{"v":1,"source":"s","expires":1,"states":[{"host":"h","state":"bogus"}]}`,
		`{"v":1,"source":"s","expires":1,"states":[{"host":"h","state":"open","until":-5}]}`,
		`{"v":1,"source":"s","expires":0,"states":[]}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		src, states, exp, err := decodeStates(data)
		if err != nil {
			return
		}
		if exp.IsZero() || states == nil {
			t.Fatalf("decodeStates(%q) = %q, %v, %v", data, src, states, exp)
		}
		enc := encodeStates(src, states, exp)
		src2, states2, exp2, err := decodeStates(enc)
		if err != nil {
			t.Fatalf("decodeStates(encodeStates(...)) = %v (encoded %s)", err, enc)
		}
		if src2 != src || !exp2.Equal(exp) || len(states2) != len(states) {
			t.Fatalf("round trip changed the states: %q %v %d -> %q %v %d", src, exp, len(states), src2, exp2, len(states2))
		}
		for i, s := range states {
			s2 := states2[i]
			if s.Source != src || s2.Source != src2 || s.Host != s2.Host || s.Role != s2.Role ||
				s.State != s2.State || s.Reason != s2.Reason || !s.Until.Equal(s2.Until) ||
				s.Sending != s2.Sending || s.Served != s2.Served || s.FleetLimit != s2.FleetLimit || s.FleetKnown != s2.FleetKnown || s.FleetStart != s2.FleetStart {
				t.Fatalf("round trip changed state %d: %+v -> %+v", i, s, s2)
			}
		}
	})
}

// A published rate that no limiter could hold (below minRateBound or above
// maxRate) is dropped when the states are read, with its LastMax; so is a
// served rate out of those bounds; the state itself is kept.
func TestDecodeStatesDropsRatesOutOfRange(t *testing.T) {
	at := time.Unix(1700000000, 0)
	for _, tc := range []struct {
		rate, lastMax float64
		keep          bool
	}{
		{0, 0, true},
		{0.001, 0.001, true},
		{2.5, 10, true},
		{maxRate, maxRate, true},
		{1e-12, 0, false},
		{0.0009, 2, false},
		{2, 1e-12, false},
		{maxRate * 2, 0, false},
		{-1, 0, false},
	} {
		data := encodeStates("s", []PublishedState{{Host: "a.test", State: StateClosed, Rate: tc.rate, LastMax: tc.lastMax, Throttled: at,
			Served: tc.rate}}, at.Add(time.Minute))
		_, states, _, err := decodeStates(data)
		if err != nil || len(states) != 1 || states[0].Host != "a.test" {
			t.Fatalf("decodeStates(%s) = %+v, %v", data, states, err)
		}
		s := states[0]
		if tc.keep && (s.Rate != tc.rate || s.LastMax != tc.lastMax) || !tc.keep && (s.Rate != 0 || s.LastMax != 0 || !s.Throttled.IsZero()) {
			t.Errorf("rate %v, last max %v: decoded %+v, want them kept: %v", tc.rate, tc.lastMax, s, tc.keep)
		}
		if keep := tc.rate == 0 || validRate(tc.rate); keep && s.Served != tc.rate || !keep && s.Served != 0 {
			t.Errorf("served %v: decoded %v, want it kept: %v", tc.rate, s.Served, keep)
		}
	}
}

// TestStatesPolicyRoundTrip: the policy in force survives the stored
// encoding; one out of range is dropped, the row kept.
func TestStatesPolicyRoundTrip(t *testing.T) {
	in := []PublishedState{
		{Source: "p", Host: "a.example", State: StateOpen, ConfigHash: "abc",
			Policy: Policy{FailMax: 4, ResetTimeout: 10 * time.Second, SuccessThreshold: 2, TrialCalls: 1, Rate: 2.5}, ConfiguredRate: 5},
		{Source: "p", Host: "b.example", State: StateOpen, ConfigHash: "abc", Policy: Policy{FailMax: 0, ResetTimeout: time.Second}},
		{Source: "p", Host: "c.example", State: StateOpen},
	}
	_, out, _, err := decodeStates(encodeStates("p", in, time.Now().Add(time.Minute)))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(out[0], in[0]) {
		t.Errorf("got %+v\nwant %+v", out[0], in[0])
	}
	if out[1].ConfigHash != "" || !reflect.DeepEqual(out[1].Policy, Policy{}) || out[1].Host != "b.example" {
		t.Errorf("out of range: got %+v", out[1])
	}
	if out[2].ConfigHash != "" {
		t.Errorf("none: got %+v", out[2])
	}
}
