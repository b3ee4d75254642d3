package hostbreaker

// This file holds the Transport's side of a store: queueing local
// decisions (cooldowns, resets, shared trips) for it, reading other
// processes' decisions and tuned overrides from it, publishing states, and
// the fleet's learnt rates. The Store interface and its records are in
// store.go; the background loop that drives this is in transport.go.

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"math"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Sharing timings.
const (
	storeTimeout     = 2 * time.Second  // bound on one round of store operations (see Transport.storeRound)
	resetRetention   = 10 * time.Minute // how long a reset marker stays in the store
	minStateTTL      = 5 * time.Second  // published states outlive a few polls
	errorLogInterval = 30 * time.Second // store errors are logged at most this often

	maxStoreOpenBackoff = 30 * time.Second // longest wait between two attempts to open the store
)

// sharing is a Transport's link to a Store. Its methods run on the
// Transport's background goroutine, except queue, which the request path
// and the operator methods call.
type sharing struct {
	store      Store  // nil until url opens (see Transport.openStore); set on the background goroutine
	url        string // the Config's store URL; "" for a Store given with WithStore
	owned      bool   // opened from the Config: closed with the Transport
	source     string
	shareTrips bool
	poll       time.Duration

	noFleetStart bool // StoreConfig.NoFleetStart

	heldMu sync.Mutex
	held   map[string]heldStart // by host: what the store told of a stopped fleet start this process took part in (joinStart)

	mu         sync.Mutex
	pending    map[string]*hostRecords // writes not yet in the store, by host; guarded by mu
	maxPending int                     // bound on the hosts in pending
	kick       chan struct{}           // wakes the background goroutine to flush

	// Owned by the background goroutine.
	applied    map[[2]string]time.Time // newest At applied per (host, slot or reset)
	published  string                  // fingerprint of the last published states
	pubAt      time.Time
	lastErrLog time.Time
	suppressed int

	// The configuration's hash, as last computed (publish): of hashed.
	hashed           *policyTable
	cfgHash          string
	fleetHosts       map[string]*fleetHost   // the hosts whose limit the fleet learnt
	activity         map[string]hostActivity // requests of the published hosts, for the heartbeat
	seenAhead        map[fleetSeenKey]int64  // times read ahead of this clock, by when first read (wall ns)
	phase            float64                 // this process's phase in a fleet, in [0, 1): see limiter.phase
	tweaks           fleetTweaks
	probed           map[string]bool // the hosts this process probes for the fleet (see limiter.fleetSlowStart)
	lastUntrustedLog time.Time

	// The configuration published (publishConfig): the tables it was
	// made of, what was published, and when; cfgChecked once it was
	// compared with the configuration that ran before (checkConfigChange).
	cfgTables  [2]*policyTable
	cfg        PublishedConfig
	cfgPubAt   time.Time
	cfgDirty   bool
	cfgChecked bool

	errors atomic.Uint64                // failed store operations
	errOps [len(storeOps)]atomic.Uint64 // failed store operations by storeOp

	// The store's shared buckets (see Transport.sharedTurn), set when the
	// store opens, if it has them; read by the requests.
	turns      atomic.Pointer[turnBox]
	starts     atomic.Pointer[startBox] // the store's fleet starts (see Transport.fleetStart); nil without
	turnsDown  atomic.Int64             // until then (monotonic ns) the requests pace alone: a turn failed
	turnLogged atomic.Int64             // when a failed turn was last logged, plus one (monotonic ns); 0 for never
}

// turnBox holds a store's turnTaker for an atomic pointer.
type turnBox struct {
	turnTaker
	holder turnHolder // the same store, when it is one; else nil
}

// storeOp is a kind of store operation, as errors are counted by.
type storeOp int

// The store operations.
const (
	opPut       storeOp = iota // writing a cooldown, trip or reset
	opRead                     // reading the records
	opPublish                  // publishing the breaker states
	opJournal                  // appending events to the journal
	opOpen                     // opening the store, retried until it opens
	opUntrusted                // not a failure: a row read and refused, dated too far in the future
	opTurn                     // taking a turn of a host's shared bucket (see Transport.sharedTurn)
)

// storeOps names the store operations, by storeOp.
var storeOps = [...]string{"put", "read", "publish", "journal", "open", "untrusted", "turn"}

func newSharing(s Store, owned bool, c StoreConfig, maxPending int, source string, tw fleetTweaks) *sharing {
	poll := c.PollInterval
	if poll == 0 {
		poll = defaultPollInterval
	}
	sh := &sharing{
		store:        s,
		owned:        owned,
		source:       source,
		shareTrips:   c.ShareTrips,
		noFleetStart: c.NoFleetStart,
		poll:         poll,
		pending:      make(map[string]*hostRecords),
		maxPending:   maxPending,
		kick:         make(chan struct{}, 1),
		applied:      make(map[[2]string]time.Time),
		fleetHosts:   make(map[string]*fleetHost),
		activity:     make(map[string]hostActivity),
		seenAhead:    make(map[fleetSeenKey]int64),
		phase:        sourcePhase(source),
		tweaks:       tw,
		probed:       make(map[string]bool),
	}
	sh.setStore(s)
	return sh
}

// setStore makes s the store, when it opens, and its shared buckets
// available to the requests.
func (sh *sharing) setStore(s Store) {
	sh.store = s
	if tt, ok := s.(turnTaker); ok && !sh.tweaks.noSharedTurns {
		th, _ := s.(turnHolder)
		sh.turns.Store(&turnBox{tt, th})
	}
	if st, ok := s.(starter); ok && !sh.noFleetStart && !sh.tweaks.noFleetStart {
		sh.starts.Store(&startBox{st})
	}
}

// resetKey is the applied key of a host's reset marker; no record slot
// starts with NUL.
const resetKey = "\x00reset"

// queue records r for the store and wakes the background goroutine. It
// never blocks on the store. Pending writes are merged per host by the
// store's own rules (hostRecords.merge), so the queue keeps exactly what
// the store would: a reset drops the host's writes from before it, a
// later automatic deadline wins, a manual one replaces. While the store is
// down the queue holds at most maxPending hosts; past it, the host whose
// writes end soonest is dropped and counted as a failed write.
func (sh *sharing) queue(r Record) {
	r.Source = sh.source
	now := time.Now()
	sh.mu.Lock()
	h := sh.pending[r.Host]
	if h == nil {
		if len(sh.pending) >= sh.maxPending {
			sh.dropSoonestLocked(now)
		}
		h = new(hostRecords)
		sh.pending[r.Host] = h
	}
	h.merge(r, now)
	if h.empty(now) {
		delete(sh.pending, r.Host)
	}
	sh.mu.Unlock()
	select {
	case sh.kick <- struct{}{}:
	default:
	}
}

// dropSoonestLocked drops the pending host whose writes end soonest.
// Callers hold mu.
func (sh *sharing) dropSoonestLocked(now time.Time) {
	var victim string
	var soonest time.Time
	for host, h := range sh.pending {
		var last time.Time
		for _, r := range h.appendTo(nil, now) {
			if r.Until.After(last) {
				last = r.Until
			}
		}
		if victim == "" || last.Before(soonest) {
			victim, soonest = host, last
		}
	}
	delete(sh.pending, victim)
	sh.errors.Add(1)
	sh.errOps[opPut].Add(1)
}

