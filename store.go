package hostbreaker

// This file holds the Store interface, the records it shares and the rules
// that merge them (hostRecords), OpenStore, and the stored forms of
// records, states and tuned overrides. The stores are in store_bbolt.go and
// store_redis.go; the journal reader in event.go, the tunable keys in tune.go.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/url"
	"path/filepath"
	"slices"
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
	// Records returns every record that has not expired: cooldowns,
	// shared breaker trips and reset markers, in no particular order.
	Records(ctx context.Context) ([]Record, error)

	// Put writes r and merges it with what the store holds for its host.
	// A store holds, per host, at most one record per slot (see [Record]:
	// a cooldown of (Host, Role) and the shared trip of the (Host, Role)
	// breaker are different slots, even with Role "") and one reset
	// marker. Records whose Until has passed are dropped. Then:
	//   - a reset (Reason == ReasonReset) deletes every record of the
	//     host, whatever its slot, whose At is at or before r.At, and keeps
	//     r as the marker until r.Until, so that every process sees it,
	//     unless r.Until has passed or the marker has a later At;
	//   - any other record is dropped when the marker has an At at or after
	//     r.At (the reset covers it, whichever reached the store first), or
	//     when r.Until has passed (an expired record changes nothing);
	//   - otherwise a manual record (ReasonManual) replaces the record in
	//     its slot, and any other replaces it only when it ends later.
	Put(ctx context.Context, r Record) error

	// PublishStates replaces the breaker states published by source with
	// states; they vanish from States after ttl unless published again.
	PublishStates(ctx context.Context, source string, states []PublishedState, ttl time.Duration) error

	// States returns the unexpired states published by every source.
	States(ctx context.Context) ([]PublishedState, error)

	// AppendEvents appends events to the journal in one batch, then drops the
	// journal's events older than limits.Retention and the oldest beyond
	// limits.MaxEvents (zero fields: no such bound), and returns how many it dropped.
	//
	// Every event must have a Name and a Time within the range of
	// [time.Time.UnixNano] (years 1678 to 2262); otherwise AppendEvents
	// appends nothing and returns an error. Events are never merged nor
	// replaced: two equal events, even from one process in one
	// nanosecond, are two events of the journal. An event that is already
	// older than limits.Retention is counted as dropped. An empty batch
	// only enforces the limits.
	AppendEvents(ctx context.Context, events []Event, limits JournalLimits) (dropped int, err error)

	// Events returns the journal's events whose Time is at or after since, of every process, in time order.
	// Entries that do not decode as events (see decodeEvent) are skipped.
	// The order of events with equal Times is unspecified; [ReadJournal]
	// fixes it.
	Events(ctx context.Context, since time.Time) ([]Event, error)

	// Overrides returns the tuned policies that Tune wrote, by Hosts key (an exact
	// normalized host, or a wildcard "*.suffix"). Only the tunable fields are set:
	// FailMax, ResetTimeout, SuccessThreshold, TrialCalls, at the top level and per
	// role, and Rate, host-wide, at the top level only.
	//
	// The map is the caller's; it is empty, not nil, when there is no
	// override. Stored values that do not decode as an override of the key
	// that holds them are skipped.
	Overrides(ctx context.Context) (map[string]Policy, error)

	// PutOverride replaces the tuned policy of a Hosts key; a Policy with no tunable
	// field set (at the top level or in any role) removes it. Every process sharing the
	// store is signalled, as for Put (Redis: on the change channel).
	//
	// key must be normalized: an exact host as [NormalizeHost] returns it,
	// or "*." and a normalized name. p may set only the tunable fields, each
	// within what a configuration allows (counts 1 to 1000, a positive
	// ResetTimeout, a Rate above 0 and at most 1e6 requests per second: a
	// limit, never "unlimited"), Rate at the top level only, and the others
	// also in roles with a non-empty name that do not nest; anything else is
	// an error that writes nothing. Roles that set no field are dropped. A
	// PutOverride that changes nothing writes nothing and signals nothing.
	PutOverride(ctx context.Context, key string, p Policy) error

	// PublishConfig replaces the configuration that c.Source published with
	// c; Configs returns it as running (its Expires, which the store sets,
	// is ttl from now) until ttl has passed unless it is published again,
	// then as stopped for configRetention more, so that a process that
	// starts can compare its configuration with the one that ran before
	// it. The store keeps at most configKeep stopped configurations, the
	// last to stop. c.Source must not be empty, c.Hash must be 1 to 64
	// lowercase hex digits, and the encoded configuration must not exceed
	// maxConfigBytes; otherwise PublishConfig writes nothing and returns
	// an error. It signals nothing: readers read Configs when they need it.
	PublishConfig(ctx context.Context, c PublishedConfig, ttl time.Duration) error

	// Configs returns the configurations that the processes published
	// (see PublishConfig), running or stopped, in no particular order.
	// Stored values that do not decode as a configuration of the source
	// that holds them are skipped.
	Configs(ctx context.Context) ([]PublishedConfig, error)

	// Changes returns a channel that receives a value when another process
	// may have changed the records or the overrides, or nil when the store
	// can only be polled. A Transport polls as well, so a lost signal only
	// delays.
	Changes() <-chan struct{}

	// Close releases the store. It does not close Transports that use it.
	Close() error
}

