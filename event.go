package hostbreaker

// This file holds the Event type and its parts, their stored encoding, and
// the reading of a journal (ReadJournal, decodeJournal). Events are built
// and delivered in journal.go; the stores append and return them
// (store_bbolt.go, store_redis.go).

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// The names of the events a Transport emits: as OpenTelemetry log records
// (with this event name), to the WithEventHandler callback, and to the
// journal.
const (
	EventStateChange  = "hostbreaker.state_change"  // a (host, role) breaker changed state
	EventCooldown     = "hostbreaker.cooldown"      // a host cooldown started or was extended
	EventReset        = "hostbreaker.reset"         // a host was reset
	EventPolicyChange = "hostbreaker.policy_change" // a policy was changed while running
	EventRateChange   = "hostbreaker.rate_change"   // a host's limiter changed its rate: learnt, adopted, configured or dropped
	EventSummary      = "hostbreaker.summary"       // a (host, role)'s activity over an interval
)

// Event is one thing that happened in a Transport, as it goes to the
// OpenTelemetry logger, to the WithEventHandler callback and to the journal.
// Which fields are set depends on Name; the others are zero. An Event is a
// value: it refers to nothing inside the Transport.
//
// No event carries a URL path, a query, user information or a header value
// other than Retry-After.
type Event struct {
	Name    string    `json:"name"`
	Time    time.Time `json:"time"`
	Process string    `json:"process"` // the emitting process (see [TelemetryConfig]) and Transport
	Host    string    `json:"host"`
	Role    string    `json:"role,omitempty"`

	// State changes: the states, and for an opening the consecutive
	// failures that tripped it and the last failure, as a status code or an
	// error type ("timeout", or the error's Go type). Remote is true for a
	// trip shared by another process through the store. For a local
	// opening, Note names the rule that fired with its figures:
	// "fail_max: 5 consecutive failures", "failure_rate: 14 of 30 requests
	// failed in 60s", "slow_call_rate: 12 of 20 requests slower than 2s in
	// 60s" (Failures is then the failed or slow requests), or "probe
	// failed".
	State         State  `json:"state,omitempty"`
	PreviousState State  `json:"previous_state,omitempty"`
	Failures      int    `json:"failures,omitempty"`
	StatusCode    int    `json:"status_code,omitempty"` // also the response of a Retry-After cooldown
	ErrorType     string `json:"error_type,omitempty"`
	Remote        bool   `json:"remote,omitempty"` // learnt from the store

	// Cooldowns and openings.
	Reason     Reason        `json:"reason,omitempty"`
	Until      time.Time     `json:"until,omitzero"`
	Note       string        `json:"note,omitempty"`
	RetryAfter time.Duration `json:"retry_after,omitempty"` // as the server sent it

	// Policy changes: the changed keys as TOML, before and after.
	PreviousPolicy string `json:"previous_policy,omitempty"`
	Policy         string `json:"policy,omitempty"`

	// Rate changes: the host's limiter rate in requests per second before and
	// after (0: no limiter), and in Note why: "throttled" (a throttling
	// response lowered it), "reanchored" (corrected to the rate the server
	// accepted once the requests in flight at the throttle had returned),
	// "fleet" (adopted from other processes through the store),
	// "configured" (the policy's rate changed) or "expired" (no throttle
	// for 15 minutes: the learnt limit was dropped). StatusCode is the
	// throttling response's. LastMax is the rate the throttle was anchored
	// on, the learnt limit that the rate grows back towards.
	Rate         float64 `json:"rate,omitempty"`
	PreviousRate float64 `json:"previous_rate,omitempty"`
	LastMax      float64 `json:"last_max,omitempty"`

	// Summaries.
	Interval time.Duration `json:"interval,omitempty"`
	Summary  *Summary      `json:"summary,omitempty"`
}

// Summary is the activity of one (host, role) over a summary interval.
type Summary struct {
	Requests   uint64 `json:"requests"`   // Successes + Failures + Neutral + Rejected
	Successes  uint64 `json:"successes"`  // reached the base and succeeded
	Failures   uint64 `json:"failures"`   // reached the base and failed (timeouts included)
	Neutral    uint64 `json:"neutral"`    // reached the base and counted neither way
	Rejected   uint64 `json:"rejected"`   // rejected without reaching the base
	Status429  uint64 `json:"status_429"` // responses 429
	Status5xx  uint64 `json:"status_5xx"` // responses 500–599
	Timeouts   uint64 `json:"timeouts"`   // failures that were timeouts
	ProbesOK   uint64 `json:"probes_ok"`  // half-open probes that succeeded
	ProbesFail uint64 `json:"probes_failed"`
	// LongestFailureRun is the longest run of consecutive failures that
	// ended in the interval (or is still running at its end).
	LongestFailureRun uint64 `json:"longest_failure_run"`
	// Outcomes is the interval's outcome sequence, compactly; see
	// [Outcomes]. Empty when nothing but successes happened.
	Outcomes Outcomes `json:"outcomes,omitempty"`
}

// Outcomes is a (host, role)'s sequence of outcomes, as runs of equal
// outcomes in order. It is what a replay of the breaker rules needs.
type Outcomes []OutcomeRun

