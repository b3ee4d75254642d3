package hostbreaker

// This file holds Tune and RevertTuning, which write advice to a store as
// tuned overrides, and the vocabulary of the tunable keys: names, values,
// bounds (TuneBounds), what an override may set. Advise, which proposes
// the values, is in advise.go; the overrides' stored form in store.go.

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math"
	"os"
	"reflect"
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
func joinReason(reason, extra string) string {
	if reason == "" {
		return extra
	}
	return reason + "; " + extra
}

// The tunable keys: the TOML keys that Advise suggests and Tune writes.
// tunableKeys, TuneBounds and the functions below (tunedFields, setsKey,
// setsField, currentValue, setValue, formatValue, roundValue, boundsOf,
// moreConservative, and tunedPolicy for an override) are the one
// definition of what each key is; advise.go, Tune and store.go use them.
const (
	keyFailMax          = "fail_max"
	keyRate             = "rate" // host-wide: at the top level of a Hosts key, never in a role
	keyResetTimeout     = "reset_timeout"
	keySuccessThreshold = "success_threshold"
	keyTrialCalls       = "trial_calls"
)

// tunableKeys are the tunable keys, sorted.
var tunableKeys = []string{keyFailMax, keyRate, keyResetTimeout, keySuccessThreshold, keyTrialCalls}

// A key's value is an int64: a count, a duration in ns, or a rate in
// micro-requests per second (µr/s, rateUnit per request per second).
// rateUnlimited is the value of no rate limit: above every rate, so that
// a lower rate is the more conservative, as a lower fail_max is. Rates
// are compared and bounded to the millionth of a request per second.
const (
	rateUnit      = 1e6
	rateUnlimited = math.MaxInt64
)

// TuneBounds are the hard bounds within which Tune changes policies. A
// zero field takes its default: FailMax [2, 10], ResetTimeout [15s, 10m],
// SuccessThreshold [1, 3], TrialCalls [1, 3], RateStep 0.25 (a rate changes
// by at most 25 % per tune, relative to the rate in force), MinRate 0.05.
type TuneBounds struct {
	FailMax          [2]int
	ResetTimeout     [2]time.Duration
	SuccessThreshold [2]int
	TrialCalls       [2]int
	RateStep         float64
	MinRate          float64
}

// check validates the bounds that b sets.
func (b TuneBounds) check() error {
	ints := func(key string, r [2]int, lo, hi int) error {
		if r == [2]int{} {
			return nil
		}
		if r[0] < lo || r[1] > hi || r[0] > r[1] {
			return &ConfigError{Key: "tune." + key, Msg: fmt.Sprintf("want [min, max] with %d ≤ min ≤ max ≤ %d, got [%d, %d]", lo, hi, r[0], r[1])}
		}
		return nil
	}
	if err := ints("fail_max", b.FailMax, 1, maxCount); err != nil {
		return err
	}
	if err := ints("success_threshold", b.SuccessThreshold, 1, maxCount); err != nil {
		return err
	}
	if err := ints("trial_calls", b.TrialCalls, 1, maxCount); err != nil {
		return err
	}
	if r := b.ResetTimeout; r != [2]time.Duration{} && (r[0] <= 0 || r[0] > r[1]) {
		return &ConfigError{Key: "tune.reset_timeout", Msg: fmt.Sprintf("want [min, max] with 0 < min ≤ max, got [%v, %v]", r[0], r[1])}
	}
	if b.RateStep < 0 || b.RateStep > 1 {
		return &ConfigError{Key: "tune.rate_step", Msg: fmt.Sprintf("must be in (0, 1], got %v", b.RateStep)}
	}
	if b.MinRate != 0 && !validRate(b.MinRate) {
		return &ConfigError{Key: "tune.min_rate", Msg: fmt.Sprintf("must be at least %v and at most %v requests per second, got %v", minRateBound, maxRate, b.MinRate)}
	}
	return nil
}

// withDefaults returns b with defaults in its zero fields.
func (b TuneBounds) withDefaults() TuneBounds {
	if b.FailMax == [2]int{} {
		b.FailMax = [2]int{2, 10}
	}
	if b.ResetTimeout == [2]time.Duration{} {
		b.ResetTimeout = [2]time.Duration{15 * time.Second, 10 * time.Minute}
	}
	if b.SuccessThreshold == [2]int{} {
		b.SuccessThreshold = [2]int{1, 3}
	}
	if b.TrialCalls == [2]int{} {
		b.TrialCalls = [2]int{1, 3}
	}
	if b.RateStep == 0 {
		b.RateStep = 0.25
	}
	if b.MinRate == 0 {
		b.MinRate = 0.05
	}
	return b
}

