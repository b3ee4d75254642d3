package hostbreaker

// This file holds the configuration types (Config, Policy and their
// parts), their built-in defaults and their validation. Resolution of a
// (host, role)'s policy is in policy.go, the TOML form in toml.go, and
// TuneBounds, with the tunable keys, in tune.go.

import (
	"fmt"
	"maps"
	"math"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"
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
// Write [RateUnlimited] rather than a bare -1 in Go: the one value that
// means "unlimited" in Go, and what [Transport.Policy] returns for an
// unlimited host, so that a Policy read back can be passed to
// UpdateHostPolicy unchanged (Rate 0 there would inherit).
//
// The rate rules (FailureRate, SlowCallRate, with MinRequests and Window)
// open the breaker as well as FailMax does: whichever fires first. They
// are off by default; a negative value turns one off at a level below one
// that set it (in TOML, write 0). SlowCall < 0 means no slow-call rule
// (the default); in TOML, "0s". MaxResetTimeout makes the open time grow:
// each failed probe doubles it, up to MaxResetTimeout; 0 inherits, and the
// default (or a value below ResetTimeout) is ResetTimeout: no growth. Mode
// is host-wide, like the rate limit. See docs/config.md.
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

	Rate             float64       // requests per second to the host (0.001 to 1e6); the ceiling of a learned rate; < 0 unlimited (default)
	Burst            int           // requests that may be sent at once at the limiter's rate (≥ 1; default 1)
	MaxWait          time.Duration // longest a request waits for its turn (default 5s; < 0: never waits)
	Adaptive         Toggle        // learn the host's rate from throttling responses (default on)
	MinRate          float64       // lowest rate the limiter learns (0.001 to 1e6; default 0.5)
	ThrottleStatuses []int         // responses that say "too fast" to the adaptive limiter (default [429])

	FailureRate     float64       // share of failed requests in Window that opens the breaker (0 < r ≤ 1); < 0 off (default)
	MinRequests     int           // requests in Window before FailureRate and SlowCallRate apply (≥ 1; default 20)
	Window          time.Duration // the rolling window of FailureRate and SlowCallRate (default 60s)
	MaxResetTimeout time.Duration // longest open time that failed probes double it to (default ResetTimeout: no growth)
	SlowCall        time.Duration // a response whose headers take longer is slow; < 0 none (default)
	SlowCallRate    float64       // share of slow requests in Window that opens the breaker (0 < r ≤ 1); < 0 off (default)
	Mode            Mode          // ModeEnforce (default) or ModeShadow: decide and report, never reject; host-wide

	// MaxConcurrent bounds the requests to the host in flight at once, each
	// from before its turn until its response body is closed or read to
	// the end (1 to 1e6; < 0 unlimited, the default). Host-wide, as the
	// rate limit. A request beyond it waits in FIFO order within MaxWait and
	// half the time left before its deadline, else is rejected with
	// ReasonConcurrencyLimited. In TOML write max_concurrent = 0 for
	// unlimited. A body never closed holds its slot until the garbage
	// collector finds it (docs/config.md).
	MaxConcurrent int

	Roles map[string]Policy
}

// RateUnlimited is the Policy.Rate of a host without a rate limit, in Go
// and in what [Transport.Policy] returns. In TOML it is written rate = 0;
// in Go a Rate of 0 inherits.
const RateUnlimited = -1.0

// Mode says whether a host's breakers and cooldowns reject requests. The
// zero value inherits.
type Mode int8

// The values of a Mode.
const (
	ModeInherit Mode = iota // take the value of the level below
	ModeEnforce             // reject requests as the breaker and cooldowns decide (the default)
	// ModeShadow decides and reports everything as ModeEnforce does
	// (events, metrics, Snapshot, a would-reject count) but sends every
	// request: for a safe rollout.
	ModeShadow
)

// String returns "inherit", "enforce" or "shadow".
func (m Mode) String() string {
	switch m {
	case ModeInherit:
		return "inherit"
	case ModeEnforce:
		return "enforce"
	case ModeShadow:
		return "shadow"
	}
	return "Mode(" + strconv.Itoa(int(m)) + ")"
}

// parseMode parses the TOML form of a Mode.
func parseMode(s string) (Mode, bool) {
	switch s {
	case "enforce":
		return ModeEnforce, true
	case "shadow":
		return ModeShadow, true
	}
	return ModeInherit, false
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
	// NoFleetStart turns the fleet's start off: where the store can hold
	// it (Redis, bbolt), the processes' requests to a host the fleet knows
	// nothing of yet, and whose policy is adaptive, take their turns at
	// one rate that doubles from 4 r/s every 500 ms, until the host
	// throttles one (which stops it for all) or the rate reaches 1000 r/s
	// (about 4 s). Without the start, every process sends to a new host
	// all it has at once.
	NoFleetStart bool
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
	defaultMinRequests      = 20
	defaultWindow           = 60 * time.Second
	// minWindow is the shortest window of the rate rules: it is kept in
	// windowBuckets buckets, each at least a millisecond wide.
	minWindow = windowBuckets * time.Millisecond
	// deadlineGrace is how long a request must have waited for the
	// deadline that ended it to be the host's failure, when its host has
	// no slow_call (classify.go, callersDeadline).
	deadlineGrace = time.Second
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
		Rate:             RateUnlimited,
		Burst:            defaultBurst,
		MaxWait:          defaultMaxWaitTurn,
		Adaptive:         ToggleOn,
		MinRate:          defaultMinRate,
		ThrottleStatuses: defaultThrottleStatuses(),
		FailureRate:      -1,
		MinRequests:      defaultMinRequests,
		Window:           defaultWindow,
		SlowCall:         -1,
		SlowCallRate:     -1,
		Mode:             ModeEnforce,
	}
}

