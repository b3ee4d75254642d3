package hostbreaker

import (
	"bytes"
	"errors"
	"fmt"
	"maps"
	"math"
	"net/http"
	"os"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/BurntSushi/toml"
)

// Policy is the breaker policy of a host, a role, or a role on a host. A
// zero field means "inherit" (see [Config] for the order). Because zero
// means inherit, a duration that must be zero is written as a negative
// value: HalfOpenJitter < 0 means no jitter and RetryAfterCap < 0 means
// Retry-After is ignored. In TOML write "0s" for them; negative durations
// are rejected there. A nil status list inherits; an empty non-nil list
// means "no statuses".
//
// The rate-limit fields (Rate, Burst, MaxWait, Adaptive, MinRate,
// ThrottleStatuses) are host-wide: every role of a host shares its limiter,
// so they may be set at the top level of Defaults and Hosts entries, not in
// Roles. Rate < 0 means "unlimited" (the default) and MaxWait < 0 means
// "never wait"; Adaptive is a [Toggle], so that "off" can be written too.
// In TOML write rate = 0 and max_wait = "0s". See docs/ratelimits.md.
//
// A Policy is plain data: it can be printed, stored and compared. A
// Transport copies the policies it is given, so changing a Policy later
// does not change a running Transport (use UpdateHostPolicy).
type Policy struct {
	FailMax          int           // consecutive failures that open the breaker (≥ 1)
	ResetTimeout     time.Duration // open -> half-open (> 0)
	SuccessThreshold int           // half-open successes needed to close (≥ 1)
	TrialCalls       int           // concurrent half-open probes (≥ 1)
	RetryAfterCap    time.Duration // longest cooldown a Retry-After can set
	HalfOpenJitter   time.Duration // random extra open time in [0, jitter]
	FailureStatuses  []int         // statuses that count as failures
	NeutralStatuses  []int         // statuses that count neither way

	Rate             float64       // requests per second to the host; the ceiling of a learned rate; < 0 unlimited (default)
	Burst            int           // requests that may be sent at once at the limiter's rate (≥ 1; default 1)
	MaxWait          time.Duration // longest a request waits for its turn (default 5s; < 0: never waits)
	Adaptive         Toggle        // learn the host's rate from throttling responses (default on)
	MinRate          float64       // lowest rate the limiter learns (> 0; default 0.5)
	ThrottleStatuses []int         // responses that say "too fast" to the adaptive limiter (default [429])

	Roles map[string]Policy
}

// Toggle is an on/off policy setting whose zero value inherits.
type Toggle int8

// The values of a Toggle.
const (
	ToggleInherit Toggle = iota // take the value of the level below
	ToggleOn
	ToggleOff
)

// String returns "inherit", "on" or "off".
func (t Toggle) String() string {
	switch t {
	case ToggleOn:
		return "on"
	case ToggleOff:
		return "off"
	case ToggleInherit:
		return "inherit"
	}
	return "Toggle(" + strconv.Itoa(int(t)) + ")"
}

// Rolling configures the rolling-window rule: ThresholdFailures failures of
// a host (any role) within Window put the host in cooldown for Cooldown.
// The zero value is disabled; when enabled, zero fields take the defaults
// 5 failures, 10s and 30s.
type Rolling struct {
	Enabled           bool
	ThresholdFailures int
	Window            time.Duration
	Cooldown          time.Duration
}

// StoreConfig names the [Store] that Transports share and how they use it.
// The zero value means no store: everything stays in this process.
type StoreConfig struct {
	URL          string        // see OpenStore; "" for none
	ShareTrips   bool          // share local breaker trips with other processes
	PollInterval time.Duration // how often to read the store; 0 means 1s
	// Required makes NewTransport fail when the store cannot be opened or
	// read. Without it, such a Transport runs under local protection, logs
	// the error and reports it through StoreErr.
	Required bool
}

