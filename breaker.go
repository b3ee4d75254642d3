package hostbreaker

// This file holds the breaker of one (host, role): its phases, the state
// machine that admits requests and records their outcomes, and its
// counters. It is pure: each step takes the time in (a clock, read only off
// the closed path) and returns the transition it made, which the Transport
// reports (transport.go). The host's cooldown, which every role shares, is
// in cooldown.go; the lock order and the time rule are in doc.go.

import (
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/failsafe-go/failsafe-go/circuitbreaker"
)

// State is the effective state of a (host, role) breaker. The zero value is
// StateClosed.
type State int

// The breaker states.
const (
	StateClosed   State = iota // requests flow; consecutive failures are counted
	StateHalfOpen              // a few trial requests decide whether to close
	StateOpen                  // requests are rejected until a deadline
)

// String returns "closed", "half-open" or "open".
func (s State) String() string {
	switch s {
	case StateClosed:
		return "closed"
	case StateHalfOpen:
		return "half-open"
	case StateOpen:
		return "open"
	}
	return "State(" + strconv.Itoa(int(s)) + ")"
}

// MarshalText encodes s as its String form.
func (s State) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// UnmarshalText decodes the String form of a State.
func (s *State) UnmarshalText(b []byte) error {
	v, ok := parseState(string(b))
	if !ok {
		return fmt.Errorf("hostbreaker: unknown state %q", b)
	}
	*s = v
	return nil
}

func parseState(s string) (State, bool) {
	switch s {
	case "closed":
		return StateClosed, true
	case "half-open":
		return StateHalfOpen, true
	case "open":
		return StateOpen, true
	}
	return 0, false
}

// Breaker phases, packed with a generation number into entry.st.
const (
	phaseClosed   = uint64(StateClosed)
	phaseHalfOpen = uint64(StateHalfOpen)
	phaseOpen     = uint64(StateOpen)
	phaseMask     = 3
)

func phaseOf(st uint64) uint64 { return st & phaseMask }

// next returns the packed state of the next generation in phase.
func next(st, phase uint64) uint64 { return (st>>2+1)<<2 | phase }

// entry is the breaker of one (host, role). The closed, healthy path reads
// st and host.until and adds to one counter, without locks or allocation;
// the fields it touches fill the first 64 bytes. The entry of a host's
// first role is embedded in its hostState; others fit the 128-byte size
// class, whose objects are 64-byte aligned.
//
// An outcome is applied only in the generation it was admitted in: every
// state change bumps the generation packed in st, so a slow request cannot
// close or reopen a breaker whose state it did not see.
type entry struct {
	st        atomic.Uint64 // generation<<2 | phase; changed only under mu
	successes atomic.Uint64
	fails     atomic.Int32  // consecutive failures recorded in closed; changed only under mu
	flags     atomic.Uint32 // flagUsed | flagEvicted | flagLive | flagQuota | flagBodyWatch | flagStarted
	pol       atomic.Pointer[resolved]
	host      *hostState
	role      string
	// mark is a time in ns since the Transport's epoch whose meaning
	// depends on the phase: in closed, the last failure (0 for none); in
	// open, the end of the open phase; in half-open, when the newest probe
	// was admitted. Written under mu, before st.
	mark atomic.Int64

	failures, neutral, rejected atomic.Uint64
	extra                       atomic.Pointer[entryStats] // nil until the first event off the healthy path

	mu     sync.Mutex
	cb     circuitbreaker.CircuitBreaker[any] // nil until the first failure; guarded by mu
	probes int32                              // half-open probes in flight; guarded by mu
}

// The reasons a request is rejected for, as indexes of entryStats.rejected.
var rejectReasons = [...]Reason{ReasonBreakerOpen, ReasonHalfOpenFull, ReasonRetryAfter, ReasonRollingWindow, ReasonRateLimited, ReasonConcurrencyLimited, ReasonManual}

func reasonIndex(r Reason) int {
	for i, x := range rejectReasons {
		if x == r {
			return i
		}
	}
	return len(rejectReasons) - 1
}

