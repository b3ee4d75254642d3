package hostbreaker

import (
	"context"
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
// turns given up would leave their gaps in the bucket.
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
	if !ok || fr.others <= 0 {
		return turn{}, nil, false
	}
	rate, maxWait, ch, changed := lim.pace(now)
	if changed {
		t.emitRate(e.host.name, ch)
	}
	fleet := rate + fr.others
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
		timer := time.NewTimer(wait)
		select {
		case <-timer.C:
		case <-ctx.Done():
			timer.Stop()
			return turn{}, context.Cause(ctx), true
		}
		now = t.now()
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
