package hostbreaker

// This file holds the published configurations: what each Transport
// publishes to its store of the policies it runs (PublishedConfig), their
// stored form, and how a policy table becomes one. The Transport's side
// (when it publishes, and the policy change it journals when it starts with
// another configuration) is in sharing.go; the stores' methods in
// store_bbolt.go and store_redis.go.

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"
)

// Bounds of the published configurations.
const (
	// configRetention is how long a store keeps a configuration after its
	// process stopped publishing it, for the next process to compare with.
	configRetention = 24 * time.Hour

	// configKeep is how many stopped configurations a store keeps at
	// most, the last to stop: a process that restarts in a loop, under a
	// new name each time, leaves no more.
	configKeep = 64

	// maxConfigBytes bounds the stored form of one configuration: ten
	// thousand Hosts entries fit. A Transport whose configuration is
	// larger publishes its hash alone (PublishedConfig.Values false).
	maxConfigBytes = 4 << 20

	// configVersion is the version of the stored form.
	configVersion = 1
)

// PublishedConfig is the policy configuration that a process runs, as it
// published it to a [Store] ([Store.PublishConfig]): what advise reads to
// know the values in force of any (host, role) that the process uses,
// including those whose breakers are closed and that the published states
// leave out.
//
// Configured and InForce hold only the tunable fields (FailMax,
// ResetTimeout, SuccessThreshold and TrialCalls at the top level and in
// roles; Rate, host-wide, at the top level, RateUnlimited for none) and the
// fields that advise's replay of the breaker reads (FailureRate,
// MinRequests, Window and MaxResetTimeout, at the top level and in roles)
// of Defaults (every field set) and of Hosts. Configured is the configuration
// as configured and changed by [Transport.UpdateHostPolicy], InForce the
// same with the tuned overrides that the process applied laid over it.
// Resolving a (host, role) in either, as a [Config] is resolved, gives the
// values the process uses.
type PublishedConfig struct {
	Source string // the process that published it
	Hash   string // its configuration's hash: the ConfigHash of its published states

	// Values says whether Configured and InForce are set: false when the
	// configuration was too large to publish (see Store.PublishConfig),
	// and only its hash was.
	Values     bool
	Configured Config
	InForce    Config

	// Published is when the process published it, by its clock. Expires
	// is set by the store: until then the process counts as running it;
	// after, the store keeps it a while as the configuration that ran
	// before (see Store.PublishConfig).
	Published time.Time
	Expires   time.Time
}

// Running reports whether the process that published c counted as
// running it at now: its publication had not expired.
func (c PublishedConfig) Running(now time.Time) bool {
	return c.Expires.After(now)
}

type configJSON struct {
	V          int    `json:"v"`
	Source     string `json:"source"`
	Hash       string `json:"hash"`
	Published  int64  `json:"published"` // unix ns
	Expires    int64  `json:"expires"`   // unix ns
	Configured string `json:"configured,omitempty"`
	InForce    string `json:"in_force,omitempty"`
}

// encodeConfig returns the stored form of c, expiring at expires: its
// tables as TOML (see configTOML), or neither when c.Values is false.
func encodeConfig(c PublishedConfig, expires time.Time) []byte {
	j := configJSON{V: configVersion, Source: c.Source, Hash: c.Hash, Published: c.Published.UnixNano(), Expires: expires.UnixNano()}
	if c.Values {
		j.Configured, j.InForce = configTOML(c.Configured), configTOML(c.InForce)
	}
	b, _ := json.Marshal(j)
	return b
}

