package hostbreaker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"path/filepath"
	"strings"
	"time"
)

// Store is the control plane that Transports in many processes share:
// cooldowns, reset markers and the breaker states each process publishes.
// It is never used on the request path; a Transport talks to it from a
// background goroutine, so a slow or absent store never fails a request.
//
// [OpenStore] returns the two implementations, bbolt (one machine) and Redis
// (a fleet). Implementations must be safe for concurrent use.
type Store interface {
	// Records returns every record that has not expired: cooldowns and
	// reset markers, in no particular order.
	Records(ctx context.Context) ([]Record, error)

	// Put writes r and merges it with what the store holds for its host:
	//   - a reset (Reason == ReasonReset) deletes every cooldown of the host,
	//     whatever its role, written at or before r.At, and keeps r as a
	//     marker until r.Until so that every process sees it;
	//   - a manual cooldown replaces the cooldown of (Host, Role);
	//   - any other cooldown replaces it only when it ends later.
	Put(ctx context.Context, r Record) error

	// PublishStates replaces the breaker states published by source with
	// states; they vanish from States after ttl unless published again.
	PublishStates(ctx context.Context, source string, states []PublishedState, ttl time.Duration) error

	// States returns the unexpired states published by every source.
	States(ctx context.Context) ([]PublishedState, error)

	// Changes returns a channel that receives a value when another process
	// may have changed the records, or nil when the store can only be
	// polled. A Transport polls as well, so a lost signal only delays.
	Changes() <-chan struct{}

	// Close releases the store. It does not close Transports that use it.
	Close() error
}

// ReasonReset marks a [Record] that resets a host: it clears the host's
// cooldowns and closes its breakers in every process that shares the store.
const ReasonReset Reason = "reset"

// Record is one cooldown or reset marker held in a [Store]. Times are wall
// clock times, so a deadline means the same on every machine.
type Record struct {
	Host   string    // normalized host name, with a port when it is not the default
	Role   string    // "" for the whole host; the role of a shared breaker trip
	Reason Reason    // why; ReasonReset for a reset marker
	Until  time.Time // end of the cooldown, or when a reset marker expires
	At     time.Time // when the record was written
	Note   string    // operator's note, for manual cooldowns
	Source string    // the process that wrote it
}

// PublishedState is one (host, role) breaker state as a process published
// it to a [Store], for `breaker show`.
type PublishedState struct {
	Source string    // the process that published it
	Host   string    // normalized host
	Role   string    // role, "" for none
	State  State     // effective state when published
	Until  time.Time // end of the open state or cooldown, zero if none
	Reason Reason    // why it is not closed, "" if it is
}

// OpenStore opens the store that url names:
//   - a plain file path, or bolt:///abs/path.db, opens (creating if absent)
//     a bbolt file; its parent directory must exist. A plain path must not
//     be empty nor hold a ':' before its first '/' (that is a URL, or a
//     typo, not a file name);
//   - redis://[user:pass@]host:port/db or rediss://… (TLS) opens Redis; the
//     query parameter prefix sets the key prefix (default "hostbreaker:").
//
// Anything else is an error that names the URL.
func OpenStore(rawURL string) (Store, error) {
	path, err := StorePath(rawURL)
	if err != nil {
		return nil, err
	}
	if path != "" {
		return openBoltStore(path)
	}
	return openRedisStore(rawURL)
}

// StorePath returns the absolute path of the bbolt file that a store URL
// names (see [OpenStore]), or "" when it names a Redis store. It checks
// the URL's form without opening anything, and returns the error OpenStore
// would return for a URL of the wrong form.
func StorePath(rawURL string) (string, error) {
	bad := func(msg string) error { return fmt.Errorf("hostbreaker: open store %q: %s", redactURL(rawURL), msg) }
	if rawURL == "" {
		return "", errors.New("hostbreaker: open store: empty URL")
	}
	scheme, _, hasScheme := strings.Cut(rawURL, "://")
	if !hasScheme {
		slash := strings.IndexByte(rawURL, '/')
		if c := strings.IndexByte(rawURL, ':'); c >= 0 && (slash < 0 || c < slash) {
			return "", bad("not a file path (a ':' before any '/') nor a URL with a scheme (want a path, bolt://, redis:// or rediss://)")
		}
		abs, err := filepath.Abs(rawURL)
		if err != nil {
			return "", bad(err.Error())
		}
		return abs, nil
	}
	switch strings.ToLower(scheme) {
	case "bolt", "bbolt":
		u, err := url.Parse(rawURL)
		if err != nil || u.Host != "" || u.Path == "" || u.RawQuery != "" {
			return "", bad("want bolt:///absolute/path.db")
		}
		return u.Path, nil
	case "redis", "rediss":
		if _, _, err := parseRedisURL(rawURL); err != nil {
			return "", err
		}
		return "", nil
	default:
		return "", bad(fmt.Sprintf("unknown scheme %q (want a path, bolt://, redis:// or rediss://)", scheme))
	}
}

