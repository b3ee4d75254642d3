package hostbreaker

// This file holds the host cooldown, which every role of a host shares: the
// gate that rejects requests while it lasts, Retry-After and quota-header
// (RateLimit-Reset) obedience with their parsers, the rolling window, and
// the operators' Open and Reset. The breaker of one (host, role) is in
// breaker.go; sharing cooldowns through the store is in sharing.go.

import (
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
)

// hostCooldown is the cold part of a host's cooldown, embedded in its
// hostState: why it cools down, since when, and its rolling window. The
// deadline itself, hostState.until, sits on the host's first cache line,
// where the request path reads it.
type hostCooldown struct {
	mu     sync.Mutex
	reason Reason  // why until is set; guarded by mu
	note   string  // operator's note for manual cooldowns; guarded by mu
	setAt  int64   // wall-clock unix ns when the cooldown was decided; guarded by mu
	window []int64 // rolling window: times of recent failures (ring); guarded by mu
	wnext  int32   // next slot of window; guarded by mu
	wn     int32   // slots in use; guarded by mu
}

// coolingDown reports whether h's cooldown lasts beyond now.
func (h *hostState) coolingDown(now int64) bool {
	u := h.until.Load()
	return u != 0 && now < u
}

// cooldown is a host cooldown to apply.
type cooldown struct {
	until  int64 // ns since the Transport's epoch
	reason Reason
	note   string
	manual bool  // replaces the current cooldown; any other only extends it
	remote bool  // read from the store: not shared again
	at     int64 // wall-clock unix ns when it was decided

	status     int           // the response that asked for it (Retry-After)
	retryAfter time.Duration // what it asked for, before the cap
}

// cool puts h in cooldown c, and reports whether it did: an automatic
// cooldown only ever extends the current one; a manual one replaces it.
func (h *hostState) cool(c cooldown, now int64) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	cur := h.until.Load()
	if !c.manual && cur > now && c.until <= cur {
		return false
	}
	h.reason, h.note, h.setAt = c.reason, c.note, c.at
	h.until.Store(c.until)
	return true
}

// gate returns the rejection of a request to h for role while h cools
// down. hu is h.until as the caller read it (not 0); c is read here. A
// cooldown that has ended is cleared, so that later requests skip the gate.
func (h *hostState) gate(hu int64, role string, c *clock) *OpenError {
	now := c.now()
	if now >= hu {
		h.until.CompareAndSwap(hu, 0) // expired
		return nil
	}
	return h.rejection(role, c, now)
}

// rejection returns the rejection for h's cooldown, reading the deadline
// and its reason together; nil if a reset ended it meanwhile.
func (h *hostState) rejection(role string, c *clock, now int64) *OpenError {
	h.mu.Lock()
	until, reason := h.until.Load(), h.reason
	h.mu.Unlock()
	if until == 0 || now >= until {
		return nil
	}
	return &OpenError{Host: h.name, Role: role, Reason: reason, Until: c.at(until)}
}

// obeyRetryAfter applies the Retry-After of a 429 or 503 response to the
// whole host, capped by the policy, and reports whether the header was
// usable.
func (t *Transport) obeyRetryAfter(host string, p *resolved, resp *http.Response) bool {
	if !mayRetryAfter(resp.StatusCode) {
		return false
	}
	v := resp.Header.Get("Retry-After")
	if v == "" || p.RetryAfterCap <= 0 {
		return false
	}
	wall := time.Now()
	d, ok := retryAfter(v, wall)
	if !ok {
		return false
	}
	t.emit(event{kind: evRetryAfter, host: host, retryAfter: min(d, p.RetryAfterCap)}) // every value received, capped, for the histogram
	t.setCooldown(host, cooldown{until: t.after(t.now(), min(d, p.RetryAfterCap)), reason: ReasonRetryAfter,
		at: wall.UnixNano(), status: resp.StatusCode, retryAfter: d})
	return true
}

// mayRetryAfter reports whether a response with code may carry a
// Retry-After that cools the host: 429 and 503.
func mayRetryAfter(code int) bool {
	return code == http.StatusTooManyRequests || code == http.StatusServiceUnavailable
}

