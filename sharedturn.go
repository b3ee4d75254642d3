package hostbreaker

import (
	"context"
	"maps"
	"math"
	"time"
)

// The fleet's shared bucket: where the store can pace a host for every
// process at once (a Redis store, turnTaker), the processes that send to
// a host whose limit the fleet learnt take their turns from one bucket,
// one request per interval at the rate they send at together, instead of
// each pacing alone at its share. Each share, paced alone, is a periodic
// stream; two dozen of them side by side bunch up and leave gaps however
// their phases fall, which a strict limiter refuses and a cooldown then
// makes every process pay. One bucket sends the fleet's requests an
// interval apart, as one process would, and a process with more to send
// takes the turns that one with less leaves. Each process still learns as
// before: a throttle lowers its own rate, and so the fleet's, at once,
// and the others' at their next poll. A turn costs one round trip to the
// store (70 µs to a Redis on loopback, BenchmarkSharedTurn), a small part
// of an interval at the rates a learnt limit paces: a host that allows
// sharedTurnMaxRate or more, fleet-wide, is paced alone.
const (
	// turnTimeout bounds a turn's round trip to the store; past it, or
	// on any error, the request paces alone, as do the others for
	// turnRetry.
	turnTimeout = 250 * time.Millisecond
	turnRetry   = 5 * time.Second

	// sharedTurnMaxRate is the fleet-wide rate from which a host is paced
	// by each process alone: a turn's round trip would then be a good part
	// of the interval.
	sharedTurnMaxRate = 1000.0
)

// sharedTurn waits for the request's turn at the bucket of e's host that
// the processes sharing the store take their turns from (see above), when
// the store has one, the fleet learnt the host's limit, and other
// processes send to it; now and deadline are wait's. It reports false
// when it cannot (the request then waits at its limiter, as alone): no
// such bucket, or the store failed, and then for turnRetry. Otherwise it
// returns what wait returns: the turn taken; or errTurnTooFar with the
// turn it would get; or ctx's cause; or the zero turn when a cooldown
// began while it waited (admit rejects the request). A throttle while it
// waits does not void its turn, given at the fleet's rate before: the
// wait is short (the request's MaxWait or half its time left), and
// turns given up would leave their gaps in the bucket. A Retry-After
// does: where the store is polled (turnHolder), a request that waited
// asks whether another process's cooldown holds the bucket, and if so is
// rejected as rate-limited until the hold ends (errTurnTooFar).
func (t *Transport) sharedTurn(ctx context.Context, e *entry, lim *limiter, now, deadline int64) (turn, error, bool) {
	sh := t.sh
	if sh == nil {
		return turn{}, nil, false
	}
	box := sh.turns.Load()
	if box == nil || now < sh.turnsDown.Load() {
		return turn{}, nil, false
	}
	fr, ok := t.fleetRate(e.host.name)
	as := e.host.afterStart.Load()
	if (!ok || fr.others <= 0) && (as == nil || now >= as.until) {
		return turn{}, nil, false
	}
	rate, maxWait, ch, changed := lim.pace(now)
	if changed {
		t.emitRate(e.host.name, ch)
	}
	fleet := rate + fr.others
	if ok && fr.others > 0 {
		// The rates the other processes published lag: a process that
		// joined the fleet's fact at its last poll still shows the rate
		// it had before, and a row comes in a poll or two after its
		// process began to send. A turn at the sum of a few small rates
		// books the bucket seconds ahead for every process (a process
		// whose first poll with the fact showed the others at 0.07 r/s
		// in all gave turns 2 s long, and 48 processes on Redis sent
		// 0–1 r/s of nginx's 5 for a second or two): the fleet sends at
		// β times its limit at least, what a throttle lowers it to.
		fleet = max(fleet, cubicBeta*fr.limit)
	}
	if as != nil && now < as.until {
		// The processes of a stopped start, before their polls show them
		// all to each other: a poll that shows a few of them says the
		// fleet sends at their rates, and one turn at that rate books the
		// bucket seconds ahead for every process (a process whose poll
		// showed rows adding up to 0.02 r/s gave a turn 6.6 s long, and
		// 24 processes on bbolt sent nothing for 2–4 s after the start).
		fleet = max(fleet, as.rate)
	}
	if fleet >= sharedTurnMaxRate {
		return turn{}, nil, false
	}
	end := now + maxWait
	if deadline > 0 {
		end = min(end, deadline)
	}
	tctx, cancel := context.WithTimeout(ctx, turnTimeout)
	wait, ok, err := box.takeTurn(tctx, e.host.name, time.Duration(1e9/fleet), time.Duration(end-now))
	cancel()
	switch {
	case err != nil && ctx.Err() != nil:
		return turn{}, context.Cause(ctx), true
	case err != nil:
		t.turnFailed(now, err)
		return turn{}, nil, false
	case !ok:
		return turn{lim: lim, at: now + int64(wait), shared: true}, errTurnTooFar, true
	}
	if wait > 0 {
		if !sleep(ctx, wait) {
			return turn{}, context.Cause(ctx), true
		}
		now = t.now()
		if box.holder != nil {
			// Another process may obey a Retry-After since: this one
			// learns of it at its next poll, too late for this turn.
			tctx, cancel := context.WithTimeout(ctx, turnTimeout)
			hold, err := box.holder.turnHold(tctx, e.host.name)
			cancel()
			if err == nil && hold > 0 {
				return turn{lim: lim, at: now + int64(hold), shared: true}, errTurnTooFar, true
			}
		}
	}
	if e.host.coolingDown(now) {
		return turn{}, nil, true // admit rejects it
	}
	lim.takeShared(now)
	return turn{lim: lim, at: now, shared: true}, nil, true
}