// recordVersion is the version of the stored encoding of records and states.
const recordVersion = 1

type recordJSON struct {
	V      int    `json:"v"`
	Host   string `json:"host"`
	Role   string `json:"role,omitempty"`
	Reason string `json:"reason"`
	Until  int64  `json:"until"` // unix ns
	At     int64  `json:"at"`    // unix ns
	Note   string `json:"note,omitempty"`
	Source string `json:"source,omitempty"`
}

// encodeRecord returns the stored form of r.
func encodeRecord(r Record) []byte {
	b, _ := json.Marshal(recordJSON{
		V: recordVersion, Host: r.Host, Role: r.Role, Reason: string(r.Reason),
		Until: r.Until.UnixNano(), At: r.At.UnixNano(), Note: r.Note, Source: r.Source,
	})
	return b
}

// decodeRecord parses the stored form of a record. It never panics; data
// that is not a valid record of a known version is an error.
func decodeRecord(data []byte) (Record, error) {
	var j recordJSON
	if err := json.Unmarshal(data, &j); err != nil {
		return Record{}, fmt.Errorf("hostbreaker: decode record: %w", err)
	}
	if j.V != recordVersion {
		return Record{}, fmt.Errorf("hostbreaker: decode record: unknown version %d", j.V)
	}
	if h, err := normalizeHost("", j.Host); err != nil || h != j.Host {
		return Record{}, fmt.Errorf("hostbreaker: decode record: invalid host %q", j.Host)
	}
	switch r := Reason(j.Reason); r {
	case ReasonRetryAfter, ReasonRollingWindow, ReasonManual, ReasonBreakerOpen, ReasonReset:
	default:
		return Record{}, fmt.Errorf("hostbreaker: decode record: unknown reason %q", j.Reason)
	}
	if j.Until <= 0 || j.At <= 0 {
		return Record{}, errors.New("hostbreaker: decode record: missing times")
	}
	return Record{
		Host: j.Host, Role: j.Role, Reason: Reason(j.Reason),
		Until: time.Unix(0, j.Until), At: time.Unix(0, j.At), Note: j.Note, Source: j.Source,
	}, nil
}

type stateJSON struct {
	Host   string `json:"host"`
	Role   string `json:"role,omitempty"`
	State  string `json:"state"`
	Until  int64  `json:"until,omitempty"`
	Reason string `json:"reason,omitempty"`
}

type statesJSON struct {
	V       int         `json:"v"`
	Source  string      `json:"source"`
	Expires int64       `json:"expires"` // unix ns
	States  []stateJSON `json:"states"`
}

// encodeStates returns the stored form of the states one source published,
// valid until expires.
func encodeStates(source string, states []PublishedState, expires time.Time) []byte {
	j := statesJSON{V: recordVersion, Source: source, Expires: expires.UnixNano(), States: make([]stateJSON, len(states))}
	for i, s := range states {
		j.States[i] = stateJSON{Host: s.Host, Role: s.Role, State: s.State.String(), Reason: string(s.Reason)}
		if !s.Until.IsZero() {
			j.States[i].Until = s.Until.UnixNano()
		}
	}
	b, _ := json.Marshal(j)
	return b
}

// decodeStates parses what encodeStates wrote. It never panics.
func decodeStates(data []byte) (source string, states []PublishedState, expires time.Time, err error) {
	var j statesJSON
	if err := json.Unmarshal(data, &j); err != nil {
		return "", nil, time.Time{}, fmt.Errorf("hostbreaker: decode states: %w", err)
	}
	if j.V != recordVersion {
		return "", nil, time.Time{}, fmt.Errorf("hostbreaker: decode states: unknown version %d", j.V)
	}
	if j.Expires <= 0 {
		return "", nil, time.Time{}, errors.New("hostbreaker: decode states: missing expiry")
	}
	states = make([]PublishedState, 0, len(j.States))
	for _, s := range j.States {
		st, ok := parseState(s.State)
		if !ok {
			return "", nil, time.Time{}, fmt.Errorf("hostbreaker: decode states: unknown state %q", s.State)
		}
		ps := PublishedState{Source: j.Source, Host: s.Host, Role: s.Role, State: st, Reason: Reason(s.Reason)}
		if s.Until > 0 {
			ps.Until = time.Unix(0, s.Until)
		}
		states = append(states, ps)
	}
	return j.Source, states, time.Unix(0, j.Expires), nil
}