// share hands a local decision to the store, if the Transport has one.
func (t *Transport) share(ev event) {
	sh := t.sh
	if sh == nil || ev.remote {
		return
	}
	wallNow := time.Now()
	r := Record{Host: ev.host, At: wallNow}
	switch {
	case ev.kind == evCooldown:
		r.Reason, r.Note = ev.reason, ev.note
		r.Until = wallNow.Add(time.Duration(ev.until - t.now()))
	case ev.kind == evReset:
		r.Reason, r.Until = ReasonReset, wallNow.Add(resetRetention)
	case ev.kind == evState && ev.to == StateOpen && sh.shareTrips:
		r.Role, r.Reason = ev.role, ReasonBreakerOpen
		r.Until = wallNow.Add(time.Duration(ev.until - t.now()))
	default:
		return
	}
	sh.queue(r)
}

// flush writes the pending records, a host's reset marker before its
// other records, all within one storeTimeout (or ctx's deadline, if
// sooner): however many are pending, a flush takes no longer. Those that
// fail, and those not tried in time, are queued again, under any write
// queued for their host meanwhile, and retried. Records not tried count as
// one failed write; none count when ctx was canceled (Close: the last
// flush tries them again).
func (t *Transport) flush(ctx context.Context) {
	sh := t.sh
	parent := ctx
	ctx, cancel := context.WithTimeout(ctx, storeTimeout)
	defer cancel()
	sh.mu.Lock()
	batch := sh.pending
	sh.pending = make(map[string]*hostRecords)
	sh.mu.Unlock()
	now := time.Now()
	untried := 0
	for _, host := range slices.Sorted(maps.Keys(batch)) {
		var failed hostRecords
		for _, r := range batch[host].appendTo(nil, now) {
			if ctx.Err() != nil {
				untried++
				failed.merge(r, now)
				continue
			}
			err := sh.store.Put(ctx, r)
			if err == nil {
				t.storeErr.Store(nil)
				continue
			}
			if !closing(parent) {
				t.storeError(opPut, err)
			}
			failed.merge(r, now)
		}
		if failed.empty(now) {
			continue
		}
		sh.mu.Lock()
		if newer := sh.pending[host]; newer != nil {
			for _, r := range newer.appendTo(nil, now) {
				failed.merge(r, now)
			}
		}
		sh.pending[host] = &failed
		sh.mu.Unlock()
	}
	if untried > 0 && !closing(parent) {
		t.storeError(opPut, fmt.Errorf("hostbreaker: store: %d writes not tried within %v, queued again: %w", untried, storeTimeout, ctx.Err()))
	}
}

// closing reports whether ctx, a context of the background goroutine's
// store operations, was canceled by Close.
func closing(ctx context.Context) bool {
	return errors.Is(ctx.Err(), context.Canceled)
}

// openStore opens the store of sh.url, which failed to open before, and
// reports whether it did; a failure is counted and logged as a store error.
// It runs on the background goroutine.
func (t *Transport) openStore() bool {
	sh := t.sh
	s, err := OpenStore(sh.url)
	if err != nil {
		t.storeError(opOpen, err)
		return false
	}
	sh.setStore(s)
	t.storeErr.Store(nil)
	t.log.Info("hostbreaker: store opened", "store", redactURL(sh.url))
	return true
}

// pull reads the store and applies what other processes wrote since the
// last pull: resets first, then cooldowns and shared trips, the tuned
// overrides and the fleet's learnt limits. Records this Transport wrote
// itself are already applied. A store that can read all of it at once,
// and only what changed (see storePoller), is read so.
func (t *Transport) pull(ctx context.Context) error {
	sh := t.sh
	cctx, cancel := context.WithTimeout(ctx, storeTimeout)
	snap, err := readPoll(cctx, sh.store)
	cancel()
	if err != nil {
		t.storeError(opRead, err)
		return err
	}
	t.storeErr.Store(nil)
	recs := snap.records
	if err := t.applyOverrides(snap.overrides); err != nil {
		return err
	}
	slices.SortFunc(recs, func(a, b Record) int {
		if (a.Reason == ReasonReset) != (b.Reason == ReasonReset) {
			if a.Reason == ReasonReset {
				return -1
			}
			return 1
		}
		return a.At.Compare(b.At)
	})
	wallNow := time.Now()
	for _, r := range recs {
		if r.Source == sh.source {
			continue
		}
		if r.At.Sub(wallNow) > clockSkew {
			// Dated ahead: it would outrank every later write of its slot.
			t.untrusted(r.Host, r.Source, r.At)
			continue
		}
		k := appliedKey(r)
		if at, ok := sh.applied[k]; ok && !r.At.After(at) {
			continue
		}
		sh.applied[k] = r.At
		if r.Reason == ReasonReset {
			t.resetLocal(r.Host, r.At.UnixNano(), true)
			continue
		}
		if !r.Until.After(wallNow) {
			continue
		}
		until := t.after(t.now(), r.Until.Sub(wallNow))
		if r.Reason == ReasonBreakerOpen {
			t.openBreaker(r.Host, r.Role, until)
			continue
		}
		t.setCooldown(r.Host, cooldown{until: until, reason: r.Reason, note: r.Note,
			manual: r.Reason == ReasonManual, remote: true, at: r.At.UnixNano()})
	}
	// The fleet's rates last: they are read with the rest, and their
	// expiry must not wait for a store that answers.
	t.pullFleetRates(snap.states)
	// Forget what the store no longer holds, so that applied stays bounded.
	if len(sh.applied) > 2*len(recs)+64 {
		live := make(map[[2]string]bool, len(recs))
		for _, r := range recs {
			live[appliedKey(r)] = true
		}
		for k := range sh.applied {
			if !live[k] {
				delete(sh.applied, k)
			}
		}
	}
	return nil
}

// applyOverrides applies the tuned overrides ov read from the store, when
// they changed (see applyPoliciesLocked), and emits a policy change per key
// that changed.
func (t *Transport) applyOverrides(ov map[string]Policy) error {
	t.mu.Lock()
	if len(ov) == 0 && len(t.overrides) == 0 || reflect.DeepEqual(ov, t.overrides) {
		t.mu.Unlock()
		return nil
	}
	prev, before := t.overrides, t.policies.Load()
	t.overrides = ov
	skipped := t.applyPoliciesLocked()
	after := t.policies.Load()
	for _, key := range slices.Sorted(maps.Keys(mapUnion(prev, ov))) {
		if reflect.DeepEqual(prev[key], ov[key]) {
			continue
		}
		var fields Policy
		overlay(&fields, prev[key])
		overlay(&fields, ov[key])
		note := "tuned (read from the store)"
		if _, ok := ov[key]; !ok {
			note = "tuning reverted (read from the store)"
		}
		t.emit(event{kind: evPolicy, host: key, prevPolicy: policyTOML(before.keyInForce(key, fields), fields),
			policy: policyTOML(after.keyInForce(key, fields), fields), note: note, remote: true})
	}
	t.mu.Unlock()
	t.logSkipped(skipped)
	return nil
}