// storePoll is what a Transport reads of its store at each poll: the
// records, the published states and the tuned overrides, as Records,
// States and Overrides return them.
type storePoll struct {
	records   []Record
	states    []PublishedState
	overrides map[string]Policy
}

// storePoller is implemented by the stores of this package: poll reads, in
// one go, what Records, States and Overrides would return, reading from
// the store only what changed since its last poll (a bbolt store: nothing
// when the file has not changed; a Redis store: the hosts and sources
// that a change log names, see redisStore.poll), and all of it again now
// and then. Its results are the caller's. A Store of another package is
// read with the three methods.
type storePoller interface {
	poll(ctx context.Context) (storePoll, error)
}

// turnTaker is implemented by stores that can pace a host for all the
// processes that share them at once (Redis): takeTurn takes the next turn
// of host's shared bucket, one request per interval, and returns how long
// from now the request waits for it; with false, the turn is further than
// maxWait from now and is not taken. The store's clock counts, not the
// caller's: the processes' clocks need not agree. See
// Transport.sharedTurn.
type turnTaker interface {
	takeTurn(ctx context.Context, host string, interval, maxWait time.Duration) (time.Duration, bool, error)
	// slowTurns gives no turn for hold from now (a Retry-After's
	// cooldown), and, with a factor under 1, multiplies the interval's
	// rate by factor for d, unless a slow-down is on already: a
	// throttle's, until the other processes have adopted what it taught.
	// Both are for every process at once.
	slowTurns(ctx context.Context, host string, factor float64, d, hold time.Duration) error
}

// turnHolder is implemented by stores whose processes learn of each
// other's cooldowns only when they poll (bbolt, whose Changes is nil):
// turnHold returns how long from now a turnTaker's slowTurns holds host's
// bucket, so that a request that waited for its turn does not go into
// a Retry-After that another process obeys. A store with a change signal
// tells the processes of a cooldown within milliseconds instead.
type turnHolder interface {
	turnHold(ctx context.Context, host string) (time.Duration, error)
}

// starter is implemented by stores that can hold the fleet's start at a
// host (Redis): the fleet's requests to a host it knows nothing of yet
// take their turns at a rate that doubles until the host refuses one or
// the rate is past any limit worth learning. startTurn runs op there: it
// takes a turn and reports how long from now the request waits for it
// (startTake), reports whether a throttle stopped the start meanwhile and
// then takes a turn at the rate it holds since (startCheck), or stops the
// start (startStop). Once the start is stopped, its replies say the rate
// it had reached and how many processes took part. source names the
// process. arg is the longest wait of a take or a check, and for a stop
// how long ago the throttled request was sent: the rate reached is the
// start's rate then. The store's clock counts. See Transport.fleetStart.
type starter interface {
	startTurn(ctx context.Context, host, source string, op startOp, arg time.Duration) (startReply, error)
}

// readPoll reads what a poll needs from s: with s's poll when it has one,
// else with Records, Overrides and States.
func readPoll(ctx context.Context, s Store) (storePoll, error) {
	if p, ok := s.(storePoller); ok {
		return p.poll(ctx)
	}
	var out storePoll
	var err error
	if out.records, err = s.Records(ctx); err != nil {
		return storePoll{}, err
	}
	if out.overrides, err = s.Overrides(ctx); err != nil {
		return storePoll{}, err
	}
	if out.states, err = s.States(ctx); err != nil {
		return storePoll{}, err
	}
	return out, nil
}

// ReasonReset marks a [Record] that resets a host: it clears the host's
// cooldowns and closes its breakers in every process that shares the store.
const ReasonReset Reason = "reset"