// turnFailed counts a failed turn as a store error, sends the requests to
// pace alone for turnRetry, and logs it at most once per errorLogInterval.
// It runs on a request's goroutine.
func (t *Transport) turnFailed(now int64, err error) {
	sh := t.sh
	sh.turnsDown.Store(now + int64(turnRetry))
	sh.errors.Add(1)
	sh.errOps[opTurn].Add(1)
	t.storeErr.Store(&err)
	if last := sh.turnLogged.Load(); last == 0 || now+1-last >= int64(errorLogInterval) {
		if sh.turnLogged.CompareAndSwap(last, now+1) {
			t.log.Warn("hostbreaker: store unavailable for shared turns; each process paces alone",
				"err", err, "retry", turnRetry, "failed", sh.errOps[opTurn].Load())
		}
	}
}

// The fleet's start at a host: where the store can hold it (a Redis
// store, starter), the requests of every process to a host the fleet
// knows nothing of yet, and whose policy learns (adaptive), take their
// turns at one rate that begins at fleetStartRate and doubles every
// fleetStartDoubling, until the host refuses one or the rate reaches
// sharedTurnMaxRate (fleetStartLength, about 4 s). A process alone sends
// to a new host all it has: its first requests are the few its workers
// hold, and a throttle slows it down. A fleet's are as many as all its
// workers, sent at one instant before any of them has an answer: 24
// processes of 2 workers send 48, of which a host that allows 5 r/s and a
// burst of 5 refuses 42 at once, and its first refusals start every
// process's limiter at the rate it was born at. Paced at the start's
// rate, the fleet reaches a host's limit after a second or two, having
// sent what it allows, and the first throttle stops the start for every
// process at once. The fleet's first learnt limit is then a quarter of the
// rate the start had reached (the rate of two doublings back, which the
// host served), shared among the processes that took part (the store
// counts them): the throttled processes' limiters take their shares as
// the store answers their stops, the others as their next turn tells them
// of the stop, a turn taken at an eighth of that rate, so that a limiter
// that counts a burst drains what the start sent.
// A process alone in the start (the only one the store counted yet) is
// not paced: its requests go as they come, and count in the schedule
// only once another process takes part.
// Each process remembers a start that ended without a throttle, and sends
// to that host as if alone from then on (the hot path: a flag of the
// entry, flagStarted, in a word it loads anyway).
// A start costs a round trip to the store per request while it lasts,
// two for a request that waited (it checks that no throttle stopped the
// start meanwhile).
const (
	fleetStartRate     = 4.0 // r/s, fleet-wide
	fleetStartDoubling = 500 * time.Millisecond
	fleetStartLife     = 15 * time.Minute // a start key's life after its last turn
	startProcsFor      = 3 * time.Second  // how long the processes of a stopped start count as sending (see pullFleetRates)

	// A throttle's slow-down of the shared bucket (see slowFleet).
	slowTurnsFactor = 0.5
	slowTurnsPolls  = 2
)

