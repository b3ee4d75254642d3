package hostbreaker

// This file holds a host's concurrency limit (max_concurrent, a bulkhead):
// the slots its requests hold from before their limiter turn until their
// response body is closed or read to the end, and the FIFO queue of
// requests waiting for one. The body that gives a slot back is in body.go,
// the limiter's turns in ratelimit.go; RoundTrip (transport.go) takes a
// slot first, then a turn, then its admission.

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
)

// bulkhead is the concurrency limit of one host, shared by its roles. A
// host has one only once its policy sets MaxConcurrent: for every other
// host, hostState.bulk stays nil and a request pays a look at its policy.
//
// Slots are handed out in FIFO order: a request takes a free slot only
// when nobody waits, and a slot given back goes to the first waiter.
type bulkhead struct {
	limit atomic.Int64   // MaxConcurrent; 0: no limit (a policy that dropped it)
	held  atomic.Int64   // slots held; written under mu, read by telemetry without it
	wait  atomic.Int64   // requests waiting; written under mu
	leaks *atomic.Uint64 // the Transport's count of slots given back by the garbage collector: bodies never closed

	mu      sync.Mutex
	queue   slotList // the waiters, oldest first; guarded by mu
	holders slotList // the holders, oldest first; guarded by mu
}

// slotList is a list of slots linked by their prev and next, first the
// oldest. A slot is in one list at a time.
type slotList struct{ first, last *slot }

// push appends s.
func (l *slotList) push(s *slot) {
	s.prev, s.next = l.last, nil
	if l.last != nil {
		l.last.next = s
	} else {
		l.first = s
	}
	l.last = s
}

// remove takes s out of the list.
func (l *slotList) remove(s *slot) {
	if s.prev != nil {
		s.prev.next = s.next
	} else {
		l.first = s.next
	}
	if s.next != nil {
		s.next.prev = s.prev
	} else {
		l.last = s.prev
	}
	s.prev, s.next = nil, nil
}

// slot is a request's place at a bulkhead: first in its queue while it
// waits, then among its holders until it is given back. Its links are
// guarded by b.mu.
type slot struct {
	b          *bulkhead
	since      int64 // when it was taken, ns since the Transport's epoch
	prev, next *slot
	ready      chan struct{} // closed when a waiter is given the slot; nil unless it waited
	state      slotState     // guarded by b.mu
	handed     bool          // its response's body gives it back; set by RoundTrip's goroutine
}

type slotState uint8

const (
	slotWaiting slotState = iota
	slotHeld
	slotReleased
)

func newBulkhead(n int, leaks *atomic.Uint64) *bulkhead {
	b := &bulkhead{leaks: leaks}
	b.limit.Store(int64(n))
	return b
}

// bulkheadFor returns h's bulkhead with room for n requests, creating it
// on the host's first limited request (counting leaks in leaks) and
// resizing it when a policy change gave it another size.
func (h *hostState) bulkheadFor(n int, leaks *atomic.Uint64) *bulkhead {
	b := h.bulk.Load()
	if b == nil {
		if h.bulk.CompareAndSwap(nil, newBulkhead(n, leaks)) {
			return h.bulk.Load()
		}
		b = h.bulk.Load()
	}
	if b.limit.Load() != int64(n) {
		b.resize(n)
	}
	return b
}

// syncBulkhead applies h's policy p to its bulkhead after a policy change:
// a larger limit, or none, lets waiters in at once. Callers hold
// registry.mu.
func (h *hostState) syncBulkhead(p *resolved) {
	if b := h.bulk.Load(); b != nil {
		b.resize(p.MaxConcurrent)
	}
}

// busy reports whether h has requests holding or waiting for a slot: such
// a host is not idle, whatever its breakers say.
func (h *hostState) busy() bool {
	b := h.bulk.Load()
	return b != nil && (b.held.Load() > 0 || b.wait.Load() > 0)
}