// Record is one cooldown, shared breaker trip or reset marker held in a
// [Store]. Times are wall clock times, so a deadline means the same on
// every machine.
//
// A store holds at most one record per host and slot, and the Reason says
// which slot a record takes:
//   - ReasonBreakerOpen: the shared trip of the (Host, Role) breaker. Role
//     "" is the breaker of the requests made without a role, not the
//     whole host.
//   - ReasonReset: the host's reset marker; Role is not used.
//   - any other reason: a cooldown of (Host, Role). A Transport writes
//     cooldowns with Role "", which is the whole host.
//
// So a trip of the no-role breaker and a host-wide cooldown, both with Role
// "", never replace one another.
type Record struct {
	Host   string    // normalized host name, with a port when it is not the default
	Role   string    // a breaker trip's role ("" for requests without one); "" for a host-wide cooldown
	Reason Reason    // why; ReasonReset for a reset marker
	Until  time.Time // end of the cooldown or trip, or when a reset marker expires
	At     time.Time // when the record was written
	Note   string    // operator's note, for manual cooldowns
	Source string    // the process that wrote it
}

// The slots of a host's records: a slot is one of these kinds followed by
// the record's role. The stores name a host's entries by slot (bbolt keys
// host+"\x00"+slot, Redis hash fields), so a kind never changes.
const (
	slotCooldown = "c:" // a cooldown (Retry-After, rolling window, manual); role "" is the whole host
	slotTrip     = "b:" // the shared trip of a (host, role) breaker; role "" is the no-role breaker
)

// recordSlot returns the slot of r among its host's records. It must not be
// called on a reset marker, which has a place of its own.
func recordSlot(r Record) string {
	if r.Reason == ReasonBreakerOpen {
		return slotTrip + r.Role
	}
	return slotCooldown + r.Role
}

// sameRecord reports whether a and b are the same record: equal fields,
// and times that are the same instants.
func sameRecord(a, b Record) bool {
	return a.Host == b.Host && a.Role == b.Role && a.Reason == b.Reason && a.Note == b.Note &&
		a.Source == b.Source && a.Until.Equal(b.Until) && a.At.Equal(b.At)
}

// hostRecords is what a store holds for one host: its records, at most one
// per slot, and its reset marker. Its merge method is the one definition
// of the rules of [Store.Put]: both stores read a host into a hostRecords
// (loadStored), merge the record being written and write back the
// difference (putStored). Without a store, a hostRecords per host
// coalesces writes by the same rules, so that a queue of pending writes
// drops and keeps exactly what the store would.
//
// The zero value holds nothing and is ready to use. A hostRecords is not
// safe for concurrent use. It does not look at the records' Host: the
// caller keeps one hostRecords per host. Records must have a known reason
// and both times set, as a Store's Put requires.
type hostRecords struct {
	records map[string]Record // by recordSlot; never a reset marker; nil when empty
	reset   Record            // the reset marker; the zero Record (Reason "") when none
}

// merge applies r, written at wall time now, as [Store.Put] documents, and
// reports whether that changed the records or the marker; replacing a
// record with an equal one (see sameRecord) changes nothing, nor does
// dropping records that had expired. In order:
//  1. the records and the marker whose Until is not after now are dropped;
//  2. a reset (r.Reason == ReasonReset) deletes every record, whatever its
//     slot, whose At is at or before r.At; it becomes the marker if
//     r.Until is after now and the marker, if any, has no later At;
//  3. any other record is dropped when there is a marker whose At is at or
//     after r.At, or when r.Until is not after now; otherwise, in its
//     slot (recordSlot), a manual record (ReasonManual) replaces whatever
//     is there and any other record replaces a record only when r.Until
//     is after that record's Until. An empty slot takes r.
//
// Whatever order two records are merged in, a reset and a record written
// at or before it leave no record; two resets leave the marker with the
// later At.
func (h *hostRecords) merge(r Record, now time.Time) (changed bool) {
	h.expire(now)
	if r.Reason == ReasonReset {
		for slot, old := range h.records {
			if !old.At.After(r.At) {
				delete(h.records, slot)
				changed = true
			}
		}
		if r.Until.After(now) && (h.reset.Reason == "" || !h.reset.At.After(r.At)) {
			changed = changed || !sameRecord(h.reset, r)
			h.reset = r
		}
		return changed
	}
	if h.reset.Reason != "" && !h.reset.At.Before(r.At) {
		return false // written at or before the reset
	}
	if !r.Until.After(now) {
		return false // already over
	}
	slot := recordSlot(r)
	old, ok := h.records[slot]
	if ok && r.Reason != ReasonManual && !r.Until.After(old.Until) {
		return false // the stored one ends as late or later
	}
	if ok && sameRecord(old, r) {
		return false
	}
	if h.records == nil {
		h.records = make(map[string]Record)
	}
	h.records[slot] = r
	return true
}

