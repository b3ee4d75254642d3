package hostbreaker

// This file exports a Transport's counters and states as OpenTelemetry
// metrics (docs/telemetry.md lists them). The request path is unchanged:
// it keeps adding to its atomics, and one observable callback reads them at
// collection time, attributes each (host, role) to a bounded set of named
// hosts, and reports per series values that only ever grow.

import (
	"cmp"
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

// The instrumentation scope of the meter and the logger, as otelhttp names
// its meter: the import path and the module's version (to be raised with
// each release).
const (
	meterName              = "github.com/hostbreaker/hostbreaker"
	instrumentationVersion = "0.1.0"
)

// otherHost is the server.address of the hosts that have no name of their
// own (see telemetry).
const otherHost = "_other"

// The attribute keys.
const (
	keyServerAddress = attribute.Key("server.address")
	keyRole          = attribute.Key("hostbreaker.role")
	keyOutcome       = attribute.Key("hostbreaker.outcome")
	keyReason        = attribute.Key("hostbreaker.reason")
	keyState         = attribute.Key("hostbreaker.state")
	keyStoreOp       = attribute.Key("hostbreaker.store.operation")
)

// counts are the cumulative counters of one (host, role), as the
// collector reads them: outcomes, rejections by reason, transitions by the
// state entered.
type counts [nCounts]uint64

// Indexes of counts.
const (
	cSuccess     = 0
	cFailure     = 1
	cNeutral     = 2
	cRejected    = 3                              // + reasonIndex
	cTransitions = cRejected + len(rejectReasons) // + State
	cWouldReject = cTransitions + 3               // + reasonIndex: shadow-mode hosts
	nCounts      = cWouldReject + len(rejectReasons)
)

var outcomeNames = [...]string{cSuccess: "success", cFailure: "failure", cNeutral: "neutral"}

// readCounts reads e's counters; an entry without entryStats has no
// rejections or transitions.
func readCounts(e *entry) counts {
	var v counts
	v[cSuccess] = e.successes.Load()
	v[cFailure] = e.failures.Load()
	v[cNeutral] = e.neutral.Load()
	if m := e.extra.Load(); m != nil {
		for i := range m.rejected {
			v[cRejected+i] = m.rejected[i].Load()
		}
		for i := range m.transitions {
			v[cTransitions+i] = m.transitions[i].Load()
		}
		for i := range m.wouldRejectBy {
			v[cWouldReject+i] = m.wouldRejectBy[i].Load()
		}
	}
	return v
}

func (c *counts) add(v, base *counts) {
	for i := range c {
		c[i] += v[i] - base[i]
	}
}

// The slots of the state gauge: half-open (no reason), then open for each
// reason of rejectReasons.
const (
	slotHalfOpen = 0
	slotOpen     = 1 // + reasonIndex
	nStateSlots  = slotOpen + len(rejectReasons)
)

// retryAfterBuckets are the histogram's bucket boundaries in seconds: what
// servers send, up to an hour.
var retryAfterBuckets = []float64{1, 2, 5, 10, 30, 60, 120, 300, 600, 900, 1800, 3600}

// telemetry reports a Transport's metrics. Its callback runs on the
// reader's goroutine and takes only tel.mu and, for a host cooling down,
// that host's mutex, which the request path takes only to reject.
//
// Hosts are named in server.address up to maxHosts; the others share
// "_other". A host takes a free name when it has trouble (failures,
// rejections, a breaker not closed, a cooldown); at each collection the
// busiest hosts take the free names beyond the reserve kept for hosts in
// trouble. A name is kept for the life of the Transport. Counter series
// only grow: an entry's counts are attributed to the series of its
// (name, role) less a base, the part already attributed to _other before
// its host was named; an entry that leaves the registry leaves its last
// counts in its series' gone.
type telemetry struct {
	t        *Transport
	maxHosts int
	reserve  int // free names the busiest hosts leave to hosts in trouble
	// maxSeries bounds the (name, role) series, those without live entries
	// included: twice the registry's bound on entries, and the named hosts.
	maxSeries int

	requests    metric.Int64ObservableCounter
	rejections  metric.Int64ObservableCounter
	transitions metric.Int64ObservableCounter
	state       metric.Int64ObservableGauge
	breakers    metric.Int64ObservableUpDownCounter
	cooldown    metric.Float64ObservableGauge
	rate        metric.Float64ObservableGauge
	rateConf    metric.Float64ObservableGauge // the configured rate, beside the rate in force
	storeErrors metric.Int64ObservableCounter
	untracked   metric.Int64ObservableCounter
	slotsHeld   metric.Int64ObservableUpDownCounter // concurrency.go
	slotsWait   metric.Int64ObservableUpDownCounter
	slotOldest  metric.Float64ObservableGauge
	slotsLeaked metric.Int64ObservableCounter
	wouldReject metric.Int64ObservableCounter
	retryAfter  metric.Float64Histogram
	reg         metric.Registration

	breakerOpts [3][]metric.ObserveOption
	storeOpts   [len(storeOps)][]metric.ObserveOption

	mu       sync.Mutex
	names    map[string]*hostName // the named hosts; at most maxHosts, never removed
	namesVer uint64               // bumped when a name is given
	other    *hostName
	series   map[seriesKey]*series
	list     []*series              // the values of series, by series.idx
	tracks   map[*entry]*entryTrack // the entries seen by the last collections
	gen      uint64                 // the current collection
	nameAll  bool                   // this collection names every host: there are names enough

	// Scratch, reused by each collection.
	ents    []*entry
	trs     []*entryTrack
	cands   []candidate
	cooling []*hostName
	rates   []hostRate
	bulks   []*hostName // the names with a concurrency limit in this collection
}

// hostRate is a named host's limiter rate in a collection, and its
// configured rate (0 for none).
type hostRate struct {
	name *hostName
	rate float64
	conf float64
}

// hostName is a value of server.address: a named host or _other.
type hostName struct {
	addr       attribute.KeyValue
	cool       [len(rejectReasons)]float64 // this collection's remaining cooldown by reasonIndex, s; 0 for none
	coolOpts   [len(rejectReasons)][]metric.ObserveOption
	rateOpts   []metric.ObserveOption
	recordOpts []metric.RecordOption

	// This collection's concurrency limits (concurrency.go): slots held and
	// waited for, summed over the name's hosts, and the oldest slot's age
	// in s, the largest of them.
	bulk     bool
	held     int64
	waiting  int64
	oldest   float64
	bulkOpts []metric.ObserveOption
}

// seriesKey identifies the counter and state series of a (name, role).
type seriesKey struct {
	name *hostName
	role string
}

// series is what the (name, role) series report.
type series struct {
	key  seriesKey
	idx  int    // index in telemetry.list
	gone counts // counts of entries that left the series: evicted, or moved to a name
	cur  counts // this collection: gone and the live entries
	// this collection's (host, role)s by state slot: the state gauge
	states [nStateSlots]int64
	live   int    // entries attributed in this collection
	used   uint64 // the last collection that attributed an entry or a state
	opts   *seriesOpts
}

// seriesOpts are a series' attribute sets, built on first use.
type seriesOpts struct {
	counts [nCounts][]metric.ObserveOption
	states [nStateSlots][]metric.ObserveOption
}

// entryTrack is what the collector remembers of an entry.
type entryTrack struct {
	collected uint64    // the last collection that saw it in the registry
	s         *series   // the series it is attributed to
	base      *counts   // the counts attributed to an earlier series; nil for none
	name      *hostName // its host's name, nil for none, as of namesVer ver
	ver       uint64
}

type candidate struct {
	host string
	n    uint64
}

// newTelemetry creates t's instruments on a meter of mp and registers the
// callback that observes them. It is called once per Transport, after the
// registry and the store exist.
func newTelemetry(t *Transport, mp metric.MeterProvider) (*telemetry, error) {
	cfg := t.telemetry
	tel := &telemetry{
		t:         t,
		maxHosts:  cfg.MaxHosts,
		reserve:   (cfg.MaxHosts + 1) / 2,
		maxSeries: 2*t.reg.max + cfg.MaxHosts + 1,
		names:     make(map[string]*hostName),
		namesVer:  1,
		other:     newHostName(otherHost),
		series:    make(map[seriesKey]*series),
		tracks:    make(map[*entry]*entryTrack),
	}
	for s := range tel.breakerOpts {
		tel.breakerOpts[s] = observeOpts(keyState.String(State(s).String()))
	}
	for op, name := range storeOps {
		tel.storeOpts[op] = observeOpts(keyStoreOp.String(name))
	}

	m := mp.Meter(meterName, metric.WithInstrumentationVersion(instrumentationVersion))
	var errs []error
	check := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}
	var err error
	tel.requests, err = m.Int64ObservableCounter("hostbreaker.requests", metric.WithUnit("{request}"),
		metric.WithDescription("Requests that reached the base transport, by outcome."))
	check(err)
	tel.rejections, err = m.Int64ObservableCounter("hostbreaker.rejections", metric.WithUnit("{request}"),
		metric.WithDescription("Requests rejected without reaching the base transport, by reason."))
	check(err)
	tel.transitions, err = m.Int64ObservableCounter("hostbreaker.transitions", metric.WithUnit("{transition}"),
		metric.WithDescription("Breaker state changes, by the state entered."))
	check(err)
	tel.state, err = m.Int64ObservableGauge("hostbreaker.state", metric.WithUnit("{breaker}"),
		metric.WithDescription("Breakers that are not closed, by effective state and reason: 1 per (host, role); under _other, their number."))
	check(err)
	tel.breakers, err = m.Int64ObservableUpDownCounter("hostbreaker.breakers", metric.WithUnit("{breaker}"),
		metric.WithDescription("Tracked (host, role) breakers, by effective state."))
	check(err)
	tel.cooldown, err = m.Float64ObservableGauge("hostbreaker.cooldown.remaining", metric.WithUnit("s"),
		metric.WithDescription("Time until a host's cooldown ends, by reason; under _other, the longest."))
	check(err)
	tel.rate, err = m.Float64ObservableGauge("hostbreaker.rate", metric.WithUnit("{request}/s"),
		metric.WithDescription("A host's rate limit: configured, or learnt from throttling responses; named hosts that have one only."))
	check(err)
	tel.rateConf, err = m.Float64ObservableGauge("hostbreaker.rate.configured", metric.WithUnit("{request}/s"),
		metric.WithDescription("A host's configured rate limit (the policy's rate, tuned overrides included), beside hostbreaker.rate; named hosts that have a limiter and a configured rate only."))
	check(err)
	tel.retryAfter, err = m.Float64Histogram("hostbreaker.retry_after", metric.WithUnit("s"),
		metric.WithDescription("Retry-After values received with 429 and 503 responses, capped by retry_after_cap."),
		metric.WithExplicitBucketBoundaries(retryAfterBuckets...))
	check(err)
	tel.storeErrors, err = m.Int64ObservableCounter("hostbreaker.store.errors", metric.WithUnit("{error}"),
		metric.WithDescription("Failed store operations, by operation."))
	check(err)
	tel.untracked, err = m.Int64ObservableCounter("hostbreaker.untracked", metric.WithUnit("{request}"),
		metric.WithDescription("Requests sent without a breaker because the registry was full of protected entries."))
	check(err)
	tel.slotsHeld, err = m.Int64ObservableUpDownCounter("hostbreaker.concurrency.held", metric.WithUnit("{request}"),
		metric.WithDescription("Slots of hosts' concurrency limits (max_concurrent) held: requests in flight and bodies not yet closed or read to the end."))
	check(err)
	tel.slotsWait, err = m.Int64ObservableUpDownCounter("hostbreaker.concurrency.waiting", metric.WithUnit("{request}"),
		metric.WithDescription("Requests waiting for a slot of a host's concurrency limit."))
	check(err)
	tel.slotOldest, err = m.Float64ObservableGauge("hostbreaker.concurrency.oldest", metric.WithUnit("s"),
		metric.WithDescription("How long the oldest slot of a host's concurrency limit has been held: a body that is never closed shows here."))
	check(err)
	tel.slotsLeaked, err = m.Int64ObservableCounter("hostbreaker.concurrency.leaked", metric.WithUnit("{request}"),
		metric.WithDescription("Slots given back by the garbage collector: response bodies that were never closed nor read to the end."))
	check(err)
	tel.wouldReject, err = m.Int64ObservableCounter("hostbreaker.would_reject", metric.WithUnit("{request}"),
		metric.WithDescription("Requests that a host in shadow mode sent although it would have rejected them, by reason."))
	check(err)
	if len(errs) == 0 {
		tel.reg, err = m.RegisterCallback(tel.collect, tel.requests, tel.rejections, tel.transitions,
			tel.state, tel.breakers, tel.cooldown, tel.rate, tel.rateConf, tel.storeErrors, tel.untracked, tel.wouldReject,
			tel.slotsHeld, tel.slotsWait, tel.slotOldest, tel.slotsLeaked)
		check(err)
	}
	if len(errs) > 0 {
		if tel.reg != nil {
			tel.reg.Unregister()
		}
		return nil, errors.Join(errs...)
	}
	return tel, nil
}