// decodeConfig parses what encodeConfig wrote. The data is untrusted: it
// never panics, and data larger than maxConfigBytes, of another version,
// without a source, with a hash that is not 1 to 64 lowercase hex digits,
// without times, or whose tables do not parse as configurations of
// published fields alone (publishedFields), is an error.
func decodeConfig(data []byte) (PublishedConfig, error) {
	if len(data) > maxConfigBytes {
		return PublishedConfig{}, fmt.Errorf("hostbreaker: decode config: %d bytes, more than %d", len(data), maxConfigBytes)
	}
	var j configJSON
	if err := json.Unmarshal(data, &j); err != nil {
		return PublishedConfig{}, fmt.Errorf("hostbreaker: decode config: %w", err)
	}
	switch {
	case j.V != configVersion:
		return PublishedConfig{}, fmt.Errorf("hostbreaker: decode config: unknown version %d", j.V)
	case j.Source == "":
		return PublishedConfig{}, errors.New("hostbreaker: decode config: no source")
	case !validHash(j.Hash):
		return PublishedConfig{}, fmt.Errorf("hostbreaker: decode config of %q: invalid hash %q", j.Source, j.Hash)
	case j.Published <= 0 || j.Expires <= 0:
		return PublishedConfig{}, fmt.Errorf("hostbreaker: decode config of %q: missing times", j.Source)
	case (j.Configured == "") != (j.InForce == ""):
		return PublishedConfig{}, fmt.Errorf("hostbreaker: decode config of %q: one table of two", j.Source)
	}
	c := PublishedConfig{Source: j.Source, Hash: j.Hash, Published: time.Unix(0, j.Published), Expires: time.Unix(0, j.Expires)}
	if j.Configured == "" {
		return c, nil
	}
	var err error
	if c.Configured, err = parseConfigTable(j.Configured); err != nil {
		return PublishedConfig{}, fmt.Errorf("hostbreaker: decode config of %q: configured: %w", j.Source, err)
	}
	if c.InForce, err = parseConfigTable(j.InForce); err != nil {
		return PublishedConfig{}, fmt.Errorf("hostbreaker: decode config of %q: in force: %w", j.Source, err)
	}
	c.Values = true
	return c, nil
}