// fleetStartLength is how long the start lasts without a throttle: until
// its rate reaches sharedTurnMaxRate.
var fleetStartLength = time.Duration(float64(fleetStartDoubling) * math.Log2(sharedTurnMaxRate/fleetStartRate))

// startOp is an operation on the fleet's start at a host (see starter).
type startOp int

const (
	startTake  startOp = iota // take a turn
	startCheck                // after a wait: a turn at the held rate if a throttle stopped the start meanwhile
	startStop                 // a throttle: stop the start
)

// startOps names the operations, as the store's script reads them.
var startOps = [...]string{"take", "check", "stop"}

// startCode is the store's reply to a startOp.
type startCode int

const (
	startTooFar startCode = iota // the turn is further than the longest wait: not taken
	startRamp                    // a turn of the start, taken
	startHeld                    // a turn at the rate held since a throttle stopped the start, taken
	startDone                    // the start is over: the host is sent to as by a process alone
)

// startReply is the store's reply to a startOp: its code, how long from
// now the turn it took is, and, for a stop, the fleet-wide rate the start
// had reached when a throttle stopped it and the processes that took part
// in it (0 when it does not say).
type startReply struct {
	code    startCode
	wait    time.Duration
	reached float64
	procs   int
}

// Where a process stands in the fleet's start at a host (hostState.start).
const (
	hostNew      = iota // it has not taken a turn of a start there (yet)
	hostStarting        // it took a turn of a start that was not over
	hostStopping        // a throttle's stop is on its way to the store
	hostStarted         // the start is over, or there is none: the requests go as they come
)

// startBox holds a store's starter for an atomic pointer.
type startBox struct{ starter }

// fleetStart waits for the request's turn at the fleet's start at e's host
// (see above), when the store holds one and e's policy p learns, and
// reports whether the request took a turn of it. It returns the
// request's rejection when its turn is further than it may wait (the
// policy's MaxWait, or half its time left), or ctx's cause. A store that
// fails sends the request at once, and the others for turnRetry, as
// sharedTurn does.
func (t *Transport) fleetStart(ctx context.Context, e *entry, p *resolved) (bool, error) {
	sh, h := t.sh, e.host
	if h.start.Load() == hostStarted {
		e.flags.Or(flagStarted) // its next requests skip the call: one load of a flag they read anyway
		return false, nil
	}
	box := sh.starts.Load()
	if box == nil || p.Adaptive != ToggleOn || p.shadow || p.MaxWait <= 0 {
		return false, nil
	}
	now := t.now()
	if now < sh.turnsDown.Load() || h.coolingDown(now) {
		return false, nil // admit rejects a request to a host that cools down
	}
	end := now + int64(p.MaxWait)
	if d, ok := ctx.Deadline(); ok {
		end = min(end, now+max(int64(time.Until(d)), 0)/2)
	}
	op := startTake
	for {
		tctx, cancel := context.WithTimeout(ctx, turnTimeout)
		r, err := box.startTurn(tctx, h.name, sh.source, op, time.Duration(end-now))
		cancel()
		code, wait := r.code, r.wait
		switch {
		case err != nil && ctx.Err() != nil:
			return false, context.Cause(ctx)
		case err != nil:
			t.turnFailed(now, err)
			return false, nil
		case code == startDone:
			h.start.Store(hostStarted)
			return false, nil
		}
		h.start.CompareAndSwap(hostNew, hostStarting)
		if code == startHeld && r.reached > 0 {
			// A throttle stopped the start: this process joins the fleet's
			// first fact now, as the processes it stopped for did, unless
			// its limiter learnt the fleet's limit since (from a poll).
			// Either way its limiter paces the host from now on.
			if h.lim.Load() == nil {
				h.learnLimiter(p, now)
				t.joinStart(h, r, time.Now().UnixNano())
			}
			h.start.Store(hostStarted)
		}
		if code == startTooFar {
			e.reject(ReasonRateLimited)
			return false, &OpenError{Host: h.name, Role: e.role, Reason: ReasonRateLimited, Until: t.at(now + int64(wait))}
		}
		if wait <= 0 {
			return true, nil
		}
		if !sleep(ctx, wait) {
			return false, context.Cause(ctx)
		}
		if code == startHeld {
			return true, nil
		}
		op, now = startCheck, t.now() // a throttle may have stopped the start while it waited
	}
}