// expire drops the records and the marker whose Until is not after now.
func (h *hostRecords) expire(now time.Time) {
	for slot, r := range h.records {
		if !r.Until.After(now) {
			delete(h.records, slot)
		}
	}
	if h.reset.Reason != "" && !h.reset.Until.After(now) {
		h.reset = Record{}
	}
}

// appendTo appends to dst the records and the marker whose Until is after
// now, the marker first and then the records in the order of their slots,
// and returns the extended slice. Writing them in that order to a store
// (or merging them into another hostRecords) reproduces h.
func (h *hostRecords) appendTo(dst []Record, now time.Time) []Record {
	if h.reset.Reason != "" && h.reset.Until.After(now) {
		dst = append(dst, h.reset)
	}
	for _, slot := range slices.Sorted(maps.Keys(h.records)) {
		if r := h.records[slot]; r.Until.After(now) {
			dst = append(dst, r)
		}
	}
	return dst
}

// empty reports whether h holds no record and no marker whose Until is
// after now.
func (h *hostRecords) empty(now time.Time) bool {
	if h.reset.Reason != "" && h.reset.Until.After(now) {
		return false
	}
	for _, r := range h.records {
		if r.Until.After(now) {
			return false
		}
	}
	return true
}

// loadStored returns what a store holds for host at wall time now, given
// the host's stored entries (name → encodeRecord, in a store's own naming)
// and its stored marker (nil when none): see loadRecords. The entries that
// do not decode as records of host, other than resets, are foreign:
// foreign returns, by name, those that keepForeign keeps and until when.
func loadStored(host string, entries map[string][]byte, marker []byte, now time.Time) (h hostRecords, foreign map[string]time.Time) {
	recs := make([]Record, 0, len(entries))
	for name, v := range entries {
		if r, ok := decodeHostRecord(host, v); ok {
			recs = append(recs, r)
			continue
		}
		if until, keep := keepForeign(v, now); keep {
			if foreign == nil {
				foreign = make(map[string]time.Time)
			}
			foreign[name] = until
		}
	}
	return loadRecords(recs, decodeMarker(host, marker), now), foreign
}

// appendStored appends to dst the records and marker whose Until is after
// now that a store holds for host, given the values of the host's entries
// and its stored marker (nil when none), as loadStored reads them, in no
// particular order. It is what Records uses: when there is no marker and
// no two records share a slot, which is the common case, it appends the
// live records without building a hostRecords.
func appendStored(dst []Record, host string, values [][]byte, marker []byte, now time.Time) []Record {
	start := len(dst)
	for _, v := range values {
		if r, ok := decodeHostRecord(host, v); ok && r.Until.After(now) {
			dst = append(dst, r)
		}
	}
	recs := dst[start:]
	if marker == nil && distinctSlots(recs) {
		return dst
	}
	h := loadRecords(slices.Clone(recs), decodeMarker(host, marker), now)
	return h.appendTo(dst[:start], now)
}

// loadRecords returns the hostRecords of a store that holds recs and the
// marker m (the zero Record when none) at wall time now: the marker is
// taken if it has not expired, then the records are merged in the order of
// their At (sorting recs), so that a store that holds two records for one
// slot (written under an older layout, say) yields the one that Put would
// have kept, and one that the marker covers yields none.
func loadRecords(recs []Record, m Record, now time.Time) hostRecords {
	var h hostRecords
	if m.Reason == ReasonReset && m.Until.After(now) {
		h.reset = m
	}
	slices.SortFunc(recs, func(a, b Record) int {
		if c := a.At.Compare(b.At); c != 0 {
			return c
		}
		return a.Until.Compare(b.Until)
	})
	for _, r := range recs {
		h.merge(r, now)
	}
	return h
}

// decodeHostRecord decodes v as a record of host other than a reset marker.
func decodeHostRecord(host string, v []byte) (Record, bool) {
	r, err := decodeRecord(v)
	return r, err == nil && r.Host == host && r.Reason != ReasonReset
}

// decodeMarker decodes v as the reset marker of host, or returns the zero
// Record.
func decodeMarker(host string, v []byte) Record {
	if v == nil {
		return Record{}
	}
	if m, err := decodeRecord(v); err == nil && m.Host == host && m.Reason == ReasonReset {
		return m
	}
	return Record{}
}

