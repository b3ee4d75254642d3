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
// the request or the caller's deadline ended it early (see docs/config.md).
// A 429 or 503 with a usable Retry-After counts neither way; [WithClassifier]
// can override any of it. A failure rate over a rolling window
// (Policy.FailureRate) or a rate of slow responses (Policy.SlowCallRate) can
// open the breaker too, whichever rule fires first; Policy.MaxResetTimeout
// lets the open time double while probes fail, and a host in shadow mode
// (Policy.Mode) decides and reports but rejects nothing.
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

// Invariants of the package, stated once for every file.
//
// Times. On the request path a time is an int64 of nanoseconds since the
// Transport's epoch, read from the monotonic clock (clock.go); 0 means
// "none", which the epoch, 1 s before the Transport's creation, keeps
// unambiguous. The breaker and the limiter take such times (or the clock)
// in and never read the wall clock. Stores, records and events hold
// wall-clock times (time.Time, or Unix nanoseconds where a field says so),
// converted to and from epoch times where they cross (sharing.go, and
// journal.go for events).
//
// Locks. Each mutex, with the locks that may be taken while it is held
// (its nesting, outermost first). A lock never waits for one above it; a
// leaf takes no other lock. No lock is held across base.RoundTrip, store
// I/O, logging or a user's callback: events are queued (emit) under a lock
// at most, and logged by the background goroutine.
//   - Transport.mu serializes policy changes (UpdateHostPolicy, tuned
//     overrides) → registry.mu.
//   - registry.mu guards the registry's structure (its table, the hosts'
//     entry lists, its counts, interned roles) → hostState.mu (a cooldown
//     set while the host is found or added), entry.mu (a policy switched),
//     limiter.mu (a limiter started or reconfigured).
//   - telemetry.mu (otel.go) guards the metric series and host names of a
//     collection → hostState.mu, limiter.mu (reading a cooldown or a rate).
//   - hostState.mu (hostCooldown.mu) guards a host's cooldown reason, note
//     and time set, and its rolling window; hostState.until is an atomic
//     written under it → limiter.mu (a reset releases the limiter's hold).
//   - entry.mu guards a breaker's failsafe-go breaker, its probes, its
//     rate-rule window and its open-time doublings; st,
//     fails and mark change only under it and are read without it → the
//     failsafe-go breaker's own lock. Transitions are returned, and
//     reported after it is released.
//   - Leaves: limiter.mu (a limiter's every field), entryStats.mu (an
//     entry's outcome runs), sharing.mu (the writes queued for the store),
//     and the stores' own: boltStore.mu, boltFiles, redisStore.mu, never
//     held with any lock above.
//
// Generations. An outcome is applied only in the breaker generation it was
// admitted in (entry.st packs the generation with the phase; an admission
// carries it), so a slow request cannot close or reopen a breaker whose
// state it did not see.
