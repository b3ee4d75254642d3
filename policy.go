package hostbreaker

// This file holds the resolution of policies: a Config's policies compiled
// into a policyTable, the effective policy of a (host, role) laid from its
// levels (overlay), and the Transport's live changes to them
// (UpdateHostPolicy, tuned overrides) and its Policy. The configuration
// types, defaults and validation are in config.go; the TOML form in toml.go.

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"
	"sync"
)

// overlay sets in dst every field that src sets; roles are merged role by role.
func overlay(dst *Policy, src Policy) {
	if src.FailMax != 0 {
		dst.FailMax = src.FailMax
	}
	if src.ResetTimeout != 0 {
		dst.ResetTimeout = src.ResetTimeout
	}
	if src.SuccessThreshold != 0 {
		dst.SuccessThreshold = src.SuccessThreshold
	}
	if src.TrialCalls != 0 {
		dst.TrialCalls = src.TrialCalls
	}
	if src.RetryAfterCap != 0 {
		dst.RetryAfterCap = src.RetryAfterCap
	}
	if src.HalfOpenJitter != 0 {
		dst.HalfOpenJitter = src.HalfOpenJitter
	}
	if src.FailureStatuses != nil {
		dst.FailureStatuses = slices.Clone(src.FailureStatuses)
	}
	if src.NeutralStatuses != nil {
		dst.NeutralStatuses = slices.Clone(src.NeutralStatuses)
	}
	if src.Rate != 0 {
		dst.Rate = src.Rate
	}
	if src.Burst != 0 {
		dst.Burst = src.Burst
	}
	if src.MaxWait != 0 {
		dst.MaxWait = src.MaxWait
	}
	if src.Adaptive != ToggleInherit {
		dst.Adaptive = src.Adaptive
	}
	if src.MinRate != 0 {
		dst.MinRate = src.MinRate
	}
	if src.ThrottleStatuses != nil {
		dst.ThrottleStatuses = slices.Clone(src.ThrottleStatuses)
	}
	if src.MaxConcurrent != 0 {
		dst.MaxConcurrent = src.MaxConcurrent
	}
	if src.FailureRate != 0 {
		dst.FailureRate = src.FailureRate
	}
	if src.MinRequests != 0 {
		dst.MinRequests = src.MinRequests
	}
	if src.Window != 0 {
		dst.Window = src.Window
	}
	if src.MaxResetTimeout != 0 {
		dst.MaxResetTimeout = src.MaxResetTimeout
	}
	if src.SlowCall != 0 {
		dst.SlowCall = src.SlowCall
	}
	if src.SlowCallRate != 0 {
		dst.SlowCallRate = src.SlowCallRate
	}
	if src.Mode != ModeInherit {
		dst.Mode = src.Mode
	}
	if len(src.Roles) > 0 {
		roles := make(map[string]Policy, len(dst.Roles)+len(src.Roles))
		maps.Copy(roles, dst.Roles)
		for name, rp := range src.Roles {
			merged := roles[name]
			overlay(&merged, rp)
			roles[name] = merged
		}
		dst.Roles = roles
	}
}

// resolved is the effective policy of one (host, role), ready for the hot path.
type resolved struct {
	// extras has a bit for each feature of the policy that costs something
	// on every request (see extraSlots): a request under a policy with
	// none, to a Transport without a classifier, passes them all by one
	// branch. First, before the statuses that classify reads.
	extras   uint8
	statuses statusSet // FailureStatuses and NeutralStatuses as bitmaps
	throttle statusSet // ThrottleStatuses, in the failure bitmap
	// windowed: a rate rule is on (FailureRate, or SlowCallRate with
	// SlowCall), so that every outcome goes to the breaker's window and
	// no success takes the healthy path.
	windowed bool
	shadow   bool // Mode is ModeShadow
	Policy        // flattened: every field set, no Roles, durations, rates and Rate ≥ 0 (0: off)
}

// The features that cost something on every request they apply to, as
// bits of resolved.extras, computed when the policy resolves, and of
// Transport.extras.
const (
	extraSlots      = 1 << iota // MaxConcurrent > 0: a slot per request (concurrency.go)
	extraSlow                   // SlowCall > 0: every request is timed
	extraShadow                 // Mode is shadow
	extraWindowed               // a rate rule is on: every outcome goes to the breaker's window
	extraClassifier             // the Transport has a classifier (Transport.extras only)
)

