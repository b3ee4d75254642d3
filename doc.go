// Package hostbreaker is an http.RoundTripper middleware that stops sending
// requests to hosts that are failing or rate-limiting you, obeys their
// Retry-After, and resumes by itself when they heal.
//
// Put a [Transport] between an http.Client and its transport:
//
//	tr, err := hostbreaker.NewTransport(http.DefaultTransport)
//	if err != nil { … }
//	defer tr.Close()
//	client := &http.Client{Transport: tr}
//
// A rejected request fails fast, without reaching the network, with an
// error that matches [ErrOpen]; errors.As gives the [*OpenError] with the
// host, the role, the [Reason] and when to come back.
//
// # Breakers per host and role
//
// Each (host, role) has its own circuit breaker, built on failsafe-go. A
// role says what a request is for ([RoleMetadata], [RoleLanding],
// [RoleArtifact], or any string); set it with [WithRole]. FailMax
// consecutive failures open the breaker; after ResetTimeout plus a random
// jitter it lets TrialCalls probes through (half-open); SuccessThreshold
// successful probes close it and a failed one reopens it. Which statuses are
// failures, neutral or successes is part of the [Policy]; an error from the
// base transport, a timeout included, is a failure unless the caller canceled
// the request. A 429 or 503 with a usable Retry-After counts neither way.
//
// # Cooldowns per host
//
// A 429 or 503 response with Retry-After (seconds or an HTTP date) puts the
// whole host, every role, in cooldown until then, capped by RetryAfterCap. A
// later cooldown extends the current one and never shortens it. The
// optional rolling window puts a host in cooldown when it fails too often
// across roles, and [Transport.Open] and [Transport.Reset] let operators
// pause and release a host.
//
// # Policy
//
// A [Config] (Go, or TOML through [ParseConfig] and [LoadConfig]) holds the
// defaults, per-role and per-host policies (exact names and "*.suffix"
// wildcards) and the bound on tracked (host, role) entries. [Transport.UpdateHostPolicy]
// changes a host's policy while requests flow, keeping breaker state.
//
// # Cost
//
// The healthy path (closed breaker, no cooldown) takes no lock and allocates
// nothing: it finds the breaker in a lock-free table (normalizing the host
// only when it is not written canonically already) and reads two atomic
// words. State changes are handed to a background goroutine,
// which [Transport.Close] stops.
package hostbreaker