// close unregisters the callback: a closed Transport reports nothing more.
// tel may be nil.
func (tel *telemetry) close() {
	if tel != nil && tel.reg != nil {
		tel.reg.Unregister()
	}
}

// recordRetryAfter records a Retry-After value d received from host. A
// host that sends one is in trouble: it takes a free name. It is called
// from the Transport's background goroutine; tel may be nil.
func (tel *telemetry) recordRetryAfter(ctx context.Context, host string, d time.Duration) {
	if tel == nil {
		return
	}
	tel.mu.Lock()
	nm := tel.names[host]
	if nm == nil && tel.free() > 0 {
		nm = tel.assign(host)
	}
	if nm == nil {
		nm = tel.other
	}
	if nm.recordOpts == nil {
		nm.recordOpts = []metric.RecordOption{metric.WithAttributeSet(attribute.NewSet(nm.addr))}
	}
	opts := nm.recordOpts
	tel.mu.Unlock()
	tel.retryAfter.Record(ctx, max(d, 0).Seconds(), opts...)
}

func newHostName(name string) *hostName {
	return &hostName{addr: keyServerAddress.String(name)}
}

func observeOpts(kvs ...attribute.KeyValue) []metric.ObserveOption {
	return []metric.ObserveOption{metric.WithAttributeSet(attribute.NewSet(kvs...))}
}