// extrasOf returns the extras bits of p, a resolved policy.
func extrasOf(p Policy) uint8 {
	var x uint8
	if p.MaxConcurrent > 0 {
		x |= extraSlots
	}
	if p.SlowCall > 0 {
		x |= extraSlow
	}
	if p.Mode == ModeShadow {
		x |= extraShadow
	}
	if p.FailureRate > 0 || p.SlowCallRate > 0 {
		x |= extraWindowed
	}
	return x
}

// goPolicy returns r's policy in its Go form, where a value that is off
// or unlimited is negative rather than 0 (which would inherit): what
// Transport.Policy returns, and what UpdateHostPolicy can take back.
func (r *resolved) goPolicy() Policy {
	p := r.Policy
	if p.Rate == 0 {
		p.Rate = RateUnlimited
	}
	if p.FailureRate == 0 {
		p.FailureRate = -1
	}
	if p.SlowCallRate == 0 {
		p.SlowCallRate = -1
	}
	if p.SlowCall == 0 {
		p.SlowCall = -1
	}
	if p.MaxConcurrent == 0 {
		p.MaxConcurrent = -1
	}
	return p
}

// isThrottle reports whether a response with code is one of the policy's
// throttle statuses: a "too fast" that feeds the host's limiter when the
// policy is adaptive, and that is never a success (classify.go,
// throttleOutcome).
func (r *resolved) isThrottle(code int) bool {
	return r.throttle.classify(code) == outcomeFailure
}

// policyTable is a compiled, immutable set of policies.
type policyTable struct {
	defaults Policy            // built-ins overlaid with Config.Defaults
	exact    map[string]Policy // normalized host -> policy
	wild     []wildPolicy      // longest suffix first
	cache    sync.Map          // [2]string{host entry id, role} -> *resolved
}

type wildPolicy struct {
	suffix string // ".example.org"
	key    string // the key as written, for errors
	policy Policy
}

// compilePolicies validates the policies of c and compiles them.
func compilePolicies(c Config) (*policyTable, error) {
	if err := checkPolicy("defaults", c.Defaults); err != nil {
		return nil, err
	}
	pt := &policyTable{defaults: builtinPolicy(), exact: make(map[string]Policy)}
	overlay(&pt.defaults, c.Defaults)
	for _, key := range slices.Sorted(maps.Keys(c.Hosts)) {
		var p Policy
		overlay(&p, c.Hosts[key]) // a deep copy: the caller keeps its Config
		prefix := "hosts." + quoteKey(key)
		if err := checkPolicy(prefix, p); err != nil {
			return nil, err
		}
		host, suffix, err := parseHostKey(key)
		if err != nil {
			return nil, &ConfigError{Key: prefix, Msg: err.Error()}
		}
		if suffix != "" {
			for _, w := range pt.wild {
				if w.suffix == suffix {
					return nil, &ConfigError{Key: prefix, Msg: "same wildcard as key " + quoteKey(w.key) + " after normalization"}
				}
			}
			pt.wild = append(pt.wild, wildPolicy{suffix: suffix, key: key, policy: p})
			continue
		}
		if _, dup := pt.exact[host]; dup {
			return nil, &ConfigError{Key: prefix, Msg: "same host as another key after normalization: " + host}
		}
		pt.exact[host] = p
	}
	sortWild(pt.wild)
	// Check the effective combinations, where lists from different levels meet.
	for _, role := range roleNames(pt.defaults, Policy{}) {
		if _, err := pt.resolveWith(pt.defaults, Policy{}, role, "defaults"); err != nil {
			return nil, err
		}
	}
	for _, key := range slices.Sorted(maps.Keys(c.Hosts)) {
		p := c.Hosts[key]
		for _, role := range roleNames(pt.defaults, p) {
			if _, err := pt.resolveWith(pt.defaults, p, role, "hosts."+quoteKey(key)); err != nil {
				return nil, err
			}
		}
	}
	return pt, nil
}

// roleNames returns "" and every role named in defaults or host.
func roleNames(defaults, host Policy) []string {
	names := []string{""}
	for r := range defaults.Roles {
		names = append(names, r)
	}
	for r := range host.Roles {
		if _, ok := defaults.Roles[r]; !ok {
			names = append(names, r)
		}
	}
	sort.Strings(names)
	return names
}

// hostPolicy returns the Hosts entry that applies to host, if any, and an
// id of the entry ("" for none).
func (pt *policyTable) hostPolicy(host string) (Policy, string) {
	if p, ok := pt.exact[host]; ok {
		return p, "=" + host
	}
	name := host
	if i := strings.LastIndexByte(host, ':'); i >= 0 && !strings.HasSuffix(host, "]") {
		name = host[:i]
		if p, ok := pt.exact[name]; ok {
			return p, "=" + name
		}
	}
	for _, w := range pt.wild {
		if strings.HasSuffix(name, w.suffix) {
			return w.policy, "*" + w.suffix
		}
	}
	return Policy{}, ""
}

