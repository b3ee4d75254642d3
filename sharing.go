package hostbreaker

// This file holds the Transport's side of a store: queueing local
// decisions (cooldowns, resets, shared trips) for it, reading other
// processes' decisions and tuned overrides from it, publishing states, and
// the fleet's learnt rates. The Store interface and its records are in
// store.go; the background loop that drives this is in transport.go.

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
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
	hashed  *policyTable
	cfgHash string

	errors atomic.Uint64                // failed store operations
	errOps [len(storeOps)]atomic.Uint64 // failed store operations by storeOp
}

// storeOp is a kind of store operation, as errors are counted by.
type storeOp int

// The store operations.
const (
	opPut     storeOp = iota // writing a cooldown, trip or reset
	opRead                   // reading the records
	opPublish                // publishing the breaker states
	opJournal                // appending events to the journal
	opOpen                   // opening the store, retried until it opens
)

// storeOps names the store operations, by storeOp.
var storeOps = [...]string{"put", "read", "publish", "journal", "open"}

func newSharing(s Store, owned bool, c StoreConfig, maxPending int, source string) *sharing {
	poll := c.PollInterval
	if poll == 0 {
		poll = defaultPollInterval
	}
	return &sharing{
		store:      s,
		owned:      owned,
		source:     source,
		shareTrips: c.ShareTrips,
		poll:       poll,
		pending:    make(map[string]*hostRecords),
		maxPending: maxPending,
		kick:       make(chan struct{}, 1),
		applied:    make(map[[2]string]time.Time),
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
	sh.store = s
	t.storeErr.Store(nil)
	t.log.Info("hostbreaker: store opened", "store", redactURL(sh.url))
	return true
}

// pull reads the store and applies what other processes wrote since the
// last pull: resets first, then cooldowns and shared trips. Records this
// Transport wrote itself are already applied.
func (t *Transport) pull(ctx context.Context) error {
	sh := t.sh
	cctx, cancel := context.WithTimeout(ctx, storeTimeout)
	recs, err := sh.store.Records(cctx)
	cancel()
	if err != nil {
		t.storeError(opRead, err)
		return err
	}
	t.storeErr.Store(nil)
	if err := t.pullOverrides(ctx); err != nil {
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
	// The fleet's rates last: a failure to read them (counted and logged)
	// must not hold back the cooldowns above.
	t.pullFleetRates(ctx)
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

// pullOverrides reads the tuned overrides from the store and, when they
// changed, applies them (see applyPoliciesLocked) and emits a policy change per
// key that changed.
func (t *Transport) pullOverrides(ctx context.Context) error {
	cctx, cancel := context.WithTimeout(ctx, storeTimeout)
	ov, err := t.sh.store.Overrides(cctx)
	cancel()
	if err != nil {
		t.storeError(opRead, err)
		return err
	}
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
	for _, s := range t.statuses(true) {
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
				if ls.throttled != 0 {
					ps.Throttled = time.Unix(0, ls.throttled)
				}
			}
		}
		states = append(states, ps)
		// Rates in the fingerprint to two digits: a learnt rate moves with
		// every success, and the store needs its level, not each step.
		fmt.Fprintf(&fp, "%s|%s|%d|%d|%s|%.2g|%.2g|%d|%t\n", s.Host, s.Role, s.State, s.Until.Unix(), s.Reason,
			ps.Rate, ps.LastMax, ps.Throttled.UnixNano(), ps.Shadow)
	}
	ttl := max(3*sh.poll, minStateTTL)
	now := time.Now()
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

// fleetRate is what the processes sharing the store learnt of a host's
// rate: the share of one process, and when the newest of them was
// throttled (wall unix ns).
type fleetRate struct {
	rate      float64
	throttled int64
}

// fleetRate returns what the fleet learnt of host's rate, as of the last
// read of the store.
func (t *Transport) fleetRate(host string) (fleetRate, bool) {
	m := t.fleet.Load()
	if m == nil {
		return fleetRate{}, false
	}
	fr, ok := (*m)[host]
	return fr, ok
}

// pullFleetRates reads the rates that other processes published (see
// publish) and computes, per host that one of them learnt a rate for, the
// fleet's share for one process: the sum of the rates of the processes
// that published one for the host, this one's included, divided by their
// number (this one counted even when it has no limiter yet). A host whose
// newest throttle in the fleet is newer than this process's takes that
// share at once; a host this process has not met yet takes it at its first
// request.
func (t *Transport) pullFleetRates(ctx context.Context) error {
	sh := t.sh
	cctx, cancel := context.WithTimeout(ctx, storeTimeout)
	states, err := sh.store.States(cctx)
	cancel()
	if err != nil {
		t.storeError(opRead, err)
		return err
	}
	type sum struct {
		total     float64
		sources   map[string]bool
		throttled int64
	}
	sums := make(map[string]*sum)
	for _, s := range states {
		if s.Source == sh.source || s.Throttled.IsZero() || s.Rate <= 0 {
			continue
		}
		x := sums[s.Host]
		if x == nil {
			x = &sum{sources: make(map[string]bool)}
			sums[s.Host] = x
		}
		if x.sources[s.Source] {
			continue // another role's row: the rate is host-wide
		}
		x.sources[s.Source] = true
		x.total += s.Rate
		x.throttled = max(x.throttled, s.Throttled.UnixNano())
	}
	// The fleet's shares first, published whole (requests read the map),
	// then this process's limiters.
	fleet := make(map[string]fleetRate, len(sums))
	hosts := make(map[string]*hostState, len(sums))
	for host, x := range sums {
		h := t.reg.host(host)
		if h != nil {
			if lim := h.lim.Load(); lim != nil {
				x.total += lim.status().rate
			}
			hosts[host] = h
		}
		fleet[host] = fleetRate{rate: x.total / float64(len(x.sources)+1), throttled: x.throttled}
	}
	t.fleet.Store(&fleet)
	now := t.now()
	for host, h := range hosts {
		fr := fleet[host]
		switch lim := h.lim.Load(); {
		case lim != nil:
			if ch, ok := lim.adopt(fr.rate, now, fr.throttled); ok {
				t.emitRate(host, ch)
			}
		case !h.bare():
			t.startLimiter(h, t.resolve(host, ""))
		}
	}
	return nil
}