// free returns the number of names not given yet. Callers hold mu.
func (tel *telemetry) free() int { return tel.maxHosts - len(tel.names) }

// assign gives host a name. Callers hold mu and have checked that one is
// free and host has none.
func (tel *telemetry) assign(host string) *hostName {
	nm := newHostName(strings.Clone(host))
	tel.names[host] = nm
	tel.namesVer++
	return nm
}

// collect is the callback: it observes every instrument but the histogram.
func (tel *telemetry) collect(_ context.Context, o metric.Observer) error {
	t := tel.t
	now := t.now()
	tel.mu.Lock()
	defer tel.mu.Unlock()
	tel.gen++
	tel.nameAll = false
	for _, s := range tel.list {
		s.cur, s.states, s.live = s.gone, [nStateSlots]int64{}, 0
	}
	if tel.free() > 0 {
		tel.nameBusiest()
	}

	// Walk the registry host by host: a host's trouble decides its name
	// before its entries are attributed.
	var breakers [3]int64
	var last *hostState
	ents := tel.ents[:0]
	t.reg.eachUnlocked(func(h *hostState, e *entry) {
		if h != last {
			if last != nil {
				tel.host(last, ents, now, &breakers)
			}
			last, ents = h, ents[:0]
		}
		if e != nil {
			ents = append(ents, e)
		}
	})
	if last != nil {
		tel.host(last, ents, now, &breakers)
	}
	clear(ents) // keep no entry alive
	tel.ents = ents[:0]
	tel.sweep()

	for _, s := range tel.list {
		tel.observeSeries(o, s)
	}
	for _, nm := range tel.cooling {
		for ri, sec := range nm.cool {
			if sec <= 0 {
				continue
			}
			if nm.coolOpts[ri] == nil {
				nm.coolOpts[ri] = observeOpts(nm.addr, keyReason.String(string(rejectReasons[ri])))
			}
			o.ObserveFloat64(tel.cooldown, sec, nm.coolOpts[ri]...)
			nm.cool[ri] = 0
		}
	}
	clear(tel.cooling)
	tel.cooling = tel.cooling[:0]
	for _, r := range tel.rates {
		if r.name.rateOpts == nil {
			r.name.rateOpts = observeOpts(r.name.addr)
		}
		o.ObserveFloat64(tel.rate, r.rate, r.name.rateOpts...)
		if r.conf > 0 {
			o.ObserveFloat64(tel.rateConf, r.conf, r.name.rateOpts...)
		}
	}
	clear(tel.rates)
	tel.rates = tel.rates[:0]
	for s, n := range breakers {
		o.ObserveInt64(tel.breakers, n, tel.breakerOpts[s]...)
	}
	o.ObserveInt64(tel.untracked, int64(t.untracked.Load()))
	for _, nm := range tel.bulks {
		if nm.bulkOpts == nil {
			nm.bulkOpts = observeOpts(nm.addr)
		}
		o.ObserveInt64(tel.slotsHeld, nm.held, nm.bulkOpts...)
		o.ObserveInt64(tel.slotsWait, nm.waiting, nm.bulkOpts...)
		o.ObserveFloat64(tel.slotOldest, nm.oldest, nm.bulkOpts...)
		nm.bulk, nm.held, nm.waiting, nm.oldest = false, 0, 0, 0
	}
	if n := t.leakedSlots.Load(); n > 0 || len(tel.bulks) > 0 { // only where max_concurrent is used
		o.ObserveInt64(tel.slotsLeaked, int64(n))
	}
	clear(tel.bulks)
	tel.bulks = tel.bulks[:0]
	if sh := t.sh; sh != nil {
		for op := range sh.errOps {
			o.ObserveInt64(tel.storeErrors, int64(sh.errOps[op].Load()), tel.storeOpts[op]...)
		}
	}
	tel.trim()
	return nil
}

