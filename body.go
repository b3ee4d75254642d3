package hostbreaker

// This file holds what happens after the headers: the response body that
// hostbreaker wraps when it must (a slot of the host's concurrency limit
// to give back, or a read error to watch for), and a body that breaks
// turning its request's outcome into a failure, taking back a success
// counted at the headers. The slots are in concurrency.go; the breaker's
// transitions in breaker.go. The host's limiter keeps the success it
// counted at the headers: its rate limit let the request through, and a
// body that breaks is no throttle (docs/config.md).

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
)

// body wraps a response body. It gives the request's slot back (if it
// holds one) when the body is closed, read to EOF or fails, and, when it
// watches, turns a read error into the request's failure at once: any
// error but EOF, unless the caller canceled the request or closed the
// body first. It is safe for a Close concurrent with a Read, as net/http's
// bodies are.
type body struct {
	rc    io.ReadCloser
	t     *Transport
	e     *entry
	req   *http.Request
	adm   admission // as admitted, without its turn (began: when it was sent)
	was   outcome   // the outcome counted at the headers
	at    int64     // when the rate rules' window counted it; 0 if none did
	okSeq uint64    // e.successes after the headers were counted
	slot  *slot     // nil when the request holds none
	watch bool      // a read error is the host's failure

	closed atomic.Bool   // the caller closed it
	done   atomic.Uint32 // 1 once the outcome is settled and the slot given back
}

// Read reads from the response body. EOF settles the request; any other
// error is the host's failure (see body).
func (b *body) Read(p []byte) (int, error) {
	n, err := b.rc.Read(p)
	if err != nil {
		if err == io.EOF {
			b.finish(nil)
		} else {
			b.finish(err)
		}
	}
	return n, err
}

// Close closes the response body and gives the request's slot back. A body
// closed before its end is no failure: the caller chose to stop reading.
func (b *body) Close() error {
	b.closed.Store(true) // first: a Read that fails because of it is the caller's doing
	err := b.rc.Close()
	b.finish(nil)
	return err
}

// finish settles the request once: its outcome (a failure when err is
// the host's doing), then its slot, so that a request waiting for that
// slot is admitted by a breaker that has seen the failure.
func (b *body) finish(err error) {
	if !b.done.CompareAndSwap(0, 1) {
		return
	}
	if b.watch && err != nil && !b.closed.Load() && classifyError(b.req.Context()) == outcomeFailure && !b.callersDeadline(err) {
		b.t.bodyFailed(b, err)
	}
	b.slot.release()
}

// callersDeadline reports whether err, which broke the body, came from the
// caller's deadline, by the rule that holds at the headers (classify.go,
// callersDeadline): the request's context deadline passed before it had
// waited the host's slow_call (1 s when unset) since it was sent, and it is
// not http.Client.Timeout's. Such a body is no failure of the host's.
func (b *body) callersDeadline(err error) bool {
	return b.adm.began != 0 && callersDeadline(b.req, err, b.t.now()-b.adm.began, b.e.pol.Load().SlowCall)
}

// bodySlab holds bodies to hand out one by one, so that watching one
// response in bodySampleMask+1 of a healthy host allocates once in
// len(bodies) of them. A body is never reused: a slab is freed when none
// of its bodies is referenced any more.
type bodySlab struct {
	bodies [16]body
	n      int
}

var bodySlabs sync.Pool // of *bodySlab with bodies left

// newBody returns a fresh body from a slab.
func newBody() *body {
	s, _ := bodySlabs.Get().(*bodySlab)
	if s == nil {
		s = new(bodySlab)
	}
	b := &s.bodies[s.n]
	s.n++
	if s.n < len(s.bodies) {
		bodySlabs.Put(s)
	}
	return b
}