// distinctSlots reports whether no two of recs share a slot.
func distinctSlots(recs []Record) bool {
	for i := range recs {
		for j := range i {
			if recs[i].Role == recs[j].Role &&
				(recs[i].Reason == ReasonBreakerOpen) == (recs[j].Reason == ReasonBreakerOpen) {
				return false
			}
		}
	}
	return true
}

// keepForeign reports whether a store keeps a value that does not decode
// as a current record or published states, and until when: it keeps a JSON
// object of a newer encoding version ("v" above recordVersion), which a
// newer version of this package may have written, until its "until" or
// "expires" time (Unix nanoseconds) passes. Any other value is junk, which
// a store deletes when it meets it.
func keepForeign(v []byte, now time.Time) (until time.Time, keep bool) {
	var j struct {
		V       int   `json:"v"`
		Until   int64 `json:"until"`
		Expires int64 `json:"expires"`
	}
	if json.Unmarshal(v, &j) != nil || j.V <= recordVersion {
		return time.Time{}, false
	}
	t := max(j.Until, j.Expires)
	if t <= now.UnixNano() {
		return time.Time{}, false
	}
	return time.Unix(0, t), true
}

// hostWrite is how a store brings the stored form of one host, as
// loadStored reads it, to the result of a merge.
type hostWrite struct {
	put       map[string][]byte // entries to write, by name; nil when none
	del       []string          // names of the entries to delete
	marker    []byte            // the marker to write; nil to leave the stored one as it is
	delMarker bool              // delete the stored marker (expired, junk or replaced by none)

	markerUntil time.Time // the Until of marker, when it is not nil

	entriesUntil time.Time // latest Until of the entries that remain; zero when none remain
	until        time.Time // latest Until of everything that remains, marker included; zero when nothing does
	changed      bool      // the merge changed the records or the marker: tell the other processes
}

// none reports whether w writes nothing.
func (w *hostWrite) none() bool {
	return len(w.put) == 0 && len(w.del) == 0 && w.marker == nil && !w.delMarker
}

// putStored merges r, written at wall time now, into the stored form of
// r.Host: its entries by name and its marker (nil when none), as for
// loadStored. It returns what to write so that the store holds the merged
// records, each under its slot as name, the merged marker, and the foreign
// entries that keepForeign keeps; expired records and junk are deleted.
func putStored(entries map[string][]byte, marker []byte, r Record, now time.Time) hostWrite {
	h, foreign := loadStored(r.Host, entries, marker, now)
	w := hostWrite{changed: h.merge(r, now)}
	want := make(map[string][]byte, len(h.records)+len(foreign))
	for name, until := range foreign {
		want[name] = entries[name]
		w.entriesUntil = laterOf(w.entriesUntil, until)
	}
	for slot, rec := range h.records {
		want[slot] = encodeRecord(rec)
		w.entriesUntil = laterOf(w.entriesUntil, rec.Until)
	}
	for name, v := range entries {
		if nv, ok := want[name]; !ok {
			w.del = append(w.del, name)
		} else if !bytes.Equal(nv, v) {
			w.putEntry(name, nv)
		}
	}
	for name, v := range want {
		if _, ok := entries[name]; !ok {
			w.putEntry(name, v)
		}
	}
	slices.Sort(w.del)
	w.until = w.entriesUntil
	if h.reset.Reason != "" {
		if mv := encodeRecord(h.reset); !bytes.Equal(mv, marker) {
			w.marker, w.markerUntil = mv, h.reset.Until
		}
		w.until = laterOf(w.until, h.reset.Until)
	} else if marker != nil {
		w.delMarker = true
	}
	return w
}

// putEntry adds an entry to write.
func (w *hostWrite) putEntry(name string, v []byte) {
	if w.put == nil {
		w.put = make(map[string][]byte)
	}
	w.put[name] = v
}