// maxOutcomeRuns bounds the outcome runs an entry keeps between two
// summaries; past it the runs are merged into the last one of their kind
// and the summary says so by a run count that no longer matches.
const maxOutcomeRuns = 256

// entryStats are the counters of a (host, role) beyond those of the healthy
// path, allocated on its first failure, rejection or state change. The
// counters are cumulative and read without locks; the outcome runs are
// taken by each summary.
type entryStats struct {
	rejected    [len(rejectReasons)]atomic.Uint64 // by reasonIndex
	transitions [3]atomic.Uint64                  // by State entered
	status429   atomic.Uint64
	status5xx   atomic.Uint64
	timeouts    atomic.Uint64
	probesOK    atomic.Uint64
	probesFail  atomic.Uint64
	body        bodyStats // body errors, and what a success changed (body.go)
	// wouldReject counts the requests a shadow-mode host sent that it
	// would have rejected; wouldRejectBy splits them by reasonIndex.
	wouldReject   atomic.Uint64
	wouldRejectBy [len(rejectReasons)]atomic.Uint64

	mu       sync.Mutex
	run      uint64   // consecutive failures now; guarded by mu
	longest  uint64   // longest failure run since the last summary; guarded by mu
	outcomes Outcomes // runs since the last summary; guarded by mu
	okNoted  uint64   // the successes counter when outcomes last grew; guarded by mu

	// Breaker state off the healthy path, kept here so that an entry keeps
	// its size class; guarded by the entry's mu, not s.mu.
	win   *window // the rate rules' outcomes in closed; nil when none is on, or after a state change
	backs uint8   // failed probes since the breaker last closed: the open time's doublings
}

// stats returns e's entryStats, allocating them on first use.
func (e *entry) stats() *entryStats {
	if s := e.extra.Load(); s != nil {
		return s
	}
	s := new(entryStats)
	s.okNoted = e.successes.Load()
	if e.extra.CompareAndSwap(nil, s) {
		return s
	}
	return e.extra.Load()
}

// shadowSt is the admission st of a request that a shadow-mode host sent
// although it would have rejected it: no generation has it, so its outcome
// is counted but changes nothing.
const shadowSt = ^uint64(0)

// wouldReject counts a request that a shadow-mode host would have
// rejected for reason, and sends.
func (e *entry) wouldReject(reason Reason) {
	s := e.stats()
	s.wouldReject.Add(1)
	s.wouldRejectBy[reasonIndex(reason)].Add(1)
}

// reject counts a rejection of a request for reason.
func (e *entry) reject(reason Reason) {
	e.rejected.Add(1)
	e.stats().rejected[reasonIndex(reason)].Add(1)
	e.note(OutcomeRejected)
}

// note adds an outcome to e's runs: the successes since the last one
// first, as a run of their own, then k. It reads the clock only when a run
// starts, so that a storm of rejections costs a counter and a lock each.
func (e *entry) note(k OutcomeKind) {
	s := e.stats()
	ok := e.successes.Load()
	s.mu.Lock()
	if l := len(s.outcomes); ok == s.okNoted && l > 0 && s.outcomes[l-1].Kind == k {
		s.outcomes[l-1].Count++
		s.countLocked(k)
		s.mu.Unlock()
		return
	}
	s.mu.Unlock()
	at := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	if n := ok - s.okNoted; n > 0 && ok > s.okNoted {
		s.addRunLocked(OutcomeSuccess, n, at)
		s.run = 0
		s.okNoted = ok
	}
	s.addRunLocked(k, 1, at)
	s.countLocked(k)
}

// countLocked updates the failure runs for one more outcome of kind k. Callers
// hold s.mu.
func (s *entryStats) countLocked(k OutcomeKind) {
	if k == OutcomeFailure {
		s.run++
		s.longest = max(s.longest, s.run)
	}
}