// mapUnion returns a map with the keys of a and b.
func mapUnion(a, b map[string]Policy) map[string]bool {
	out := make(map[string]bool, len(a)+len(b))
	for k := range a {
		out[k] = true
	}
	for k := range b {
		out[k] = true
	}
	return out
}

// appliedKey is the key of r in sharing.applied: its host and slot.
func appliedKey(r Record) [2]string {
	if r.Reason == ReasonReset {
		return [2]string{r.Host, resetKey}
	}
	return [2]string{r.Host, recordSlot(r)}
}

// openBreaker opens the (host, role) breaker until the deadline, as a trip
// shared by another process. A later local deadline is kept.
func (t *Transport) openBreaker(host, role string, until int64) {
	e := t.reg.lookup(host, role)
	if e == nil {
		if e = t.reg.create(host, role, t.resolve, t.now()); e == nil {
			return
		}
	}
	if e.restoreOpen(until) {
		t.emit(event{kind: evState, host: host, role: role, to: StateOpen, until: until, remote: true})
	}
}

// publish writes the states that are not closed to the store, when they
// changed or before the last publication expires.
func (t *Transport) publish(ctx context.Context) {
	sh := t.sh
	var states []PublishedState
	var fp strings.Builder
	// The policy in force, for advise: the configuration's hash, and each
	// row's tunable values.
	t.mu.Lock()
	configured := t.configured
	t.mu.Unlock()
	if configured != sh.hashed {
		sh.hashed, sh.cfgHash = configured, configHash(configured)
	}
	inForce := t.policies.Load()
	ttl := max(3*sh.poll, minStateTTL)
	now := time.Now()
	rows := t.statuses(true)
	sending := t.heartbeats(rows, now, ttl)
	for _, s := range rows {
		ps := PublishedState{Source: sh.source, Host: s.Host, Role: s.Role, State: s.State, Until: s.Until, Reason: s.Reason, Shadow: s.Shadow}
		if r, err := inForce.resolve(s.Host, s.Role); err == nil {
			c, err := configured.resolve(s.Host, "")
			if err == nil {
				ps.ConfigHash, ps.ConfiguredRate = sh.cfgHash, c.Rate
				ps.Policy = Policy{FailMax: r.FailMax, ResetTimeout: r.ResetTimeout, SuccessThreshold: r.SuccessThreshold,
					TrialCalls: r.TrialCalls, Rate: r.Rate}
				fmt.Fprintf(&fp, "%+v|", ps.Policy)
			}
		}
		if h := t.reg.host(s.Host); h != nil {
			if lim := h.lim.Load(); lim != nil {
				ls := lim.status()
				ps.Rate, ps.LastMax = ls.rate, ls.lastMax
				if fh := sh.fleetHosts[s.Host]; fh != nil && fh.fact.limit > 0 && sending[s.Host] {
					// Only where the fleet uses it (pullFleetRates): a
					// count moves at every poll, and a row that changes is
					// written, and read by every process, again.
					ps.Served, _ = lim.served(t.now())
				}
				if ls.throttled != 0 {
					ps.Throttled = time.Unix(0, ls.throttled)
				}
			}
			ps.Sending = sending[s.Host]
		}
		if fh := sh.fleetHosts[s.Host]; fh != nil && fh.fact.limit > 0 {
			ps.FleetLimit, ps.FleetThrottled, ps.FleetSource = fh.fact.limit, time.Unix(0, fh.fact.throttled), fh.fact.source
			ps.FleetKnown, ps.FleetStart = fh.fact.known, fh.fact.start
		}
		states = append(states, ps)
		// Rates in the fingerprint to two digits: a learnt rate moves with
		// every success, and the store needs its level, not each step.
		fmt.Fprintf(&fp, "%s|%s|%d|%d|%s|%.2g|%.2g|%d|%.2g|%d|%s|%t|%t|%t|%t|%.2g\n", s.Host, s.Role, s.State, s.Until.Unix(), s.Reason,
			ps.Rate, ps.LastMax, ps.Throttled.UnixNano(), ps.FleetLimit, ps.FleetThrottled.UnixNano(), ps.FleetSource, ps.FleetKnown, ps.FleetStart,
			ps.Sending, ps.Shadow, ps.Served)
	}
	// The heartbeat: when this process was first published sending to a
	// host, in its current run of sending (see fleetShare). Set once the
	// rows are in the store, below.
	defer func() {
		for host, fh := range sh.fleetHosts {
			switch {
			case !sending[host]:
				fh.visibleSince = time.Time{}
			case fh.visibleSince.IsZero() && sh.published == fp.String():
				fh.visibleSince = now
			}
		}
	}()
	t.publishConfig(ctx, configured, inForce, now)
	if fp.String() == sh.published && now.Sub(sh.pubAt) < ttl/2 {
		return
	}
	cctx, cancel := context.WithTimeout(ctx, storeTimeout)
	err := sh.store.PublishStates(cctx, sh.source, states, ttl)
	cancel()
	if err != nil {
		t.storeError(opPublish, err)
		return
	}
	t.storeErr.Store(nil)
	sh.published, sh.pubAt = fp.String(), now
}

// configTTL returns how long a published configuration counts as
// running: longer than the states' life (it is republished less often,
// see publishConfig), and at least minConfigTTL.
func (sh *sharing) configTTL() time.Duration {
	return max(10*sh.poll, minConfigTTL)
}

// minConfigTTL is the least life of a published configuration.
const minConfigTTL = 30 * time.Second

// publishConfig publishes the configuration in force (see
// PublishedConfig): configured, as configured and changed by
// UpdateHostPolicy, and inForce, with the tuned overrides, when either
// changed or before the last publication expires. Its first publication
// waits until the configuration that ran before has been compared with it
// (checkConfigChange). A configuration too large for the store is
// published without its values.
func (t *Transport) publishConfig(ctx context.Context, configured, inForce *policyTable, now time.Time) {
	sh := t.sh
	if sh.cfgTables != [2]*policyTable{configured, inForce} {
		sh.cfgTables = [2]*policyTable{configured, inForce}
		c := PublishedConfig{Source: sh.source, Hash: sh.cfgHash, Values: true,
			Configured: configTables(configured), InForce: configTables(inForce)}
		if len(c.Source)+len(configTOML(c.Configured))+len(configTOML(c.InForce)) > maxConfigBytes-1024 {
			c.Values, c.Configured, c.InForce = false, Config{}, Config{}
		}
		sh.cfg, sh.cfgDirty = c, true
	}
	ttl := sh.configTTL()
	if !sh.cfgDirty && now.Sub(sh.cfgPubAt) < ttl/2 {
		return
	}
	cctx, cancel := context.WithTimeout(ctx, storeTimeout)
	defer cancel()
	if !sh.cfgChecked {
		if err := t.checkConfigChange(cctx, inForce); err != nil {
			t.storeError(opPublish, err)
			return
		}
		sh.cfgChecked = true
	}
	c := sh.cfg
	c.Published = time.Now()
	if err := sh.store.PublishConfig(cctx, c, ttl); err != nil {
		t.storeError(opPublish, err)
		return
	}
	sh.cfgPubAt, sh.cfgDirty = now, false
}