// laterOf returns the later of a and b.
func laterOf(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
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

	// The host's rate limit in the source (host-wide: the same in each of
	// the host's rows): Rate its limiter's rate in requests per second, 0
	// for none; LastMax the rate it learnt at its last throttle and
	// Throttled when that was, both zero when it learnt nothing (a
	// configured rate only). A Transport publishes the rows of hosts whose
	// rate it learnt, and of those that are not closed.
	Rate      float64
	LastMax   float64
	Throttled time.Time

	// The policy in force for the (host, role) in the source, for advise:
	// ConfigHash identifies the source's configuration (its policies as
	// configured and changed by UpdateHostPolicy, without the tuned
	// overrides; equal hashes, equal configurations), "" from a process
	// that does not publish it; Policy holds the tunable values in force,
	// the tuned overrides laid over the configuration (FailMax,
	// ResetTimeout, SuccessThreshold, TrialCalls, and Rate, 0 for
	// unlimited); ConfiguredRate the rate without the overrides (0 for
	// unlimited).
	ConfigHash     string
	Policy         Policy
	ConfiguredRate float64

	// Shadow is true when the host is in shadow mode in the source: State
	// is what it decided, but it rejects nothing. A Transport publishes
	// the rows of its shadow hosts too.
	Shadow bool

	// The fleet's learnt limit of the host as the source knows it (see
	// docs/design.md, "The fleet's limit"), and whether it sends to the
	// host. FleetLimit is the rate the host allows the processes sharing
	// the store all together, in requests per second, 0 for none;
	// FleetThrottled when the throttle it was learnt from came (wall
	// clock; facts are merged by it, and expire 15 minutes after it), and
	// FleetSource the process that saw that throttle; FleetKnown whether
	// that process found the limit known: it agreed with the fact before
	// it, and the fleet holds it rather than probe past it; FleetStart
	// whether the limit is the bracket that stopped the fleet's start at
	// the host rather than a measure: it is never known, nor is a limit
	// that agrees with it. Sending is the
	// source's heartbeat on the host: it sent to it within the last few
	// polls, so it counts among the processes that share FleetLimit; and
	// Served the rate at which the host served the source's requests over
	// the last 2 s, in requests per second, which the fleet adds up (0 for
	// none, and in rows of hosts the source does not send to or the fleet
	// learnt no limit of). A reader trusts none of these blindly: see
	// Transport's pull.
	FleetLimit     float64
	FleetThrottled time.Time
	FleetSource    string
	FleetKnown     bool
	FleetStart     bool
	Sending        bool
	Served         float64
}