// addRunLocked appends n outcomes of kind k to the runs. Callers hold s.mu.
func (s *entryStats) addRunLocked(k OutcomeKind, n uint64, at time.Time) {
	if l := len(s.outcomes); l > 0 && s.outcomes[l-1].Kind == k {
		s.outcomes[l-1].Count += n
		return
	}
	if len(s.outcomes) >= maxOutcomeRuns {
		// Full: merge into the last run of the same kind.
		for i := len(s.outcomes) - 1; i >= 0; i-- {
			if s.outcomes[i].Kind == k {
				s.outcomes[i].Count += n
				return
			}
		}
		return
	}
	s.outcomes = append(s.outcomes, OutcomeRun{Kind: k, Count: n, At: at})
}

// take returns the runs and the longest failure run since the last take,
// with the successes since the last outcome as a final run, and starts
// anew.
func (e *entry) take(now time.Time) (Outcomes, uint64) {
	s := e.extra.Load()
	if s == nil {
		return nil, 0
	}
	ok := e.successes.Load()
	s.mu.Lock()
	defer s.mu.Unlock()
	if n := ok - s.okNoted; n > 0 && len(s.outcomes) > 0 {
		s.addRunLocked(OutcomeSuccess, n, now)
		s.run = 0
	}
	s.okNoted = ok
	out, longest := s.outcomes, s.longest
	s.outcomes, s.longest = nil, s.run
	return out, longest
}

// Entry flags.
const (
	flagUsed      = 1 << iota // requested since the last eviction sweep
	flagEvicted               // removed from the registry: outcomes go to the live entry
	flagLive                  // handed out by the registry (set last, see registry.lookup)
	flagQuota                 // its responses carry quota headers (RateLimit-Remaining): read them on each
	flagBodyWatch             // a body broke: watch every body (body.go)
	flagStarted               // the fleet's start at its host is over for this process, or there is none (sharedturn.go)
)

func (e *entry) evicted() bool { return e.flags.Load()&flagEvicted != 0 }

// admission is what a request carries from its admission to its outcome:
// the breaker generation and phase it was let in under, and its turn at
// the host's limiter. It names everything needed to record the outcome or
// undo the admission.
type admission struct {
	st    uint64 // the entry's st when admitted; shadowSt for a request a shadow host would have rejected
	probe bool   // a half-open trial request
	turn  *turn  // its turn at the limiter that paced it (on RoundTrip's stack); nil if none did
	began int64  // when it was sent, ns since the epoch: read only for a host with slow_call or a request with a deadline; 0 otherwise
}

// transition is a change of a breaker's phase, returned by the state
// machine for the Transport to report. The zero value is no change.
type transition struct {
	from, to State
	until    int64  // to open: when the open phase ends, ns since the epoch
	failures int    // to open: the consecutive failures that tripped it (1 for a failed probe), or the failed (slow) requests in the window
	rule     string // to open: the rule that fired and its figures, e.g. "failure_rate: 14 of 30 requests failed in 60s"
	// counted is when the rate rules' window counted the outcome, ns since
	// the epoch, without a change of phase; 0 when no window counted it.
	// A body that breaks later turns that outcome into a failure (body.go).
	counted int64
}

// changed reports whether tr is a change of phase.
func (tr transition) changed() bool { return tr.from != tr.to }

// breakerLocked returns the entry's failsafe-go breaker, building it on
// first use. Callers hold e.mu.
func (e *entry) breakerLocked() circuitbreaker.CircuitBreaker[any] {
	if e.cb == nil {
		e.cb = newBreaker(e.pol.Load())
	}
	return e.cb
}

// newBreaker builds a count-based breaker: FailMax failures in the last
// FailMax outcomes (that is, FailMax consecutive failures) open it, and in
// half-open SuccessThreshold successes close it and any failure reopens it.
// The entry never calls TryAcquirePermit: admit times the open phase (with
// jitter and restored deadlines) and limits probes to TrialCalls, which
// failsafe-go cannot do on the manual path.
func newBreaker(p *resolved) circuitbreaker.CircuitBreaker[any] {
	return circuitbreaker.NewBuilder[any]().
		WithFailureThreshold(uint(p.FailMax)).
		WithSuccessThreshold(uint(p.SuccessThreshold)).
		WithDelay(p.ResetTimeout).
		Build()
}