// Config is the whole configuration of a [Transport]. The zero Config is
// valid and means [DefaultConfig]: every zero field takes its built-in
// default.
//
// The policy of a (host, role) is built from, last wins: the built-in
// defaults, Defaults, Defaults.Roles[role], the matching Hosts entry, and
// that entry's Roles[role]. A host matches an entry with its exact
// normalized name (with its port if it has one, then without), else the
// longest matching wildcard "*.suffix" (any subdomain of suffix, not suffix
// itself). Host keys are normalized like request hosts.
//
// A Config is plain data. NewTransport copies what it keeps, so a Config
// may be reused or changed afterwards without affecting the Transport.
type Config struct {
	MaxHosts  int // bound on tracked (host, role) entries; 0 means 10000
	Defaults  Policy
	Hosts     map[string]Policy
	Rolling   Rolling
	Store     StoreConfig
	Telemetry TelemetryConfig
	Tune      TuneBounds
}

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
	if b.MinRate < 0 {
		return &ConfigError{Key: "tune.min_rate", Msg: fmt.Sprintf("must be positive, got %v", b.MinRate)}
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

// TelemetryConfig configures what a Transport reports through
// OpenTelemetry, its event handler and the journal. The zero value means
// the defaults.
type TelemetryConfig struct {
	// Process names this process in events and the journal; "" means
	// "hostname:pid". Each Transport adds a suffix of its own.
	Process string
	// MaxHosts bounds the hosts named in metric attributes; the others
	// share server.address="_other". 0 means 100.
	MaxHosts int
	// SummaryInterval is how often a summary event is emitted per (host,
	// role) with activity; 0 means 1m.
	SummaryInterval time.Duration
	// NoJournal turns the journal off. Without it, events are appended to
	// the store's journal, or kept in memory without a store.
	NoJournal bool
	// JournalRetention drops journal events older than this; 0 means 24h.
	JournalRetention time.Duration
	// JournalMaxEvents bounds the journal (per store, or in memory); the
	// oldest events beyond it are dropped. 0 means 100000.
	JournalMaxEvents int
}

// JournalLimits bounds a journal: events older than Retention, and the
// oldest beyond MaxEvents, are dropped.
type JournalLimits struct {
	Retention time.Duration
	MaxEvents int
}

// The built-in defaults.
const (
	defaultFailMax          = 5
	defaultResetTimeout     = 60 * time.Second
	defaultSuccessThreshold = 1
	defaultTrialCalls       = 1
	defaultRetryAfterCap    = 15 * time.Minute
	defaultHalfOpenJitter   = 150 * time.Millisecond
	defaultBurst            = 1
	defaultMaxWaitTurn      = 5 * time.Second
	defaultMinRate          = 0.5
	defaultMaxHosts         = 10000
	defaultRollingThreshold = 5
	defaultRollingWindow    = 10 * time.Second
	defaultRollingCooldown  = 30 * time.Second
	defaultPollInterval     = time.Second
	defaultTelemetryHosts   = 100
	defaultSummaryInterval  = time.Minute
	defaultJournalRetention = 24 * time.Hour
	defaultJournalMax       = 100000
)

func defaultFailureStatuses() []int  { return []int{408, 429, 500, 502, 503, 504} }
func defaultNeutralStatuses() []int  { return []int{400, 401, 403, 404, 410, 451} }
func defaultThrottleStatuses() []int { return []int{http.StatusTooManyRequests} }

func builtinPolicy() Policy {
	return Policy{
		FailMax:          defaultFailMax,
		ResetTimeout:     defaultResetTimeout,
		SuccessThreshold: defaultSuccessThreshold,
		TrialCalls:       defaultTrialCalls,
		RetryAfterCap:    defaultRetryAfterCap,
		HalfOpenJitter:   defaultHalfOpenJitter,
		FailureStatuses:  defaultFailureStatuses(),
		NeutralStatuses:  defaultNeutralStatuses(),
		Rate:             -1,
		Burst:            defaultBurst,
		MaxWait:          defaultMaxWaitTurn,
		Adaptive:         ToggleOn,
		MinRate:          defaultMinRate,
		ThrottleStatuses: defaultThrottleStatuses(),
	}
}

// DefaultConfig returns the built-in configuration: fail_max 5,
// reset_timeout 60s, success_threshold 1, trial_calls 1, retry_after_cap
// 15m, half_open_jitter 150ms, failure statuses 408 429 500 502 503 504,
// neutral statuses 400 401 403 404 410 451; no configured rate, burst 1,
// max_wait 5s, adaptive on, min_rate 0.5, throttle statuses 429; no role or
// host overrides, the rolling window disabled, max_hosts 10000, no store.
func DefaultConfig() Config {
	return Config{MaxHosts: defaultMaxHosts, Defaults: builtinPolicy()}
}

// ConfigError is a configuration error. Key is the TOML key at fault
// (e.g. hosts."api.crossref.org".fail_max) and Line its 1-based line in the
// TOML source, or 0 when unknown or when the Config did not come from TOML.
type ConfigError struct {
	Key  string
	Line int
	Msg  string
}

// Error returns "hostbreaker: config: line L: KEY: MSG".
func (e *ConfigError) Error() string {
	var b strings.Builder
	b.WriteString("hostbreaker: config: ")
	if e.Line > 0 {
		b.WriteString("line ")
		b.WriteString(strconv.Itoa(e.Line))
		b.WriteString(": ")
	}
	if e.Key != "" {
		b.WriteString(e.Key)
		b.WriteString(": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// Validate reports the first invalid value in c as a *ConfigError: counts
// below 1, non-positive reset timeouts, negative MaxHosts, statuses outside
// 100–599, a status that is both a failure and neutral (after
// inheritance), host keys that do not normalize, and bad rolling or store
// settings.
func (c Config) Validate() error {
	_, err := c.validate()
	return err
}

// validate validates c and returns its compiled policies.
func (c Config) validate() (*policyTable, error) {
	pt, err := compilePolicies(c)
	if err != nil {
		return nil, err
	}
	if c.MaxHosts < 0 {
		return nil, &ConfigError{Key: "max_hosts", Msg: fmt.Sprintf("must be at least 1, got %d", c.MaxHosts)}
	}
	r := c.Rolling
	switch {
	case r.ThresholdFailures < 0:
		return nil, &ConfigError{Key: "rolling.threshold_failures", Msg: fmt.Sprintf("must be at least 1, got %d", r.ThresholdFailures)}
	case r.Window < 0:
		return nil, &ConfigError{Key: "rolling.window", Msg: "must not be negative, got " + r.Window.String()}
	case r.Cooldown < 0:
		return nil, &ConfigError{Key: "rolling.cooldown", Msg: "must not be negative, got " + r.Cooldown.String()}
	case c.Store.PollInterval < 0:
		return nil, &ConfigError{Key: "store.poll_interval", Msg: "must not be negative, got " + c.Store.PollInterval.String()}
	case r.ThresholdFailures > maxCount:
		return nil, &ConfigError{Key: "rolling.threshold_failures", Msg: fmt.Sprintf("must be at most %d, got %d", maxCount, r.ThresholdFailures)}
	}
	switch tc := c.Telemetry; {
	case tc.MaxHosts < 0:
		return nil, &ConfigError{Key: "telemetry.max_hosts", Msg: fmt.Sprintf("must be at least 1, got %d", tc.MaxHosts)}
	case tc.SummaryInterval < 0:
		return nil, &ConfigError{Key: "telemetry.summary_interval", Msg: "must be positive, got " + tc.SummaryInterval.String()}
	case tc.JournalRetention < 0:
		return nil, &ConfigError{Key: "telemetry.journal_retention", Msg: "must be positive, got " + tc.JournalRetention.String()}
	case tc.JournalMaxEvents < 0:
		return nil, &ConfigError{Key: "telemetry.journal_max_events", Msg: fmt.Sprintf("must be at least 1, got %d", tc.JournalMaxEvents)}
	}
	if err := c.Tune.check(); err != nil {
		return nil, err
	}
	if c.Store.URL != "" {
		if _, err := StorePath(c.Store.URL); err != nil {
			return nil, &ConfigError{Key: "store.url", Msg: strings.TrimPrefix(err.Error(), "hostbreaker: ")}
		}
	}
	return pt, nil
}

// withDefaults returns c with defaults in its zero fields.
func (c TelemetryConfig) withDefaults() TelemetryConfig {
	if c.MaxHosts == 0 {
		c.MaxHosts = defaultTelemetryHosts
	}
	if c.SummaryInterval == 0 {
		c.SummaryInterval = defaultSummaryInterval
	}
	if c.JournalRetention == 0 {
		c.JournalRetention = defaultJournalRetention
	}
	if c.JournalMaxEvents == 0 {
		c.JournalMaxEvents = defaultJournalMax
	}
	return c
}

// withDefaults returns r with defaults in its zero fields.
func (r Rolling) withDefaults() Rolling {
	if r.ThresholdFailures == 0 {
		r.ThresholdFailures = defaultRollingThreshold
	}
	if r.Window == 0 {
		r.Window = defaultRollingWindow
	}
	if r.Cooldown == 0 {
		r.Cooldown = defaultRollingCooldown
	}
	return r
}

// maxRate bounds rate and min_rate, in requests per second: a rate above
// it is no limit a host could mean, and the limiter's arithmetic in ns
// stays exact below it.
const maxRate = 1e6

// formatRate formats a rate for TOML; a negative rate (unlimited) is 0.
func formatRate(r float64) string {
	return strconv.FormatFloat(max(r, 0), 'g', -1, 64)
}

// maxCount bounds fail_max, success_threshold, trial_calls and
// threshold_failures: a failsafe-go breaker holds a bitset of fail_max
// bits, and a Transport a ring of threshold_failures times per host.
const maxCount = 1000

// checkFields validates the fields p sets, reporting keys under prefix.
func checkFields(prefix string, p Policy) error {
	bad := func(key, msg string) error { return &ConfigError{Key: prefix + key, Msg: msg} }
	tooBig := func(key string, n int) error {
		return bad(key, fmt.Sprintf("must be at most %d, got %d", maxCount, n))
	}
	switch {
	case p.FailMax > maxCount:
		return tooBig("fail_max", p.FailMax)
	case p.SuccessThreshold > maxCount:
		return tooBig("success_threshold", p.SuccessThreshold)
	case p.TrialCalls > maxCount:
		return tooBig("trial_calls", p.TrialCalls)
	case p.FailMax < 0:
		return bad("fail_max", fmt.Sprintf("must be at least 1, got %d", p.FailMax))
	case p.ResetTimeout < 0:
		return bad("reset_timeout", "must be positive, got "+p.ResetTimeout.String())
	case p.SuccessThreshold < 0:
		return bad("success_threshold", fmt.Sprintf("must be at least 1, got %d", p.SuccessThreshold))
	case p.TrialCalls < 0:
		return bad("trial_calls", fmt.Sprintf("must be at least 1, got %d", p.TrialCalls))
	case math.IsNaN(p.Rate) || math.IsInf(p.Rate, 0) || p.Rate > maxRate:
		return bad("rate", fmt.Sprintf("must be at most %v requests per second, got %v", maxRate, p.Rate))
	case p.Burst < 0:
		return bad("burst", fmt.Sprintf("must be at least 1, got %d", p.Burst))
	case p.Burst > maxCount:
		return tooBig("burst", p.Burst)
	case math.IsNaN(p.MinRate) || p.MinRate < 0 || p.MinRate > maxRate:
		return bad("min_rate", fmt.Sprintf("must be positive and at most %v, got %v", maxRate, p.MinRate))
	case p.Adaptive < ToggleInherit || p.Adaptive > ToggleOff:
		return bad("adaptive", "must be on, off or inherit, got "+p.Adaptive.String())
	}
	for _, list := range []struct {
		key   string
		codes []int
	}{{"failure_statuses", p.FailureStatuses}, {"neutral_statuses", p.NeutralStatuses}, {"throttle_statuses", p.ThrottleStatuses}} {
		for _, c := range list.codes {
			if c < 100 || c > 599 {
				return bad(list.key, fmt.Sprintf("status %d is outside 100–599", c))
			}
		}
	}
	return nil
}

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
	Policy             // flattened: every field set, no Roles, durations and Rate ≥ 0
	statuses statusSet // FailureStatuses and NeutralStatuses as bitmaps
	throttle statusSet // ThrottleStatuses, in the failure bitmap
}

// throttles reports whether a response with code tells the adaptive
// limiter to slow down.
func (r *resolved) throttles(code int) bool {
	return r.Adaptive == ToggleOn && r.throttle.classify(code) == outcomeFailure
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

// checkPolicy validates p and its roles, reporting keys under prefix.
func checkPolicy(prefix string, p Policy) error {
	if err := checkFields(prefix+".", p); err != nil {
		return err
	}
	for _, role := range slices.Sorted(maps.Keys(p.Roles)) {
		rp := p.Roles[role]
		if len(rp.Roles) > 0 {
			return &ConfigError{Key: prefix + ".roles." + quoteKey(role) + ".roles", Msg: "roles cannot nest"}
		}
		rprefix := prefix + ".roles." + quoteKey(role) + "."
		if err := checkFields(rprefix, rp); err != nil {
			return err
		}
		if key := hostLevelKey(rp); key != "" {
			return &ConfigError{Key: rprefix + key, Msg: "a rate limit is host-wide: set it in the host's table, not in a role's"}
		}
	}
	return nil
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
	p.RetryAfterCap = max(p.RetryAfterCap, 0)
	p.HalfOpenJitter = max(p.HalfOpenJitter, 0)
	p.Rate = max(p.Rate, 0)
	p.MaxWait = max(p.MaxWait, 0)
	if p.MinRate > p.Rate && p.Rate > 0 {
		p.MinRate = p.Rate // a ceiling under the floor wins
	}
	return &resolved{Policy: p, statuses: newStatusSet(p.FailureStatuses, p.NeutralStatuses),
		throttle: newStatusSet(p.ThrottleStatuses, nil)}, nil
}

// hostLevelKey returns the TOML key of the first host-wide field (the rate
// limit's) that p sets, or "".
func hostLevelKey(p Policy) string {
	switch {
	case p.Rate != 0:
		return "rate"
	case p.Burst != 0:
		return "burst"
	case p.MaxWait != 0:
		return "max_wait"
	case p.Adaptive != ToggleInherit:
		return "adaptive"
	case p.MinRate != 0:
		return "min_rate"
	case p.ThrottleStatuses != nil:
		return "throttle_statuses"
	}
	return ""
}

func withoutRoles(p Policy) Policy {
	p.Roles = nil
	return p
}

// quoteKey returns k as a TOML key: bare when it can be, quoted otherwise.
func quoteKey(k string) string {
	return toml.Key{k}.String()
}

// policyTOML renders, as TOML lines, the fields of p that keys sets
// (non-zero; roles as roles.R.key), in a fixed order: what a policy change
// changed, before or after.
func policyTOML(p, keys Policy) string {
	var b strings.Builder
	writePolicyTOML(&b, "", p, keys)
	return strings.TrimSuffix(b.String(), "\n")
}

func writePolicyTOML(b *strings.Builder, prefix string, p, keys Policy) {
	line := func(key string, v any) { fmt.Fprintf(b, "%s%s = %s\n", prefix, key, v) }
	dur := func(d time.Duration) string { return strconv.Quote(max(d, 0).String()) }
	ints := func(l []int) string {
		parts := make([]string, len(l))
		for i, c := range l {
			parts[i] = strconv.Itoa(c)
		}
		return "[" + strings.Join(parts, ", ") + "]"
	}
	if keys.FailMax != 0 {
		line("fail_max", strconv.Itoa(p.FailMax))
	}
	if keys.ResetTimeout != 0 {
		line("reset_timeout", dur(p.ResetTimeout))
	}
	if keys.SuccessThreshold != 0 {
		line("success_threshold", strconv.Itoa(p.SuccessThreshold))
	}
	if keys.TrialCalls != 0 {
		line("trial_calls", strconv.Itoa(p.TrialCalls))
	}
	if keys.RetryAfterCap != 0 {
		line("retry_after_cap", dur(p.RetryAfterCap))
	}
	if keys.HalfOpenJitter != 0 {
		line("half_open_jitter", dur(p.HalfOpenJitter))
	}
	if keys.FailureStatuses != nil {
		line("failure_statuses", ints(p.FailureStatuses))
	}
	if keys.NeutralStatuses != nil {
		line("neutral_statuses", ints(p.NeutralStatuses))
	}
	if keys.Rate != 0 {
		line("rate", formatRate(p.Rate))
	}
	if keys.Burst != 0 {
		line("burst", strconv.Itoa(p.Burst))
	}
	if keys.MaxWait != 0 {
		line("max_wait", dur(p.MaxWait))
	}
	if keys.Adaptive != ToggleInherit {
		line("adaptive", strconv.FormatBool(p.Adaptive != ToggleOff))
	}
	if keys.MinRate != 0 {
		line("min_rate", formatRate(p.MinRate))
	}
	if keys.ThrottleStatuses != nil {
		line("throttle_statuses", ints(p.ThrottleStatuses))
	}
	for _, role := range slices.Sorted(maps.Keys(keys.Roles)) {
		writePolicyTOML(b, prefix+"roles."+quoteKey(role)+".", p.Roles[role], keys.Roles[role])
	}
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

// ParseConfig parses a TOML configuration (see docs/config.md) and
// validates it. Absent keys take the built-in defaults; an explicit zero is
// a value, not "inherit". Errors are *ConfigError values that name the key
// and its line; unknown keys are errors.
func ParseConfig(data []byte) (Config, error) {
	var tc tomlConfig
	md, err := toml.NewDecoder(bytes.NewReader(data)).Decode(&tc)
	if err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			return Config{}, &ConfigError{Key: pe.LastKey, Line: pe.Position.Line, Msg: pe.Message}
		}
		// Type errors come as "toml: line N (last key "K"): message".
		if m := tomlErrRE.FindStringSubmatch(err.Error()); m != nil {
			line, _ := strconv.Atoi(m[1])
			return Config{}, &ConfigError{Key: splitKey(m[2]).String(), Line: line, Msg: m[3]}
		}
		return Config{}, &ConfigError{Msg: strings.TrimPrefix(err.Error(), "toml: ")}
	}
	if und := md.Undecoded(); len(und) > 0 {
		k := und[0]
		return Config{}, &ConfigError{Key: k.String(), Line: lineOf(data, k), Msg: "unknown key"}
	}
	c, err := tc.config()
	if err == nil {
		err = c.Validate()
	}
	if err != nil {
		var ce *ConfigError
		if errors.As(err, &ce) && ce.Line == 0 {
			ce.Line = lineOf(data, splitKey(ce.Key))
		}
		return Config{}, err
	}
	return c, nil
}

var tomlErrRE = regexp.MustCompile(`^toml: line (\d+) \(last key "(.*?)"\): (.*)$`)

// LoadConfig reads and parses the TOML file at path (see ParseConfig).
func LoadConfig(path string) (Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return Config{}, fmt.Errorf("hostbreaker: load config: %w", err)
	}
	c, err := ParseConfig(data)
	if err != nil {
		var ce *ConfigError
		if errors.As(err, &ce) {
			return Config{}, fmt.Errorf("%s: %w", path, err)
		}
		return Config{}, err
	}
	return c, nil
}

// duration is a TOML string parsed by time.ParseDuration.
type duration time.Duration

func (d *duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return fmt.Errorf("invalid duration %q (want e.g. \"30s\", \"5m\")", b)
	}
	*d = duration(v)
	return nil
}

type tomlPolicy struct {
	FailMax          *int                   `toml:"fail_max"`
	ResetTimeout     *duration              `toml:"reset_timeout"`
	SuccessThreshold *int                   `toml:"success_threshold"`
	TrialCalls       *int                   `toml:"trial_calls"`
	RetryAfterCap    *duration              `toml:"retry_after_cap"`
	HalfOpenJitter   *duration              `toml:"half_open_jitter"`
	FailureStatuses  *[]int                 `toml:"failure_statuses"`
	NeutralStatuses  *[]int                 `toml:"neutral_statuses"`
	Rate             *float64               `toml:"rate"`
	Burst            *int                   `toml:"burst"`
	MaxWait          *duration              `toml:"max_wait"`
	Adaptive         *bool                  `toml:"adaptive"`
	MinRate          *float64               `toml:"min_rate"`
	ThrottleStatuses *[]int                 `toml:"throttle_statuses"`
	Roles            map[string]*tomlPolicy `toml:"roles"`
}

type tomlRolling struct {
	Enabled           *bool     `toml:"enabled"`
	ThresholdFailures *int      `toml:"threshold_failures"`
	Window            *duration `toml:"window"`
	Cooldown          *duration `toml:"cooldown"`
}

type tomlStore struct {
	URL          *string   `toml:"url"`
	ShareTrips   *bool     `toml:"share_trips"`
	PollInterval *duration `toml:"poll_interval"`
	Required     *bool     `toml:"required"`
}

type tomlTelemetry struct {
	Process          *string   `toml:"process"`
	MaxHosts         *int      `toml:"max_hosts"`
	SummaryInterval  *duration `toml:"summary_interval"`
	Journal          *bool     `toml:"journal"`
	JournalRetention *duration `toml:"journal_retention"`
	JournalMaxEvents *int      `toml:"journal_max_events"`
}

type tomlTune struct {
	FailMax          *[2]int      `toml:"fail_max"`
	ResetTimeout     *[2]duration `toml:"reset_timeout"`
	SuccessThreshold *[2]int      `toml:"success_threshold"`
	TrialCalls       *[2]int      `toml:"trial_calls"`
	RateStep         *float64     `toml:"rate_step"`
	MinRate          *float64     `toml:"min_rate"`
}

type tomlConfig struct {
	MaxHosts  *int                   `toml:"max_hosts"`
	Defaults  *tomlPolicy            `toml:"defaults"`
	Hosts     map[string]*tomlPolicy `toml:"hosts"`
	Rolling   *tomlRolling           `toml:"rolling"`
	Store     *tomlStore             `toml:"store"`
	Telemetry *tomlTelemetry         `toml:"telemetry"`
	Tune      *tomlTune              `toml:"tune"`
}

func (tc *tomlConfig) config() (Config, error) {
	c := DefaultConfig()
	if tc.MaxHosts != nil {
		if *tc.MaxHosts < 1 {
			return Config{}, &ConfigError{Key: "max_hosts", Msg: fmt.Sprintf("must be at least 1, got %d", *tc.MaxHosts)}
		}
		c.MaxHosts = *tc.MaxHosts
	}
	if tc.Defaults != nil {
		p, err := tc.Defaults.policy("defaults")
		if err != nil {
			return Config{}, err
		}
		overlay(&c.Defaults, p)
	}
	if tc.Hosts != nil {
		c.Hosts = make(map[string]Policy, len(tc.Hosts))
		for _, key := range slices.Sorted(maps.Keys(tc.Hosts)) {
			p, err := tc.Hosts[key].policy("hosts." + quoteKey(key))
			if err != nil {
				return Config{}, err
			}
			c.Hosts[key] = p
		}
	}
	if r := tc.Rolling; r != nil {
		if r.Enabled != nil {
			c.Rolling.Enabled = *r.Enabled
		}
		if r.ThresholdFailures != nil {
			if *r.ThresholdFailures < 1 {
				return Config{}, &ConfigError{Key: "rolling.threshold_failures", Msg: fmt.Sprintf("must be at least 1, got %d", *r.ThresholdFailures)}
			}
			c.Rolling.ThresholdFailures = *r.ThresholdFailures
		}
		var err error
		if c.Rolling.Window, err = positive("rolling.window", r.Window); err != nil {
			return Config{}, err
		}
		if c.Rolling.Cooldown, err = positive("rolling.cooldown", r.Cooldown); err != nil {
			return Config{}, err
		}
	}
	if s := tc.Store; s != nil {
		if s.URL != nil {
			c.Store.URL = *s.URL
		}
		if s.ShareTrips != nil {
			c.Store.ShareTrips = *s.ShareTrips
		}
		if s.Required != nil {
			c.Store.Required = *s.Required
		}
		var err error
		if c.Store.PollInterval, err = positive("store.poll_interval", s.PollInterval); err != nil {
			return Config{}, err
		}
	}
	if tt := tc.Telemetry; tt != nil {
		if tt.Process != nil {
			c.Telemetry.Process = *tt.Process
		}
		for _, n := range []struct {
			key string
			v   *int
			dst *int
		}{{"telemetry.max_hosts", tt.MaxHosts, &c.Telemetry.MaxHosts}, {"telemetry.journal_max_events", tt.JournalMaxEvents, &c.Telemetry.JournalMaxEvents}} {
			if n.v == nil {
				continue
			}
			if *n.v < 1 {
				return Config{}, &ConfigError{Key: n.key, Msg: fmt.Sprintf("must be at least 1, got %d", *n.v)}
			}
			*n.dst = *n.v
		}
		if tt.Journal != nil {
			c.Telemetry.NoJournal = !*tt.Journal
		}
		var err error
		if c.Telemetry.SummaryInterval, err = positive("telemetry.summary_interval", tt.SummaryInterval); err != nil {
			return Config{}, err
		}
		if c.Telemetry.JournalRetention, err = positive("telemetry.journal_retention", tt.JournalRetention); err != nil {
			return Config{}, err
		}
	}
	if tu := tc.Tune; tu != nil {
		if tu.FailMax != nil {
			c.Tune.FailMax = *tu.FailMax
		}
		if tu.ResetTimeout != nil {
			c.Tune.ResetTimeout = [2]time.Duration{time.Duration(tu.ResetTimeout[0]), time.Duration(tu.ResetTimeout[1])}
		}
		if tu.SuccessThreshold != nil {
			c.Tune.SuccessThreshold = *tu.SuccessThreshold
		}
		if tu.TrialCalls != nil {
			c.Tune.TrialCalls = *tu.TrialCalls
		}
		if tu.RateStep != nil {
			if *tu.RateStep <= 0 {
				return Config{}, &ConfigError{Key: "tune.rate_step", Msg: fmt.Sprintf("must be in (0, 1], got %v", *tu.RateStep)}
			}
			c.Tune.RateStep = *tu.RateStep
		}
		if tu.MinRate != nil {
			if *tu.MinRate <= 0 {
				return Config{}, &ConfigError{Key: "tune.min_rate", Msg: fmt.Sprintf("must be positive, got %v", *tu.MinRate)}
			}
			c.Tune.MinRate = *tu.MinRate
		}
	}
	return c, nil
}

// positive returns *d, which must be > 0 when set; unset is 0.
func positive(key string, d *duration) (time.Duration, error) {
	if d == nil {
		return 0, nil
	}
	if *d <= 0 {
		return 0, &ConfigError{Key: key, Msg: "must be positive, got " + time.Duration(*d).String()}
	}
	return time.Duration(*d), nil
}

// policy converts a TOML policy; explicit zeros become values, not "inherit".
func (tp *tomlPolicy) policy(prefix string) (Policy, error) {
	var p Policy
	if tp == nil {
		return p, nil
	}
	count := func(key string, v *int, dst *int) error {
		if v == nil {
			return nil
		}
		if *v < 1 {
			return &ConfigError{Key: prefix + "." + key, Msg: fmt.Sprintf("must be at least 1, got %d", *v)}
		}
		*dst = *v
		return nil
	}
	// zeroable durations: "0s" is stored as -1 (explicit zero, see Policy).
	zeroable := func(key string, v *duration, dst *time.Duration) error {
		if v == nil {
			return nil
		}
		switch {
		case *v < 0:
			return &ConfigError{Key: prefix + "." + key, Msg: "must not be negative, got " + time.Duration(*v).String()}
		case *v == 0:
			*dst = -1
		default:
			*dst = time.Duration(*v)
		}
		return nil
	}
	var err error
	for _, step := range []func() error{
		func() error { return count("fail_max", tp.FailMax, &p.FailMax) },
		func() error {
			p.ResetTimeout, err = positive(prefix+".reset_timeout", tp.ResetTimeout)
			return err
		},
		func() error { return count("success_threshold", tp.SuccessThreshold, &p.SuccessThreshold) },
		func() error { return count("trial_calls", tp.TrialCalls, &p.TrialCalls) },
		func() error { return zeroable("retry_after_cap", tp.RetryAfterCap, &p.RetryAfterCap) },
		func() error { return zeroable("half_open_jitter", tp.HalfOpenJitter, &p.HalfOpenJitter) },
		func() error { return zeroable("max_wait", tp.MaxWait, &p.MaxWait) },
		func() error { return count("burst", tp.Burst, &p.Burst) },
		func() error {
			switch {
			case tp.Rate == nil:
			case *tp.Rate < 0 || math.IsNaN(*tp.Rate):
				return &ConfigError{Key: prefix + ".rate", Msg: fmt.Sprintf("must not be negative (0 is unlimited), got %v", *tp.Rate)}
			case *tp.Rate == 0:
				p.Rate = -1
			default:
				p.Rate = *tp.Rate
			}
			return nil
		},
		func() error {
			if tp.MinRate != nil && !(*tp.MinRate > 0) {
				return &ConfigError{Key: prefix + ".min_rate", Msg: fmt.Sprintf("must be positive, got %v", *tp.MinRate)}
			}
			if tp.MinRate != nil {
				p.MinRate = *tp.MinRate
			}
			return nil
		},
	} {
		if err := step(); err != nil {
			return Policy{}, err
		}
	}
	if tp.FailureStatuses != nil {
		p.FailureStatuses = append([]int{}, *tp.FailureStatuses...)
	}
	if tp.NeutralStatuses != nil {
		p.NeutralStatuses = append([]int{}, *tp.NeutralStatuses...)
	}
	if tp.ThrottleStatuses != nil {
		p.ThrottleStatuses = append([]int{}, *tp.ThrottleStatuses...)
	}
	if tp.Adaptive != nil {
		p.Adaptive = ToggleOff
		if *tp.Adaptive {
			p.Adaptive = ToggleOn
		}
	}
	if tp.Roles != nil {
		p.Roles = make(map[string]Policy, len(tp.Roles))
		for name, rtp := range tp.Roles {
			if rtp != nil && rtp.Roles != nil {
				return Policy{}, &ConfigError{Key: prefix + ".roles." + quoteKey(name) + ".roles", Msg: "roles cannot nest"}
			}
			rp, err := rtp.policy(prefix + ".roles." + quoteKey(name))
			if err != nil {
				return Policy{}, err
			}
			p.Roles[name] = rp
		}
	}
	return p, nil
}

// lineOf returns the 1-based line where key is set or its table begins in a
// TOML document, or 0 when it cannot tell. It understands the common
// layout (table headers and dotted keys) that the library documents; errors
// from the TOML decoder itself carry their own position.
func lineOf(data []byte, key toml.Key) int {
	var table toml.Key
	headerLine, firstLine := 0, 0 // key's own [header]; first line inside key
	within := func(k toml.Key) bool { return len(k) >= len(key) && slices.Equal(k[:len(key)], key) }
	for i, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(stripComment(line))
		if line == "" {
			continue
		}
		if strings.HasPrefix(line, "[") {
			table = splitKey(strings.Trim(line, "[]"))
			if headerLine == 0 && slices.Equal(table, key) {
				headerLine = i + 1
			}
			if firstLine == 0 && within(table) {
				firstLine = i + 1 // a sub-table's header opens key
			}
			continue
		}
		k, _, ok := strings.Cut(line, "=")
		if !ok {
			continue
		}
		full := append(slices.Clone(table), splitKey(k)...)
		if slices.Equal(full, key) {
			return i + 1
		}
		if firstLine == 0 && within(full) {
			firstLine = i + 1 // key is a table defined by dotted keys
		}
	}
	if headerLine != 0 {
		return headerLine
	}
	return firstLine
}