// resolve returns the effective policy of (host, role). Hosts that match
// the same Hosts entry (or none) share one *resolved per role, and every
// role that no table names shares the one of "no role table": the cache
// is bounded by the configuration, whatever roles requests carry.
func (pt *policyTable) resolve(host, role string) (*resolved, error) {
	hp, id := pt.hostPolicy(host)
	ck := [2]string{id, unnamedRole}
	if _, ok := pt.defaults.Roles[role]; ok {
		ck[1] = role
	} else if _, ok := hp.Roles[role]; ok {
		ck[1] = role
	}
	if r, ok := pt.cache.Load(ck); ok {
		return r.(*resolved), nil
	}
	r, err := pt.resolveWith(pt.defaults, hp, role, "hosts."+quoteKey(host))
	if err != nil {
		return nil, err
	}
	v, _ := pt.cache.LoadOrStore(ck, r)
	return v.(*resolved), nil
}

// unnamedRole is the cache key of the roles that no role table names; a
// role name cannot hold NUL in TOML.
const unnamedRole = "\x00"

func (pt *policyTable) resolveWith(defaults, host Policy, role, where string) (*resolved, error) {
	p := builtinPolicy()
	overlay(&p, withoutRoles(defaults))
	overlay(&p, defaults.Roles[role])
	overlay(&p, withoutRoles(host))
	overlay(&p, host.Roles[role])
	for _, f := range p.FailureStatuses {
		if slices.Contains(p.NeutralStatuses, f) {
			key := where
			if role != "" {
				key += ".roles." + quoteKey(role)
			}
			return nil, &ConfigError{Key: key, Msg: fmt.Sprintf("status %d is both a failure and neutral", f)}
		}
	}
	if p.SlowCallRate > 0 && p.SlowCall <= 0 {
		key := where
		if role != "" {
			key += ".roles." + quoteKey(role)
		}
		return nil, &ConfigError{Key: key + ".slow_call_rate", Msg: "needs slow_call: the duration past which a response is slow"}
	}
	p.RetryAfterCap = max(p.RetryAfterCap, 0)
	p.HalfOpenJitter = max(p.HalfOpenJitter, 0)
	p.Rate = max(p.Rate, 0)
	p.MaxWait = max(p.MaxWait, 0)
	p.MaxConcurrent = max(p.MaxConcurrent, 0)
	if p.MinRate > p.Rate && p.Rate > 0 {
		p.MinRate = p.Rate // a ceiling under the floor wins
	}
	p.FailureRate = max(p.FailureRate, 0)
	p.SlowCallRate = max(p.SlowCallRate, 0)
	p.SlowCall = max(p.SlowCall, 0)
	p.MaxResetTimeout = max(p.MaxResetTimeout, p.ResetTimeout) // unset or below: no growth
	return &resolved{Policy: p, statuses: newStatusSet(p.FailureStatuses, p.NeutralStatuses),
		throttle: newStatusSet(p.ThrottleStatuses, nil),
		windowed: p.FailureRate > 0 || p.SlowCallRate > 0, shadow: p.Mode == ModeShadow, extras: extrasOf(p)}, nil
}

func withoutRoles(p Policy) Policy {
	p.Roles = nil
	return p
}

// parseHostKey parses a Hosts key: an exact host, returned normalized, or
// a wildcard "*.suffix", returned as its normalized suffix with the dot
// (".example.org").
func parseHostKey(key string) (host, suffix string, err error) {
	if rest, ok := strings.CutPrefix(key, "*."); ok {
		suffix, err := normalizeHost("", rest)
		if err == nil && strings.ContainsAny(suffix, ":[") {
			err = errors.New("a wildcard matches names, without a port")
		}
		if err != nil {
			return "", "", errors.New("invalid wildcard host: " + err.Error())
		}
		return "", "." + suffix, nil
	}
	host, err = normalizeHost("", key)
	if err != nil {
		return "", "", errors.New("invalid host: " + err.Error())
	}
	return host, "", nil
}

// hostsKey returns the Hosts key that s names, as UpdateHostPolicy and
// Tune take it: a wildcard "*.suffix" with its suffix normalized, or a
// host (a name, host:port or URL) normalized.
func hostsKey(s string) (string, error) {
	if strings.HasPrefix(s, "*.") {
		_, suffix, err := parseHostKey(s)
		if err != nil {
			return "", err
		}
		return "*" + suffix, nil
	}
	name, err := NormalizeHost(s)
	if err != nil {
		return "", errors.New("invalid host: " + err.Error())
	}
	return name, nil
}