// stopStart stops the fleet's start at h, which throttled a request sent
// at sent (t.now's clock; 0 when unknown), for every process (see
// fleetStart), when this process took part in it and no stop is on its
// way. The start's rate is taken at the time the request was sent, not
// when its answer came: the start doubles its rate every 500 ms, and a
// stop that comes a busy machine's 200 ms late would say the host served
// a third more than it did. It never blocks the request: the stop goes on a
// goroutine of its own. Once the store has answered, a process whose
// throttle gave h a limiter is done with the start (its limiter paces
// h); one without (adaptive off) takes its turns at the held rate.
func (t *Transport) stopStart(h *hostState, sent int64) {
	box := t.sh.starts.Load()
	if box == nil || !h.start.CompareAndSwap(hostStarting, hostStopping) {
		return
	}
	go func() {
		var age time.Duration
		if sent != 0 {
			age = time.Duration(max(t.now()-sent, 0))
		}
		ctx, cancel := context.WithTimeout(context.Background(), turnTimeout)
		r, err := box.startTurn(ctx, h.name, t.sh.source, startStop, age)
		cancel()
		switch {
		case err != nil:
			t.turnFailed(t.now(), err)
		case r.reached > 0:
			var wall int64 // the throttle's, that started h's limiter
			if lim := h.lim.Load(); lim != nil {
				wall = lim.status().throttled
			}
			t.joinStart(h, r, wall)
		}
		next := int32(hostStarting)
		if err == nil && h.lim.Load() != nil {
			next = hostStarted
		}
		h.start.CompareAndSwap(hostStopping, next)
	}()
}