// stripComment removes a trailing # comment that is outside quotes.
func stripComment(line string) string {
	var quote byte
	for i := 0; i < len(line); i++ {
		c := line[i]
		switch {
		case quote != 0 && c == '\\' && quote == '"':
			i++
		case quote != 0 && c == quote:
			quote = 0
		case quote == 0 && (c == '"' || c == '\''):
			quote = c
		case quote == 0 && c == '#':
			return line[:i]
		}
	}
	return line
}

// splitKey splits a dotted TOML key (bare or quoted pieces) into its pieces.
func splitKey(s string) toml.Key {
	var key toml.Key
	s = strings.TrimSpace(s)
	for s != "" {
		var piece string
		switch s[0] {
		case '"', '\'':
			end := strings.IndexByte(s[1:], s[0])
			if end < 0 {
				return append(key, s)
			}
			piece = s[1 : end+1]
			if s[0] == '"' {
				if u, err := strconv.Unquote(s[:end+2]); err == nil {
					piece = u
				}
			}
			s = s[end+2:]
		default:
			end := strings.IndexByte(s, '.')
			if end < 0 {
				end = len(s)
			}
			piece = strings.TrimSpace(s[:end])
			s = s[end:]
		}
		key = append(key, piece)
		s = strings.TrimSpace(s)
		s = strings.TrimPrefix(s, ".")
		s = strings.TrimSpace(s)
	}
	return key
}

// keyPolicy returns the policy in force for a Hosts key: the built-in
// defaults and Defaults, overlaid with the key's own entry or, for a host
// without one, the entry that matches it.
func (pt *policyTable) keyPolicy(key string) Policy {
	p := builtinPolicy()
	overlay(&p, pt.defaults)
	var own Policy
	if suffix, ok := strings.CutPrefix(key, "*"); ok {
		for _, w := range pt.wild {
			if strings.HasSuffix(suffix, w.suffix) {
				own = w.policy
				break
			}
		}
	} else {
		own, _ = pt.hostPolicy(key)
	}
	overlay(&p, own)
	return p
}
