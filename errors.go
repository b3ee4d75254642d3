package hostbreaker

// This file holds the errors a Transport returns for the requests it
// rejects: ErrOpen, OpenError and the Reasons. Configuration errors
// (ConfigError) are in config.go.

import (
	"errors"
	"fmt"
	"time"
)

// ErrOpen is the sentinel matched by every rejection hostbreaker makes.
// Test for it with errors.Is(err, ErrOpen); use errors.As with *OpenError
// to learn the host, role, reason and retry time.
var ErrOpen = errors.New("hostbreaker: host is not accepting requests")

// Reason says why a request was rejected or why a host is cooling down.
// The zero value means no reason (the host is not cooling down).
type Reason string

// The reasons a request can be rejected.
const (
	// ReasonBreakerOpen: the (host, role) breaker is open after consecutive failures.
	ReasonBreakerOpen Reason = "breaker-open"
	// ReasonHalfOpenFull: the breaker is half-open and all trial slots are taken.
	ReasonHalfOpenFull Reason = "half-open-full"
	// ReasonRetryAfter: the host answered 429 or 503 with Retry-After.
	ReasonRetryAfter Reason = "retry-after"
	// ReasonRollingWindow: the host failed too often within the rolling window.
	ReasonRollingWindow Reason = "rolling-window"
	// ReasonManual: an operator opened the host.
	ReasonManual Reason = "manual"
	// ReasonRateLimited: the host's rate limiter would let the request go
	// only after its MaxWait, or more than half the time left before its
	// context's deadline; Until is its turn.
	ReasonRateLimited Reason = "rate-limited"
	// ReasonConcurrencyLimited: the host's max_concurrent requests were in
	// flight (their bodies not yet closed) and no slot freed within the
	// request's MaxWait, or half the time left before its context's
	// deadline; Until is zero.
	ReasonConcurrencyLimited Reason = "concurrency-limited"
)

// OpenError is the error a Transport returns, without calling its base
// transport, for a request it rejects. It matches ErrOpen under errors.Is.
//
// Until is when the host or breaker may accept requests again; it is the zero
// time for ReasonHalfOpenFull and ReasonConcurrencyLimited, where the
// requests in flight decide.
// Each rejection returns a new OpenError that nothing else refers to.
type OpenError struct {
	Host   string
	Role   string
	Reason Reason
	Until  time.Time
}

// Error describes the rejection.
func (e *OpenError) Error() string {
	role := e.Role
	if role == "" {
		role = `""`
	}
	if e.Until.IsZero() {
		return fmt.Sprintf("hostbreaker: %s (role %s): %s", e.Host, role, e.Reason)
	}
	return fmt.Sprintf("hostbreaker: %s (role %s): %s until %s", e.Host, role, e.Reason,
		e.Until.UTC().Format(time.RFC3339))
}

// Is reports whether target is ErrOpen.
func (e *OpenError) Is(target error) bool { return target == ErrOpen }