// slowFleet tells the fleet's shared bucket of h, when the fleet paces h
// there, what a throttle just taught: with slowed (h's limiter slowed
// down), it halves the bucket's rate for two poll intervals
// (slowTurnsFactor, slowTurnsPolls): the other processes lower their
// rates only when they read what the throttle taught, at their next poll,
// and the bucket's rate is the sum of theirs; a limiter that counts a
// burst keeps refusing until the fleet goes well under its rate for a
// moment. With cooled (h cools down: a Retry-After), the bucket gives no
// turn until the cooldown ends, for any process, where the others would
// learn of the cooldown only from the store's change signal or their next
// poll, and send into it meanwhile; and it is not slowed: the host's
// limiter drained while it said to wait. With the bucket halved after the
// hold as well, 24 processes on nginx (5 r/s, burst 5, Retry-After: 1)
// served 86–98 % of the rate allowed, 2 runs of 4 at 95 % or more;
// without, 24 and 48 processes served 91–100 %, 7 runs of 11 at 95 % or
// more (docs/benchmarks.md). It never blocks the request.
func (t *Transport) slowFleet(h *hostState, slowed, cooled bool) {
	sh := t.sh
	if sh == nil {
		return
	}
	box := sh.turns.Load()
	if box == nil {
		return
	}
	if fr, ok := t.fleetRate(h.name); !ok || fr.others <= 0 || !h.slowing.CompareAndSwap(false, true) {
		return
	}
	factor, hold := 1.0, time.Duration(0)
	if slowed && !cooled {
		factor = slowTurnsFactor
	}
	if cooled {
		hold = time.Duration(max(h.until.Load()-t.now(), 0))
	}
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), turnTimeout)
		err := box.slowTurns(ctx, h.name, factor, slowTurnsPolls*sh.poll, hold)
		cancel()
		if err != nil {
			t.turnFailed(t.now(), err)
		}
		h.slowing.Store(false)
	}()
}

// heldStart is what the store told of a stopped fleet's start at a host:
// the fleet-wide rate the start had reached, and how many processes took
// part.
type heldStart struct {
	reached float64
	procs   int
}

// fact returns the fleet-wide limit that a stopped start teaches: a
// quarter of the rate it had reached, the rate of two doublings before,
// which the host served.
func (hs heldStart) fact() float64 { return hs.reached / 4 }

// joinStart takes what the store told of the stopped fleet's start at h
// (r, to this process's stop or to a turn after another's): it keeps it
// for pullFleetRates (the fact this process's throttle teaches, and how
// many processes count as sending), and gives h's limiter, started at wall
// time wall, its share of that fact at once. Born of this process's own
// successes, a few of the start's turns, the limiter would pace at
// min_rate or more, and two dozen processes throttled by the start's last
// turns would send that many times min_rate before their next poll. A
// process alone in the start keeps nothing: it learns as alone. It runs on
// stopStart's goroutine or on a request's.
func (t *Transport) joinStart(h *hostState, r startReply, wall int64) {
	hs := heldStart{r.reached, r.procs}
	if hs.procs < 2 {
		return // alone in the start: its own limiter learns as alone
	}
	sh := t.sh
	sh.heldMu.Lock()
	if sh.held == nil {
		sh.held = make(map[string]heldStart)
	}
	sh.held[h.name] = hs
	sh.heldMu.Unlock()
	h.afterStart.Store(&afterStart{rate: hs.fact(), until: t.now() + int64(startProcsFor)})
	lim := h.lim.Load()
	if lim == nil {
		return
	}
	n := float64(hs.procs)
	floor := minRateOf(t.resolve(h.name, "")) / n
	if ch, ok := lim.adopt(hs.fact()/n, floor, t.now(), wall, time.Now().UnixNano(), true, false); ok {
		t.emitRate(h.name, ch)
	}
}

// afterStart is the fleet-wide rate that a stopped start teaches (its
// fact), which the processes that took part take their turns of the
// shared bucket at, until their polls show them to each other (then the
// bucket's rate is theirs: see sharedTurn) or until (t.now's clock).
// Paced alone at their shares meanwhile, on a store that shows them to
// each other only at their polls (bbolt), two dozen processes bunch.
type afterStart struct {
	rate  float64
	until int64
}

// heldNow returns a copy of what joinStart kept, by host; nil when
// nothing (the common case: one lock per poll, not one per host).
func (sh *sharing) heldNow() map[string]heldStart {
	sh.heldMu.Lock()
	defer sh.heldMu.Unlock()
	if len(sh.held) == 0 {
		return nil
	}
	return maps.Clone(sh.held)
}

// forgetHeld drops what joinStart kept of host, once the fleet has a fact
// of it.
func (sh *sharing) forgetHeld(host string) {
	sh.heldMu.Lock()
	delete(sh.held, host)
	sh.heldMu.Unlock()
}