// checkConfigChange compares the configuration that this Transport
// starts with, sh.cfg with the tables in force inForce, with the one that
// ran before it, as the store keeps them (Store.Configs), and journals a
// policy change per Hosts key whose values in force differ, so that advise
// judges those keys only on the evidence gathered since (see Advise).
//
// The configuration that ran before is the one this process's source
// published last (a process whose name is configured keeps its source
// across restarts), else the one that stopped last (the process this one
// replaces, in a rolling restart). None is journaled when there is none
// (processes that run on with another configuration are processes whose
// configurations differ, which advise reports, not a change), when its
// hash is this one's, or when another running process runs this
// configuration already (this process joins them). When its values are
// unknown (it was too large to publish them), one policy change for every
// host ("*") says the configuration changed, with the values in force now.
func (t *Transport) checkConfigChange(ctx context.Context, inForce *policyTable) error {
	sh := t.sh
	configs, err := sh.store.Configs(ctx)
	if err != nil {
		return err
	}
	now := time.Now()
	var own, stopped *PublishedConfig
	for i := range configs {
		c := &configs[i]
		switch {
		case c.Source == sh.source:
			own = c
		case c.Running(now):
			if c.Hash == sh.cfg.Hash {
				return nil
			}
		case stopped == nil || c.Expires.After(stopped.Expires):
			stopped = c
		}
	}
	prev := cmp.Or(own, stopped)
	if prev == nil || prev.Hash == sh.cfg.Hash {
		return nil
	}
	note := fmt.Sprintf("configuration changed at start: %s (last published by %s) → %s", prev.Hash, prev.Source, sh.cfg.Hash)
	var before *policyTable
	if prev.Values {
		before, _ = prev.InForce.validate()
	}
	if before == nil {
		keys := Policy{FailMax: 1, ResetTimeout: 1, SuccessThreshold: 1, TrialCalls: 1, Rate: 1}
		r, err := inForce.resolveWith(inForce.defaults, Policy{}, "", "defaults")
		if err != nil {
			return nil
		}
		t.emit(event{kind: evPolicy, host: "*", policy: policyTOML(r.Policy, keys), note: note + "; the values before are unknown"})
		return nil
	}
	changes := configChanges(before, inForce)
	if len(changes) == 0 {
		t.emit(event{kind: evPolicy, host: "*", note: note + "; no tunable value changed"})
	}
	for _, ch := range changes {
		t.emit(event{kind: evPolicy, host: ch.key, prevPolicy: ch.before, policy: ch.after, note: note})
	}
	return nil
}

// withdrawConfig marks the configuration published as stopped, when
// the Transport closes: the store keeps it for the next process to
// compare with (see checkConfigChange), and advise no longer counts it.
func (t *Transport) withdrawConfig(ctx context.Context) {
	sh := t.sh
	if sh.cfgPubAt.IsZero() {
		return
	}
	c := sh.cfg
	c.Published = time.Now()
	if err := sh.store.PublishConfig(ctx, c, time.Nanosecond); err != nil && !closing(ctx) {
		t.storeError(opPublish, err)
	}
}

// configChange is what changed of one Hosts key between two policy
// tables: its key ("*" for the defaults, which every host inherits), and
// the changed tunable keys with their values in force, before and after,
// as TOML lines (see policyTOML).
type configChange struct {
	key           string
	before, after string
}

// configChanges returns the Hosts keys (and "*", the defaults) whose
// tunable values in force differ between the tables before and after, in
// the order of their keys. A key's value counts as changed when its
// value in force differs and the key's own setting of it (its top level,
// or the role's table) does too: a change of the defaults is the
// defaults', reported once under "*", not under every key that inherits
// it. A role's line is reported when the role's own table changed it.
func configChanges(before, after *policyTable) []configChange {
	keys := map[string]bool{"*": true}
	for _, pt := range []*policyTable{before, after} {
		for host := range pt.exact {
			keys[host] = true
		}
		for _, w := range pt.wild {
			keys["*"+w.suffix] = true
		}
	}
	var out []configChange
	for _, key := range slices.Sorted(maps.Keys(keys)) {
		if ch, ok := keyChange(before, after, key); ok {
			out = append(out, ch)
		}
	}
	return out
}

// keyChange compares the Hosts key (or "*", the defaults) in the tables
// before and after, as configChanges describes.
func keyChange(before, after *policyTable, key string) (configChange, bool) {
	own := func(pt *policyTable) Policy {
		if key == "*" {
			return Policy{}
		}
		return pt.keyOwn(key)
	}
	level := func(pt *policyTable, role string) Policy { // the key's own setting
		p := own(pt)
		if key == "*" {
			p = pt.defaults
		}
		if role != "" {
			return p.Roles[role]
		}
		return withoutRoles(p)
	}
	ownB, ownA := own(before), own(after)
	roles := map[string]bool{}
	for _, r := range append(roleNames(before.defaults, ownB), roleNames(after.defaults, ownA)...) {
		roles[r] = true
	}
	var prev, next, marks Policy
	changed := false
	for _, role := range slices.Sorted(maps.Keys(roles)) {
		rb, err1 := before.resolveWith(before.defaults, ownB, role, "")
		ra, err2 := after.resolveWith(after.defaults, ownA, role, "")
		if err1 != nil || err2 != nil {
			continue
		}
		lb, la := level(before, role), level(after, role)
		for _, k := range tunableKeys {
			if k == keyRate && role != "" {
				continue // host-wide
			}
			vb, va := currentValue(rb.Policy, k), currentValue(ra.Policy, k)
			if vb == va || (setsKey(lb, k) == setsKey(la, k) && currentValue(lb, k) == currentValue(la, k)) {
				continue
			}
			changed = true
			if role == "" {
				setValue(&prev, k, vb)
				setValue(&next, k, va)
				setValue(&marks, k, 1)
				continue
			}
			for _, p := range []*Policy{&prev, &next, &marks} {
				if p.Roles == nil {
					p.Roles = map[string]Policy{}
				}
			}
			pr, nr, mr := prev.Roles[role], next.Roles[role], marks.Roles[role]
			setValue(&pr, k, vb)
			setValue(&nr, k, va)
			setValue(&mr, k, 1)
			prev.Roles[role], next.Roles[role], marks.Roles[role] = pr, nr, mr
		}
	}
	if !changed {
		return configChange{}, false
	}
	return configChange{key: key, before: policyTOML(prev, marks), after: policyTOML(next, marks)}, true
}

// configHash returns a short hash of the policies of pt: equal
// configurations, equal hashes.
func configHash(pt *policyTable) string {
	var b strings.Builder
	writePolicyTOML(&b, "defaults.", pt.defaults, pt.defaults)
	for _, host := range slices.Sorted(maps.Keys(pt.exact)) {
		p := pt.exact[host]
		writePolicyTOML(&b, "hosts."+quoteKey(host)+".", p, p)
	}
	for _, w := range pt.wild {
		writePolicyTOML(&b, "hosts."+quoteKey("*"+w.suffix)+".", w.policy, w.policy)
	}
	sum := sha256.Sum256([]byte(b.String()))
	return hex.EncodeToString(sum[:6])
}

