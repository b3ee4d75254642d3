package hostbreaker

// Tests of the Transport's clock: MaxOpen bounds every deadline.

import (
	"testing"
	"testing/synctest"
	"time"
)

func TestHugeDurationsAreCapped(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cfg := Config{Defaults: Policy{FailMax: 1, ResetTimeout: time.Duration(1<<63 - 1), RetryAfterCap: time.Duration(1<<63 - 1),
			HalfOpenJitter: time.Duration(1<<63 - 1)}}
		base := newFakeHosts(status(500))
		c, tr := client(t, base, cfg)
		start := time.Now()
		for _, tc := range []struct {
			host   string
			reason Reason
			setup  func()
		}{
			{"open.test", ReasonManual, func() { tr.Open("open.test", time.Duration(1<<63-1), "") }},
			{"trip.test", ReasonBreakerOpen, func() { get(t, c, "", "https://trip.test/") }},
			{"ra.test", ReasonRetryAfter, func() {
				base.set(status(429, "Retry-After", "99999999999999999999"))
				get(t, c, "", "https://ra.test/")
			}},
		} {
			tc.setup()
			oe := mustReject(t, do(t, c, "", "https://"+tc.host+"/").err, tc.reason)
			if want := start.Add(MaxOpen); !oe.Until.Equal(want) {
				t.Errorf("%s: until %v, want now + 10 years (%v)", tc.host, oe.Until, want)
			}
		}
	})
}