// rollingFailure adds a failure to the host's rolling window and puts the
// host in cooldown when the window holds ThresholdFailures failures.
func (t *Transport) rollingFailure(h *hostState) {
	r := t.rolling
	now := t.now()
	h.mu.Lock()
	if len(h.window) != r.ThresholdFailures {
		h.window = make([]int64, r.ThresholdFailures)
		h.wnext, h.wn = 0, 0
	}
	n := int32(len(h.window))
	h.window[h.wnext] = now
	h.wnext = (h.wnext + 1) % n
	h.wn = min(h.wn+1, n)
	oldest := h.window[h.wnext%n] // the slot to be overwritten next is the oldest
	trip := h.wn == n && now-oldest <= int64(r.Window)
	if trip {
		h.wn = 0 // empty the window so that stale failures cannot trip it again
	}
	h.mu.Unlock()
	if trip {
		t.setCooldown(h.name, cooldown{until: t.after(now, r.Cooldown), reason: ReasonRollingWindow, at: time.Now().UnixNano()})
	}
}

// setCooldown puts host in cooldown c (see hostState.cool) and reports
// whether it did. A host that has no entry gets a state of its own, within
// the registry's bound on such hosts; past it the cooldown that ends
// soonest is dropped, counted and logged. It works under the registry
// lock, so that an eviction cannot drop the host before it cools down.
func (t *Transport) setCooldown(host string, c cooldown) bool {
	now := t.now()
	t.reg.mu.Lock()
	h, dropped := t.reg.bareHostLocked(host, c.until, now)
	applied := h != nil && h.cool(c, now)
	t.reg.mu.Unlock()
	if dropped != "" {
		t.cooldownsDropped.Add(1)
		t.emit(event{kind: evDropped, host: dropped})
	}
	if applied {
		if lim := h.lim.Load(); lim != nil {
			lim.hold(c.until, c.manual)
		}
		t.emit(event{kind: evCooldown, host: host, reason: c.reason, until: c.until, note: c.note, remote: c.remote,
			status: c.status, retryAfter: c.retryAfter})
	}
	return applied
}

// Open puts host (all roles) in a manual cooldown for d, with note for the
// operators. It replaces any current cooldown of the host, even a longer
// one; d is capped at ten years. host may be a name, host:port or a URL
// (see NormalizeHost). With a store, every Transport that shares it applies
// the cooldown too. It returns an error for a host that does not parse, a
// d that is not positive, or when the registry's bound on hosts that only
// cool down is reached and every one of them ends later.
func (t *Transport) Open(host string, d time.Duration, note string) error {
	name, err := NormalizeHost(host)
	if err != nil {
		return fmt.Errorf("hostbreaker: open %q: %w", host, err)
	}
	if d <= 0 {
		return fmt.Errorf("hostbreaker: open %s: duration %v is not positive", name, d)
	}
	c := cooldown{until: t.after(t.now(), d), reason: ReasonManual, note: note, manual: true, at: time.Now().UnixNano()}
	if !t.setCooldown(name, c) {
		return fmt.Errorf("hostbreaker: open %s: %d hosts cool down for longer already (the bound on hosts without a breaker)", name, t.reg.maxBare)
	}
	return nil
}

// Reset clears every cooldown of host, closes all its breakers and empties
// its rolling window. host may be a name, host:port or a URL (see
// NormalizeHost); one that does not parse is an error. With a store, every
// Transport that shares it resets the host too.
func (t *Transport) Reset(host string) error {
	name, err := NormalizeHost(host)
	if err != nil {
		return fmt.Errorf("hostbreaker: reset %q: %w", host, err)
	}
	t.resetLocal(name, time.Now().UnixNano(), false)
	return nil
}

// resetLocal resets a normalized host in this Transport: its breakers, and
// its cooldown if that was decided at or before at (wall-clock unix ns), so
// that a reset read late from the store does not clear a newer cooldown.
// remote says that the reset came from the store.
func (t *Transport) resetLocal(name string, at int64, remote bool) {
	h, entries := t.reg.hostEntries(name)
	if h != nil {
		h.mu.Lock()
		if h.setAt <= at {
			h.until.Store(0)
			h.reason, h.note = "", ""
			if lim := h.lim.Load(); lim != nil {
				lim.hold(t.now(), true) // the cooldown's hold ends with it
			}
		}
		h.wn = 0
		h.mu.Unlock()
		for _, e := range entries {
			e.reset()
		}
	}
	t.emit(event{kind: evReset, host: name, remote: remote})
}