// resize sets the limit to n (0: none) and hands the slots it frees to
// the waiters.
func (b *bulkhead) resize(n int) {
	b.mu.Lock()
	b.limit.Store(int64(n))
	b.grantLocked()
	b.mu.Unlock()
}

// freeLocked reports whether a slot is free. Callers hold b.mu.
func (b *bulkhead) freeLocked() bool {
	n := b.limit.Load()
	return n <= 0 || b.held.Load() < n
}

// grantLocked hands free slots to the waiters, oldest first. Callers hold
// b.mu.
func (b *bulkhead) grantLocked() {
	for b.queue.first != nil && b.freeLocked() {
		w := b.queue.first
		b.unqueueLocked(w)
		w.since = b.newestSince() // its own time is set when it wakes; meanwhile the newest's
		b.holdLocked(w)
		close(w.ready)
	}
}

// holdLocked makes s a holder. Callers hold b.mu.
func (b *bulkhead) holdLocked(s *slot) {
	s.state = slotHeld
	b.holders.push(s)
	b.held.Add(1)
}

// newestSince returns when the newest holder took its slot, or 0. Callers
// hold b.mu.
func (b *bulkhead) newestSince() int64 {
	if b.holders.last == nil {
		return 0
	}
	return b.holders.last.since
}

// unqueueLocked removes the waiter s from the queue. Callers hold b.mu.
func (b *bulkhead) unqueueLocked(s *slot) {
	b.queue.remove(s)
	b.wait.Add(-1)
}

// tryTake takes a free slot for s when nobody waits, and reports whether
// it did.
func (b *bulkhead) tryTake(s *slot, now int64) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.queue.first != nil || !b.freeLocked() {
		return false
	}
	s.since = now
	b.holdLocked(s)
	return true
}

// errNoSlot is what waitFor returns when the wait ran out before a slot
// was free.
var errNoSlot = errors.New("no free slot")

// waitFor queues s and waits for a slot for at most d, until done is
// closed, or until it is given one. It returns nil with the slot held,
// errNoSlot when d ran out, or the context's error. A slot handed over just
// as the wait ended is kept.
func (b *bulkhead) waitFor(s *slot, d time.Duration, done <-chan struct{}, ctxErr func() error, c *clock) error {
	b.mu.Lock()
	if b.queue.first == nil && b.freeLocked() { // freed meanwhile
		s.since = c.now()
		b.holdLocked(s)
		b.mu.Unlock()
		return nil
	}
	s.ready = make(chan struct{})
	b.queue.push(s)
	b.wait.Add(1)
	b.mu.Unlock()

	timer := time.NewTimer(d)
	defer timer.Stop()
	var err error
	select {
	case <-s.ready:
	case <-timer.C:
		err = errNoSlot
	case <-done:
		err = ctxErr()
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	switch {
	case err == nil: // given a slot
	case s.state == slotHeld && err == errNoSlot:
		err = nil // given one as the wait ran out: use it
	case s.state == slotHeld:
		b.releaseLocked(s) // the caller is gone: the slot goes to the next waiter
	default:
		b.unqueueLocked(s)
		s.state = slotReleased
	}
	if s.state == slotHeld {
		s.since = c.now()
	}
	return err
}

// release gives s back: to the first waiter, if any. It reports whether s
// was held (a slot is given back once). s may be nil.
func (s *slot) release() bool {
	if s == nil {
		return false
	}
	b := s.b
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.releaseLocked(s)
}

// releaseLocked gives s back. Callers hold b.mu.
func (b *bulkhead) releaseLocked(s *slot) bool {
	if s.state != slotHeld {
		return false
	}
	s.state = slotReleased
	b.holders.remove(s)
	b.held.Add(-1)
	b.grantLocked()
	return true
}

// leak is what a leaked body leaves to clean up: its slot, and the base's
// body, which holds a connection.
type leak struct {
	s  *slot
	rc io.Closer
}

// leaked gives back the slot of a body that was garbage-collected without
// being closed or read to its end, counts it, and closes the base's body.
// It runs on the runtime's cleanup goroutine.
func leaked(l leak) {
	if l.s.release() {
		l.s.b.leaks.Add(1)
		l.rc.Close()
	}
}

// watchLeak arranges for s to be given back, and counted as leaked, if
// body becomes unreachable while it holds s; rc is the base's body.
func watchLeak(body *body, s *slot, rc io.Closer) {
	runtime.AddCleanup(body, leaked, leak{s, rc})
}

// oldestSince returns when the oldest slot still held was taken, ns since
// the epoch, or 0 when none is held.
func (b *bulkhead) oldestSince() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.holders.first == nil {
		return 0
	}
	return b.holders.first.since
}