// nameBusiest names every unnamed host in the registry when there are
// names enough for all of them (so that no _other series appears while
// fewer hosts than the limit have been seen, and no host's early counts
// are left in _other); otherwise it gives the free names beyond the
// reserve to the unnamed hosts with the most requests, ties broken by
// name. Callers hold mu and have checked that a name is free.
func (tel *telemetry) nameBusiest() {
	cands := tel.cands[:0]
	var last *hostState
	var n uint64
	named := false
	flush := func() {
		if last != nil && !named {
			cands = append(cands, candidate{last.name, n})
		}
	}
	tel.t.reg.eachUnlocked(func(h *hostState, e *entry) {
		if h != last {
			flush()
			last, n, named = h, 0, tel.named(h, e)
		}
		if e != nil && !named {
			n += e.successes.Load() + e.failures.Load() + e.neutral.Load() + e.rejected.Load()
		}
	})
	flush()
	k := tel.free()
	tel.nameAll = len(cands) < k // a host that appears during the collection takes the spare name
	if len(cands) > k {
		k -= tel.reserve
		cands = slices.DeleteFunc(cands, func(c candidate) bool { return c.n == 0 })
	}
	if len(cands) > max(k, 0) {
		slices.SortFunc(cands, func(a, b candidate) int {
			if c := cmp.Compare(b.n, a.n); c != 0 {
				return c
			}
			return strings.Compare(a.host, b.host)
		})
		cands = cands[:max(k, 0)]
	}
	for _, c := range cands {
		if tel.names[c.host] == nil {
			tel.assign(c.host)
		}
	}
	clear(cands)
	tel.cands = cands[:0]
}

