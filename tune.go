package hostbreaker

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
)

// Tune applies advice to every process that shares s: it clamps each proposal to
// cfg.Tune's bounds (withDefaults), writes the resulting overrides to the store
// (merged into the key's existing override, per role), appends a
// hostbreaker.policy_change event per change to the store's journal (so the audit
// trail exists even when no Transport runs), and returns what it wrote (Proposed
// as written; Reason extended with "clamped to [min, max]" when it was clamped).
//
// Each Advice sets one key of one Hosts key: Key is fail_max, rate,
// reset_timeout, success_threshold or trial_calls; Role "" is the key's
// top-level policy, any other role its Roles[Role] (rate is host-wide: its
// Role must be ""); Host is normalized with [NormalizeHost] unless it is a
// wildcard "*.suffix"; Proposed is a TOML value ("5", "45s" or "\"45s\"",
// "2.5"). A rate is a limit: a positive number of requests per second; it
// is clamped to at least cfg.Tune.MinRate and, unless the key has no rate
// limit in force, to within cfg.Tune.RateStep of the rate in force, which
// Tune resolves from cfg (the configuration, as for [Advise]) and the
// stored overrides, as every Transport does. Advice that Tune cannot apply
// (an unknown key, a host or value that does not parse, a rate of 0
// (unlimited: revert the tuning instead) or in a role, a rate whose bounds
// leave no value, or any rate advice when cfg is invalid) is an error that
// names every such advice by its index, host and key, and nothing is
// written; so are invalid bounds in cfg.Tune. Advice is applied in order,
// so a later one on the same key and role wins; one that proposes the
// value that the override already holds changes nothing and is left out of
// the result.
//
// Each event has the Hosts key as Host, the advice's Role, the key's previous
// value as PreviousPolicy ("fail_max = 5": the override's, or else the advice's
// Current; for rate, the rate in force, "rate = 0" when unlimited), the new one
// as Policy ("fail_max = 3") and note, a colon and the reason as Note. Events go
// to the journal within the limits of cfg.Telemetry (24h and 100000 events by
// default), unless cfg.Telemetry.NoJournal is set.
//
// The overrides of a key are read, merged and written back: two Tunes of the
// same key at the same time may lose one of the changes. When a write
// fails, Tune journals and returns what it wrote before, with the error.
func Tune(ctx context.Context, s Store, advice []Advice, cfg Config, note string) ([]Advice, error) {
	if len(advice) == 0 {
		return nil, nil
	}
	if err := cfg.Tune.check(); err != nil {
		return nil, fmt.Errorf("hostbreaker: tune: %w", err)
	}
	bounds := cfg.Tune.withDefaults()
	changes := make([]tuneChange, 0, len(advice))
	var errs []error
	for i, a := range advice {
		c, err := parseAdvice(a)
		if err != nil {
			errs = append(errs, fmt.Errorf("advice %d (%s %s): %w", i, a.Host, a.Key, err))
			continue
		}
		changes = append(changes, c)
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("hostbreaker: tune: nothing written: %w", errors.Join(errs...))
	}

	stored, err := s.Overrides(ctx)
	if err != nil {
		return nil, fmt.Errorf("hostbreaker: tune: %w", err)
	}
	var inForce *policyTable // cfg with the stored overrides: the rates in force
	for i := range changes {
		c := &changes[i]
		var now int64
		if c.advice.Key == keyRate {
			if inForce == nil {
				pt, err := cfg.validate()
				if err != nil {
					return nil, fmt.Errorf("hostbreaker: tune: nothing written: rate advice needs a valid configuration: %w", err)
				}
				inForce = withOverrides(pt, stored)
			}
			now = currentValue(inForce.keyPolicy(c.key), keyRate)
			var p Policy
			setValue(&p, keyRate, now)
			c.current = policyTOML(p, p)
		}
		if err := c.clamp(now, bounds); err != nil {
			errs = append(errs, fmt.Errorf("advice %d (%s %s): %w", i, c.advice.Host, c.advice.Key, err))
		}
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("hostbreaker: tune: nothing written: %w", errors.Join(errs...))
	}
	process := tuneProcess()
	working := make(map[string]Policy) // the new overrides of the keys changed, by key
	var keys []string                  // the keys changed, in the order of their first change
	var done []tuneDone
	for _, c := range changes {
		p, ok := working[c.key]
		if !ok {
			p = cloneTuned(stored[c.key])
		}
		level := p
		if c.advice.Role != "" {
			level = p.Roles[c.advice.Role]
		}
		prev := c.current // without an override, the value in force, as the advice says
		if setsField(level, c.value) {
			prev = policyTOML(level, c.value)
			if prev == policyTOML(c.value, c.value) {
				continue // the override holds this value already
			}
		}
		overlay(&level, c.value)
		if c.advice.Role == "" {
			level.Roles = p.Roles
			p = level
		} else {
			if p.Roles == nil {
				p.Roles = make(map[string]Policy)
			}
			p.Roles[c.advice.Role] = level
		}
		if !ok {
			keys = append(keys, c.key)
		}
		working[c.key] = p
		done = append(done, tuneDone{key: c.key, advice: c.advice, event: Event{
			Name:           EventPolicyChange,
			Time:           time.Now(),
			Process:        process,
			Host:           c.key,
			Role:           c.advice.Role,
			PreviousPolicy: prev,
			Policy:         policyTOML(c.value, c.value),
			Note:           joinNote(note, c.advice.Reason),
		}})
	}

	written := make(map[string]bool, len(keys))
	var werr error
	for _, key := range keys {
		if werr = s.PutOverride(ctx, key, working[key]); werr != nil {
			werr = fmt.Errorf("hostbreaker: tune: %w", werr)
			break
		}
		written[key] = true
	}
	var out []Advice
	var events []Event
	for _, d := range done {
		if written[d.key] {
			out = append(out, d.advice)
			events = append(events, d.event)
		}
	}
	if len(events) > 0 && !cfg.Telemetry.NoJournal {
		tc := cfg.Telemetry.withDefaults()
		limits := JournalLimits{Retention: tc.JournalRetention, MaxEvents: tc.JournalMaxEvents}
		if _, err := s.AppendEvents(ctx, events, limits); err != nil {
			werr = errors.Join(werr, fmt.Errorf("hostbreaker: tune: overrides written, but not journaled: %w", err))
		}
	}
	return out, werr
}