// heartbeats returns the hosts of rows (the published statuses) that this
// process sent a request to within ttl of now, the life of the rows: the
// hosts whose requests (successes, failures and neutral outcomes of all
// roles) grew, or whose limiter gave a turn (a request waiting for its turn
// sends, too), at a publication less than ttl ago.
func (t *Transport) heartbeats(rows []Status, now time.Time, ttl time.Duration) map[string]bool {
	sh := t.sh
	counts := make(map[string]uint64)
	for _, s := range rows {
		if _, ok := counts[s.Host]; !ok {
			if h := t.reg.host(s.Host); h != nil {
				if lim := h.lim.Load(); lim != nil {
					counts[s.Host] = uint64(lim.lastTurn()) // moves when a request asks for a turn
				}
			}
		}
		if sh.tweaks.servedDemand {
			counts[s.Host] += s.Successes + s.Failures + s.Neutral
			continue
		}
		counts[s.Host] += s.Requests // those rejected too: a process paced below one request per max_wait still wants its share
	}
	sending := make(map[string]bool)
	for host, n := range counts {
		a, ok := sh.activity[host]
		if !ok || n != a.count {
			a = hostActivity{count: n, at: now}
			if !ok && n == 0 {
				a.at = time.Time{}
			}
			sh.activity[host] = a
		}
		sending[host] = !a.at.IsZero() && now.Sub(a.at) < ttl
	}
	for host := range sh.activity {
		if _, ok := counts[host]; !ok {
			delete(sh.activity, host)
		}
	}
	return sending
}

// hostActivity is the count of a host's requests when it last grew, and
// when that was (zero: never seen growing).
type hostActivity struct {
	count uint64
	at    time.Time
}

// storeError counts a failed store operation and logs it, at most once
// per errorLogInterval with the number of errors not logged.
func (t *Transport) storeError(op storeOp, err error) {
	sh := t.sh
	sh.errors.Add(1)
	sh.errOps[op].Add(1)
	t.storeErr.Store(&err)
	now := time.Now()
	if !sh.lastErrLog.IsZero() && now.Sub(sh.lastErrLog) < errorLogInterval {
		sh.suppressed++
		return
	}
	t.log.Warn("hostbreaker: store unavailable; requests continue under local protection",
		"op", storeOps[op], "err", err, "suppressed", sh.suppressed)
	sh.lastErrLog, sh.suppressed = now, 0
}

// The fleet's limit: see docs/design.md, "The fleet's limit".
const (
	// clockSkew is how far in the future a time read from the store may
	// lie (the clocks of two machines differ): a row dated further ahead
	// is refused, counted (the store errors metric, op "untrusted") and
	// logged; one dated ahead by less counts from when it was first read.
	clockSkew = time.Minute

	// redivideStep is how much, relatively, a process's share of the
	// fleet's limit must move (the number of processes sending to the
	// host changed) for the process to take it again.
	redivideStep = 0.05

	// slowStartFact is how long a limiter's slow start must have lasted
	// (its first throttle, and no other since) for it to make a fact:
	// the first throttle anchors nothing, and a fleet whose processes
	// all slow-start at once would adopt the birth rate of the first one
	// (min_rate) and stay there; a slow start that lasts says the host
	// serves what the limiter sends.
	slowStartFact = 4 * time.Second

	// joinerShare is the least share a process takes of the fleet's limit
	// while the other processes do not count it yet (see fleetShare).
	joinerShare = 0.05

	// knownGap is how far apart two facts' throttles must be for the
	// second to be known by agreeing with the first (see pullFleetRates):
	// the refusals that follow a fact for a poll or two, while the fleet's
	// processes adopt it (bbolt's poll every second or two), and those of
	// a host draining its burst after the fleet's start, come a second or
	// two apart and measure one episode, each at what the fleet was
	// served while it slowed down. With facts 2 s apart, a start's
	// aftermath of 24 processes on bbolt made facts of 3.9, 4.6 and 4.4
	// r/s in 3 s (nginx allows 5); two such that agreed 2 s apart would
	// have been held as known. (That was suspected of runs that sat at
	// 3–4 r/s for 20 s without a refusal; the two such runs traced since
	// had another cause, see startAftermath.)
	knownGap = int64(5 * time.Second)

	// startAftermath is how long after the bracket of the fleet's start
	// (the first fact of it that this process read) a member's throttle
	// past the bracket's episode is of the start's aftermath. The start
	// reached four times the bracket, and a host that counts a burst
	// (nginx's) counts that overshoot for seconds while the fleet sends
	// under its limit; what the fleet was served then is its slowing
	// down. Such a throttle teaches a bracket, not a measure: no less than
	// knownBeta times the bracket before it (the fleet backs off, gently),
	// climbed past as the start's (see limiter.bracket). Traced: 48
	// processes on Redis without Retry-After, refused 2.04 s after the
	// start's bracket of 4.52 r/s, made a fact of the poll's count, 3.37,
	// and climbed from it by steps held 2 s (85.9 % served); holding the
	// bracket itself through the aftermath drew 19 429s in a run of 48
	// (twice one process alone is 16–20). Only the first bracket read
	// counts: the processes that inherit the bracket republish it with
	// their own throttles, and a host that refuses every few seconds
	// would extend the aftermath.
	startAftermath = int64(5 * time.Second)

	// servedWeight is the weight of a poll's count of what the host
	// served the fleet in the smoothed count (fleetHost.served), and
	// servedSamples how many polls the smoothed count needs to stand for
	// the count of a member's throttle. A poll's count adds up the last 2
	// s that each process published, each a request or two of a share of
	// a few a second, counted at its own time. In 21 throttles of 24
	// processes on bbolt (nginx served them 5 to 6 r/s), the count of the
	// poll before each would have made facts of 3.4 to 7.3 r/s; the count
	// smoothed over the polls before, 4.6 to 6.5.
	servedWeight  = 1.0 / 3
	servedSamples = 2
)

// fleetRate is this process's part of what the processes sharing the
// store learnt of a host's rate: its share of the fleet's limit, the
// share of min_rate that floors it, and when the throttle that taught the
// fleet its limit came (wall unix ns); and the rates that the other
// processes sending to the host published, all together (0 when none
// does), with which it paces the fleet's shared bucket (see
// Transport.sharedTurn), and the fleet's limit, which floors the bucket's
// rate.
type fleetRate struct {
	rate      float64
	floor     float64
	throttled int64
	others    float64
	limit     float64 // the fleet's fact: the rate the host allows all its processes together
	known     bool    // the fleet's fact is known: see fleetHost.known
}

// fleetFact is the fleet's learnt limit of one host: the rate the host
// allows the processes sharing the store all together, when the throttle
// that taught it came (wall unix ns), and who saw it. Facts are merged by
// the time of their throttle, the newest winning (see newerFact).
type fleetFact struct {
	limit     float64
	throttled int64
	source    string // the process that saw the throttle
	from      string // the process whose row this copy was read from
	known     bool   // its source found it agreeing with the fact before it: see fleetHost.known
	start     bool   // the bracket that stopped the fleet's start (sharedturn.go), not a measure
}