// named reports whether h, whose first entry is e (nil for none), has a
// name. Callers hold mu.
func (tel *telemetry) named(h *hostState, e *entry) bool {
	if e != nil {
		if tr := tel.tracks[e]; tr != nil && tr.ver == tel.namesVer {
			return tr.name != nil
		}
	}
	return tel.names[h.name] != nil
}

// host attributes a host's entries and cooldown for this collection.
// Callers hold mu.
func (tel *telemetry) host(h *hostState, es []*entry, now int64, breakers *[3]int64) {
	hu := h.until.Load()
	cooling := hu != 0 && now < hu
	ri := 0 // the cooldown's reasonIndex
	if cooling {
		// The deadline and its reason together, as hostRejection reads them.
		h.mu.Lock()
		var reason Reason
		hu, reason = h.until.Load(), h.reason
		h.mu.Unlock()
		cooling, ri = hu != 0 && now < hu, reasonIndex(reason)
	}
	bare := len(es) == 0
	if bare && !cooling {
		return
	}

	// The entries' tracks, and the host's name. A walk that races with a
	// change of the host's entry list may see an entry twice: it counts
	// once.
	trs := tel.trs[:0]
	n := 0
	for _, e := range es {
		tr := tel.tracks[e]
		if tr == nil {
			tr = new(entryTrack)
			tel.tracks[e] = tr
		} else if tr.collected == tel.gen {
			continue
		}
		tr.collected = tel.gen
		es[n] = e
		n++
		trs = append(trs, tr)
	}
	es = es[:n]
	if !bare && n == 0 {
		return
	}
	var nm *hostName
	if len(trs) > 0 && trs[0].ver == tel.namesVer {
		nm = trs[0].name
	} else {
		nm = tel.names[h.name]
	}
	lim, bulk := h.lim.Load(), h.bulk.Load()
	if nm == nil && tel.free() > 0 && (tel.nameAll || cooling || troubled(es) || lim != nil && lim.learning() || bulk != nil && bulk.wait.Load() > 0) {
		nm = tel.assign(h.name)
	}
	if lim != nil && nm != nil {
		hr := hostRate{name: nm, rate: lim.status().rate}
		if r, err := tel.t.policies.Load().resolve(h.name, ""); err == nil {
			hr.conf = r.Rate
		}
		tel.rates = append(tel.rates, hr)
	}
	target := nm
	if target == nil {
		target = tel.other
	}
	if bulk != nil {
		if !target.bulk {
			target.bulk = true
			tel.bulks = append(tel.bulks, target)
		}
		target.held += bulk.held.Load()
		target.waiting += bulk.wait.Load()
		if since := bulk.oldestSince(); since != 0 {
			target.oldest = max(target.oldest, time.Duration(now-since).Seconds())
		}
	}

	if cooling {
		if target.cool == [len(rejectReasons)]float64{} {
			tel.cooling = append(tel.cooling, target)
		}
		target.cool[ri] = max(target.cool[ri], time.Duration(hu-now).Seconds())
	}
	if bare {
		// A host cooling down without an entry: listed as (host, "").
		s := tel.seriesFor(target, "")
		s.states[slotOpen+ri]++
		s.used = tel.gen
		return
	}
	for i, e := range es {
		tr := trs[i]
		tr.name, tr.ver, tr.collected = nm, tel.namesVer, tel.gen
		s := tr.s
		if s == nil || s.key.name != target {
			s = tel.seriesFor(target, e.role)
		}
		v := readCounts(e)
		tel.attribute(tr, s, &v)
		s.live++

		st, bu := e.status(now)
		slot := slotOpen + reasonIndex(ReasonBreakerOpen)
		if cooling && hu > bu {
			st, slot = StateOpen, slotOpen+ri
		} else if st == StateHalfOpen {
			slot = slotHalfOpen
		}
		breakers[st]++
		if st != StateClosed {
			s.states[slot]++
		}
	}
	clear(trs)
	tel.trs = trs[:0]
}