// DefaultConfig returns the built-in configuration: fail_max 5,
// reset_timeout 60s, success_threshold 1, trial_calls 1, retry_after_cap
// 15m, half_open_jitter 150ms, failure statuses 408 429 500 502 503 504,
// neutral statuses 400 401 403 404 410 451; no configured rate, burst 1,
// max_wait 5s, adaptive on, min_rate 0.5, throttle statuses 429; no
// failure_rate, min_requests 20, window 60s, max_reset_timeout equal to
// reset_timeout, no slow_call or slow_call_rate, mode "enforce"; no role or
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
// below 1, non-positive reset timeouts, negative MaxHosts, positive rates
// and min rates outside 0.001–1e6 requests per second, statuses outside
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

// maxRate and minRateBound bound rate and min_rate, in requests per
// second. A rate above maxRate is no limit a host could mean, and the
// limiter's arithmetic in ns stays exact below it. A positive rate below
// minRateBound (one request in about 17 minutes) is refused: the
// limiter's interval, 1e9/rate ns, overflows an int64 below about 1.1e-10,
// and would then pace nothing. A rate of 0 or less is not bounded: it
// inherits or means unlimited.
const (
	maxRate      = 1e6
	minRateBound = 0.001
)

// validRate reports whether r is a rate a limiter can hold: at least
// minRateBound and at most maxRate. NaN is not.
func validRate(r float64) bool { return r >= minRateBound && r <= maxRate }

// maxCount bounds fail_max, success_threshold, trial_calls and
// threshold_failures: a failsafe-go breaker holds a bitset of fail_max
// bits, and a Transport a ring of threshold_failures times per host.
const maxCount = 1000

// maxConcurrent bounds max_concurrent: more requests in flight to one host
// than any limit could mean.
const maxConcurrent = 1_000_000

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
	case math.IsNaN(p.Rate) || math.IsInf(p.Rate, 0) || p.Rate > 0 && !validRate(p.Rate):
		return bad("rate", fmt.Sprintf("must be at least %v and at most %v requests per second, got %v", minRateBound, maxRate, p.Rate))
	case p.Burst < 0:
		return bad("burst", fmt.Sprintf("must be at least 1, got %d", p.Burst))
	case p.Burst > maxCount:
		return tooBig("burst", p.Burst)
	case p.MinRate != 0 && !validRate(p.MinRate):
		return bad("min_rate", fmt.Sprintf("must be at least %v and at most %v requests per second, got %v", minRateBound, maxRate, p.MinRate))
	case p.MaxConcurrent > maxConcurrent:
		return bad("max_concurrent", fmt.Sprintf("must be at most %d, got %d", maxConcurrent, p.MaxConcurrent))
	case p.Adaptive < ToggleInherit || p.Adaptive > ToggleOff:
		return bad("adaptive", "must be on, off or inherit, got "+p.Adaptive.String())
	case math.IsNaN(p.FailureRate) || p.FailureRate > 1:
		return bad("failure_rate", fmt.Sprintf("must be at most 1 (a share of requests), got %v", p.FailureRate))
	case math.IsNaN(p.SlowCallRate) || p.SlowCallRate > 1:
		return bad("slow_call_rate", fmt.Sprintf("must be at most 1 (a share of requests), got %v", p.SlowCallRate))
	case p.MinRequests < 0:
		return bad("min_requests", fmt.Sprintf("must be at least 1, got %d", p.MinRequests))
	case p.MinRequests > maxCount*maxCount:
		return bad("min_requests", fmt.Sprintf("must be at most %d, got %d", maxCount*maxCount, p.MinRequests))
	case p.Window < 0:
		return bad("window", "must be positive, got "+p.Window.String())
	case p.Window > 0 && p.Window < minWindow:
		return bad("window", "must be at least "+minWindow.String()+", got "+p.Window.String())
	case p.MaxResetTimeout < 0:
		return bad("max_reset_timeout", "must be positive, got "+p.MaxResetTimeout.String())
	case p.Mode < ModeInherit || p.Mode > ModeShadow:
		return bad("mode", `must be "enforce" or "shadow", got `+p.Mode.String())
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
		if key := hostLevelKey(rp); key == "mode" {
			return &ConfigError{Key: rprefix + key, Msg: "the mode is host-wide: set it in the host's table, not in a role's"}
		} else if key == "max_concurrent" {
			return &ConfigError{Key: rprefix + key, Msg: "a concurrency limit is host-wide: set it in the host's table, not in a role's"}
		} else if key != "" {
			return &ConfigError{Key: rprefix + key, Msg: "a rate limit is host-wide: set it in the host's table, not in a role's"}
		}
	}
	return nil
}

// hostLevelKey returns the TOML key of the first host-wide field (the rate
// limit's, max_concurrent, and the mode) that p sets, or "".
func hostLevelKey(p Policy) string {
	switch {
	case p.Mode != ModeInherit:
		return "mode"
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
	case p.MaxConcurrent != 0:
		return "max_concurrent"
	}
	return ""
}