// The transitions. Each is the only place its phase is entered; callers
// hold e.mu.

// tripLocked opens e until the deadline: after a local trip, a trip shared
// by another process, or a failed probe.
func (e *entry) tripLocked(until int64) {
	e.stats().transitions[StateOpen].Add(1)
	e.breakerLocked().Open()
	e.stats().win = nil
	e.fails.Store(0)
	e.mark.Store(until)
	e.st.Store(next(e.st.Load(), phaseOpen))
}

// halfOpenLocked starts a half-open generation with every trial slot free.
// From half-open it drops the outcomes of the probes in flight.
func (e *entry) halfOpenLocked(now int64) {
	if phaseOf(e.st.Load()) != phaseHalfOpen {
		e.stats().transitions[StateHalfOpen].Add(1)
	}
	cb := e.breakerLocked()
	cb.Open() // from half-open, so that HalfOpen starts counting anew
	cb.HalfOpen()
	e.probes = 0
	e.mark.Store(now)
	e.st.Store(next(e.st.Load(), phaseHalfOpen))
}

// closeLocked closes e and forgets its failures.
func (e *entry) closeLocked() {
	if phaseOf(e.st.Load()) != phaseClosed {
		e.stats().transitions[StateClosed].Add(1)
	}
	e.cb = nil // rebuilt on the next failure: a closed breaker holds no bitset
	if s := e.extra.Load(); s != nil {
		s.win, s.backs = nil, 0
	}
	e.probes = 0
	e.fails.Store(0)
	e.mark.Store(0)
	e.st.Store(next(e.st.Load(), phaseClosed))
}

// admitClosed is admit's hot path, small enough to be inlined: the
// admission of a request while e is closed, or false.
func (e *entry) admitClosed() (admission, bool) {
	st := e.st.Load()
	return admission{st: st}, phaseOf(st) == phaseClosed
}

// admit decides whether e's breaker lets a request in. The closed path is
// one atomic load: it takes no lock and reads no clock. Off it, admit reads
// c, moves an open breaker whose open phase has ended to half-open (the one
// transition it can make, reported as halfOpened), and lets in at most
// TrialCalls probes at a time.
// A rejection is returned as an *OpenError; the host's cooldown is not its
// business (cooldown.go).
func (e *entry) admit(c *clock) (adm admission, halfOpened bool, rej *OpenError) {
	st := e.st.Load()
	if phaseOf(st) == phaseClosed {
		return admission{st: st}, false, nil
	}
	now := c.now()
	for {
		switch phaseOf(st) {
		case phaseClosed:
			return admission{st: st}, halfOpened, nil
		case phaseOpen:
			if ou := e.mark.Load(); now < ou {
				return admission{}, halfOpened, &OpenError{Host: e.host.name, Role: e.role, Reason: ReasonBreakerOpen, Until: c.at(ou)}
			}
			e.mu.Lock()
			if e.st.Load() == st {
				e.halfOpenLocked(now)
				halfOpened = true
			}
			e.mu.Unlock()
		case phaseHalfOpen:
			e.mu.Lock()
			if e.st.Load() == st {
				adm, ok := e.admitProbeLocked(now)
				e.mu.Unlock()
				if !ok {
					return admission{}, halfOpened, &OpenError{Host: e.host.name, Role: e.role, Reason: ReasonHalfOpenFull}
				}
				return adm, halfOpened, nil
			}
			e.mu.Unlock()
		}
		st = e.st.Load()
	}
}

// admitProbeLocked takes a half-open trial slot, if one is free. Callers
// hold e.mu and have checked that e is half-open.
func (e *entry) admitProbeLocked(now int64) (admission, bool) {
	p := e.pol.Load()
	if e.probes >= int32(p.TrialCalls) {
		if now-e.mark.Load() < int64(p.ResetTimeout) {
			return admission{}, false
		}
		// Every slot has been held for reset_timeout: the probes are
		// stuck. A new generation frees their slots and drops their late
		// outcomes.
		e.halfOpenLocked(now)
	}
	e.probes++
	e.mark.Store(now)
	return admission{st: e.st.Load(), probe: true}, true
}