// tunedFields returns the tunable fields of p, without its roles.
func tunedFields(p Policy) Policy {
	return Policy{FailMax: p.FailMax, ResetTimeout: p.ResetTimeout, SuccessThreshold: p.SuccessThreshold,
		TrialCalls: p.TrialCalls, Rate: p.Rate}
}

// setsKey reports whether p sets the field of key.
func setsKey(p Policy, key string) bool {
	switch key {
	case keyFailMax:
		return p.FailMax != 0
	case keyRate:
		return p.Rate != 0
	case keyResetTimeout:
		return p.ResetTimeout != 0
	case keySuccessThreshold:
		return p.SuccessThreshold != 0
	default:
		return p.TrialCalls != 0
	}
}

// setsField reports whether p sets the tunable field that keys sets.
func setsField(p, keys Policy) bool {
	return slices.ContainsFunc(tunableKeys, func(k string) bool { return setsKey(keys, k) && setsKey(p, k) })
}

// currentValue returns the value of key in p. A rate ≤ 0 (unlimited, as
// written or resolved) is rateUnlimited.
func currentValue(p Policy, key string) int64 {
	switch key {
	case keyFailMax:
		return int64(p.FailMax)
	case keyRate:
		if !(p.Rate > 0) {
			return rateUnlimited
		}
		return rateMicros(p.Rate)
	case keyResetTimeout:
		return int64(p.ResetTimeout)
	case keySuccessThreshold:
		return int64(p.SuccessThreshold)
	default:
		return int64(p.TrialCalls)
	}
}

// setValue sets key in p; rateUnlimited sets a rate of -1.
func setValue(p *Policy, key string, v int64) {
	switch key {
	case keyFailMax:
		p.FailMax = int(v)
	case keyRate:
		p.Rate = -1
		if v != rateUnlimited {
			p.Rate = float64(v) / rateUnit
		}
	case keyResetTimeout:
		p.ResetTimeout = time.Duration(v)
	case keySuccessThreshold:
		p.SuccessThreshold = int(v)
	default:
		p.TrialCalls = int(v)
	}
}

// rateMicros returns r requests per second (r ≥ 0) in µr/s, rounded;
// rates beyond any bound are capped so as not to overflow.
func rateMicros(r float64) int64 {
	return int64(math.Round(min(r, 2*maxRate) * rateUnit))
}

// formatValue returns v as the TOML value of key: "5", "1m30s", "2.5", or
// "0" for an unlimited rate.
func formatValue(key string, v int64) string {
	switch key {
	case keyResetTimeout:
		return time.Duration(v).String()
	case keyRate:
		if v == rateUnlimited {
			return "0"
		}
		return formatRate(float64(v) / rateUnit)
	}
	return strconv.FormatInt(v, 10)
}

// roundValue rounds a proposed duration to the second; counts are whole
// already, and the rules round the rates they measure themselves
// (roundRate), as a rate they copy (a configured one) is kept as it is.
func roundValue(key string, v int64) int64 {
	if key == keyResetTimeout {
		return int64(time.Duration(v).Round(time.Second))
	}
	return v
}

// clampValue brings v within the bounds of key, now being the value in
// force.
func clampValue(key string, v, now int64, b TuneBounds) int64 {
	lo, hi := boundsOf(key, now, b)
	return min(max(v, lo), hi)
}

// boundsOf returns the tune bounds of key. For rate, they depend on now,
// the rate in force: at least b.MinRate (and minRateBound) and at most
// maxRate, and, unless now is unlimited, within b.RateStep of now. The
// bounds of a rate are empty (lo > hi) when now is so far below b.MinRate
// that no step reaches it.
func boundsOf(key string, now int64, b TuneBounds) (lo, hi int64) {
	switch key {
	case keyFailMax:
		return int64(b.FailMax[0]), int64(b.FailMax[1])
	case keyRate:
		lo, hi = max(rateMicros(b.MinRate), rateMicros(minRateBound)), rateMicros(maxRate)
		if now != rateUnlimited {
			lo = max(lo, int64(math.Round(float64(now)*(1-b.RateStep))))
			hi = min(hi, int64(math.Round(float64(now)*(1+b.RateStep))))
		}
		return lo, hi
	case keyResetTimeout:
		return int64(b.ResetTimeout[0]), int64(b.ResetTimeout[1])
	case keySuccessThreshold:
		return int64(b.SuccessThreshold[0]), int64(b.SuccessThreshold[1])
	default:
		return int64(b.TrialCalls[0]), int64(b.TrialCalls[1])
	}
}