// RevertTuning removes the tuned overrides of host (a Hosts key), or of every key
// when host is "all", and journals a policy_change per removed key; afterwards the
// configuration's values apply again everywhere.
//
// host is normalized like an Advice's Host. A key without an override is no
// error, and journals nothing. Each event has the key as Host, the removed
// override as PreviousPolicy (as TOML, roles as roles.NAME.key lines), an
// empty Policy, and note, a colon and "tuning reverted" as Note. The
// events are appended without limits (RevertTuning has no configuration to
// take them from); the Transports sharing the journal enforce theirs at
// their next append.
func RevertTuning(ctx context.Context, s Store, host string, note string) error {
	var key string
	if host != "all" {
		k, err := tuneKey(host)
		if err != nil {
			return fmt.Errorf("hostbreaker: revert tuning: %w", err)
		}
		key = k
	}
	stored, err := s.Overrides(ctx)
	if err != nil {
		return fmt.Errorf("hostbreaker: revert tuning: %w", err)
	}
	var keys []string
	if host == "all" {
		keys = slices.Sorted(maps.Keys(stored))
	} else if _, ok := stored[key]; ok {
		keys = []string{key}
	}
	process := tuneProcess()
	var events []Event
	var werr error
	for _, key := range keys {
		if werr = s.PutOverride(ctx, key, Policy{}); werr != nil {
			werr = fmt.Errorf("hostbreaker: revert tuning: %w", werr)
			break
		}
		p := stored[key]
		events = append(events, Event{
			Name:           EventPolicyChange,
			Time:           time.Now(),
			Process:        process,
			Host:           key,
			PreviousPolicy: policyTOML(p, p),
			Note:           joinNote(note, "tuning reverted"),
		})
	}
	if len(events) > 0 {
		if _, err := s.AppendEvents(ctx, events, JournalLimits{}); err != nil {
			werr = errors.Join(werr, fmt.Errorf("hostbreaker: revert tuning: overrides removed, but not journaled: %w", err))
		}
	}
	return werr
}

// tuneChange is an Advice that Tune can apply.
type tuneChange struct {
	key     string // the Hosts key, normalized
	value   Policy // the one field the advice sets, clamped
	current string // the value in force before, as TOML, "" when unknown
	advice  Advice // as Tune returns it
}

// tuneDone is a change that Tune made: what it returns, and the event.
type tuneDone struct {
	key    string
	advice Advice
	event  Event
}

// parseAdvice returns the change that a asks for: its Hosts key, the field
// it sets, not yet clamped, and a with Host normalized.
func parseAdvice(a Advice) (tuneChange, error) {
	if !slices.Contains(tunableKeys, a.Key) {
		return tuneChange{}, fmt.Errorf("unknown key %q (want %s)", a.Key, strings.Join(tunableKeys, ", "))
	}
	key, err := tuneKey(a.Host)
	if err != nil {
		return tuneChange{}, err
	}
	if strings.ContainsRune(a.Role, 0) {
		return tuneChange{}, fmt.Errorf("invalid role %q", a.Role)
	}
	if a.Key == keyRate && a.Role != "" {
		return tuneChange{}, fmt.Errorf("rate is host-wide: want no role, got %q", a.Role)
	}
	value, err := parseTuneValue(a.Key, a.Proposed)
	if err != nil {
		return tuneChange{}, fmt.Errorf("proposed value: %w", err)
	}
	a.Host = key
	c := tuneChange{key: key, value: value, advice: a}
	if cur, err := parseTuneValue(a.Key, a.Current); err == nil {
		c.current = policyTOML(cur, cur)
	}
	return c, nil
}