// bodySampleMask sets how often the body of a host that has shown no body
// error is watched: when the entry's success count & mask is 1 (its 1st,
// 17th, 33rd… success), so that a host whose every body breaks is caught
// within 16 requests. A host whose body breaks is watched on every
// response from then on, for as long as its entry lives (an entry idle
// long enough to be evicted starts sampling again): every later body
// error is caught, for the price of a body from a pooled slab per
// response (BenchmarkRoundTripBody, "watched").
const bodySampleMask = 15

// watchBody reports whether the body of a response to e that did not
// fail at the headers is to be watched; n is the success count that the
// request's own success left (the healthy path's atomic add returns it,
// so that concurrent requests cannot skip a sampled count), or 0 when it
// counted none. Inlined into RoundTrip: loads from the entry's first
// cache line.
func (e *entry) watchBody(n uint64) bool {
	if n == 0 {
		n = e.successes.Load()
	}
	return e.flags.Load()&flagBodyWatch != 0 || n&bodySampleMask == 1
}

// wrapBody puts a body around resp.Body when there is one to read (adm
// without its turn, which points into RoundTrip's frame): it
// watches for read errors unless the headers already counted a failure
// (o; counted by the rate rules' window at at, or 0), and gives s back, if
// not nil, when the body ends. It reports
// whether the body took s; a response without a body (an error, nil or
// http.NoBody) leaves s to the caller.
func (t *Transport) wrapBody(e *entry, adm admission, req *http.Request, resp *http.Response, o outcome, at int64, s *slot) bool {
	if resp == nil || resp.Body == nil || resp.Body == http.NoBody {
		return false
	}
	var b *body
	if s != nil {
		b = new(body) // alone, so that the collector can tell when it leaks
		watchLeak(b, s, resp.Body)
	} else {
		b = newBody()
	}
	b.rc, b.t, b.e, b.req, b.adm, b.was, b.at, b.slot = resp.Body, t, e, req, adm, o, at, s
	b.okSeq = e.successes.Load()
	b.watch = o != outcomeFailure
	resp.Body = b
	return s != nil
}

// bodyStats is what an entry keeps for its bodies, in its entryStats.
type bodyStats struct {
	errors atomic.Uint64 // bodies that broke: failures after the headers

	// The newest success recorded under the entry's lock (a probe's, or
	// one that ended a failure run), for a body error to take it back.
	// Guarded by entry.mu.
	seq   uint64 // e.successes just after it; 0 once taken back
	st    uint64 // e.st before it
	fails int32  // the failure run it ended
	mark  int64  // that run's last failure
	backs uint8  // the failed probes before it (entryStats.backs), which a probe's success that closes e resets
}

// rememberSuccessLocked notes what the success being recorded under e.mu
// changes, so that bodyFailed can undo it. Called first thing by
// successLocked; callers hold e.mu.
func (e *entry) rememberSuccessLocked() {
	s := e.stats()
	u := &s.body
	u.seq, u.st, u.fails, u.mark, u.backs = e.successes.Load(), e.st.Load(), e.fails.Load(), e.mark.Load(), s.backs
}

// bodyFailed turns the outcome of a request whose body broke into a
// failure, now: the breaker and the rolling window see it, and it reports
// the transition.
func (t *Transport) bodyFailed(b *body, err error) {
	e := b.e
	if e.flags.Load()&flagBodyWatch == 0 {
		e.flags.Or(flagBodyWatch) // watch every body of e from now on
	}
	c := bodyCause(b.req.Context(), err)
	var tr transition
	if e.evicted() {
		// Evicted while its body was read (it was idle): the failure goes
		// to the live entry, as record does.
		ne, adm := t.reattach(e)
		if ne == nil {
			return
		}
		e = ne
		e.stats().body.errors.Add(1)
		tr = e.record(adm, outcomeFailure, false, &t.clock)
	} else {
		tr = e.bodyFailed(b.adm, b.was, b.at, b.okSeq, &t.clock)
	}
	if c.errType == "timeout" {
		e.stats().timeouts.Add(1)
	}
	if tr.changed() {
		t.emitTransition(e, tr, c)
	}
	if t.rolling.Enabled {
		t.rollingFailure(e.host)
	}
}