// newerFact returns the newer of two facts: the one with the later
// throttle; for the same throttle, the copy that its own source published
// (it may have been reanchored since), else the one seen by the greater
// source, so that every process picks the same.
func newerFact(a, b fleetFact) fleetFact {
	switch {
	case a.throttled != b.throttled:
		if a.throttled > b.throttled {
			return a
		}
		return b
	case (a.from == a.source) != (b.from == b.source):
		if a.from == a.source {
			return a
		}
		return b
	case b.source > a.source:
		return b
	}
	return a
}

// fleetHost is what the background goroutine keeps of one host whose
// limit the fleet learnt.
type fleetHost struct {
	fact fleetFact // the newest fact known; limit 0 when none lives

	// adoptedAt is the throttle of the fact the host's limiter paces by,
	// and share the share it took of it; ownN, for a fact this process
	// learnt itself, the processes it was learnt among (its limit is the
	// limiter's last max times ownN, until the limiter takes its share
	// again: redivided).
	adoptedAt int64
	share     float64
	ownN      int
	redivided bool

	// known is whether the fact is known: its source found it agreeing
	// with the fact before it on the limit (within knownSpread, and
	// learnt from another episode; see pullFleetRates). The fleet's
	// limiters hold it, as a process alone holds a limit its last two
	// throttles agreed on (see limiter.known), instead of probing past it
	// at CUBIC's pace; the source decides it for all of them, so that
	// they hold or probe alike.
	known bool

	// startN is the processes that took part in the fleet's start at the
	// host that a throttle of this process stopped, which count among
	// those sending to it until startUntil (wall ns).
	startN     int
	startUntil int64

	// startAt is the throttle (wall ns) of the first fact this process
	// read of the host that was the bracket of the fleet's start: the
	// start's aftermath runs startAftermath from it.
	startAt int64

	// visibleSince is when this process first published itself sending
	// to the host, in the current run of sending; zero when it does not
	// send to it (see fleetShare).
	visibleSince time.Time

	// served is what the host served the fleet's processes all together,
	// as the polls of this process counted it (its own count and the
	// others' published ones), smoothed over servedN polls (see
	// countServed); it is what a member's throttle teaches.
	served  float64
	servedN int
}

// fleetRate returns this process's share of what the fleet learnt of
// host's rate, as of the last read of the store.
func (t *Transport) fleetRate(host string) (fleetRate, bool) {
	m := t.fleet.Load()
	if m == nil {
		return fleetRate{}, false
	}
	fr, ok := (*m)[host]
	return fr, ok
}

// fleetRow is what pullFleetRates gathers of one host from the rows of
// the other processes.
type fleetRow struct {
	fact     fleetFact
	sending  map[string]float64 // rate by source sending to the host
	served   map[string]float64 // the rate the host served, by source sending to it (PublishedState.Served)
	learning map[string]bool    // the sources sending whose limiter throttled, when no fact lives: in slow start
}

// othersRate returns the rates that the other processes sending to the
// host published, all together.
func (x *fleetRow) othersRate() float64 { return sum(x.sending) }

// othersServed returns the rates at which the host served the other
// processes sending to it, as they published them, all together.
func (x *fleetRow) othersServed() float64 { return sum(x.served) }

// sum returns the sum of m's values.
func sum(m map[string]float64) float64 {
	var r float64
	for _, v := range m {
		r += v
	}
	return r
}

