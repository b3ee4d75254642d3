package hostbreaker

// This file holds the breaker of one (host, role): the gate in front of a
// failsafe-go circuit breaker, and every rule that moves it between closed,
// open and half-open.
//
// Locking rules, for the whole package:
//   - registry.mu guards the registry's structure: its table, the entry
//     lists of hosts, its counts and interned roles. It may be held while
//     taking a hostState.mu or an entry.mu, never taken while holding one.
//   - hostState.mu guards a host's cooldown reason, note and time set, and
//     its rolling window; hostState.until is an atomic written under it.
//   - entry.mu guards cb and probes; st, fails and mark change only under
//     it and are read without it.
//   - No lock is held across base.RoundTrip, store I/O, logging or user
//     code. Events are queued without blocking.
//   - An outcome is applied only in the generation it was admitted in:
//     every state change bumps the generation packed in entry.st, so a slow
//     request cannot close or reopen a breaker whose state it did not see.

import (
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/failsafe-go/failsafe-go/circuitbreaker"
)

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
type entry struct {
	st        atomic.Uint64 // generation<<2 | phase; changed only under mu
	successes atomic.Uint64
	fails     atomic.Int32  // consecutive failures recorded in closed; changed only under mu
	flags     atomic.Uint32 // flagUsed | flagEvicted | flagLive
	pol       atomic.Pointer[resolved]
	host      *hostState
	role      string
	// mark is a time in ns since the Transport's epoch whose meaning
	// depends on the phase: in closed, the last failure (0 for none); in
	// open, the end of the open phase; in half-open, when the newest probe
	// was admitted. Written under mu, before st.
	mark atomic.Int64

	failures, neutral, rejected atomic.Uint64
	more                        atomic.Pointer[entryStats] // nil until the first event off the healthy path

	mu     sync.Mutex
	cb     circuitbreaker.CircuitBreaker[any] // nil until the first failure; guarded by mu
	probes int32                              // half-open probes in flight; guarded by mu
}

// The reasons a request is rejected for, as indexes of entryStats.rejected.
var rejectReasons = [...]Reason{ReasonBreakerOpen, ReasonHalfOpenFull, ReasonRetryAfter, ReasonRollingWindow, ReasonRateLimited, ReasonManual}

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

	mu       sync.Mutex
	run      uint64   // consecutive failures now; guarded by mu
	longest  uint64   // longest failure run since the last summary; guarded by mu
	outcomes Outcomes // runs since the last summary; guarded by mu
	seenOK   uint64   // the successes counter when outcomes last grew; guarded by mu
}

// stats returns e's entryStats, allocating them on first use.
func (e *entry) stats() *entryStats {
	if s := e.more.Load(); s != nil {
		return s
	}
	s := new(entryStats)
	s.seenOK = e.successes.Load()
	if e.more.CompareAndSwap(nil, s) {
		return s
	}
	return e.more.Load()
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
	if l := len(s.outcomes); ok == s.seenOK && l > 0 && s.outcomes[l-1].Kind == k {
		s.outcomes[l-1].Count++
		s.count(k)
		s.mu.Unlock()
		return
	}
	s.mu.Unlock()
	at := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	if n := ok - s.seenOK; n > 0 && ok > s.seenOK {
		s.addRun(OutcomeSuccess, n, at)
		s.run = 0
		s.seenOK = ok
	}
	s.addRun(k, 1, at)
	s.count(k)
}

// count updates the failure runs for one more outcome of kind k. Callers
// hold s.mu.
func (s *entryStats) count(k OutcomeKind) {
	if k == OutcomeFailure {
		s.run++
		s.longest = max(s.longest, s.run)
	}
}

// addRun appends n outcomes of kind k to the runs. Callers hold s.mu.
func (s *entryStats) addRun(k OutcomeKind, n uint64, at time.Time) {
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
	s := e.more.Load()
	if s == nil {
		return nil, 0
	}
	ok := e.successes.Load()
	s.mu.Lock()
	defer s.mu.Unlock()
	if n := ok - s.seenOK; n > 0 && len(s.outcomes) > 0 {
		s.addRun(OutcomeSuccess, n, now)
		s.run = 0
	}
	s.seenOK = ok
	out, longest := s.outcomes, s.longest
	s.outcomes, s.longest = nil, s.run
	return out, longest
}

// Entry flags.
const (
	flagUsed    = 1 << iota // requested since the last eviction sweep
	flagEvicted             // removed from the registry: outcomes go to the live entry
	flagLive                // handed out by the registry (set last, see registry.lookup)
	flagQuota               // its responses carry quota headers (RateLimit-Remaining): read them on each
)

func (e *entry) evicted() bool { return e.flags.Load()&flagEvicted != 0 }

// admission is what RoundTrip remembers about how it let a request in.
type admission struct {
	st    uint64 // the entry's st when admitted
	probe bool   // a half-open trial request
	sent  int64  // when the host's limiter let it go; 0 without a limiter
}

// breaker returns the entry's failsafe-go breaker, building it on first use.
// Callers hold e.mu.
func (e *entry) breaker() circuitbreaker.CircuitBreaker[any] {
	if e.cb == nil {
		e.cb = newBreaker(e.pol.Load())
	}
	return e.cb
}