// sortWild orders wildcards longest suffix first: the most specific wins.
func sortWild(w []wildPolicy) {
	sort.SliceStable(w, func(i, j int) bool { return len(w[i].suffix) > len(w[j].suffix) })
}

// withUpdate returns a copy of pt in which p is laid over the policy of
// the Hosts key (an exact host or a wildcard), and the id that hostPolicy
// returns for the hosts that key matches. The key's policy starts from what
// applies to it now: its own entry, else for a host the entry that matches
// it, for a wildcard the shorter wildcard that covers it.
func (pt *policyTable) withUpdate(key string, p Policy) (*policyTable, string, error) {
	host, suffix, err := parseHostKey(key)
	if err != nil {
		return nil, "", &ConfigError{Key: "hosts." + quoteKey(key), Msg: err.Error()}
	}
	c := &policyTable{defaults: pt.defaults, exact: maps.Clone(pt.exact), wild: slices.Clone(pt.wild)}
	var merged Policy
	var id, where string
	if suffix == "" {
		cur, _ := pt.hostPolicy(host)
		overlay(&merged, cur)
		overlay(&merged, p)
		c.exact[host] = merged
		id, where = "="+host, "hosts."+quoteKey(host)
	} else {
		i := slices.IndexFunc(c.wild, func(w wildPolicy) bool { return w.suffix == suffix })
		if i < 0 {
			for _, w := range pt.wild {
				if strings.HasSuffix(suffix, w.suffix) {
					overlay(&merged, w.policy)
					break
				}
			}
			c.wild = append(c.wild, wildPolicy{suffix: suffix, key: "*" + suffix})
			i = len(c.wild) - 1
		} else {
			overlay(&merged, c.wild[i].policy)
		}
		overlay(&merged, p)
		c.wild[i].policy = merged
		sortWild(c.wild)
		id, where = "*"+suffix, "hosts."+quoteKey("*"+suffix)
	}
	for _, role := range roleNames(c.defaults, merged) {
		if _, err := c.resolveWith(c.defaults, merged, role, where); err != nil {
			return nil, "", err
		}
	}
	return c, id, nil
}

// keyPolicy returns the policy in force for a Hosts key: the built-in
// defaults and Defaults, overlaid with the key's own entry or, for a host
// without one, the entry that matches it.
func (pt *policyTable) keyPolicy(key string) Policy {
	p := builtinPolicy()
	overlay(&p, pt.defaults)
	overlay(&p, pt.keyOwn(key))
	return p
}

// keyOwn returns the Hosts entry that applies to the Hosts key: its own,
// else for a host the entry that matches it, for a wildcard the shorter
// wildcard that covers it.
func (pt *policyTable) keyOwn(key string) Policy {
	if suffix, ok := strings.CutPrefix(key, "*"); ok {
		for _, w := range pt.wild {
			if strings.HasSuffix(suffix, w.suffix) {
				return w.policy
			}
		}
		return Policy{}
	}
	own, _ := pt.hostPolicy(key)
	return own
}

// keyInForce returns the values in force for the Hosts key, for a policy
// change event: keyPolicy's top level, and for each role that keys names,
// that role's effective policy (its own fields, else the key's, else the
// defaults' role table and the defaults), so that an event shows the value
// that applied, never a zero for a field the role does not set.
func (pt *policyTable) keyInForce(key string, keys Policy) Policy {
	p := withoutRoles(pt.keyPolicy(key))
	if len(keys.Roles) == 0 {
		return p
	}
	own := pt.keyOwn(key)
	p.Roles = make(map[string]Policy, len(keys.Roles))
	for role := range keys.Roles {
		if r, err := pt.resolveWith(pt.defaults, own, role, "hosts."+quoteKey(key)); err == nil {
			p.Roles[role] = r.Policy
		}
	}
	return p
}

// resolve returns the current effective policy of (host, role).
func (t *Transport) resolve(host, role string) *resolved {
	p, err := t.policies.Load().resolve(host, role)
	if err != nil {
		// Validation checks every combination that can occur, so this is a
		// bug; fall back to the defaults rather than fail requests. The
		// registry calls this under its lock: the loop logs it.
		t.emit(event{kind: evResolveError, host: host, role: role, note: err.Error()})
		p, _ = (&policyTable{defaults: builtinPolicy()}).resolve(host, role)
	}
	return p
}