// pullFleetRates reads the rows that other processes published (see
// publish) and, per host whose limit the fleet learnt, works out the
// fleet's limit and this process's share of it, and applies it.
//
// The fleet's limit of a host is one fact: the newest throttle in the
// fleet (this process's own included) and the limit learnt from it, which
// expires fleet-wide limiterIdle after that throttle. A process learns a
// fact from its own throttle as its limiter's last max times the number
// of processes it shared the host with, or, when it paced the host by a
// fact among others, as what the host served the fleet (see below); and
// decides whether the fact is known, which the fact carries to every
// process. Each process paces at the limit
// divided by the processes sending to the host (their heartbeat: Sending,
// in rows that expire within a few polls), itself included, and takes a
// share again when that number changes, so that a joiner or a leaver
// re-divides the limit: there is no ratchet (a share is never computed
// from other shares) and no overshoot (a joiner that the others do not
// count yet takes only what they leave, see fleetShare). min_rate bounds
// the limit: each process's floor is min_rate divided among them.
//
// Times read from the store are untrusted: a row whose throttle lies more
// than clockSkew ahead of this process's clock is refused, counted and
// logged; one ahead by less counts from when it was first read, so that
// it cannot outrank this process's later throttles. Nothing read here can
// switch learning off: a fact is only ever adopted by an adaptive
// limiter, which keeps learning from this process's own throttles.
func (t *Transport) pullFleetRates(states []PublishedState) {
	sh := t.sh
	wallNow := time.Now()
	wall := wallNow.UnixNano()
	rows := make(map[string]*fleetRow)
	seen := make(map[fleetSeenKey]bool)
	for _, s := range states {
		if s.Source == sh.source {
			continue
		}
		if !s.Sending && s.FleetLimit <= 0 {
			continue
		}
		x := rows[s.Host]
		if x == nil {
			x = &fleetRow{sending: make(map[string]float64), served: make(map[string]float64), learning: make(map[string]bool)}
			rows[s.Host] = x
		}
		if s.Sending {
			x.sending[s.Source] = max(x.sending[s.Source], s.Rate) // one per source: the rate is host-wide
			x.served[s.Source] = max(x.served[s.Source], s.Served)
			if !s.Throttled.IsZero() && s.FleetLimit <= 0 {
				x.learning[s.Source] = true
			}
		}
		if s.FleetLimit <= 0 {
			continue
		}
		th, ok := t.trustedTime(s.Host, s.Source, s.FleetThrottled.UnixNano(), wall, seen)
		if !ok || wall-th >= limiterIdle {
			continue
		}
		x.fact = newerFact(x.fact, fleetFact{limit: s.FleetLimit, throttled: th, source: s.FleetSource, from: s.Source,
			known: s.FleetKnown, start: s.FleetStart})
	}
	for k := range sh.seenAhead {
		if !seen[k] {
			delete(sh.seenAhead, k)
		}
	}

	// This process's own learning, and the facts whose hosts it knows.
	for host := range sh.fleetHosts {
		if rows[host] == nil {
			rows[host] = &fleetRow{}
		}
	}
	t.reg.mu.Lock()
	var limited []*hostState
	t.reg.tab.Load().each(func(h *hostState) {
		if h.lim.Load() != nil {
			limited = append(limited, h)
		}
	})
	t.reg.mu.Unlock()
	for _, h := range limited {
		if rows[h.name] == nil {
			if st := h.lim.Load().status(); st.throttled != 0 && wall-st.throttled < limiterIdle {
				rows[h.name] = &fleetRow{}
			}
		}
	}

	var prev map[string]fleetRate
	if m := t.fleet.Load(); m != nil {
		prev = *m
	}
	fleet := make(map[string]fleetRate, len(rows))
	now := t.now()
	stopped := sh.heldNow() // the fleet starts this process took part in, stopped
	for host, x := range rows {
		fh := sh.fleetHosts[host]
		if fh == nil {
			fh = &fleetHost{}
		}
		if fr, ok := prev[host]; ok && fh.adoptedAt != fr.throttled {
			// A limiter started since the last poll adopts the fleet's
			// rate of then (startLimiter): its throttle is the fleet's.
			if h := t.reg.host(host); h != nil {
				if lim := h.lim.Load(); lim != nil && lim.status().throttled == fr.throttled {
					fh.adoptedAt, fh.share = fr.throttled, fr.rate
				}
			}
		}
		n := len(x.sending) + 1
		held := stopped[host]
		if held.procs > 0 {
			fh.startN, fh.startUntil = held.procs, wall+int64(startProcsFor)
		}
		if wall < fh.startUntil {
			// The processes that took part in the fleet's start at the
			// host, before their heartbeats are all in the store.
			n = max(n, fh.startN)
		}
		h := t.reg.host(host)
		var lim *limiter
		var st limitStatus
		if h != nil {
			if lim = h.lim.Load(); lim != nil {
				st = lim.status()
			}
		}
		// A throttle of this process's own, newer than the fleet's
		// copy of it: this process's fact.
		young := st.slowStart && (wall-st.throttled < int64(slowStartFact) || st.holding) && !sh.tweaks.youngFacts && held.reached == 0
		if st.throttled != 0 && !young && st.throttled != fh.adoptedAt && st.throttled != x.fact.throttled && wall-st.throttled < limiterIdle {
			if fh.fact.source != sh.source || fh.fact.throttled != st.throttled {
				fh.ownN, fh.redivided = n, false
			}
			own := fleetFact{limit: st.lastMax * float64(fh.ownN), throttled: st.throttled, source: sh.source, from: sh.source}
			fromStart := false
			if n > 1 && fh.fact.limit > 0 && fh.fact.throttled < st.throttled && wall-fh.fact.throttled < limiterIdle && !sh.tweaks.ownFactOnly {
				// A member of a fleet that paced the host by its limit: the
				// fleet was refused at the rate of all its senders, and
				// the host allowed what it served all of them over the
				// window before (this process's count, and the others' as
				// they published them), as one limiter anchors on what it
				// was served (limiter.estimateLocked); but no more than
				// the rate refused, and no less than β times the fact the
				// fleet paced by (a published count lags by up to a poll).
				// One process's own estimate times n says little when its
				// share is a request or two per window; the rates the
				// fleet published added up to twice what it sent in the
				// benchmark's traces.
				fill := st.refused + x.othersRate()
				_, served := lim.served(now)
				count := served + x.othersServed()
				if fh.servedN >= servedSamples {
					// The count of the polls before the throttle: the
					// others' published counts of this poll cover its
					// reaction (a Retry-After's pause of the whole fleet),
					// and one poll's count is noisy (see servedWeight). A
					// fleet of 24 that nginx served 6 r/s read 2.8 r/s at
					// the poll after a refusal with Retry-After: 1, and sat
					// at the floor's 3.2 r/s for 10 s (96.6 % served).
					count = fh.served
				}
				own.limit, fh.redivided = max(min(count, fill), cubicBeta*fh.fact.limit), true
				if st.throttled-fh.fact.throttled < acceptWindow {
					// Within the window of the fact's own throttle: the
					// requests that the fleet let go before it slowed down
					// (the turns given at the end of the fleet's start),
					// refused in the same episode. They teach no lower
					// limit than the fact (a process alone ignores the
					// throttles of its episode).
					own.limit = max(own.limit, fh.fact.limit)
					fromStart = fh.fact.start // the start's episode: still its bracket
				} else if fh.fact.start && st.throttled-fh.startAt < startAftermath {
					// The start's aftermath: what the fleet was served as
					// it slowed down after its start, a bracket still.
					own.limit = max(own.limit, knownBeta*fh.fact.limit)
					fromStart = true
				}
			}
			if sh.probed[host] && fh.fact.limit <= 0 {
				// The end of the slow start this process ran for the fleet,
				// whose other processes held their shares: the host's
				// limit is what it served this one, and theirs (a holder's
				// rate is below the prober's: a row that says more is not
				// believed).
				own.limit = st.lastMax
				for _, v := range x.sending {
					own.limit += min(v, st.lastMax)
				}
			}
			if held.reached > 0 && fh.fact.limit <= 0 {
				// The throttle that stopped the fleet's start at the host
				// (sharedturn.go): the rate the fleet was served two
				// doublings before, not this process's few requests of it
				// times the processes it has seen so far, says what the
				// host allows. Whatever limit it gives, the first fact
				// since the start is the start's bracket, not a measure:
				// this process's limiter was given its share of the
				// bracket (joinStart), and its last max times the
				// processes it counts is the bracket again.
				if held.fact() > own.limit {
					own.limit, fh.redivided = held.fact(), true
					fh.ownN = max(fh.ownN, held.procs)
				}
				fromStart = true
			}
			// Known: it agrees with the fact before it, learnt from
			// another episode, knownGap or more before (the start's reply
			// throttles several of its processes at once, and each one's
			// copy of its fact would agree with the first). The start's
			// fact is a bracket, not a measure: it is never known, and a
			// fact that agrees with it is not either (a refusal in the
			// start's aftermath, a few seconds on, measures what the fleet
			// was served at the bracket: in a traced run of 48 processes,
			// 4.22 r/s after the start's 4.25 of nginx's 5, held as known
			// for 10 s). This process decides it for every process, which
			// hold or probe the fact alike.
			own.start = fromStart
			own.known = !fromStart && !fh.fact.start && !sh.tweaks.noFleetKnown && fh.fact.limit > 0 &&
				st.throttled-fh.fact.throttled >= knownGap && math.Abs(own.limit-fh.fact.limit) <= knownSpread*fh.fact.limit
			delete(sh.probed, host)
			x.fact = newerFact(x.fact, own)
		} else if fh.fact.source == sh.source && fh.fact.throttled == st.throttled && st.throttled != 0 && !young &&
			wall-st.throttled < limiterIdle {
			own := fh.fact
			if !fh.redivided {
				own.limit = st.lastMax * float64(fh.ownN) // reanchored since
			}
			x.fact = newerFact(x.fact, own)
		}
		fh.fact = x.fact
		if fh.fact.start && fh.startAt == 0 {
			fh.startAt = fh.fact.throttled
		}
		fh.known = x.fact.known && !sh.tweaks.noFleetKnown
		if held.reached > 0 && fh.fact.limit > 0 {
			sh.forgetHeld(host) // taught, by this process or another
		}
		if fh.fact.limit <= 0 || wall-fh.fact.throttled >= limiterIdle {
			// No live fact: the limit expired fleet-wide.
			delete(sh.fleetHosts, host)
			if lim != nil {
				lim.setPhase(0, 0)
				lim.setFleet(false, false, 0)
				if !sh.tweaks.ownSlowStart {
					// The process with the least name of those learning
					// probes for the fleet.
					probe := true
					for src := range x.learning {
						probe = probe && src > sh.source
					}
					if probe && len(x.learning) > 0 {
						sh.probed[host] = true
					}
					if ch, ok := lim.fleetSlowStart(n, minRateOf(t.resolve(host, ""))/float64(n), probe, now); ok {
						t.emitRate(host, ch)
					}
				}
			}
			if h != nil {
				if ch, ok := h.expireLimiter(now); ok {
					t.emitRate(host, ch)
				}
			}
			continue
		}
		sh.fleetHosts[host] = fh
		fr := fleetRate{rate: t.fleetShare(fh, x, n, wallNow), throttled: fh.fact.throttled, others: x.othersRate(), limit: fh.fact.limit, known: fh.known}
		fr.floor = minRateOf(t.resolve(host, "")) / float64(n)
		fleet[host] = fr
		if fh.fact.source == sh.source && fh.adoptedAt != fh.fact.throttled {
			// This process learnt it: its limiter paces at its own
			// anchor, which it redivides below when that is not its share.
			fh.adoptedAt, fh.share = fh.fact.throttled, st.lastMax
		}
		if lim == nil {
			continue
		}
		recent, _ := lim.served(now)
		count := recent + x.othersServed() // what the host served the fleet, as this poll counts it
		lim.setFleet(n > 1, fh.fact.start, count/float64(n))
		fh.countServed(count, wall, st.throttled, acceptWindow+int64(sh.poll))
		if !sh.tweaks.noPhase && n > 1 {
			lim.setPhase(sh.phase, wall-now)
		} else {
			lim.setPhase(0, 0) // alone on the host: its turns need no phase
		}
		switch {
		case fh.fact.throttled > st.throttled:
			if ch, ok := lim.adopt(fr.rate, fr.floor, now, fh.fact.throttled, wall, false, fh.known); ok {
				t.emitRate(host, ch)
			}
			fh.adoptedAt, fh.share = fh.fact.throttled, fr.rate
		case fh.fact.throttled == st.throttled && fh.adoptedAt == st.throttled &&
			math.Abs(fr.rate-fh.share) > redivideStep*fh.share:
			if ch, ok := lim.adopt(fr.rate, fr.floor, now, fh.fact.throttled, wall, true, fh.known); ok {
				t.emitRate(host, ch)
			}
			fh.share = fr.rate
			if fh.fact.source == sh.source {
				fh.redivided = true
			}
		}
	}
	t.fleet.Store(&fleet)
	for host := range fleet {
		if h := t.reg.host(host); h != nil && h.lim.Load() == nil && !h.bare() {
			t.startLimiter(h, t.resolve(host, ""))
		}
	}
}