// bodyCause is the cause of a body's failure: "timeout", or "body:" and
// what broke.
func bodyCause(ctx context.Context, err error) cause {
	switch {
	case isTimeout(ctx, err):
		return cause{errType: "timeout"}
	case errors.Is(err, io.ErrUnexpectedEOF):
		return cause{errType: "body:unexpected-eof"}
	}
	return cause{errType: fmt.Sprintf("body:%T", err)}
}

// bodyFailed records the failure of a request that adm let in, whose
// headers counted as was (in the rate rules' window at at, 0 if not) and
// left e.successes at okSeq, and whose body broke; it returns the
// transition. The outcome counted at the headers is taken back, so the
// request counts once, as a failure:
//   - in closed, the generation it was let in: a failure, as if the body
//     had broken at the headers. A success that ended a failure run, and is
//     still the newest success, gives the run back first, so that a host
//     whose every body breaks trips after fail_max requests. The success
//     the window counted becomes a failure there (not a second outcome).
//   - in half-open, the generation it probed: a failed probe (the success
//     it counted toward success_threshold is taken back), which reopens.
//   - a probe whose success closed the breaker, with no success since:
//     reopened as the failed probe would have, for the open time that
//     failed probes grow (openTimeLocked), and counted as one.
//
// Otherwise the breaker has moved on and only the counters change.
func (e *entry) bodyFailed(adm admission, was outcome, at int64, okSeq uint64, c *clock) transition {
	switch was {
	case outcomeSuccess:
		e.successes.Add(^uint64(0))
	case outcomeNeutral:
		e.neutral.Add(^uint64(0))
	}
	e.failures.Add(1)
	e.note(OutcomeFailure)
	s := e.stats()
	s.body.errors.Add(1)
	e.mu.Lock()
	defer e.mu.Unlock()
	u := &s.body
	last := was == outcomeSuccess && okSeq != 0 && u.seq == okSeq && e.successes.Load()+1 == okSeq
	u.seq = 0
	st := e.st.Load()
	switch {
	case st == adm.st && !adm.probe:
		if last && u.st == st && u.fails > 0 {
			e.restoreRunLocked(u.fails, u.mark)
		}
		if was != outcomeSuccess {
			at = 0 // a neutral outcome is not in the window: the failure is added
		}
		return e.failureLocked(adm, false, at, c)
	case st == adm.st && adm.probe:
		if was == outcomeSuccess {
			s.probesOK.Add(^uint64(0))
		}
		e.probes++ // its success or neutral outcome gave its slot back; failureLocked does again
		return e.failureLocked(adm, false, 0, c)
	case adm.probe && last && u.st == adm.st && st == next(adm.st, phaseClosed):
		s.probesOK.Add(^uint64(0))
		s.probesFail.Add(1)
		s.backs = min(u.backs, 62) + 1 // the failed probes since it last closed, this one too (as failureLocked counts them)
		p := e.pol.Load()
		now := c.now()
		until := c.after(now, e.openTimeLocked(p)+jitter(p.HalfOpenJitter))
		e.tripLocked(until)
		return transition{from: StateClosed, to: StateOpen, until: until, failures: 1, rule: "probe failed"}
	}
	return transition{}
}

// restoreRunLocked gives a closed breaker back the failure run of fails
// failures, the last at mark, that a success taken back had ended, under
// the failures counted since. Callers hold e.mu.
func (e *entry) restoreRunLocked(fails int32, mark int64) {
	p := e.pol.Load()
	n := min(int(fails)+int(e.fails.Load()), p.FailMax-1)
	cb := newBreaker(p)
	for range n {
		cb.RecordFailure()
	}
	e.cb = cb
	e.fails.Store(int32(n))
	if e.mark.Load() == 0 {
		e.mark.Store(mark)
	}
}