// UpdateHostPolicy changes a policy while the Transport runs: the fields
// that p sets (non-zero, see Policy) and its roles are laid over the policy
// of the Hosts key host, which is written as in Config.Hosts: an exact host
// (a name, host:port or URL) or a wildcard "*.example.org". It applies to
// exactly the (host, role)s that the key matches (see Config), those that
// exist and those created later: once it returns, every one of them uses
// the new policy. Breaker state is kept: an open breaker stays open until
// its current deadline, cooldowns are kept, and a closed breaker keeps its
// failure count (up to one less than the new FailMax). An invalid key or
// result is a *ConfigError and changes nothing.
func (t *Transport) UpdateHostPolicy(host string, p Policy) error {
	key, err := hostsKey(host)
	if err != nil {
		return &ConfigError{Key: "hosts." + quoteKey(host), Msg: err.Error()}
	}
	if err := checkPolicy("hosts."+quoteKey(key), p); err != nil {
		return err
	}
	t.mu.Lock()
	before := t.policies.Load().keyInForce(key, p)
	configured, _, err := t.configured.withUpdate(key, p)
	if err != nil {
		t.mu.Unlock()
		return err
	}
	t.configured = configured
	skipped := t.applyPoliciesLocked()
	t.emit(event{kind: evPolicy, host: key, prevPolicy: policyTOML(before, p),
		policy: policyTOML(t.policies.Load().keyInForce(key, p), p), note: "UpdateHostPolicy"})
	t.mu.Unlock()
	t.logSkipped(skipped)
	return nil
}

// applyPoliciesLocked publishes the policy table in force, t.configured
// with the tuned overrides laid over it, and switches every entry to it.
// Callers hold t.mu. It returns the overrides it could not apply, for the
// caller to log once it has released the lock.
//
// Entries are created under the registry lock with the policy table of
// that moment: publishing the table and updating the entries under the
// same lock leaves no entry behind.
func (t *Transport) applyPoliciesLocked() (skipped []skippedOverride) {
	pt := t.configured
	for _, key := range slices.Sorted(maps.Keys(t.overrides)) {
		npt, _, err := pt.withUpdate(key, t.overrides[key])
		if err != nil {
			// Tune validated it against its bounds; a configuration that
			// conflicts with it (a status list, say) keeps its values.
			skipped = append(skipped, skippedOverride{key, err})
			continue
		}
		pt = npt
	}
	t.reg.mu.Lock()
	defer t.reg.mu.Unlock()
	t.policies.Store(pt)
	t.reg.tab.Load().each(func(h *hostState) {
		h.each(func(e *entry) {
			np, _ := pt.resolve(h.name, e.role)
			e.setPolicy(np)
		})
		if hp, err := pt.resolve(h.name, ""); err == nil && !h.bare() {
			t.syncLimiter(h, hp) // the rate limits are host-wide: any role's policy has them
			h.syncBulkhead(hp)   // so is max_concurrent (concurrency.go)
		}
	})
	return skipped
}

// skippedOverride is a tuned override that applyPoliciesLocked could not
// apply, and why.
type skippedOverride struct {
	key string
	err error
}

// logSkipped logs the tuned overrides that were not applied.
func (t *Transport) logSkipped(skipped []skippedOverride) {
	for _, s := range skipped {
		t.log.Warn("hostbreaker: tuned policy not applied", "key", s.key, "err", s.err)
	}
}

// Policy returns the effective policy of (host, role) now: every field
// resolved, from the built-in defaults, the configuration, UpdateHostPolicy
// and the tuned overrides read from the store, in that order. Its Roles is
// nil. A value that is off or unlimited is in its Go form: Rate is
// RateUnlimited for a host without a rate limit, FailureRate, SlowCall,
// SlowCallRate and MaxConcurrent are -1 when off, never 0 (which would
// inherit), so the result can be given back to UpdateHostPolicy. host
// may be a name, host:port or a URL. It is safe for concurrent use.
func (t *Transport) Policy(host, role string) (Policy, error) {
	name, err := NormalizeHost(host)
	if err != nil {
		return Policy{}, fmt.Errorf("hostbreaker: policy of %q: %w", host, err)
	}
	p, err := t.policies.Load().resolve(name, role)
	if err != nil {
		return Policy{}, err
	}
	out := p.goPolicy()
	out.FailureStatuses = slices.Clone(out.FailureStatuses)
	out.NeutralStatuses = slices.Clone(out.NeutralStatuses)
	return out, nil
}