// countServed adds count, what the host served the fleet's processes as
// a poll at wall (unix ns) counted it, to the smoothed count fh.served,
// by servedWeight; unless the poll comes within settle of the fleet's
// last throttle or of this process's own (wall unix ns; settle is the
// window of the published counts and a poll's lag): the counts read then
// cover the fleet's reaction to it, its pause and its lowered rate, not
// what the host allows.
func (fh *fleetHost) countServed(count float64, wall, throttled, settle int64) {
	if wall-fh.fact.throttled < settle || wall-throttled < settle {
		return
	}
	if fh.servedN == 0 {
		fh.served = count
	} else {
		fh.served += servedWeight * (count - fh.served)
	}
	fh.servedN++
}

// fleetShare returns this process's share of the fleet's limit of a host
// (fh, with the rows x of the other processes, n processes sending to it
// counting this one): the limit divided by n once the others count this
// process, that is once it has been published as sending for a poll
// interval (every process reads the store that often); until then, only
// what the others leave of the limit by their published rates, and at
// least joinerShare of the limit divided by n, so that a joiner does not
// take its share before the others have given theirs up.
func (t *Transport) fleetShare(fh *fleetHost, x *fleetRow, n int, wallNow time.Time) float64 {
	share := fh.fact.limit / float64(n)
	if !fh.visibleSince.IsZero() && wallNow.Sub(fh.visibleSince) >= t.sh.poll {
		return share
	}
	return min(share, max(fh.fact.limit-x.othersRate(), joinerShare*share))
}

// fleetTweaks turns the fleet's refinements off one by one, for the fleet
// model (sharing_fleet_test.go) to measure what each does; the zero value,
// all on, is what a Transport runs.
type fleetTweaks struct {
	servedDemand  bool // the heartbeat counts only served requests, not those rejected
	youngFacts    bool // a young slow start makes a fact
	ownFactOnly   bool // a member's throttle makes its own estimate times n, not β × the fleet's rate refused
	noPhase       bool // fleet members take their turns in step
	ownSlowStart  bool // each process slow-starts alone, not divided among the fleet's
	noSharedTurns bool // the store's processes pace alone, each at its share, not at one shared bucket
	noFleetStart  bool // the store's processes send to a new host as they come, without the fleet's start
	noFleetKnown  bool // the fleet's limiters probe past every fact at CUBIC's pace, agreeing facts or not
}

func withFleetTweaks(tw fleetTweaks) Option {
	return optionFunc(func(o *options) { o.tweaks = tw })
}

// sourcePhase returns the phase in [0, 1) of the process named source: a
// hash of its name, so that the processes of a fleet spread their resumes
// over an interval (see limiter.phase), each the same every time.
func sourcePhase(source string) float64 {
	sum := sha256.Sum256([]byte(source))
	return float64(binary.BigEndian.Uint64(sum[:8])>>11) / (1 << 53)
}

// minRateOf returns the min_rate of a host's resolved policy p, or its
// default.
func minRateOf(p *resolved) float64 {
	if p.MinRate > 0 {
		return p.MinRate
	}
	return defaultMinRate
}

// fleetSeenKey names a time read from the store ahead of this process's
// clock: the host and source of its row, and the time.
type fleetSeenKey struct {
	host, source string
	at           int64
}

// trustedTime returns the wall time at (unix ns) read from the row of
// source about host, as this process trusts it at wall time now: as it is
// when it is not ahead of now; when first read, when it is ahead by at
// most clockSkew, and from then on while a row holds it, even once its
// time has come (so that it cannot outrank this process's own later
// throttles); refused (false), counted and logged when it is further
// ahead. seen collects the keys read ahead, so that the caller forgets
// those no row holds any longer.
func (t *Transport) trustedTime(host, source string, at, now int64, seen map[fleetSeenKey]bool) (int64, bool) {
	k := fleetSeenKey{host, source, at}
	if first, ok := t.sh.seenAhead[k]; ok {
		seen[k] = true // read ahead once: as of then, even once its time has come
		return first, true
	}
	if at <= now {
		return at, true
	}
	if at-now > int64(clockSkew) {
		t.untrusted(host, source, time.Unix(0, at))
		return 0, false
	}
	seen[k] = true
	t.sh.seenAhead[k] = now
	return now, true
}

// untrusted counts a row read from the store and refused because it is
// dated too far in the future, and logs it at most once per
// errorLogInterval.
func (t *Transport) untrusted(host, source string, at time.Time) {
	sh := t.sh
	sh.errOps[opUntrusted].Add(1)
	now := time.Now()
	if !sh.lastUntrustedLog.IsZero() && now.Sub(sh.lastUntrustedLog) < errorLogInterval {
		return
	}
	sh.lastUntrustedLog = now
	t.log.Warn("hostbreaker: refused a row of the store dated in the future; is a clock wrong?",
		"host", host, "source", source, "at", at, "skew", at.Sub(now).Round(time.Second), "allowed", clockSkew,
		"refused", sh.errOps[opUntrusted].Load())
}