// String encodes o compactly, as the journal documents it: runs separated
// by spaces, each KIND COUNT @ unix-ms of its first outcome, with KIND s
// (success), f (failure) or r (rejected): "s12@1764300000000 f5@…".
func (o Outcomes) String() string {
	var b []byte
	for i, r := range o {
		if i > 0 {
			b = append(b, ' ')
		}
		b = append(b, "?sfr"[min(int(r.Kind), 3)])
		b = strconv.AppendUint(b, r.Count, 10)
		b = append(b, '@')
		b = strconv.AppendInt(b, r.At.UnixMilli(), 10)
	}
	return string(b)
}

// OutcomeRun is a run of Count equal outcomes, the first at At.
type OutcomeRun struct {
	Kind  OutcomeKind `json:"k"`
	Count uint64      `json:"n"`
	At    time.Time   `json:"t"`
}

// OutcomeKind is the kind of outcome in an [OutcomeRun].
type OutcomeKind uint8

// The outcome kinds. Neutral outcomes are not recorded: they change no
// breaker.
const (
	OutcomeSuccess  OutcomeKind = iota + 1 // reached the base and succeeded
	OutcomeFailure                         // reached the base and failed
	OutcomeRejected                        // rejected: its outcome is unknown
)

// eventVersion is the version of the stored encoding of events.
const eventVersion = 1

type eventJSON struct {
	V int `json:"v"`
	Event
}

// encodeEvent returns the stored form of ev.
func encodeEvent(ev Event) []byte {
	b, _ := json.Marshal(eventJSON{V: eventVersion, Event: ev})
	return b
}

// decodeEvent parses the stored form of an event. It never panics; data
// that is not an event of a known version is an error.
func decodeEvent(data []byte) (Event, error) {
	var j eventJSON
	if err := json.Unmarshal(data, &j); err != nil {
		return Event{}, fmt.Errorf("hostbreaker: decode event: %w", err)
	}
	if j.V != eventVersion {
		return Event{}, fmt.Errorf("hostbreaker: decode event: unknown version %d", j.V)
	}
	if j.Name == "" || j.Time.IsZero() {
		return Event{}, errors.New("hostbreaker: decode event: missing name or time")
	}
	return j.Event, nil
}

// ReadJournal returns the events of every process that s's journal holds
// whose Time is at or after since, in time order: sorted by Time, then
// Process, then Name, keeping the store's order among events equal in
// all three. It returns the error of [Store.Events] as it is.
func ReadJournal(ctx context.Context, s Store, since time.Time) ([]Event, error) {
	evs, err := s.Events(ctx, since)
	if err != nil {
		return nil, err
	}
	evs = slices.DeleteFunc(evs, func(ev Event) bool { return ev.Time.Before(since) })
	slices.SortStableFunc(evs, compareEvents)
	return evs, nil
}

// compareEvents orders events by Time, then Process, then Name.
func compareEvents(a, b Event) int {
	if c := a.Time.Compare(b.Time); c != 0 {
		return c
	}
	if c := strings.Compare(a.Process, b.Process); c != 0 {
		return c
	}
	return strings.Compare(a.Name, b.Name)
}

// decodeJournalMin is the least number of stored events that
// decodeJournal decodes on more than one goroutine.
const decodeJournalMin = 4096

// decodeJournal returns the events of values, stored forms of events in
// time order as a journal returns them, that decode and whose Time is at
// or after since, in the order of values and sorted by Time (stably: a
// value written otherwise may be out of place). Decoding is most of the
// cost of reading a journal, so a large read is decoded on up to
// GOMAXPROCS goroutines, which have all returned when it returns.
func decodeJournal(values [][]byte, since time.Time) []Event {
	out := make([]Event, len(values))
	// decode decodes values[lo:hi] into out[lo:], and returns how many
	// events it kept.
	decode := func(lo, hi int) int {
		n := lo
		for _, v := range values[lo:hi] {
			if ev, err := decodeEvent(v); err == nil && !ev.Time.Before(since) {
				out[n] = ev
				n++
			}
		}
		return n - lo
	}
	if parts := min(runtime.GOMAXPROCS(0), len(values)/decodeJournalMin); parts <= 1 {
		out = out[:decode(0, len(values))]
	} else {
		kept := make([]int, parts)
		var wg sync.WaitGroup
		for i := range parts {
			wg.Go(func() { kept[i] = decode(i*len(values)/parts, (i+1)*len(values)/parts) })
		}
		wg.Wait()
		n := 0
		for i, k := range kept {
			lo := i * len(values) / parts
			n += copy(out[n:], out[lo:lo+k])
		}
		clear(out[n:]) // drop the copies' references
		out = out[:n]
	}
	byTime := func(a, b Event) int { return a.Time.Compare(b.Time) }
	if !slices.IsSortedFunc(out, byTime) {
		slices.SortStableFunc(out, byTime)
	}
	return out
}

// checkJournalEvents returns an error naming the first of events that a
// journal cannot hold: one without a Name, or whose Time has no exact
// UnixNano (the zero Time, or a year outside 1678 to 2262), which the
// journals key and score events by.
func checkJournalEvents(events []Event) error {
	for i, ev := range events {
		if ev.Name == "" {
			return fmt.Errorf("event %d has no Name", i)
		}
		if ns := ev.Time.UnixNano(); !time.Unix(0, ns).Equal(ev.Time) {
			return fmt.Errorf("event %d (%s) has a Time out of range: %v", i, ev.Name, ev.Time)
		}
	}
	return nil
}