// OpenStore opens the store that url names:
//   - a plain file path, or bolt:///abs/path.db, opens (creating if absent)
//     a bbolt file; its parent directory must exist. A plain path must not
//     be empty nor hold a ':' before its first '/' (that is a URL, or a
//     typo, not a file name);
//   - redis://[user:pass@]host:port/db or rediss://… (TLS) opens Redis. The
//     query parameter prefix sets the key prefix (default "hostbreaker:");
//     a prefix that does not end in ':' gets one (prefix=app means
//     "app:"). Every key of the store (records, markers, published states
//     and configurations, their indexes, the journal, the tuned overrides)
//     and its change channel live under the prefix: stores with the same
//     prefix in the same database are one store, and stores with different prefixes share nothing, even
//     when one prefix extends the other. Other query parameters are
//     go-redis options;
//   - redis+cluster://[user:pass@]host:port,host:port/ (rediss+cluster://
//     with TLS) opens a Redis Cluster through the nodes listed (any of them
//     will do; the client finds the others), and
//     redis+sentinel://[user:pass@]host:port,host:port/primary[/db]
//     (rediss+sentinel://) the primary that the Redis Sentinels listed know
//     by that name, following it when they fail it over. Both take the
//     prefix as redis:// does; in a cluster the store's keys carry it as a
//     hash tag, so that they live in one slot.
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
		if err != nil || u.Host != "" || u.Path == "" {
			return "", bad("want bolt:///absolute/path.db")
		}
		if u.RawQuery != "" || u.ForceQuery || u.Fragment != "" || u.RawFragment != "" || strings.HasSuffix(rawURL, "#") {
			return "", bad("a bbolt URL takes no query nor fragment (want bolt:///absolute/path.db)")
		}
		return u.Path, nil
	case "redis", "rediss", "redis+cluster", "rediss+cluster", "redis+sentinel", "rediss+sentinel":
		if _, err := parseRedisStoreURL(rawURL); err != nil {
			return "", err
		}
		return "", nil
	default:
		return "", bad(fmt.Sprintf("unknown scheme %q (want a path, bolt://, redis://, rediss://, redis+cluster:// or redis+sentinel://)", scheme))
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

	Rate      float64 `json:"rate,omitempty"`
	LastMax   float64 `json:"last_max,omitempty"`
	Throttled int64   `json:"throttled,omitempty"` // unix ns

	// The policy in force (PublishedState.ConfigHash, Policy,
	// ConfiguredRate).
	ConfigHash     string              `json:"config,omitempty"`
	Policy         *overrideFieldsJSON `json:"policy,omitempty"`
	ConfiguredRate float64             `json:"configured_rate,omitempty"`
	Shadow         bool                `json:"shadow,omitempty"`

	// The fleet's limit and the heartbeat (PublishedState); a process
	// from before them ignores them.
	FleetLimit     float64 `json:"fleet_limit,omitempty"`
	FleetThrottled int64   `json:"fleet_throttled,omitempty"` // unix ns
	FleetSource    string  `json:"fleet_source,omitempty"`
	FleetKnown     bool    `json:"fleet_known,omitempty"`
	FleetStart     bool    `json:"fleet_start,omitempty"`
	Sending        bool    `json:"sending,omitempty"`
	Served         float64 `json:"served,omitempty"`
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
		j.States[i] = stateJSON{Host: s.Host, Role: s.Role, State: s.State.String(), Reason: string(s.Reason),
			Rate: s.Rate, LastMax: s.LastMax, Shadow: s.Shadow}
		if !s.Until.IsZero() {
			j.States[i].Until = s.Until.UnixNano()
		}
		if !s.Throttled.IsZero() {
			j.States[i].Throttled = s.Throttled.UnixNano()
		}
		if s.ConfigHash != "" {
			j.States[i].ConfigHash, j.States[i].ConfiguredRate = s.ConfigHash, s.ConfiguredRate
			p := s.Policy
			j.States[i].Policy = &overrideFieldsJSON{FailMax: p.FailMax, ResetTimeout: p.ResetTimeout.String(),
				SuccessThreshold: p.SuccessThreshold, TrialCalls: p.TrialCalls, Rate: p.Rate}
		}
		j.States[i].Sending = s.Sending
		if s.Served > 0 {
			j.States[i].Served = s.Served
		}
		if s.FleetLimit > 0 && !s.FleetThrottled.IsZero() {
			j.States[i].FleetLimit, j.States[i].FleetThrottled = s.FleetLimit, s.FleetThrottled.UnixNano()
			j.States[i].FleetSource, j.States[i].FleetKnown, j.States[i].FleetStart = s.FleetSource, s.FleetKnown, s.FleetStart
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
		ps := PublishedState{Source: j.Source, Host: s.Host, Role: s.Role, State: st, Reason: Reason(s.Reason), Shadow: s.Shadow}
		if s.Until > 0 {
			ps.Until = time.Unix(0, s.Until)
		}
		if (s.Rate == 0 || validRate(s.Rate)) && (s.LastMax == 0 || validRate(s.LastMax)) {
			ps.Rate, ps.LastMax = s.Rate, s.LastMax
		}
		if s.Throttled > 0 && ps.LastMax > 0 {
			ps.Throttled = time.Unix(0, s.Throttled)
		}
		if p, ok := decodePublishedPolicy(s); ok {
			ps.ConfigHash, ps.Policy, ps.ConfiguredRate = s.ConfigHash, p, s.ConfiguredRate
		}

		// A fleet limit outside the bounds of a rate, or without its
		// throttle's time, is no limit: it is left out (the row stays).
		if validRate(s.FleetLimit) && s.FleetThrottled > 0 {
			ps.FleetLimit, ps.FleetThrottled = s.FleetLimit, time.Unix(0, s.FleetThrottled)
			ps.FleetSource, ps.FleetKnown, ps.FleetStart = s.FleetSource, s.FleetKnown, s.FleetStart
		}
		ps.Sending = s.Sending
		if validRate(s.Served) {
			ps.Served = s.Served // out of bounds: none
		}
		states = append(states, ps)
	}
	return j.Source, states, time.Unix(0, j.Expires), nil
}

// decodePublishedPolicy returns the policy in force that s carries, and
// false when it carries none or one out of range (then none is read).
func decodePublishedPolicy(s stateJSON) (Policy, bool) {
	if s.ConfigHash == "" || s.Policy == nil || len(s.ConfigHash) > 64 {
		return Policy{}, false
	}
	f := s.Policy
	d, err := time.ParseDuration(f.ResetTimeout)
	count := func(n int) bool { return n >= 1 && n <= maxCount }
	rate := func(r float64) bool { return r == 0 || validRate(r) }
	if err != nil || d <= 0 || !count(f.FailMax) || !count(f.SuccessThreshold) || !count(f.TrialCalls) ||
		!rate(f.Rate) || !rate(s.ConfiguredRate) {
		return Policy{}, false
	}
	return Policy{FailMax: f.FailMax, ResetTimeout: d, SuccessThreshold: f.SuccessThreshold, TrialCalls: f.TrialCalls, Rate: f.Rate}, true
}