// moreConservative reports whether v protects the host more than w does
// for key: a longer reset_timeout, a lower fail_max, a higher
// success_threshold, fewer trial_calls, a lower rate.
func moreConservative(key string, v, w int64) bool {
	switch key {
	case keyResetTimeout, keySuccessThreshold:
		return v > w
	default:
		return v < w
	}
}

// checkOverrideKey returns an error unless key is a Hosts key in the form
// that parseHostKey returns it: a normalized host, or "*" followed by a
// normalized suffix.
func checkOverrideKey(key string) error {
	host, suffix, err := parseHostKey(key)
	switch {
	case err != nil:
		return fmt.Errorf("key %q: %w", key, err)
	case suffix != "" && "*"+suffix != key:
		return fmt.Errorf("key %q: wildcard is not normalized (want %q)", key, "*"+suffix)
	case suffix == "" && host != key:
		return fmt.Errorf("key %q: host is not normalized (want %q)", key, host)
	}
	return nil
}

// tunedPolicy returns the tunable fields of p (FailMax, ResetTimeout,
// SuccessThreshold, TrialCalls, at the top level and per role; Rate at the
// top level) with the roles that set none dropped, and Roles nil when no
// role remains. It is an error for p to set any other field, to set Rate
// in a role, to nest roles, to name a role "" or with a NUL, or to set a
// count outside 1 to maxCount, a ResetTimeout that is not positive, or a
// Rate outside [minRateBound, maxRate].
func tunedPolicy(p Policy) (Policy, error) {
	fields := func(where string, p Policy, role bool) (Policy, error) {
		switch {
		case p.Rate != 0 && role:
			return Policy{}, fmt.Errorf("%srate: a rate limit is host-wide: tune it at the top level, not in a role", where)
		case p.Rate != 0 && !validRate(p.Rate):
			return Policy{}, fmt.Errorf("%srate: want at least %v and at most %v requests per second, got %v", where, minRateBound, maxRate, p.Rate)
		}
		if t := tunedFields(p); !reflect.DeepEqual(t, withoutRoles(p)) {
			return Policy{}, fmt.Errorf("%sonly %s can be tuned", where, strings.Join(tunableKeys, ", "))
		}
		for _, c := range []struct {
			key string
			n   int
		}{{"fail_max", p.FailMax}, {"success_threshold", p.SuccessThreshold}, {"trial_calls", p.TrialCalls}} {
			if c.n < 0 || c.n > maxCount {
				return Policy{}, fmt.Errorf("%s%s: want 1 to %d, got %d", where, c.key, maxCount, c.n)
			}
		}
		if p.ResetTimeout < 0 {
			return Policy{}, fmt.Errorf("%sreset_timeout: must be positive, got %v", where, p.ResetTimeout)
		}
		return tunedFields(p), nil
	}
	out, err := fields("", p, false)
	if err != nil {
		return Policy{}, err
	}
	for _, role := range slices.Sorted(maps.Keys(p.Roles)) {
		where := "roles." + quoteKey(role) + "."
		if role == "" || strings.ContainsRune(role, 0) {
			return Policy{}, fmt.Errorf("invalid role name %q", role)
		}
		rp := p.Roles[role]
		if len(rp.Roles) > 0 {
			return Policy{}, fmt.Errorf("%sroles: roles cannot nest", where)
		}
		rp, err := fields(where, rp, true)
		if err != nil {
			return Policy{}, err
		}
		if emptyTuned(rp) {
			continue
		}
		if out.Roles == nil {
			out.Roles = make(map[string]Policy)
		}
		out.Roles[role] = rp
	}
	return out, nil
}

// emptyTuned reports whether p, as tunedPolicy returns it, sets nothing.
func emptyTuned(p Policy) bool {
	return len(p.Roles) == 0 && !slices.ContainsFunc(tunableKeys, func(k string) bool { return setsKey(p, k) })
}

// cloneTuned returns a copy of p, as tunedPolicy returns it, that shares no
// map with it.
func cloneTuned(p Policy) Policy {
	p.Roles = maps.Clone(p.Roles)
	return p
}