// attribute adds an entry's counts v to s for this collection. An entry
// that moves to s from another series leaves there what it counted so far.
func (tel *telemetry) attribute(tr *entryTrack, s *series, v *counts) {
	if tr.s != s {
		if tr.s != nil {
			if tr.base == nil {
				tr.base = new(counts)
			}
			// This collection's cur started from gone: add to both.
			tr.s.gone.add(v, tr.base)
			tr.s.cur.add(v, tr.base)
			tr.s.used = tel.gen
			*tr.base = *v
		}
		tr.s = s
	}
	base := tr.base
	if base == nil {
		base = &counts{}
	}
	s.cur.add(v, base)
	s.used = tel.gen
}

// troubled reports whether any of es has failed, rejected or is not
// closed.
func troubled(es []*entry) bool {
	for _, e := range es {
		if e.failures.Load() > 0 || e.rejected.Load() > 0 || phaseOf(e.st.Load()) != phaseClosed {
			return true
		}
	}
	return false
}

// seriesFor returns the series of (name, role), creating it. Callers hold
// mu.
func (tel *telemetry) seriesFor(name *hostName, role string) *series {
	k := seriesKey{name, role}
	s := tel.series[k]
	if s == nil {
		s = &series{key: k, idx: len(tel.list)}
		tel.series[k] = s
		tel.list = append(tel.list, s)
	}
	return s
}