// obeyQuota applies the quota headers of a response of e: with
// RateLimit-Remaining: 0 (or X-RateLimit-Remaining: 0), the host cools down
// until RateLimit-Reset (or X-RateLimit-Reset), capped like a Retry-After.
// The header maps are read directly: their keys are canonical.
// It reports whether it cooled the host.
func (t *Transport) obeyQuota(e *entry, p *resolved, resp *http.Response) bool {
	h := resp.Header
	resetKey := "Ratelimit-Reset"
	rem, ok := h["Ratelimit-Remaining"]
	if !ok {
		if rem, ok = h["X-Ratelimit-Remaining"]; !ok {
			return false
		}
		resetKey = "X-Ratelimit-Reset"
	}
	if e.flags.Load()&flagQuota == 0 {
		e.flags.Or(flagQuota) // it sends them: read them on every response
	}
	host := e.host.name
	if len(rem) == 0 || strings.TrimSpace(rem[0]) != "0" || p.RetryAfterCap <= 0 {
		return false
	}
	reset := h[resetKey]
	if len(reset) == 0 {
		return false
	}
	wall := time.Now()
	d, ok := rateLimitReset(reset[0], wall)
	if !ok || d <= 0 {
		return false
	}
	t.setCooldown(host, cooldown{until: t.after(t.now(), min(d, p.RetryAfterCap)), reason: ReasonRetryAfter,
		at: wall.UnixNano(), status: resp.StatusCode, retryAfter: d, note: resetKey})
	return true
}

// retryAfter returns how long from now a Retry-After header value asks the
// client to wait. It accepts delta-seconds and HTTP-dates (RFC 9110 §10.2.3).
// ok is false for a missing, unparsable, zero, negative or past value. A
// delta too large for a time.Duration is returned as the largest one, so
// that the caller's cap applies to it like to any other large value.
func retryAfter(value string, now time.Time) (d time.Duration, ok bool) {
	value = strings.TrimSpace(value)
	if value == "" {
		return 0, false
	}
	if isDigits(value) {
		secs, err := strconv.ParseUint(value, 10, 64)
		if err != nil || secs > uint64(maxDuration/time.Second) {
			// All digits, so the only possible error is overflow.
			return maxDuration, true
		}
		if secs == 0 {
			return 0, false
		}
		return time.Duration(secs) * time.Second, true
	}
	t, err := http.ParseTime(value)
	if err != nil {
		return 0, false
	}
	d = t.Sub(now)
	if d <= 0 {
		return 0, false
	}
	return d, true
}

// rateLimitReset returns how long from now a RateLimit-Reset or
// X-RateLimit-Reset value asks the client to wait: delta-seconds, as the
// IETF draft and most APIs send, or, for a value of at least 10⁹ (after
// 2001 as a Unix time, and more than 31 years as a delay), the Unix time
// in seconds at which the quota resets, as GitHub and others send. ok is
// false for a missing, unparsable, zero or past value.
func rateLimitReset(value string, now time.Time) (d time.Duration, ok bool) {
	value = strings.TrimSpace(value)
	if !isDigits(value) {
		return 0, false
	}
	secs, err := strconv.ParseUint(value, 10, 64)
	if err != nil || secs > uint64(maxDuration/time.Second) {
		return maxDuration, true // all digits: an overflow, capped by the caller
	}
	if secs >= unixResetMin {
		d = time.Unix(int64(secs), 0).Sub(now)
	} else {
		d = time.Duration(secs) * time.Second
	}
	if d <= 0 {
		return 0, false
	}
	return d, true
}

// unixResetMin is the least rate-limit reset value read as a Unix time.
const unixResetMin = 1_000_000_000

const maxDuration = time.Duration(1<<63 - 1)