// newBreaker builds a count-based breaker: FailMax failures in the last
// FailMax outcomes (that is, FailMax consecutive failures) open it, and in
// half-open SuccessThreshold successes close it and any failure reopens it.
// The Transport never calls TryAcquirePermit: the gate times the open phase
// (with jitter, cooldowns and restored deadlines) and limits probes to
// TrialCalls, which failsafe-go cannot do on the manual path.
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
	e.breaker().Open()
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
	cb := e.breaker()
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
	e.probes = 0
	e.fails.Store(0)
	e.mark.Store(0)
	e.st.Store(next(e.st.Load(), phaseClosed))
}

// admit decides whether e may send now: the host's cooldown first, then
// the breaker. The closed path takes no lock and reads no clock.
func (t *Transport) admit(e *entry) (admission, *OpenError) {
	hu := e.host.until.Load()
	st := e.st.Load()
	if hu == 0 && phaseOf(st) == phaseClosed {
		return admission{st: st}, nil // the hot path
	}
	now := t.now()
	if hu != 0 {
		if now < hu {
			if rej := t.hostRejection(e.host, e.role, now); rej != nil {
				return admission{}, rej
			}
		} else {
			e.host.until.CompareAndSwap(hu, 0) // expired
		}
	}
	for {
		switch phaseOf(st) {
		case phaseClosed:
			return admission{st: st}, nil
		case phaseOpen:
			if ou := e.mark.Load(); now < ou {
				return admission{}, &OpenError{Host: e.host.name, Role: e.role, Reason: ReasonBreakerOpen, Until: t.at(ou)}
			}
			e.mu.Lock()
			if e.st.Load() == st {
				e.halfOpenLocked(now)
				t.emit(event{kind: evState, host: e.host.name, role: e.role, from: StateOpen, to: StateHalfOpen})
			}
			e.mu.Unlock()
		case phaseHalfOpen:
			e.mu.Lock()
			if e.st.Load() == st {
				p := e.pol.Load()
				if e.probes >= int32(p.TrialCalls) {
					if now-e.mark.Load() < int64(p.ResetTimeout) {
						e.mu.Unlock()
						return admission{}, &OpenError{Host: e.host.name, Role: e.role, Reason: ReasonHalfOpenFull}
					}
					// Every slot has been held for reset_timeout: the
					// probes are stuck. A new generation frees their
					// slots and drops their late outcomes.
					e.halfOpenLocked(now)
					st = e.st.Load()
				}
				e.probes++
				e.mark.Store(now)
				e.mu.Unlock()
				return admission{st: st, probe: true}, nil
			}
			e.mu.Unlock()
		}
		st = e.st.Load()
	}
}

// cause is what a failure was: a status code, or an error type.
type cause struct {
	status  int
	errType string // "timeout", or the error's Go type
}

// apply feeds the outcome of an admitted request to e's breaker; c is the
// cause of a failure.
func (t *Transport) apply(e *entry, adm admission, o outcome, c cause) {
	switch o {
	case outcomeSuccess:
		e.successes.Add(1)
		// In closed, a success after a success changes nothing in a
		// consecutive-failure breaker, so the common case skips the lock.
		if adm.probe || e.fails.Load() != 0 {
			t.applyLocked(e, adm, o, c)
		}
	case outcomeFailure:
		e.failures.Add(1)
		e.note(OutcomeFailure)
		t.applyLocked(e, adm, o, c)
	case outcomeNeutral:
		e.neutral.Add(1)
		if adm.probe {
			t.releaseProbe(e, adm)
		}
	}
}

// applyLocked records a success or failure in the breaker, under e.mu, and
// makes the transition it causes. An outcome of an earlier generation is
// dropped.
func (t *Transport) applyLocked(e *entry, adm admission, o outcome, c cause) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.st.Load() != adm.st {
		return
	}
	p := e.pol.Load()
	if o == outcomeSuccess {
		if !adm.probe {
			// The consecutive failures end. The generation stays: the
			// outcomes of requests in flight still count.
			e.cb = nil
			e.fails.Store(0)
			e.mark.Store(0)
			return
		}
		e.probes--
		e.stats().probesOK.Add(1)
		cb := e.breaker()
		cb.RecordSuccess()
		if cb.IsClosed() {
			e.closeLocked()
			t.emit(event{kind: evState, host: e.host.name, role: e.role, from: StateHalfOpen, to: StateClosed})
		}
		return
	}
	now := t.now()
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
	cb := e.breaker()
	cb.RecordFailure()
	if cb.IsOpen() {
		failures := 1
		if !adm.probe {
			failures = int(e.fails.Load())
		}
		until := t.after(now, min(p.ResetTimeout, maxWait)+jitter(p.HalfOpenJitter))
		e.tripLocked(until)
		t.emit(event{kind: evState, host: e.host.name, role: e.role, from: from, to: StateOpen, until: until,
			failures: failures, status: c.status, errType: c.errType})
	}
}

// releaseProbe gives back a half-open permit without an outcome.
func (t *Transport) releaseProbe(e *entry, adm admission) {
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
// no failure younger than its reset_timeout, on a host not cooling down.
func (e *entry) idle(now int64) bool {
	if phaseOf(e.st.Load()) != phaseClosed || e.host.coolingDown(now) {
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

func jitter(max time.Duration) time.Duration {
	if max <= 0 {
		return 0
	}
	return rand.N(min(max, maxWait) + 1)
}
