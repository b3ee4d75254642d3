package hostbreaker

// This file holds what a Transport shows of its state: Status and
// Snapshot, read from the registry (registry.go), the breakers (breaker.go),
// the host cooldowns (cooldown.go) and the limiters (ratelimit.go). What it
// publishes to a store for other processes is in sharing.go.

import (
	"slices"
	"strings"
	"time"
)

// Status is the state of one (host, role) at the time of a Snapshot: a
// value, detached from the Transport.
type Status struct {
	Host  string
	Role  string
	State State     // effective: an open breaker whose delay has passed is half-open
	Until time.Time // when an open breaker or host cooldown ends; zero if none
	// Reason is why State is not closed: the breaker (breaker-open) or the
	// host's cooldown (retry-after, rolling-window, manual), whichever ends
	// later. Empty when closed or half-open.
	Reason Reason
	Note   string // the operator's note of a manual cooldown

	// Rate is the host's rate limit now, in requests per second: the
	// configured rate, or the rate its limiter learnt from throttling
	// responses; 0 when the host is not limited. It is host-wide: every
	// role of the host shows the same.
	Rate float64

	// Counters since the entry was created. Requests is the sum of the other
	// four: requests that completed or were rejected.
	Requests, Successes, Failures, Neutral, Rejected uint64

	// Shadow is true when the host's mode is "shadow": State is what its
	// breaker and cooldown decide, but no request is rejected. WouldReject
	// counts the requests it sent that it would have rejected (they are
	// counted in Successes, Failures or Neutral too, never in Rejected).
	Shadow      bool
	WouldReject uint64
}

// Snapshot returns the status of every known (host, role), sorted by host
// then role. A host in cooldown that has no breaker yet is listed with role "".
func (t *Transport) Snapshot() []Status { return t.statuses(false) }

// statuses returns the sorted statuses; with unhealthy, only those that are
// not closed or whose host has a learnt rate, which costs little when few
// are.
func (t *Transport) statuses(unhealthy bool) []Status {
	now := t.now()
	var out []Status
	t.reg.each(func(h *hostState, e *entry) {
		if e == nil { // a host in cooldown with no entry
			if h.coolingDown(now) {
				s := Status{Host: h.name}
				t.hostStatus(h, now, &s, 0)
				out = append(out, s)
			}
			return
		}
		if unhealthy && phaseOf(e.st.Load()) == phaseClosed && !h.coolingDown(now) && !learning(h) && !e.pol.Load().shadow {
			return
		}
		s := Status{
			Host: e.host.name, Role: e.role,
			Successes: e.successes.Load(), Failures: e.failures.Load(),
			Neutral: e.neutral.Load(), Rejected: e.rejected.Load(),
		}
		s.Requests = s.Successes + s.Failures + s.Neutral + s.Rejected
		s.Shadow = e.pol.Load().shadow
		if x := e.extra.Load(); x != nil {
			s.WouldReject = x.wouldReject.Load()
		}
		var until int64
		if s.State, until = e.status(now); s.State == StateOpen {
			s.Reason = ReasonBreakerOpen
		}
		t.hostStatus(h, now, &s, until)
		out = append(out, s)
	})
	slices.SortFunc(out, func(a, b Status) int {
		if c := strings.Compare(a.Host, b.Host); c != 0 {
			return c
		}
		return strings.Compare(a.Role, b.Role)
	})
	return out
}

// learning reports whether h's limiter has learnt a rate from throttles:
// such a host is listed among the unhealthy ones (and so published), a
// host paced only at its configured rate is not.
func learning(h *hostState) bool {
	lim := h.lim.Load()
	return lim != nil && lim.learning()
}

// hostStatus lays the host's cooldown over s when it ends later than the
// breaker's open deadline.
func (t *Transport) hostStatus(h *hostState, now int64, s *Status, breakerUntil int64) {
	h.mu.Lock()
	hu, reason, note := h.until.Load(), h.reason, h.note
	h.mu.Unlock()
	if hu > now && hu > breakerUntil {
		s.State, s.Reason, s.Note, breakerUntil = StateOpen, reason, note, hu
	}
	if breakerUntil > 0 {
		s.Until = t.at(breakerUntil)
	}
	if lim := h.lim.Load(); lim != nil {
		s.Rate = lim.status().rate
	}
}
