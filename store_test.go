package hostbreaker

import (
	"testing"
	"time"
)

// A published rate that no limiter could hold (below minRateBound or above
// maxRate) is dropped when the states are read, with its LastMax; the
// state itself is kept.
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
		data := encodeStates("s", []PublishedState{{Host: "a.test", State: StateClosed, Rate: tc.rate, LastMax: tc.lastMax, Throttled: at}}, at.Add(time.Minute))
		_, states, _, err := decodeStates(data)
		if err != nil || len(states) != 1 || states[0].Host != "a.test" {
			t.Fatalf("decodeStates(%s) = %+v, %v", data, states, err)
		}
		s := states[0]
		if tc.keep && (s.Rate != tc.rate || s.LastMax != tc.lastMax) || !tc.keep && (s.Rate != 0 || s.LastMax != 0 || !s.Throttled.IsZero()) {
			t.Errorf("rate %v, last max %v: decoded %+v, want them kept: %v", tc.rate, tc.lastMax, s, tc.keep)
		}
	}
}
