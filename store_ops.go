package hostbreaker

// This file holds the operator's writes to a Store without a Transport:
// OpenHost and ResetHost write the records that Transport.Open and
// Transport.Reset share (sharing.go), for tools such as cmd/breaker. The
// Store, Record and the rules of Put are in store.go.

import (
	"context"
	"fmt"
	"time"
)

// OpenHost writes to s the manual cooldown that [Transport.Open] shares:
// host, every role, paused for d from at, with note for the operators.
// Every Transport sharing s rejects the host's requests with
// [ReasonManual] within its poll interval, until the time is up or the
// host is reset. It returns the Record it wrote.
//
// host may be a name, host:port or a URL (see [NormalizeHost]). d must be
// positive; it is capped at [MaxOpen]. at is the record's At and the start
// of d, wall clock; the zero time means time.Now(). source is the record's
// Source, the writer as `breaker show` names it; "" leaves it empty. It
// must not be the source of a Transport that shares s: a Transport skips
// the records it wrote itself. The record is merged by the rules of
// [Store.Put]: it replaces the host's current cooldown, even a longer one,
// unless a reset marker of the host is as recent as at.
//
// A host that does not parse or a d that is not positive is an error and
// writes nothing; an error of Put is returned as it is. OpenHost is safe
// for concurrent use: it keeps no state and writes through s, which is.
func OpenHost(ctx context.Context, s Store, at time.Time, host string, d time.Duration, note, source string) (Record, error) {
	name, err := NormalizeHost(host)
	if err != nil {
		return Record{}, fmt.Errorf("hostbreaker: open %q: %w", host, err)
	}
	if d <= 0 {
		return Record{}, fmt.Errorf("hostbreaker: open %s: duration %v is not positive", name, d)
	}
	at = wallTime(at)
	r := Record{Host: name, Reason: ReasonManual, Until: at.Add(min(d, MaxOpen)), At: at, Note: note, Source: source}
	if err := s.Put(ctx, r); err != nil {
		return Record{}, err
	}
	return r, nil
}

// ResetHost writes to s the reset marker that [Transport.Reset] shares:
// every Transport sharing s clears the host's cooldowns and closes its
// breakers within its poll interval. The store deletes the host's records
// written at or before at; the marker stays for ten minutes, long enough
// for every process to see it. It returns the Record it wrote.
//
// host, at and source are as for [OpenHost]. A host that does not parse
// is an error and writes nothing; an error of Put is returned as it is.
// ResetHost is safe for concurrent use.
func ResetHost(ctx context.Context, s Store, at time.Time, host, source string) (Record, error) {
	name, err := NormalizeHost(host)
	if err != nil {
		return Record{}, fmt.Errorf("hostbreaker: reset %q: %w", host, err)
	}
	at = wallTime(at)
	r := Record{Host: name, Reason: ReasonReset, Until: at.Add(resetRetention), At: at, Source: source}
	if err := s.Put(ctx, r); err != nil {
		return Record{}, err
	}
	return r, nil
}

// wallTime returns at, or time.Now() when at is zero.
func wallTime(at time.Time) time.Time {
	if at.IsZero() {
		return time.Now()
	}
	return at
}
