package hostbreaker

// This file holds the Transport's clock: the time base of every deadline
// on the request path. The rule it keeps for the whole package is stated
// with the lock order in doc.go; the stores' wall-clock times are
// converted where they are read (sharing.go).

import (
	"context"
	"math/rand/v2"
	"time"
)

// clock reads the monotonic time of one Transport, as ns since its epoch.
// The breaker and the limiter take it (or a time read from it) without
// reaching back into the Transport; it is passed by pointer, a word on the
// hot path. The zero clock counts from
// the zero time and is not used.
type clock struct {
	epoch time.Time // 1 s before the Transport's creation, so that no time read from it is 0, which means "none"
}

// now returns the monotonic time since the epoch, in ns.
func (c *clock) now() int64 { return int64(time.Since(c.epoch)) }

// after returns the deadline d after now (ns since the epoch), d capped at
// MaxOpen.
func (c *clock) after(now int64, d time.Duration) int64 {
	return now + int64(min(d, MaxOpen))
}

// at converts a time since the epoch to a time.Time.
func (c *clock) at(ns int64) time.Time { return c.epoch.Add(time.Duration(ns)) }

// MaxOpen is the longest a host can be opened for: [Transport.Open] and
// [OpenHost] cap their duration at it, and a Transport bounds every
// deadline it sets by it, so that no duration from a configuration, a
// server or an operator overflows the clock or a store's timestamps. It is
// ten years.
const MaxOpen = 10 * 365 * 24 * time.Hour

// jitter returns a random duration in [0, max], max capped at MaxOpen.
func jitter(max time.Duration) time.Duration {
	if max <= 0 {
		return 0
	}
	return rand.N(min(max, MaxOpen) + 1)
}

// sleep waits d or until ctx is done, and reports whether d passed.
func sleep(ctx context.Context, d time.Duration) bool {
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-timer.C:
		return true
	case <-ctx.Done():
		return false
	}
}
