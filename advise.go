package hostbreaker

// This file holds Advise: the rules that read a journal and suggest policy
// changes, and the replay that says what a suggestion would have done.
// docs/advise.md describes every rule and its thresholds; the tunable keys
// and their values are defined in tune.go.

import (
	"bytes"
	"cmp"
	"fmt"
	"maps"
	"math"
	"math/bits"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Advice is one suggested policy change for a host, or a (host, role),
// with the reason behind it and, for the breaker keys, what it would have
// done on the recorded traffic. It is plain data: it can be printed,
// stored, and given to Tune.
type Advice struct {
	Host     string  `json:"host"`     // normalized host, or a Hosts key
	Role     string  `json:"role"`     // "" when the key is host-wide or for requests without a role
	Key      string  `json:"key"`      // the TOML key: fail_max, reset_timeout, success_threshold, trial_calls, rate
	Current  string  `json:"current"`  // TOML value in force, e.g. "5", "60s", "0"
	Proposed string  `json:"proposed"` // TOML value suggested, within the tune bounds
	Reason   string  `json:"reason"`   // one sentence with the numbers behind it
	Replay   *Replay `json:"replay,omitempty"`
	// From says where Current comes from: FromConfig, FromPublished,
	// FromDiffers or FromAssumed (see AdviseWith).
	From string `json:"from,omitempty"`
}

// Replay is what the breaker rules would have done on a (host, role)'s
// recorded outcome sequence, under the policy in force and under the
// proposed one. It is an estimate: the sequence is recorded as runs of
// equal outcomes, and the outcomes of rejected requests are unknown.
type Replay struct {
	FailuresSentCurrent      int `json:"failures_sent_current"`      // failures that reached the host under the current policy
	FailuresSentProposed     int `json:"failures_sent_proposed"`     // …under the proposed one
	SuccessesBlockedProposed int `json:"successes_blocked_proposed"` // successes the proposed policy would have rejected
	Unknown                  int `json:"unknown"`                    // recorded rejections: their outcome is unknown
}

// The thresholds of Advise's rules, all in one place; docs/advise.md
// explains each. Ratios are whole percentages so that no float decides a
// rule.
const (
	// A host with fewer requests than this in the window gets no advice.
	adviseMinRequests = 20

	// Rule 1, 429 share: at least this share of the requests sent to a
	// host (not those rejected without being sent) answered 429 asks for a rate of num/den of its successful request
	// rate, or of the rate its adaptive limiter learnt.
	advise429Pct      = 5
	adviseAcceptedNum = 4 // × 0.8 of the successful request rate
	adviseAcceptedDen = 5
	adviseLearntNum   = 9 // × 0.9 of the learnt rate
	adviseLearntDen   = 10

	// Rule 2, Retry-After: the Retry-After values a host must have sent.
	adviseMinRetryAfters = 3

	// Rule 3, open durations: the closed trips needed for a median.
	adviseMinClosedTrips = 2

	// Rule 4, flapping: openings by a failed probe, and the factor
	// (num/den) applied to reset_timeout.
	adviseFlapTrips = 3
	adviseFlapNum   = 3
	adviseFlapDen   = 2

	// Rule 5, probes: at least this many probes, failing at least this
	// share, ask for these values.
	adviseMinProbes             = 2
	adviseProbeFailPct          = 50
	adviseProbeSuccessThreshold = 2
	adviseProbeTrialCalls       = 1

	// Rule 6, transient trips: at least this many trips closed by their
	// first probe, at least this share of the trips; the failure runs that
	// ended in a success, at this percentile, reach fail_max − 1; then
	// fail_max grows by this step.
	adviseMinTransient   = 2
	adviseTransientPct   = 50
	adviseBurstPct       = 95
	adviseFailMaxStep    = 2
	adviseMinOutageTrips = 2 // rule 6, long outages: every trip's first probe failed
	adviseOutageFailMax  = 3 // …and fail_max above this comes down to it

	// Rule 7, recovery: a rate tuned down, on a host that answered no 429
	// and no failure, grows by num/den, up to the configured rate.
	adviseRecoveryNum = 11
	adviseRecoveryDen = 10

	// The rates that rules 1 and 7 compute are rounded to this many
	// significant digits.
	adviseRateDigits = 3
)

// Advise reads events (from [ReadJournal] or [Transport.Events], any mix
// of processes, in any order) and returns the policy changes it suggests
// for the hosts and (host, role)s they show, given cfg, the configuration,
// and overrides, the tuned overrides that [Store.Overrides] returns (nil
// for none). The policy in force is cfg with the overrides laid over it,
// as every Transport lays them; rule 7 also reads the configured rate,
// without them. Each suggestion carries its reason with the numbers and,
// for the breaker keys, a [Replay] of the recorded outcomes. The proposed
// values are what [Tune] would write: within cfg.Tune's bounds, and for a
// rate within its step. The result is sorted by host, role and key; it is
// nil when there is nothing to suggest or cfg is invalid.
//
// A key that a policy change in the events changed at time T (a
// hostbreaker.policy_change event: [Tune], [RevertTuning],
// [Transport.UpdateHostPolicy], a Transport applying tuned overrides) is
// judged only on the events after T: the evidence that led to a change is
// not used again to change it further.
//
// Advise is a pure function: it reads no clock, does no I/O, and returns
// the same advice for the same events whatever their order. The rules are
// described in docs/advise.md.
func Advise(events []Event, cfg Config, overrides map[string]Policy) []Advice {
	return AdviseWith(events, cfg, overrides, AdviseOptions{})
}

// AdviseOptions are the optional inputs of [AdviseWith]. The zero value
// is [Advise]'s: the values in force come from the configuration given.
type AdviseOptions struct {
	// Published are the states that the processes sharing the store
	// published ([Store.States]). A row that carries a policy (its
	// ConfigHash is set) gives the values in force of its (host, role) in
	// its process: those take precedence over the configuration given, and
	// the advice's From is "published", or "differs" when the processes
	// that published the (host, role) disagree.
	Published []PublishedState
	// Configs are the configurations that the running processes published
	// ([Store.Configs], those Running now). They give the values in force
	// of every (host, role), including those whose breakers are closed,
	// which the published states leave out: for a (host, role), a process
	// that published no row gives its configuration's values. The
	// processes counted for a host are those whose events show it, or,
	// when none of those published a configuration, every one that did.
	// Configs without values ([PublishedConfig].Values false) are ignored.
	Configs []PublishedConfig
	// ConfigUnknown says that the configuration given is not the one the
	// processes run (a command run without its configuration file, which
	// passes the built-in defaults): advice on a (host, role) that no
	// published row or configuration covers has From "assumed".
	ConfigUnknown bool
	// Host, when set, keeps only the advice on the hosts that it names as
	// a [hosts] key names them: a host on any port unless it gives one,
	// or, for a wildcard "*.suffix", every host under suffix. It is written
	// as a Hosts key is, normalized ([NormalizeHost]). "" keeps every
	// host.
	Host string
}

// Where an Advice's Current comes from: its From.
const (
	FromConfig    = "config"    // the configuration given, with the tuned overrides
	FromPublished = "published" // the processes that use the host published it
	FromDiffers   = "differs"   // the processes that published it disagree; Current is one of their values
	FromAssumed   = "assumed"   // nobody published it and the configuration is unknown: the built-in defaults assumed
)

// AdviseWith is [Advise] with options: the values in force as the
// processes published them, and whether cfg is known to be the
// configuration in force. Advice whose From is [FromAssumed] or
// [FromDiffers] is computed from a value that may not be the one in force.
// It is a pure function, as Advise is.
func AdviseWith(events []Event, cfg Config, overrides map[string]Policy, opts AdviseOptions) []Advice {
	configured, err := cfg.validate()
	if err != nil {
		return nil
	}
	src := &policySource{configured: configured, inForce: withOverrides(configured, overrides), from: FromConfig}
	if opts.ConfigUnknown {
		src.from = FromAssumed
	}
	src.readPublished(opts.Published)
	src.readConfigs(opts.Configs, events)
	bounds := cfg.Tune.withDefaults()

	// Each key is judged on the events after its last change: one pass of
	// the rules per distinct cutoff, keeping each pass's advice on the keys
	// whose cutoff it is.
	changes := readPolicyChanges(events)
	var out []Advice
	for _, cut := range changes.cutoffs() {
		evs := events
		if !cut.IsZero() {
			evs = eventsAfter(events, cut)
		}
		for _, a := range adviseOnce(evs, src, bounds) {
			if changes.cutoff(a.Host, a.Role, a.Key).Equal(cut) {
				out = append(out, a)
			}
		}
	}
	if opts.Host != "" {
		out = slices.DeleteFunc(out, func(a Advice) bool { return !keyMatches(opts.Host, a.Host) })
	}
	slices.SortStableFunc(out, func(a, b Advice) int {
		return cmp.Or(strings.Compare(a.Host, b.Host), strings.Compare(a.Role, b.Role), strings.Compare(a.Key, b.Key))
	})
	return out
}

// adviseOnce applies every rule to events.
func adviseOnce(events []Event, src *policySource, bounds TuneBounds) []Advice {
	j := readJournalForAdvice(events)
	var out []Advice
	for _, name := range slices.Sorted(maps.Keys(j.hosts)) {
		h := j.hosts[name]
		if h.requests < adviseMinRequests {
			continue
		}
		conf, now, from, ok := src.rates(name)
		if !ok {
			continue
		}
		if a, ok := h.adviseRate(name, conf, now, bounds); ok {
			a.From = from.from
			if from.note != "" {
				a.Reason = joinReason(a.Reason, from.note)
			}
			out = append(out, a)
		}
	}
	for _, k := range slices.SortedFunc(maps.Keys(j.pairs), comparePairKeys) {
		h := j.hosts[k.host]
		if h.requests < adviseMinRequests || (h.failures == 0 && h.opens == 0) {
			continue // too little evidence, or a healthy host
		}
		cur, from, ok := src.policy(k.host, k.role)
		if !ok {
			continue
		}
		for _, a := range j.pairs[k].advise(k, h, cur, bounds) {
			a.From = from.from
			if n := from.notes[a.Key]; n != "" {
				a.Reason = joinReason(a.Reason, n)
			}
			out = append(out, a)
		}
	}
	return out
}

// policySource gives Advise the values in force: those the processes
// published, else the configuration's with the tuned overrides.
type policySource struct {
	configured, inForce *policyTable
	from                string // FromConfig or FromAssumed, for what nobody published
	published           map[pairKey][]PublishedState
	hosts               map[string][]PublishedState // every row of a host, for its rate

	configs     []sourceConfig             // the published configurations, by source
	hostSources map[string]map[string]bool // the processes whose events show a host
}

// sourceConfig is a process's published configuration, compiled.
type sourceConfig struct {
	source, hash        string
	configured, inForce *policyTable
}

// readConfigs compiles the published configurations that carry values,
// and notes which processes the events show using each host.
func (s *policySource) readConfigs(configs []PublishedConfig, events []Event) {
	for _, c := range configs {
		if !c.Values {
			continue
		}
		conf, err1 := c.Configured.validate()
		now, err2 := c.InForce.validate()
		if err1 != nil || err2 != nil {
			continue
		}
		s.configs = append(s.configs, sourceConfig{source: c.Source, hash: c.Hash, configured: conf, inForce: now})
	}
	if len(s.configs) == 0 {
		return
	}
	slices.SortFunc(s.configs, func(a, b sourceConfig) int { return strings.Compare(a.source, b.source) })
	s.hostSources = make(map[string]map[string]bool)
	for _, ev := range events {
		if ev.Host == "" || ev.Process == "" {
			continue
		}
		m := s.hostSources[ev.Host]
		if m == nil {
			m = make(map[string]bool)
			s.hostSources[ev.Host] = m
		}
		m[ev.Process] = true
	}
}

// usersOf returns the processes counted for host: those whose events in
// the journal name it, when one of them published a configuration; nil
// when none did, and then every process that published one counts.
func (s *policySource) usersOf(host string) map[string]bool {
	users := s.hostSources[host]
	if !slices.ContainsFunc(s.configs, func(c sourceConfig) bool { return users[c.source] }) {
		return nil
	}
	return users
}

// withConfigs returns rows, the published rows of (host, role), with a
// row made from the configuration of each process counted for host (see
// AdviseOptions.Configs) that published none, sorted by source.
func (s *policySource) withConfigs(rows []PublishedState, host, role string) []PublishedState {
	if len(s.configs) == 0 {
		return rows
	}
	users := s.usersOf(host)
	out := slices.Clone(rows)
	for _, c := range s.configs {
		if (users != nil && !users[c.source]) || slices.ContainsFunc(rows, func(ps PublishedState) bool { return ps.Source == c.source }) {
			continue
		}
		r, err1 := c.inForce.resolve(host, role)
		cr, err2 := c.configured.resolve(host, "")
		if err1 != nil || err2 != nil {
			continue
		}
		out = append(out, PublishedState{Source: c.source, Host: host, Role: role, ConfigHash: c.hash,
			Policy: tunedFields(r.Policy), ConfiguredRate: cr.Rate})
	}
	slices.SortFunc(out, func(a, b PublishedState) int { return strings.Compare(a.Source, b.Source) })
	return out
}

// replayed returns the fields of (host, role) in force that the replay
// reads and that the processes publish in their configurations alone
// (publishedFields: failure_rate, min_requests, window, max_reset_timeout),
// from the configuration of the first process, by name, of those counted
// for host as withConfigs counts them. It reports false when no process
// published one.
func (s *policySource) replayed(host, role string) (Policy, bool) {
	users := s.usersOf(host)
	for _, c := range s.configs {
		if users != nil && !users[c.source] {
			continue
		}
		if r, err := c.inForce.resolve(host, role); err == nil {
			return publishedFields(r.Policy), true
		}
	}
	return Policy{}, false
}

// origin is where a value in force came from, and what to add to the
// reason when the processes disagree, by key.
type origin struct {
	from  string
	note  string            // for rate
	notes map[string]string // for the breaker keys
}

func (s *policySource) readPublished(states []PublishedState) {
	for _, ps := range states {
		if ps.ConfigHash == "" {
			continue
		}
		if s.published == nil {
			s.published = make(map[pairKey][]PublishedState)
			s.hosts = make(map[string][]PublishedState)
		}
		k := pairKey{ps.Host, ps.Role}
		s.published[k] = append(s.published[k], ps)
		s.hosts[ps.Host] = append(s.hosts[ps.Host], ps)
	}
	for _, rows := range s.published {
		slices.SortFunc(rows, func(a, b PublishedState) int { return strings.Compare(a.Source, b.Source) })
	}
	for _, rows := range s.hosts {
		slices.SortFunc(rows, func(a, b PublishedState) int { return strings.Compare(a.Source, b.Source) })
	}
}

// policy returns the policy in force of (host, role) and where it came
// from.
func (s *policySource) policy(host, role string) (Policy, origin, bool) {
	r, err := s.inForce.resolve(host, role)
	if err != nil {
		return Policy{}, origin{}, false
	}
	cur := r.Policy
	if q, ok := s.replayed(host, role); ok {
		cur = withReplayFields(cur, q)
	}
	rows := s.withConfigs(s.published[pairKey{host, role}], host, role)
	if len(rows) == 0 {
		return cur, origin{from: s.from}, true
	}
	o := origin{from: FromPublished}
	for _, key := range []string{keyFailMax, keyResetTimeout, keySuccessThreshold, keyTrialCalls} {
		setValue(&cur, key, currentValue(rows[0].Policy, key))
		if note, differ := differences(rows, key, func(ps PublishedState) int64 { return currentValue(ps.Policy, key) }); differ {
			o.from = FromDiffers
			if o.notes == nil {
				o.notes = make(map[string]string)
			}
			o.notes[key] = note
		}
	}
	return cur, o, true
}

// rates returns host's configured rate and its rate in force (rateUnlimited
// for none), and where they came from.
func (s *policySource) rates(host string) (conf, now int64, o origin, ok bool) {
	c, err1 := s.configured.resolve(host, "")
	n, err2 := s.inForce.resolve(host, "")
	if err1 != nil || err2 != nil {
		return 0, 0, origin{}, false
	}
	rows := s.withConfigs(s.hosts[host], host, "")
	if len(rows) == 0 {
		return currentValue(c.Policy, keyRate), currentValue(n.Policy, keyRate), origin{from: s.from}, true
	}
	o = origin{from: FromPublished}
	confOf := func(ps PublishedState) int64 { return currentValue(Policy{Rate: ps.ConfiguredRate}, keyRate) }
	nowOf := func(ps PublishedState) int64 { return currentValue(ps.Policy, keyRate) }
	noteNow, d1 := differences(rows, keyRate, nowOf)
	noteConf, d2 := differences(rows, keyRate, confOf)
	if d1 || d2 {
		o.from = FromDiffers
		o.note = cmp.Or(noteNow, "configured "+noteConf)
	}
	return confOf(rows[0]), nowOf(rows[0]), o, true
}

// differences reports whether the rows (sorted by source) hold different
// values of key, and if so names them: "processes differ: fail_max 4 in
// web-1, 10 in web-2".
func differences(rows []PublishedState, key string, value func(PublishedState) int64) (string, bool) {
	var parts []string
	seen := map[string]bool{}
	differ := false
	for _, ps := range rows {
		v := value(ps)
		if v != value(rows[0]) {
			differ = true
		}
		if seen[ps.Source] {
			continue
		}
		seen[ps.Source] = true
		parts = append(parts, formatValue(key, v)+" in "+ps.Source)
	}
	if !differ {
		return "", false
	}
	return "processes differ: " + key + " " + strings.Join(parts, ", "), true
}

// ConfigGroup is a set of processes that published the same
// configuration: its hash ([PublishedState.ConfigHash]) and the sources.
type ConfigGroup struct {
	Hash    string   `json:"hash"`
	Sources []string `json:"sources"`
}

// ConfigGroups groups the sources of states by the configuration they
// published, the largest group first (then by hash); rows without a
// ConfigHash (from a process that does not publish it) are left out. More
// than one group means the processes run different configurations.
func ConfigGroups(states []PublishedState) []ConfigGroup {
	bySource := map[string]string{}
	for _, ps := range states {
		if ps.ConfigHash != "" {
			bySource[ps.Source] = ps.ConfigHash
		}
	}
	groups := map[string][]string{}
	for src, h := range bySource {
		groups[h] = append(groups[h], src)
	}
	out := make([]ConfigGroup, 0, len(groups))
	for h, srcs := range groups {
		slices.Sort(srcs)
		out = append(out, ConfigGroup{Hash: h, Sources: srcs})
	}
	slices.SortFunc(out, func(a, b ConfigGroup) int {
		return cmp.Or(cmp.Compare(len(b.Sources), len(a.Sources)), strings.Compare(a.Hash, b.Hash))
	})
	return out
}

// policyChanges are the changes of tunable keys that the events record:
// per Hosts key (an exact host or a wildcard), role ("" for the top level)
// and TOML key, the time of the latest.
type policyChanges map[[3]string]time.Time

// readPolicyChanges reads the policy_change events: their Host is a Hosts
// key, their Role the role (Tune) or "", and their Policy and
// PreviousPolicy lines name the keys ("fail_max = 3",
// "roles.landing.fail_max = 4").
func readPolicyChanges(events []Event) policyChanges {
	pc := policyChanges{}
	for _, ev := range events {
		if ev.Name != EventPolicyChange || ev.Host == "" {
			continue
		}
		for _, text := range []string{ev.PreviousPolicy, ev.Policy} {
			for line := range strings.SplitSeq(text, "\n") {
				name, _, ok := strings.Cut(line, "=")
				if !ok {
					continue
				}
				role, key := ev.Role, strings.TrimSpace(name)
				if rest, ok := strings.CutPrefix(key, "roles."); ok {
					i := strings.LastIndexByte(rest, '.')
					if i < 0 {
						continue
					}
					role, key = strings.Trim(rest[:i], `"`), rest[i+1:]
				}
				if !slices.Contains(tunableKeys, key) {
					continue
				}
				k := [3]string{ev.Host, role, key}
				if t, ok := pc[k]; !ok || ev.Time.After(t) {
					pc[k] = ev.Time
				}
			}
		}
	}
	return pc
}

// cutoffs returns the zero time and every distinct time of a change,
// sorted.
func (pc policyChanges) cutoffs() []time.Time {
	out := []time.Time{{}}
	for _, t := range pc {
		if !slices.ContainsFunc(out, t.Equal) {
			out = append(out, t)
		}
	}
	slices.SortFunc(out, time.Time.Compare)
	return out
}

// cutoff returns the time of the latest change that applies to key of
// (host, role): a change of the Hosts key that matches host, in the role
// or at the top level (which every role inherits unless it sets the key
// itself); for rate, host-wide, any change of it. The zero time when none.
func (pc policyChanges) cutoff(host, role, key string) time.Time {
	var latest time.Time
	for k, t := range pc {
		if k[2] != key || !keyMatches(k[0], host) {
			continue
		}
		if key != keyRate && k[1] != "" && k[1] != role {
			continue
		}
		if t.After(latest) {
			latest = t
		}
	}
	return latest
}

// keyMatches reports whether the Hosts key applies to host (normalized):
// the host itself, the host without its port, or a wildcard whose suffix
// the name ends with.
func keyMatches(key, host string) bool {
	if key == host {
		return true
	}
	name := host
	if i := strings.LastIndexByte(host, ':'); i >= 0 && !strings.HasSuffix(host, "]") {
		name = host[:i]
	}
	if key == name {
		return true
	}
	suffix, ok := strings.CutPrefix(key, "*")
	return ok && strings.HasSuffix(name, suffix)
}

// eventsAfter returns the events after t: an event at t or before is
// dropped, and so is a summary that covers any time at or before t.
func eventsAfter(events []Event, t time.Time) []Event {
	var out []Event
	for _, ev := range events {
		start := ev.Time
		if ev.Name == EventSummary {
			start = ev.Time.Add(-ev.Interval)
		}
		if start.After(t) || (ev.Name == EventSummary && ev.Interval > 0 && start.Equal(t)) {
			out = append(out, ev)
		}
	}
	return out
}

// withOverrides returns pt with the tuned overrides laid over it, key by
// key in order, as a Transport lays them (Transport.applyPoliciesLocked): an
// override that the configuration refuses is left out.
func withOverrides(pt *policyTable, overrides map[string]Policy) *policyTable {
	for _, key := range slices.Sorted(maps.Keys(overrides)) {
		if npt, _, err := pt.withUpdate(key, overrides[key]); err == nil {
			pt = npt
		}
	}
	return pt
}

// adviseRate applies the rate rules, 1 and 7, to a host whose configured
// rate is conf and rate in force now (rateUnlimited for none), and
// returns its host-wide advice on rate, if any.
func (h *hostEvidence) adviseRate(host string, conf, now int64, b TuneBounds) (Advice, bool) {
	var props []proposal
	add := func(v int64, dir int, format string, args ...any) {
		props = append(props, proposal{key: keyRate, value: v, dir: dir, reason: fmt.Sprintf(format, args...)})
	}
	rate := func(r float64) string { return formatValue(keyRate, roundRate(rateMicros(r))) }

	// Rule 1: 429 share, of the requests sent.
	if h.throttled() {
		share := fmt.Sprintf("%s of %s requests sent (%s) answered 429", formatCount(h.status429), formatCount(h.sent()),
			formatPercent(float64(h.status429)*100/float64(h.sent())))
		if h.learnt > 0 {
			add(roundRate(rateMicros(h.learnt*adviseLearntNum/adviseLearntDen)), -1, "%s; the limiter learnt %s r/s, × %s",
				share, rate(h.learnt), strconv.FormatFloat(float64(adviseLearntNum)/adviseLearntDen, 'g', -1, 64))
		} else if d := h.covered(); d > 0 {
			ok := float64(h.successes) / d.Seconds()
			add(roundRate(rateMicros(ok*adviseAcceptedNum/adviseAcceptedDen)), -1, "%s; %d successes in %s of traffic, %s r/s, × %s",
				share, h.successes, d.Round(time.Second), rate(ok), strconv.FormatFloat(float64(adviseAcceptedNum)/adviseAcceptedDen, 'g', -1, 64))
		}
	}
	// Rule 7: recovery.
	if now < conf && h.status429 == 0 && h.failures == 0 {
		configured := "unlimited"
		if conf != rateUnlimited {
			configured = formatValue(keyRate, conf)
		}
		why := fmt.Sprintf("no 429 and no failure in %s requests sent; rate %s, configured %s: + %s",
			formatCount(h.sent()), formatValue(keyRate, now), configured, formatPercent(float64(adviseRecoveryNum-adviseRecoveryDen)*100/adviseRecoveryDen))
		v := roundRate(rateMicros(float64(now) / rateUnit * adviseRecoveryNum / adviseRecoveryDen))
		if v >= conf {
			v, why = conf, why+", capped at "+configured
		}
		add(v, +1, "%s", why)
	}

	value, reason, ok := decide(keyRate, props, now, b)
	if !ok {
		return Advice{}, false
	}
	return Advice{Host: host, Key: keyRate, Current: formatValue(keyRate, now), Proposed: formatValue(keyRate, value), Reason: reason}, true
}

// pairKey is a (host, role).
type pairKey struct{ host, role string }

func comparePairKeys(a, b pairKey) int {
	return cmp.Or(strings.Compare(a.host, b.host), strings.Compare(a.role, b.role))
}

// adviceJournal is what Advise learns from the events.
type adviceJournal struct {
	hosts map[string]*hostEvidence
	pairs map[pairKey]*pairEvidence
}

// hostEvidence is what the events say about a host, all roles together.
type hostEvidence struct {
	requests    uint64          // Summary.Requests, every role and process
	failures    uint64          // Summary.Failures, likewise
	successes   uint64          // Summary.Successes, likewise
	status429   uint64          // Summary.Status429, likewise
	rejected    uint64          // Summary.Rejected, likewise: never sent
	opens       int             // local openings of any of its breakers
	retryAfters []time.Duration // the Retry-After values it sent
	spans       map[string][]span
	learnt      float64 // the latest rate_change's LastMax, or its Rate when LastMax is 0
}

// sent returns the number of requests that reached the host: those not
// rejected without being sent.
func (h *hostEvidence) sent() uint64 {
	return h.requests - min(h.rejected, h.requests)
}

// throttled reports whether rule 1 applies: at least adviseMinRequests
// requests sent, at least advise429Pct of them answered 429.
func (h *hostEvidence) throttled() bool {
	sent := h.sent()
	return sent >= adviseMinRequests && h.status429*100 >= sent*advise429Pct
}

// formatCount returns n with commas between thousands: "2,114".
func formatCount(n uint64) string {
	s := strconv.FormatUint(n, 10)
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
}

// span is the time a summary covers: from its Time − Interval to its Time.
type span struct{ from, to time.Time }

// covered returns the time the host's summaries cover: per process, the
// union of their spans (the summaries of its roles cover the same
// intervals), added up over the processes.
func (h *hostEvidence) covered() time.Duration {
	var total time.Duration
	for _, spans := range h.spans {
		slices.SortFunc(spans, func(a, b span) int { return a.from.Compare(b.from) })
		end := spans[0].from
		for _, s := range spans {
			if s.to.After(end) {
				total += s.to.Sub(laterOf(end, s.from))
				end = s.to
			}
		}
	}
	return total
}

// pairEvidence is what the events say about a (host, role).
type pairEvidence struct {
	probesOK, probesFail uint64
	opens                int       // local state changes to open, reopenings included
	trips                int       // local openings from closed
	firstOK              int       // trips closed by their first probe
	firstFailed          int       // trips whose first probe failed (reopened)
	reopens              int       // openings by a failed probe
	byFailMax            ruleTrips // the trips that fail_max fired (rule 6 reads only those)
	byRate               int       // trips that failure_rate or slow_call_rate fired
	byFailureRate        int       // …failure_rate alone, which the replay simulates
	durations            []time.Duration
	seqs                 map[string][]timedRun // the recorded outcomes, by process
	episodes             map[string]*episode   // the trip in progress, by process
}

// ruleTrips counts the local trips of one rule.
type ruleTrips struct {
	trips       int // openings from closed
	firstOK     int // …closed by their first probe
	firstFailed int // …whose first probe failed
}

// episode is a trip in progress in one process: from the opening to the
// closing that ends it.
type episode struct {
	start    time.Time
	local    bool // opened by this process, not learnt from the store
	reopened bool // a probe failed
	failMax  bool // fail_max fired it (not a rate rule)
}

// The rules that trip a breaker in closed, as the first word of the Note
// of its opening ("failure_rate: 14 of 30 requests failed in 60s").
const (
	ruleFailureRate  = "failure_rate"
	ruleSlowCallRate = "slow_call_rate"
)

// trippedByRate reports whether an opening from closed, whose event's
// note is note, was fired by a rate rule; an opening that names no rule
// (a journal written before the rate rules) was fail_max's.
func trippedByRate(note string) bool {
	rule, _, _ := strings.Cut(note, ":")
	return rule == ruleFailureRate || rule == ruleSlowCallRate
}

// timedRun is a run of recorded outcomes with the span its outcomes are
// spread over: from at to end.
type timedRun struct {
	kind    OutcomeKind
	n       uint64
	at, end time.Time
}

// readJournalForAdvice gathers the evidence, reading events in a fixed
// order of its own.
func readJournalForAdvice(events []Event) *adviceJournal {
	evs := slices.Clone(events)
	slices.SortFunc(evs, compareAdviceEvents)
	j := &adviceJournal{hosts: make(map[string]*hostEvidence), pairs: make(map[pairKey]*pairEvidence)}
	host := func(name string) *hostEvidence {
		h := j.hosts[name]
		if h == nil {
			h = new(hostEvidence)
			j.hosts[name] = h
		}
		return h
	}
	pair := func(ev Event) *pairEvidence {
		k := pairKey{ev.Host, ev.Role}
		p := j.pairs[k]
		if p == nil {
			p = &pairEvidence{seqs: make(map[string][]timedRun), episodes: make(map[string]*episode)}
			j.pairs[k] = p
		}
		return p
	}
	for _, ev := range evs {
		if ev.Host == "" {
			continue
		}
		switch ev.Name {
		case EventSummary:
			if ev.Summary == nil {
				continue
			}
			s := ev.Summary
			h, p := host(ev.Host), pair(ev)
			h.requests += s.Requests
			h.failures += s.Failures
			h.successes += s.Successes
			h.status429 += s.Status429
			h.rejected += s.Rejected
			if ev.Interval > 0 {
				if h.spans == nil {
					h.spans = make(map[string][]span)
				}
				h.spans[ev.Process] = append(h.spans[ev.Process], span{ev.Time.Add(-ev.Interval), ev.Time})
			}
			p.probesOK += s.ProbesOK
			p.probesFail += s.ProbesFail
			p.seqs[ev.Process] = appendRuns(p.seqs[ev.Process], s.Outcomes, ev.Time)
		case EventStateChange:
			p := pair(ev)
			if p.stateChange(ev) {
				host(ev.Host).opens++
			}
		case EventCooldown:
			if ev.Reason == ReasonRetryAfter && ev.RetryAfter > 0 && !ev.Remote {
				h := host(ev.Host)
				h.retryAfters = append(h.retryAfters, ev.RetryAfter)
			}
		case EventRateChange:
			// In time order: the last one read is the latest.
			h := host(ev.Host)
			h.learnt = ev.LastMax
			if h.learnt == 0 {
				h.learnt = ev.Rate
			}
		}
	}
	return j
}

// compareAdviceEvents orders events by time, then by every field, so that
// Advise does not depend on the order it is given them in.
func compareAdviceEvents(a, b Event) int {
	if c := cmp.Or(compareEvents(a, b), strings.Compare(a.Host, b.Host), strings.Compare(a.Role, b.Role)); c != 0 {
		return c
	}
	return bytes.Compare(encodeEvent(a), encodeEvent(b))
}

// appendRuns appends a summary's outcome runs to a process's sequence. A
// run's outcomes are spread from its At to the next run's At, and the
// summary's last run to the summary's time (end).
func appendRuns(seq []timedRun, runs Outcomes, end time.Time) []timedRun {
	for i, r := range runs {
		if r.Count == 0 {
			continue
		}
		next := end
		if i+1 < len(runs) {
			next = runs[i+1].At
		}
		seq = append(seq, timedRun{kind: r.Kind, n: r.Count, at: r.At, end: next})
	}
	return seq
}

// stateChange records a state change of the pair and reports whether it
// was a local opening.
func (p *pairEvidence) stateChange(ev Event) bool {
	ep := p.episodes[ev.Process]
	switch ev.State {
	case StateOpen:
		if ev.Remote {
			// Another process's trip, echoed: not an opening here, but
			// what follows in this process belongs to it.
			if ep == nil {
				p.episodes[ev.Process] = &episode{start: ev.Time}
			}
			return false
		}
		p.opens++
		if ev.PreviousState == StateHalfOpen {
			p.reopens++
			if ep != nil && ep.local && !ep.reopened {
				p.firstFailed++
				if ep.failMax {
					p.byFailMax.firstFailed++
				}
			}
			if ep != nil {
				ep.reopened = true
			}
			return true
		}
		p.trips++
		ep := &episode{start: ev.Time, local: true, failMax: !trippedByRate(ev.Note)}
		if ep.failMax {
			p.byFailMax.trips++
		} else {
			p.byRate++
			if rule, _, _ := strings.Cut(ev.Note, ":"); rule == ruleFailureRate {
				p.byFailureRate++
			}
		}
		p.episodes[ev.Process] = ep
		return true
	case StateClosed:
		if ep != nil && ep.local {
			p.durations = append(p.durations, ev.Time.Sub(ep.start))
			if !ep.reopened {
				p.firstOK++
				if ep.failMax {
					p.byFailMax.firstOK++
				}
			}
		}
		delete(p.episodes, ev.Process)
	}
	return false
}

// proposal is one rule's suggestion for a key.
type proposal struct {
	key    string
	value  int64 // a count, or a duration in ns
	dir    int   // +1: the rule only raises the value, -1: only lowers it, 0: sets it
	reason string
}

// advise applies the rules to one (host, role) whose policy in force is
// cur, and returns its advice sorted by key.
func (p *pairEvidence) advise(k pairKey, h *hostEvidence, cur Policy, b TuneBounds) []Advice {
	reset := int64(cur.ResetTimeout)
	var props []proposal
	add := func(key string, v int64, dir int, format string, args ...any) {
		props = append(props, proposal{key: key, value: v, dir: dir, reason: fmt.Sprintf(format, args...)})
	}

	// Rule 2: Retry-After.
	if p.opens > 0 && len(h.retryAfters) >= adviseMinRetryAfters {
		m := medianDuration(h.retryAfters)
		add(keyResetTimeout, int64(m), 0, "opened %s; the host sent %d Retry-After values, median %s",
			times(p.opens), len(h.retryAfters), m.Round(time.Millisecond))
	}
	// Rule 3: open durations.
	if p.trips >= adviseMinClosedTrips && len(p.durations) >= adviseMinClosedTrips {
		m := medianDuration(p.durations)
		add(keyResetTimeout, int64(m), 0, "tripped %d times; median time from open to closed %s over %d closed trips",
			p.trips, m.Round(time.Millisecond), len(p.durations))
	}
	// Rule 4: flapping.
	if p.reopens >= adviseFlapTrips {
		add(keyResetTimeout, reset*adviseFlapNum/adviseFlapDen, +1, "opened %s, %d of them by a failed probe; reset_timeout %s × %s",
			times(p.opens), p.reopens, cur.ResetTimeout, strconv.FormatFloat(float64(adviseFlapNum)/adviseFlapDen, 'g', -1, 64))
	}
	// Rule 5: probes.
	if probes := p.probesOK + p.probesFail; probes >= adviseMinProbes && p.probesFail*100 >= probes*adviseProbeFailPct {
		why := fmt.Sprintf("half-open probes failed %d of %d times", p.probesFail, probes)
		add(keySuccessThreshold, adviseProbeSuccessThreshold, +1, "%s", why)
		add(keyTrialCalls, adviseProbeTrialCalls, -1, "%s", why)
	}
	// Rule 6: transient trips, long outages, on the trips that fail_max
	// fired: fail_max has nothing to do with a trip by a rate rule.
	// A throttled host's failures are throttling: a higher fail_max would
	// send more of them (rule 1 lowers its rate instead).
	fm := p.byFailMax
	byRate := ""
	if p.byRate > 0 {
		byRate = fmt.Sprintf(" by fail_max (%d more by a rate rule)", p.byRate)
	}
	if fm.firstOK >= adviseMinTransient && fm.firstOK*100 >= fm.trips*adviseTransientPct && !h.throttled() {
		if q, ok := p.burstPercentile(adviseBurstPct); ok && q >= uint64(cur.FailMax-1) {
			add(keyFailMax, int64(cur.FailMax+adviseFailMaxStep), +1,
				"tripped %d times%s, %d closed by the first probe; failure runs that ended in a success reached %d at the %dth percentile (fail_max %d)",
				fm.trips, byRate, fm.firstOK, q, adviseBurstPct, cur.FailMax)
		}
	}
	if fm.trips >= adviseMinOutageTrips && fm.firstFailed == fm.trips && cur.FailMax > adviseOutageFailMax {
		add(keyFailMax, adviseOutageFailMax, -1, "tripped %d times%s, each a long outage whose first probe failed; fail_max %d > %d",
			fm.trips, byRate, cur.FailMax, adviseOutageFailMax)
	}

	// The replay's failure_rate is the one the processes published in
	// their configurations, else the configuration's given to Advise. A
	// journal whose trips name a rule that it leaves off was written under
	// another one.
	var noRule string
	if p.byFailureRate > 0 && cur.FailureRate <= 0 {
		noRule = fmt.Sprintf("the journal shows %d trips by failure_rate, which the values given leave off: the replay ran without it (give the configuration)",
			p.byFailureRate)
	}
	var out []Advice
	for _, key := range []string{keyFailMax, keyResetTimeout, keySuccessThreshold, keyTrialCalls} {
		now := currentValue(cur, key)
		value, reason, ok := decide(key, props, now, b)
		if !ok {
			continue
		}
		if noRule != "" {
			reason = joinReason(reason, noRule)
		}
		proposed := cur
		setValue(&proposed, key, value)
		out = append(out, Advice{
			Host: k.host, Role: k.role, Key: key,
			Current: formatValue(key, now), Proposed: formatValue(key, value),
			Reason: reason, Replay: p.replay(cur, proposed),
		})
	}
	return out
}

// decide merges the proposals for key, now being the value in force: each
// is rounded and clamped to the bounds (and dropped when the bounds would
// turn it against its direction), the more conservative value wins, and
// every reason is kept, in rule order. It reports false when no rule
// proposes key, or when the value is now.
func decide(key string, props []proposal, now int64, b TuneBounds) (value int64, reason string, ok bool) {
	if lo, hi := boundsOf(key, now, b); lo > hi {
		return 0, "", false // no value within the bounds
	}
	var reasons []string
	for _, pr := range props {
		if pr.key != key {
			continue
		}
		rounded := roundValue(key, pr.value)
		v := clampValue(key, rounded, now, b)
		if pr.dir*cmp.Compare(v, now) < 0 {
			continue // the bounds would turn it the other way
		}
		why := pr.reason
		if v != rounded {
			why += ", clamped to " + formatValue(key, v) + stepNote(key, v, now, b)
		}
		if reasons == nil || moreConservative(key, v, value) {
			value = v
		}
		reasons = append(reasons, why)
	}
	if reasons == nil || value == now {
		return 0, "", false
	}
	return value, strings.Join(reasons, "; "), true
}

// stepNote returns, when v is a rate clamped by the step from now rather
// than by a fixed bound, what the step is: " (a step of at most 25 % from
// 10)".
func stepNote(key string, v, now int64, b TuneBounds) string {
	if key != keyRate || now == rateUnlimited {
		return ""
	}
	if lo, hi := boundsOf(key, rateUnlimited, b); v == lo || v == hi {
		return ""
	}
	return " (a step of at most " + formatPercent(b.RateStep*100) + " from " + formatValue(key, now) + ")"
}

// formatPercent returns pct to a tenth at most, with a space and a
// percent sign: "6 %", "5.5 %".
func formatPercent(pct float64) string {
	return strconv.FormatFloat(math.Round(pct*10)/10, 'f', -1, 64) + " %"
}

// times returns "1 time" or "n times".
func times(n int) string {
	if n == 1 {
		return "1 time"
	}
	return strconv.Itoa(n) + " times"
}

// roundRate rounds a rate in µr/s to adviseRateDigits significant digits.
func roundRate(v int64) int64 {
	if v == rateUnlimited {
		return v
	}
	limit, unit := int64(1), int64(1)
	for range adviseRateDigits {
		limit *= 10
	}
	for x := v; x >= limit; x /= 10 {
		unit *= 10
	}
	return (v + unit/2) / unit * unit
}

// medianDuration returns the median of ds (the mean of the middle two for
// an even count). It sorts ds.
func medianDuration(ds []time.Duration) time.Duration {
	slices.Sort(ds)
	n := len(ds)
	if n%2 == 1 {
		return ds[n/2]
	}
	return ds[n/2-1] + (ds[n/2]-ds[n/2-1])/2
}

// burstPercentile returns the pct-th percentile (nearest rank) of the
// failure runs that ended in a success, in every process's sequence, and
// whether there were any. Adjacent runs of one kind count as one.
func (p *pairEvidence) burstPercentile(pct int) (uint64, bool) {
	var bursts []uint64
	for _, seq := range p.seqs {
		var run uint64
		for _, r := range seq {
			switch r.kind {
			case OutcomeFailure:
				run += r.n
			case OutcomeSuccess:
				if run > 0 {
					bursts = append(bursts, run)
				}
				run = 0
			default:
				run = 0
			}
		}
	}
	if len(bursts) == 0 {
		return 0, false
	}
	slices.Sort(bursts)
	rank := (len(bursts)*pct + 99) / 100 // ceil(n × pct / 100), at least 1
	return bursts[max(rank, 1)-1], true
}

// replay simulates the breaker under cur and under proposed on every
// process's recorded sequence, and adds up what they did.
func (p *pairEvidence) replay(cur, proposed Policy) *Replay {
	var r Replay
	for _, proc := range slices.Sorted(maps.Keys(p.seqs)) {
		c := simulateBreaker(p.seqs[proc], cur)
		n := simulateBreaker(p.seqs[proc], proposed)
		r.FailuresSentCurrent += c.failuresSent
		r.FailuresSentProposed += n.failuresSent
		r.SuccessesBlockedProposed += n.successesBlocked
		r.Unknown += c.unknown
	}
	return &r
}

// simResult is what a simulated breaker did with a sequence.
type simResult struct {
	failuresSent     int // failures it let through
	successesBlocked int // successes it rejected
	unknown          int // recorded rejections, not replayed
	trips            int // openings from closed
	rateTrips        int // …of them by failure_rate
}

// simulateBreaker replays the breaker rules of p on seq, without jitter
// and with instant outcomes (docs/advise.md, "The replay"):
//   - closed: fail_max consecutive failures open it, and so does
//     failure_rate, when it is on: at least that share of failures among
//     the outcomes of the last window (kept in buckets as the breaker keeps
//     them), once it holds min_requests outcomes. The window starts empty
//     each time the breaker closes. slow_call_rate is not replayed: the
//     journal records no response times;
//   - open: outcomes before the opening's time + the open time are
//     blocked; the first one at or after it starts half-open. The open
//     time is reset_timeout, doubled by each failed probe since the
//     breaker last closed up to max_reset_timeout;
//   - half-open: the next trial_calls outcomes are probes, sent together
//     and decided in order: success_threshold successes close the breaker,
//     a failure reopens it from its time; the probes after the deciding
//     one were sent all the same and change nothing. A wave of probes that
//     decides nothing is followed by another.
//
// Recorded rejections have unknown outcomes: they are counted, not fed.
func simulateBreaker(seq []timedRun, p Policy) simResult {
	var s simResult
	state := StateClosed
	var fails, successes, wave, drain uint64 // wave: probes left in the wave; drain: probes sent after the decision
	var until time.Time
	var win *window // the failure_rate window while closed; nil when the rule is off
	var backs int   // failed probes since the breaker last closed
	openTime := func() time.Duration {
		d, limit := p.ResetTimeout, max(p.MaxResetTimeout, p.ResetTimeout)
		for i := 0; i < backs && d < limit; i++ {
			d *= 2
		}
		return min(d, limit)
	}
	trip := func(t time.Time) {
		state, until, fails, win = StateOpen, t.Add(openTime()), 0, nil
		s.trips++
	}
	for _, r := range seq {
		if r.kind == OutcomeRejected {
			s.unknown += int(r.n)
			continue
		}
		for i := uint64(0); i < r.n; {
			if drain > 0 {
				k := min(drain, r.n-i)
				if r.kind == OutcomeFailure {
					s.failuresSent += int(k)
				}
				drain -= k
				i += k
				continue
			}
			switch state {
			case StateClosed:
				if win == nil && p.FailureRate > 0 {
					win = newWindow(p.Window)
				}
				if r.kind == OutcomeSuccess {
					fails = 0
					if win == nil {
						i = r.n
						continue
					}
					// The successes in the bucket of the i-th: only the
					// first, or the one that brings the window to
					// min_requests, can trip it.
					t := r.timeOf(i)
					now := t.UnixNano()
					j := r.firstAtOrAfter(time.Unix(0, (now/win.span+1)*win.span), i+1)
					win.advance(now)
					m := uint64(max(int64(p.MinRequests)-int64(win.total.n), 1))
					if m <= j-i && float64(win.total.failed) >= p.FailureRate*float64(uint64(win.total.n)+m) {
						s.rateTrips++
						trip(r.timeOf(i + m - 1))
						i += m
						continue
					}
					b := &win.buckets[win.cur%windowBuckets]
					b.n += uint32(j - i)
					win.total.n += uint32(j - i)
					i = j
					continue
				}
				t := r.timeOf(i)
				s.failuresSent++
				fails++
				i++
				if fails >= uint64(p.FailMax) {
					trip(t)
					continue
				}
				if win != nil {
					win.add(t.UnixNano(), true, false)
					if n := win.total.n; n >= uint32(p.MinRequests) && float64(win.total.failed) >= p.FailureRate*float64(n) {
						s.rateTrips++
						trip(t)
					}
				}
			case StateOpen:
				j := r.firstAtOrAfter(until, i)
				if r.kind == OutcomeSuccess {
					s.successesBlocked += int(j - i)
				}
				i = j
				if i < r.n {
					state, successes, wave = StateHalfOpen, 0, 0
				}
			case StateHalfOpen:
				if wave == 0 {
					wave = uint64(p.TrialCalls)
				}
				wave--
				t := r.timeOf(i)
				i++
				if r.kind == OutcomeFailure {
					s.failuresSent++
					backs++
					state, until = StateOpen, t.Add(openTime())
					drain, wave = wave, 0
					continue
				}
				successes++
				if successes >= uint64(p.SuccessThreshold) {
					state, fails, backs = StateClosed, 0, 0
					drain, wave = wave, 0
				}
			}
		}
	}
	return s
}

// timeOf returns the time of r's i-th outcome (from 0): the outcomes are
// spread evenly from r.at to r.end.
func (r timedRun) timeOf(i uint64) time.Time {
	span := r.end.Sub(r.at)
	if span <= 0 || i == 0 {
		return r.at
	}
	hi, lo := bits.Mul64(uint64(span), i)
	q, _ := bits.Div64(hi, lo, r.n) // i < n, so q < span
	return r.at.Add(time.Duration(q))
}

// firstAtOrAfter returns the index of r's first outcome from index from on
// whose time is at or after t, or r.n if there is none.
func (r timedRun) firstAtOrAfter(t time.Time, from uint64) uint64 {
	d := t.Sub(r.at)
	if d <= 0 {
		return from
	}
	span := r.end.Sub(r.at)
	if span <= 0 || d > span {
		return r.n
	}
	// The smallest i with floor(span × i / n) ≥ d is ceil(d × n / span).
	hi, lo := bits.Mul64(uint64(d), r.n)
	q, rem := bits.Div64(hi, lo, uint64(span)) // d ≤ span, so q ≤ n
	if rem != 0 {
		q++
	}
	return min(max(q, from), r.n)
}