// overrideVersion is the version of the stored encoding of tuned overrides.
const overrideVersion = 1

// overrideFieldsJSON is the stored form of the tunable fields of a policy,
// or of one of its roles; a zero field is not set. ResetTimeout is a Go
// duration string ("45s"); Rate, in requests per second, is only ever set
// at the top level. Rate came after the other fields, in the same version:
// an override stored before it decodes as it did, and a process from before
// it ignores it (an override that sets only a rate sets nothing there).
type overrideFieldsJSON struct {
	FailMax          int     `json:"fail_max,omitempty"`
	ResetTimeout     string  `json:"reset_timeout,omitempty"`
	SuccessThreshold int     `json:"success_threshold,omitempty"`
	TrialCalls       int     `json:"trial_calls,omitempty"`
	Rate             float64 `json:"rate,omitempty"`
}

// overrideJSON is the stored form of the tuned override of a Hosts key. It
// names its key, so that a value is only ever read as the override of the
// key that holds it.
type overrideJSON struct {
	V   int    `json:"v"`
	Key string `json:"key"`
	overrideFieldsJSON
	Roles map[string]overrideFieldsJSON `json:"roles,omitempty"`
}

// encodeOverride returns the stored form of the override p of key; p is
// as tunedPolicy returns it.
func encodeOverride(key string, p Policy) []byte {
	fields := func(p Policy) overrideFieldsJSON {
		f := overrideFieldsJSON{FailMax: p.FailMax, SuccessThreshold: p.SuccessThreshold, TrialCalls: p.TrialCalls, Rate: p.Rate}
		if p.ResetTimeout != 0 {
			f.ResetTimeout = p.ResetTimeout.String()
		}
		return f
	}
	j := overrideJSON{V: overrideVersion, Key: key, overrideFieldsJSON: fields(p)}
	if len(p.Roles) > 0 {
		j.Roles = make(map[string]overrideFieldsJSON, len(p.Roles))
		for role, rp := range p.Roles {
			j.Roles[role] = fields(rp)
		}
	}
	b, _ := json.Marshal(j)
	return b
}

// decodeOverride parses the stored form of an override and returns its key
// and policy. It never panics; data that is not the override of a valid,
// normalized key of a known version, setting at least one field, each
// valid, is an error.
func decodeOverride(data []byte) (string, Policy, error) {
	var j overrideJSON
	if err := json.Unmarshal(data, &j); err != nil {
		return "", Policy{}, fmt.Errorf("hostbreaker: decode override: %w", err)
	}
	if j.V != overrideVersion {
		return "", Policy{}, fmt.Errorf("hostbreaker: decode override: unknown version %d", j.V)
	}
	if err := checkOverrideKey(j.Key); err != nil {
		return "", Policy{}, fmt.Errorf("hostbreaker: decode override: %w", err)
	}
	fields := func(f overrideFieldsJSON) (Policy, error) {
		p := Policy{FailMax: f.FailMax, SuccessThreshold: f.SuccessThreshold, TrialCalls: f.TrialCalls, Rate: f.Rate}
		if f.ResetTimeout != "" {
			d, err := time.ParseDuration(f.ResetTimeout)
			if err != nil {
				return Policy{}, err
			}
			if d <= 0 {
				return Policy{}, fmt.Errorf("reset_timeout %q is not positive", f.ResetTimeout)
			}
			p.ResetTimeout = d
		}
		return p, nil
	}
	p, err := fields(j.overrideFieldsJSON)
	if err != nil {
		return "", Policy{}, fmt.Errorf("hostbreaker: decode override of %s: %w", j.Key, err)
	}
	if len(j.Roles) > 0 {
		p.Roles = make(map[string]Policy, len(j.Roles))
		for role, f := range j.Roles {
			if p.Roles[role], err = fields(f); err != nil {
				return "", Policy{}, fmt.Errorf("hostbreaker: decode override of %s: role %q: %w", j.Key, role, err)
			}
		}
	}
	if p, err = tunedPolicy(p); err != nil {
		return "", Policy{}, fmt.Errorf("hostbreaker: decode override of %s: %w", j.Key, err)
	}
	if emptyTuned(p) {
		return "", Policy{}, fmt.Errorf("hostbreaker: decode override of %s: sets no field", j.Key)
	}
	return j.Key, p, nil
}