// sweep settles the entries this collection did not see: an evicted one
// leaves its counts in its series for good; one the lock-free walk missed
// counts as usual. Callers hold mu.
func (tel *telemetry) sweep() {
	for e, tr := range tel.tracks {
		if tr.collected == tel.gen {
			continue
		}
		v := readCounts(e)
		base := tr.base
		if base == nil {
			base = &counts{}
		}
		tr.s.cur.add(&v, base)
		tr.s.used = tel.gen
		if e.evicted() {
			tr.s.gone.add(&v, base)
			delete(tel.tracks, e)
		}
	}
}

// observeSeries observes a series' non-zero counters and states.
func (tel *telemetry) observeSeries(o metric.Observer, s *series) {
	for k, v := range s.cur {
		if v == 0 {
			continue
		}
		opts := s.options()
		if opts.counts[k] == nil {
			opts.counts[k] = tel.countOpts(s, k)
		}
		inst := tel.requests
		switch {
		case k >= cWouldReject:
			inst = tel.wouldReject
		case k >= cTransitions:
			inst = tel.transitions
		case k >= cRejected:
			inst = tel.rejections
		}
		o.ObserveInt64(inst, int64(v), opts.counts[k]...)
	}
	for i, n := range s.states {
		if n == 0 {
			continue
		}
		opts := s.options()
		if opts.states[i] == nil {
			state, reason := StateHalfOpen, Reason("")
			if i >= slotOpen {
				state, reason = StateOpen, rejectReasons[i-slotOpen]
			}
			opts.states[i] = observeOpts(s.key.name.addr, keyRole.String(s.key.role),
				keyState.String(state.String()), keyReason.String(string(reason)))
		}
		o.ObserveInt64(tel.state, n, opts.states[i]...)
	}
}

func (s *series) options() *seriesOpts {
	if s.opts == nil {
		s.opts = new(seriesOpts)
	}
	return s.opts
}

// countOpts builds the attributes of counter k of s.
func (tel *telemetry) countOpts(s *series, k int) []metric.ObserveOption {
	addr, role := s.key.name.addr, keyRole.String(s.key.role)
	switch {
	case k >= cWouldReject:
		return observeOpts(addr, role, keyReason.String(string(rejectReasons[k-cWouldReject])))
	case k >= cTransitions:
		return observeOpts(addr, role, keyState.String(State(k-cTransitions).String()))
	case k >= cRejected:
		return observeOpts(addr, role, keyReason.String(string(rejectReasons[k-cRejected])))
	}
	return observeOpts(addr, role, keyOutcome.String(outcomeNames[k]))
}

// trim drops the series that neither this collection used nor hold counts,
// and past maxSeries the unused ones that were used longest ago: should
// such a series come back, it starts from zero, as after a restart.
// Callers hold mu.
func (tel *telemetry) trim() {
	for i := 0; i < len(tel.list); {
		if s := tel.list[i]; s.used != tel.gen && s.gone == (counts{}) {
			tel.remove(s)
			continue
		}
		i++
	}
	if len(tel.list) <= tel.maxSeries {
		return
	}
	var unused []*series
	for _, s := range tel.list {
		if s.used != tel.gen {
			unused = append(unused, s)
		}
	}
	slices.SortFunc(unused, func(a, b *series) int { return cmp.Compare(a.used, b.used) })
	for _, s := range unused[:min(len(unused), len(tel.list)-tel.maxSeries)] {
		tel.remove(s)
	}
}

// remove drops s from the series. Callers hold mu.
func (tel *telemetry) remove(s *series) {
	last := tel.list[len(tel.list)-1]
	tel.list[s.idx], last.idx = last, s.idx
	tel.list[len(tel.list)-1] = nil
	tel.list = tel.list[:len(tel.list)-1]
	delete(tel.series, s.key)
}