// takeSlot takes a slot for req at the host's concurrency limit of n
// requests: at once if one is free and nobody waits, else after the
// requests queued before it, within the policy's MaxWait and half the time
// left before the request's deadline (as a limiter turn, see wait). A
// request that gets none in time is rejected with ReasonConcurrencyLimited;
// one whose context ends while it waits leaves the queue with the
// context's error. A request that the host's cooldown or an open breaker
// would reject anyway does not queue: it gets that rejection at once.
//
// On a host in shadow mode nothing is rejected here: a request that would
// be rejected for want of a slot is counted as would_reject
// (concurrency-limited) and sent without one (a nil slot), as a request
// the limiter would reject (wait); one that the cooldown or an open
// breaker would reject is sent without a slot, without queueing, and admit
// counts its would_reject. Only a context that ends while the request
// waits still returns an error.
func (t *Transport) takeSlot(req *http.Request, e *entry, p *resolved) (*slot, error) {
	b := e.host.bulkheadFor(p.MaxConcurrent, &t.leakedSlots)
	now := t.now()
	s := &slot{b: b}
	if b.tryTake(s, now) {
		return s, nil
	}
	if rej := t.refusal(e, now); rej != nil {
		if p.shadow {
			return nil, nil // admit counts it as would_reject
		}
		e.reject(rej.Reason)
		return nil, rej
	}
	ctx := req.Context()
	d := p.MaxWait
	if dl, ok := ctx.Deadline(); ok {
		d = min(d, time.Until(dl)/2)
	}
	if d <= 0 {
		return nil, t.concurrencyLimited(e, p)
	}
	switch err := b.waitFor(s, d, ctx.Done(), ctx.Err, &t.clock); {
	case err == errNoSlot:
		return nil, t.concurrencyLimited(e, p)
	case err != nil:
		return nil, fmt.Errorf("hostbreaker: %s: waiting for a free slot: %w", e.host.name, err)
	}
	return s, nil
}

// concurrencyLimited counts and returns the rejection of a request that
// found no free slot in time. Its Until is zero: the requests in flight
// decide when a slot frees. Under p in shadow mode it counts a
// would_reject and returns nil: the request is sent without a slot.
func (t *Transport) concurrencyLimited(e *entry, p *resolved) error {
	if p.shadow {
		e.wouldReject(ReasonConcurrencyLimited)
		return nil
	}
	e.reject(ReasonConcurrencyLimited)
	return &OpenError{Host: e.host.name, Role: e.role, Reason: ReasonConcurrencyLimited}
}

// refusal returns the rejection that the host's cooldown or e's open
// breaker would give a request now, without changing anything; nil when
// neither would reject it.
func (t *Transport) refusal(e *entry, now int64) *OpenError {
	if e.host.coolingDown(now) {
		if rej := e.host.rejection(e.role, &t.clock, now); rej != nil {
			return rej
		}
	}
	if st, until := e.status(now); st == StateOpen {
		return &OpenError{Host: e.host.name, Role: e.role, Reason: ReasonBreakerOpen, Until: t.at(until)}
	}
	return nil
}
