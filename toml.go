package hostbreaker

// This file holds the TOML form of a Config: ParseConfig and LoadConfig,
// which decode it and place errors on their lines, and the writing of
// policies as TOML lines (policyTOML) for events. The types it fills, and
// their validation, are in config.go.

import (
	"bytes"
	"errors"
	"fmt"
	"maps"
	"math"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
)

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
		// Type errors come as "toml: line N (last key "K"): message", K
		// quoted as Go quotes it (hosts.\"a.com\".rate).
		if m := tomlErrRE.FindStringSubmatch(err.Error()); m != nil {
			line, _ := strconv.Atoi(m[1])
			key := m[2]
			if u, err := strconv.Unquote(`"` + key + `"`); err == nil {
				key = u
			}
			return Config{}, &ConfigError{Key: splitKey(key).String(), Line: line, Msg: m[3]}
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
	MaxConcurrent    *int                   `toml:"max_concurrent"`
	FailureRate      *float64               `toml:"failure_rate"`
	MinRequests      *int                   `toml:"min_requests"`
	Window           *duration              `toml:"window"`
	MaxResetTimeout  *duration              `toml:"max_reset_timeout"`
	SlowCall         *duration              `toml:"slow_call"`
	SlowCallRate     *float64               `toml:"slow_call_rate"`
	Mode             *string                `toml:"mode"`
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
	FleetStart   *bool     `toml:"fleet_start"`
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
		if s.FleetStart != nil {
			c.Store.NoFleetStart = !*s.FleetStart
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
	// shares: 0 is stored as -1 (off, see Policy); 0–1 otherwise.
	share := func(key string, v *float64, dst *float64) error {
		switch {
		case v == nil:
		case !(*v >= 0 && *v <= 1):
			return &ConfigError{Key: prefix + "." + key, Msg: fmt.Sprintf("must be a share of requests from 0 (off) to 1, got %v", *v)}
		case *v == 0:
			*dst = -1
		default:
			*dst = *v
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
		func() error { return share("failure_rate", tp.FailureRate, &p.FailureRate) },
		func() error { return share("slow_call_rate", tp.SlowCallRate, &p.SlowCallRate) },
		func() error { return count("min_requests", tp.MinRequests, &p.MinRequests) },
		func() error {
			p.Window, err = positive(prefix+".window", tp.Window)
			return err
		},
		func() error {
			p.MaxResetTimeout, err = positive(prefix+".max_reset_timeout", tp.MaxResetTimeout)
			return err
		},
		func() error { return zeroable("slow_call", tp.SlowCall, &p.SlowCall) },
		func() error {
			if tp.Mode == nil {
				return nil
			}
			m, ok := parseMode(*tp.Mode)
			if !ok {
				return &ConfigError{Key: prefix + ".mode", Msg: fmt.Sprintf(`must be "enforce" or "shadow", got %q`, *tp.Mode)}
			}
			p.Mode = m
			return nil
		},
		func() error {
			switch {
			case tp.MaxConcurrent == nil:
			case *tp.MaxConcurrent < 0:
				return &ConfigError{Key: prefix + ".max_concurrent", Msg: fmt.Sprintf("must not be negative (0 is unlimited), got %d", *tp.MaxConcurrent)}
			case *tp.MaxConcurrent == 0:
				p.MaxConcurrent = -1
			default:
				p.MaxConcurrent = *tp.MaxConcurrent
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

// quoteKey returns k as a TOML key: bare when it can be, quoted otherwise.
func quoteKey(k string) string {
	return toml.Key{k}.String()
}

// formatRate formats a rate for TOML; a negative rate (unlimited) is 0.
func formatRate(r float64) string {
	return strconv.FormatFloat(max(r, 0), 'g', -1, 64)
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
	if keys.MaxConcurrent != 0 {
		line("max_concurrent", strconv.Itoa(max(p.MaxConcurrent, 0)))
	}
	share := func(r float64) string { return strconv.FormatFloat(max(r, 0), 'g', -1, 64) }
	if keys.FailureRate != 0 {
		line("failure_rate", share(p.FailureRate))
	}
	if keys.MinRequests != 0 {
		line("min_requests", strconv.Itoa(p.MinRequests))
	}
	if keys.Window != 0 {
		line("window", dur(p.Window))
	}
	if keys.MaxResetTimeout != 0 {
		line("max_reset_timeout", dur(p.MaxResetTimeout))
	}
	if keys.SlowCall != 0 {
		line("slow_call", dur(p.SlowCall))
	}
	if keys.SlowCallRate != 0 {
		line("slow_call_rate", share(p.SlowCallRate))
	}
	if keys.Mode != ModeInherit {
		line("mode", strconv.Quote(p.Mode.String()))
	}
	for _, role := range slices.Sorted(maps.Keys(keys.Roles)) {
		writePolicyTOML(b, prefix+"roles."+quoteKey(role)+".", p.Roles[role], keys.Roles[role])
	}
}