// clamp brings c's value within bounds, now being the value in force (it
// matters for rate only), and sets Proposed to it; when it was clamped,
// the Reason says so. It is an error for the bounds to leave no value.
func (c *tuneChange) clamp(now int64, bounds TuneBounds) error {
	k := c.advice.Key
	lo, hi := boundsOf(k, now, bounds)
	if lo > hi {
		return fmt.Errorf("no %s within [%s, %s]: a step of at most %s from %s", k, formatValue(k, lo), formatValue(k, hi),
			formatPercent(bounds.RateStep*100), formatValue(k, now))
	}
	v := currentValue(c.value, k)
	if cv := min(max(v, lo), hi); cv != v {
		c.advice.Reason = joinReason(c.advice.Reason, "clamped to ["+formatValue(k, lo)+", "+formatValue(k, hi)+"]")
		v = cv
	}
	c.value = Policy{}
	setValue(&c.value, k, v)
	c.advice.Proposed = formatValue(k, v)
	return nil
}

// tuneKey returns the Hosts key that host names: a wildcard "*.suffix" with
// its suffix normalized, or the normalized host.
func tuneKey(host string) (string, error) {
	key, err := hostsKey(host)
	if err != nil {
		return "", fmt.Errorf("host %q: %w", host, err)
	}
	if err := checkOverrideKey(key); err != nil {
		return "", err
	}
	return key, nil
}

// parseTuneValue parses s, a TOML value, as the value of key and returns
// a Policy that sets only that field. A count is a TOML integer; a
// duration is a TOML string, or the same unquoted ("45s"), that
// time.ParseDuration reads; a rate is a TOML number, positive (0, which
// means unlimited, is an error). It does not check the range.
func parseTuneValue(key, s string) (Policy, error) {
	var v any
	var doc struct {
		V any `toml:"v"`
	}
	if md, err := toml.Decode("v = "+s, &doc); err == nil && len(md.Undecoded()) == 0 && !strings.ContainsAny(s, "\n\r") {
		v = doc.V
	} else {
		v = strings.TrimSpace(s) // an unquoted duration, or junk
	}
	switch key {
	case keyResetTimeout:
		str, ok := v.(string)
		if !ok {
			return Policy{}, fmt.Errorf("%s = %s: want a duration such as \"45s\"", key, s)
		}
		d, err := time.ParseDuration(str)
		if err != nil {
			return Policy{}, fmt.Errorf("%s = %s: want a duration such as \"45s\"", key, s)
		}
		if d <= 0 {
			d = -1 // not zero, which means inherit; the bounds clamp it
		}
		return Policy{ResetTimeout: d}, nil
	case keyRate:
		var r float64
		switch n := v.(type) {
		case int64:
			r = float64(n)
		case float64:
			r = n
		default:
			return Policy{}, fmt.Errorf("%s = %s: want a number of requests per second", key, s)
		}
		if !(r > 0) || math.IsInf(r, 0) {
			return Policy{}, fmt.Errorf("%s = %s: want a positive number of requests per second (0, unlimited, cannot be tuned: revert the tuning instead)", key, s)
		}
		return Policy{Rate: r}, nil
	}
	n, ok := v.(int64)
	if !ok {
		return Policy{}, fmt.Errorf("%s = %s: want an integer", key, s)
	}
	n = min(max(n, -1), maxCount+1) // out of range either way; the bounds clamp it
	if n == 0 {
		n = -1 // not zero, which means inherit
	}
	var p Policy
	setValue(&p, key, n)
	return p, nil
}

// setsField reports whether p sets the tunable field that keys sets.
func setsField(p, keys Policy) bool {
	return slices.ContainsFunc(tunableKeys, func(k string) bool { return setsKey(keys, k) && setsKey(p, k) })
}

// tuneProcess names the process that runs Tune in its events:
// "tune:hostname:pid".
func tuneProcess() string {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "unknown"
	}
	return "tune:" + host + ":" + strconv.Itoa(os.Getpid())
}

// joinNote returns note, ": " and reason, or whichever is not empty.
func joinNote(note, reason string) string {
	switch {
	case note == "":
		return reason
	case reason == "":
		return note
	}
	return note + ": " + reason
}

// joinReason returns reason extended with more: "reason; more".
func joinReason(reason, more string) string {
	if reason == "" {
		return more
	}
	return reason + "; " + more
}