// validHash reports whether h is 1 to 64 lowercase hex digits, as
// configHash writes them.
func validHash(h string) bool {
	if h == "" || len(h) > 64 {
		return false
	}
	for _, c := range []byte(h) {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// parseConfigTable parses a table that configTOML wrote: a configuration
// that ParseConfig accepts, whose Hosts entries set published fields alone
// (publishedFields). Of its defaults, which ParseConfig completes with the
// built-in values, only the published fields are kept; its other sections
// are ignored.
func parseConfigTable(text string) (Config, error) {
	c, err := ParseConfig([]byte(text))
	if err != nil {
		return Config{}, err
	}
	for key, p := range c.Hosts {
		if err := onlyPublished("hosts."+quoteKey(key), p); err != nil {
			return Config{}, err
		}
	}
	return Config{Defaults: publishedOnly(c.Defaults), Hosts: c.Hosts}, nil
}

// onlyPublished returns an error when p, or one of its roles, sets a field
// that a configuration does not publish (publishedFields), or a rate in a
// role.
func onlyPublished(where string, p Policy) error {
	check := func(where string, p Policy, role bool) error {
		q := withoutRoles(p)
		if role && q.Rate != 0 {
			return fmt.Errorf("%s.rate: a rate is host-wide", where)
		}
		if !equalPolicy(publishedFields(q), q) {
			return fmt.Errorf("%s: sets a field that is not published", where)
		}
		return nil
	}
	if err := check(where, p, false); err != nil {
		return err
	}
	for role, rp := range p.Roles {
		if err := check(where+".roles."+quoteKey(role), rp, true); err != nil {
			return err
		}
	}
	return nil
}

// equalPolicy reports whether a and b, without roles, are equal.
func equalPolicy(a, b Policy) bool {
	ja, err1 := json.Marshal(withoutRoles(a))
	jb, err2 := json.Marshal(withoutRoles(b))
	return err1 == nil && err2 == nil && string(ja) == string(jb)
}

// configTables returns the published fields of pt (publishedFields) as a
// Config: its defaults (every field set) and its Hosts entries, exact and
// wildcard, leaving out the entries and roles that set none.
func configTables(pt *policyTable) Config {
	c := Config{Defaults: publishedOnly(pt.defaults)}
	add := func(key string, p Policy) {
		if t := publishedOnly(p); !emptyPublished(t) {
			if c.Hosts == nil {
				c.Hosts = make(map[string]Policy)
			}
			c.Hosts[key] = t
		}
	}
	for host, p := range pt.exact {
		add(host, p)
	}
	for _, w := range pt.wild {
		add("*"+w.suffix, w.policy)
	}
	return c
}

// publishedFields returns the fields of p, without roles, that a
// published configuration holds: the tunable ones (tunedFields), and those
// that advise's replay of the breaker reads (a failure_rate rule and the
// growth of the open time), so that advise replays a journal under the
// rules the processes ran.
func publishedFields(p Policy) Policy {
	return withReplayFields(tunedFields(p), p)
}

// withReplayFields returns p with the fields that advise's replay reads
// and a configuration publishes besides the tunable ones (FailureRate,
// MinRequests, Window and MaxResetTimeout) taken from q.
func withReplayFields(p, q Policy) Policy {
	p.FailureRate, p.MinRequests, p.Window, p.MaxResetTimeout = q.FailureRate, q.MinRequests, q.Window, q.MaxResetTimeout
	return p
}

// emptyPublished reports whether p, as publishedOnly returns it, sets
// nothing.
func emptyPublished(p Policy) bool {
	return emptyTuned(p) && p.FailureRate == 0 && p.MinRequests == 0 && p.Window == 0 && p.MaxResetTimeout == 0
}

// publishedOnly returns the published fields of p and of its roles (no
// rate in a role), leaving out the roles that set none.
func publishedOnly(p Policy) Policy {
	out := publishedFields(p)
	for role, rp := range p.Roles {
		t := publishedFields(rp)
		t.Rate = 0
		if emptyPublished(t) {
			continue
		}
		if out.Roles == nil {
			out.Roles = make(map[string]Policy)
		}
		out.Roles[role] = t
	}
	return out
}

// configTOML renders the published fields of c's Defaults and Hosts as TOML
// that ParseConfig reads back: dotted keys, the hosts sorted.
func configTOML(c Config) string {
	var b strings.Builder
	writePolicyTOML(&b, "defaults.", c.Defaults, c.Defaults)
	for _, key := range slices.Sorted(maps.Keys(c.Hosts)) {
		p := c.Hosts[key]
		writePolicyTOML(&b, "hosts."+quoteKey(key)+".", p, p)
	}
	return b.String()
}

// configHeader reads, from the stored form of a configuration, its source
// and expiry alone, for a store to prune by without parsing its tables.
func configHeader(v []byte) (source string, expires time.Time, ok bool) {
	var j struct {
		V       int    `json:"v"`
		Source  string `json:"source"`
		Expires int64  `json:"expires"`
	}
	if len(v) > maxConfigBytes || json.Unmarshal(v, &j) != nil || j.V != configVersion || j.Source == "" || j.Expires <= 0 {
		return "", time.Time{}, false
	}
	return j.Source, time.Unix(0, j.Expires), true
}

// checkPublishedConfig returns the stored form of c, expiring ttl after
// now, or an error when a store must not write it (see Store.PublishConfig).
func checkPublishedConfig(c PublishedConfig, ttl time.Duration, now time.Time) ([]byte, error) {
	switch {
	case c.Source == "":
		return nil, errors.New("empty source")
	case ttl <= 0:
		return nil, fmt.Errorf("ttl %v is not positive", ttl)
	case c.Published.IsZero():
		return nil, errors.New("no Published time")
	}
	v := encodeConfig(c, now.Add(ttl))
	if _, err := decodeConfig(v); err != nil {
		return nil, err
	}
	return v, nil
}

// stoppedBeyondKeep returns, of the configurations by source with their
// expiry, those that a store drops at now: those stopped more than
// configRetention ago, and of the others stopped, all but the configKeep
// that stopped last.
func stoppedBeyondKeep(expires map[string]time.Time, now time.Time) []string {
	var drop, stopped []string
	for src, exp := range expires {
		switch {
		case exp.Add(configRetention).Before(now):
			drop = append(drop, src)
		case !exp.After(now):
			stopped = append(stopped, src)
		}
	}
	if len(stopped) > configKeep {
		slices.SortFunc(stopped, func(a, b string) int {
			if c := expires[b].Compare(expires[a]); c != 0 {
				return c
			}
			return strings.Compare(a, b)
		})
		drop = append(drop, stopped[configKeep:]...)
	}
	slices.Sort(drop)
	return drop
}

// decodeConfigs decodes the stored configurations values, each held under
// the source of the same index of sources, skipping those that do not
// decode, that name another source, or that were kept past
// configRetention at now.
func decodeConfigs(sources []string, values [][]byte, now time.Time) []PublishedConfig {
	out := []PublishedConfig{}
	for i, v := range values {
		c, err := decodeConfig(v)
		if err != nil || c.Source != sources[i] || c.Expires.Add(configRetention).Before(now) {
			continue
		}
		out = append(out, c)
	}
	return out
}