// healthy reports whether a success of the request that adm let in, under
// a policy whose extras (or'ed with the Transport's) are x, would change
// nothing but a counter: it is no probe, no failure is counted, and no
// rate rule counts successes. With recordHealthy, the hot path of
// recording, inlined.
func (e *entry) healthy(adm admission, x uint8) bool {
	return !adm.probe && e.fails.Load() == 0 && x&extraWindowed == 0
}

// recordHealthy counts a success for which healthy holds, and returns the
// success count it left.
func (e *entry) recordHealthy() uint64 { return e.successes.Add(1) }

// record counts the outcome of a request that adm let in and feeds it to
// e's breaker, and returns the transition it caused. slow says that its
// response took longer than the policy's SlowCall. A success in closed
// with no failure counted and no rate rule is the hot path: one atomic
// add. An outcome of an earlier generation is counted but changes nothing.
// c is read only when a failure, or any outcome under a rate rule, is
// recorded.
func (e *entry) record(adm admission, o outcome, slow bool, c *clock) transition {
	switch o {
	case outcomeSuccess:
		e.successes.Add(1)
		// In closed, a success after a success changes nothing in a
		// consecutive-failure breaker, so the common case skips the lock.
		if e.healthy(adm, e.pol.Load().extras) {
			return transition{}
		}
	case outcomeFailure:
		e.failures.Add(1)
		e.note(OutcomeFailure)
	case outcomeNeutral:
		e.neutral.Add(1)
		if adm.probe {
			e.releaseProbe(adm)
		}
		return transition{}
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.st.Load() != adm.st {
		return transition{}
	}
	if o == outcomeSuccess {
		if tr := e.successLocked(adm); tr.changed() || adm.probe {
			return tr
		}
		return e.countLocked(false, slow, 0, c)
	}
	return e.failureLocked(adm, slow, 0, c)
}

// successLocked records a success in the admission's generation. Callers
// hold e.mu.
func (e *entry) successLocked(adm admission) transition {
	e.rememberSuccessLocked() // for a body that breaks later (body.go)
	if !adm.probe {
		// The consecutive failures end. The generation stays: the
		// outcomes of requests in flight still count.
		if e.fails.Load() != 0 {
			e.cb = nil
			e.fails.Store(0)
			e.mark.Store(0)
		}
		return transition{}
	}
	e.probes--
	e.stats().probesOK.Add(1)
	cb := e.breakerLocked()
	cb.RecordSuccess()
	if !cb.IsClosed() {
		return transition{}
	}
	e.closeLocked()
	return transition{from: StateHalfOpen, to: StateClosed}
}

// failureLocked records a failure in the admission's generation and trips
// the breaker when it opens, by fail_max or, in closed, by a rate rule.
// amend is, for a request whose success the rate rules' window counted
// at that time (ns since the epoch; see transition.counted), the time of
// that success, which becomes the failure rather than a second outcome
// (a body that broke, body.go); 0 otherwise. Callers hold e.mu.
func (e *entry) failureLocked(adm admission, slow bool, amend int64, c *clock) transition {
	p := e.pol.Load()
	now := c.now()
	from := StateHalfOpen
	if adm.probe {
		e.probes--
		e.stats().probesFail.Add(1)
	} else {
		from = StateClosed
		// Failures age: one older than reset_timeout is forgotten, so that a
		// rare failure neither pins the entry nor adds up over days.
		if e.fails.Load() > 0 && now-e.mark.Load() > int64(p.ResetTimeout) {
			e.cb = nil
			e.fails.Store(0)
		}
		e.fails.Add(1)
		e.mark.Store(now)
	}
	cb := e.breakerLocked()
	cb.RecordFailure()
	if !cb.IsOpen() {
		if adm.probe {
			return transition{}
		}
		return e.countLocked(true, slow, amend, c)
	}
	failures, rule := 1, "probe failed"
	if !adm.probe {
		failures = int(e.fails.Load())
		rule = fmt.Sprintf("fail_max: %d consecutive failures", failures)
	} else if s := e.stats(); s.backs < 63 {
		s.backs++
	}
	until := c.after(now, e.openTimeLocked(p)+jitter(p.HalfOpenJitter))
	e.tripLocked(until)
	return transition{from: from, to: StateOpen, until: until, failures: failures, rule: rule}
}

// openTimeLocked returns how long e stays open when it trips now: the
// policy's ResetTimeout, doubled for each failed probe since it last
// closed, up to MaxResetTimeout (and MaxOpen). Callers hold e.mu.
func (e *entry) openTimeLocked(p *resolved) time.Duration {
	d, backs := p.ResetTimeout, e.stats().backs
	for i := uint8(0); i < backs && d < p.MaxResetTimeout; i++ {
		d *= 2
	}
	return min(d, p.MaxResetTimeout, MaxOpen)
}

// countLocked adds an outcome of a request admitted in closed to e's
// rate-rule window, when a rate rule is on, and trips e when one fires:
// failure_rate on the failures, slow_call_rate on the slow requests, each
// once the window holds MinRequests outcomes. A failure with amend != 0
// turns the success the window counted at amend into a failure instead,
// if the window still holds it. Without a trip it returns when the window
// counted the outcome (transition.counted). Callers hold e.mu and have
// checked the generation.
func (e *entry) countLocked(failed, slow bool, amend int64, c *clock) transition {
	p := e.pol.Load()
	if !p.windowed {
		return transition{}
	}
	now := c.now()
	s := e.stats()
	if s.win == nil || s.win.span != max(int64(p.Window)/windowBuckets, 1) {
		s.win = newWindow(p.Window)
	}
	w := s.win
	if !failed || amend == 0 || !w.amend(now, amend) {
		w.add(now, failed, slow && p.SlowCallRate > 0)
	}
	n := w.total.n
	if n < uint32(p.MinRequests) {
		return transition{counted: now}
	}
	var rule string
	var count uint32
	switch {
	case p.FailureRate > 0 && float64(w.total.failed) >= p.FailureRate*float64(n):
		count = w.total.failed
		rule = fmt.Sprintf("failure_rate: %d of %d requests failed in %s", count, n, formatSpan(p.Window))
	case p.SlowCallRate > 0 && float64(w.total.slow) >= p.SlowCallRate*float64(n):
		count = w.total.slow
		rule = fmt.Sprintf("slow_call_rate: %d of %d requests slower than %s in %s", count, n, formatSpan(p.SlowCall), formatSpan(p.Window))
	default:
		return transition{counted: now}
	}
	until := c.after(now, e.openTimeLocked(p)+jitter(p.HalfOpenJitter))
	e.tripLocked(until)
	return transition{from: StateClosed, to: StateOpen, until: until, failures: int(count), rule: rule}
}

// formatSpan writes d as a config would: "60s" rather than "1m0s" for
// whole seconds.
func formatSpan(d time.Duration) string {
	if d%time.Second == 0 {
		return strconv.FormatInt(int64(d/time.Second), 10) + "s"
	}
	return d.String()
}

// windowBuckets is the number of buckets a rate-rule window is kept in,
// as failsafe-go keeps its time-based thresholds: outcomes leave the
// window a bucket (a tenth of it) at a time.
const windowBuckets = 10

// window counts the outcomes of a (host, role) over the last Window, in
// windowBuckets buckets of span ns each: failsafe-go's timed statistics
// (WithFailureRateThreshold), with slow requests counted as well.
type window struct {
	span    int64 // ns per bucket
	cur     int64 // the index (time / span) of the newest bucket
	buckets [windowBuckets]windowCount
	total   windowCount // the sum of the buckets
}

type windowCount struct{ n, failed, slow uint32 }

func newWindow(d time.Duration) *window {
	return &window{span: max(int64(d)/windowBuckets, 1), cur: -1}
}

// advance moves the window to now (ns), dropping the buckets that have
// left it.
func (w *window) advance(now int64) {
	idx := now / w.span
	if w.cur < 0 {
		w.cur = idx
	}
	for k := w.cur + 1; k <= idx && k <= w.cur+windowBuckets; k++ {
		b := &w.buckets[k%windowBuckets]
		w.total.n -= b.n
		w.total.failed -= b.failed
		w.total.slow -= b.slow
		*b = windowCount{}
	}
	w.cur = max(w.cur, idx)
}

// amend turns a success counted at at (ns) into a failure, at now, and
// reports whether the window still held it: its bucket has not left the
// window and holds a success.
func (w *window) amend(now, at int64) bool {
	w.advance(now)
	idx := at / w.span
	if idx > w.cur || idx <= w.cur-windowBuckets {
		return false
	}
	b := &w.buckets[idx%windowBuckets]
	if b.failed >= b.n {
		return false
	}
	b.failed++
	w.total.failed++
	return true
}

// add counts one outcome at now (ns), first dropping the buckets that
// have left the window.
func (w *window) add(now int64, failed, slow bool) {
	w.advance(now)
	b := &w.buckets[w.cur%windowBuckets]
	b.n++
	w.total.n++
	if failed {
		b.failed++
		w.total.failed++
	}
	if slow {
		b.slow++
		w.total.slow++
	}
}

// releaseProbe gives back a half-open slot without an outcome: a request
// that panicked, or whose base returned neither a response nor an error.
func (e *entry) releaseProbe(adm admission) {
	e.mu.Lock()
	if e.st.Load() == adm.st {
		e.probes--
	}
	e.mu.Unlock()
}

// restoreOpen opens e until the deadline, as a trip that another process
// shared; a later deadline of its own is kept. It reports whether e changed.
func (e *entry) restoreOpen(until int64) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	if phaseOf(e.st.Load()) == phaseOpen && e.mark.Load() >= until {
		return false
	}
	e.tripLocked(until)
	return true
}

// reset closes e whatever its phase.
func (e *entry) reset() {
	e.mu.Lock()
	e.closeLocked()
	e.mu.Unlock()
}

// idle reports whether e carries no protection worth keeping: closed, with
// no failure younger than its reset_timeout, on a host not cooling down
// and with no slot of its concurrency limit held or waited for.
func (e *entry) idle(now int64) bool {
	if phaseOf(e.st.Load()) != phaseClosed || e.host.coolingDown(now) || e.host.busy() {
		return false
	}
	return e.fails.Load() == 0 || now-e.mark.Load() > int64(e.pol.Load().ResetTimeout)
}

// setPolicy switches e to policy p, keeping its state.
func (e *entry) setPolicy(p *resolved) {
	e.mu.Lock()
	defer e.mu.Unlock()
	old := e.pol.Load()
	e.pol.Store(p)
	if e.cb == nil || (old.FailMax == p.FailMax && old.SuccessThreshold == p.SuccessThreshold && old.ResetTimeout == p.ResetTimeout) {
		return
	}
	// failsafe-go breakers cannot be reconfigured: build a new one in the
	// same state. The open deadline lives in mark and is kept.
	cb := newBreaker(p)
	switch phaseOf(e.st.Load()) {
	case phaseClosed:
		n := min(int(e.fails.Load()), p.FailMax-1)
		for range n {
			cb.RecordFailure()
		}
		e.fails.Store(int32(n))
	case phaseOpen:
		cb.Open()
	case phaseHalfOpen:
		cb.Open()
		cb.HalfOpen()
	}
	e.cb = cb
}

// status returns e's effective state, and the end of its open phase (0 if
// it is not open).
func (e *entry) status(now int64) (State, int64) {
	switch phaseOf(e.st.Load()) {
	case phaseOpen:
		if ou := e.mark.Load(); now < ou {
			return StateOpen, ou
		}
		return StateHalfOpen, 0 // lazily: the next request moves it
	case phaseHalfOpen:
		return StateHalfOpen, 0
	}
	return StateClosed, 0
}
