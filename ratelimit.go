package hostbreaker

// This file holds the rate limiter of one host: a pacer (a token bucket
// kept as a theoretical arrival time, GCRA) and, when the host's policy is
// adaptive, the CUBIC rule that learns the host's allowed rate from its
// throttling responses. The design and its sources are in
// docs/ratelimits.md.
//
// A host gets a limiter when its policy sets a rate, or at its first
// throttling response; hostState.lim stays nil otherwise, and a nil check
// is all that an unlimited host costs on the request path. The limiter is
// pure: it takes the time in (ns since the Transport's epoch, see doc.go)
// and returns its rate changes as values, which the Transport reports
// (transport.go); waiting for a turn is the Transport's too.

import (
	"math"
	"sync"
	"time"
)

// The limiter's constants. β and C are those of the AWS SDK for Go v2's
// adaptive retry mode (aws/retry/adaptive_ratelimit.go), as are the 0.5 s
// buckets of the measured send rate and their smoothing.
const (
	cubicBeta  = 0.7 // a throttle multiplies the rate by β
	cubicScale = 0.4 // C: how fast the rate grows back, in (requests/s)/s³

	sendBucket = int64(500 * time.Millisecond) // measured send rate: one bucket
	sendSmooth = 0.8                           // weight of the newest bucket

	acceptWindow = int64(2 * time.Second) // a throttle is anchored on the rate accepted over this window
	acceptSlots  = 8                      // acceptWindow in slots of 250 ms
	acceptSlot   = acceptWindow / acceptSlots

	// reanchorDelay is how long after a throttle, at least, the anchor is
	// computed again: by then the requests that were in flight at the
	// throttle have returned and their successes are counted.
	reanchorDelay = int64(time.Second)

	// limiterIdle is how long a learnt limit lasts without a throttle.
	limiterIdle = int64(15 * time.Minute)
)

// limiter paces the requests of one host and, if adaptive, learns its
// rate. All its fields are guarded by mu; it is used off the healthy path
// only (a host with a limiter is a host that is paced).
type limiter struct {
	mu sync.Mutex

	// The host's policy: the rate-limit fields of its resolved policy.
	ceiling  float64 // the configured rate; 0 for none
	burst    int64
	maxWait  int64 // ns
	minRate  float64
	adaptive bool

	fill     float64 // the rate now, requests per second (> 0)
	interval int64   // ns between two turns at fill (≥ 1)
	tat      int64   // theoretical arrival time: the bucket is full at tat-burst·interval
	held     int64   // the bucket is empty until then (a cooldown's end); 0 for none

	// Learning (adaptive), from the first throttle on.
	learnt     bool
	lastMax    float64 // the rate a throttle was anchored on (CUBIC's Wmax)
	window     float64 // CUBIC's K: s from the throttle until the rate is back at lastMax
	throttleAt int64   // the last throttle: CUBIC's origin, and the end of its episode
	reanchorAt int64   // when to compute the anchor again; 0 for never
	throttleNs int64   // wall clock of the last throttle, unix ns
	lastCode   int     // the last throttling response's status

	// The measured send rate (AWS's measuredTxRate).
	bucket   int64 // start of the current bucket
	sent     float64
	measured float64

	// Successes by the time their requests were sent: a ring of slots of
	// acceptSlot, okAt[i] the slot's start.
	okAt [acceptSlots]int64
	okN  [acceptSlots]float64
}

// rateChange is a change of a limiter's rate, for the rate_change event.
type rateChange struct {
	prev, rate, lastMax float64
	why                 string
	status              int
}

// newLimiter returns a limiter for a host whose policy is p, at time now.
// Without a configured rate it starts at rate, which must be > 0.
func newLimiter(p *resolved, now int64, rate float64) *limiter {
	l := &limiter{bucket: now - now%sendBucket}
	l.configureLocked(p)
	if l.ceiling > 0 {
		rate = l.ceiling
	}
	l.setRateLocked(rate, now)
	return l
}

// configure takes the rate-limit fields of p. Callers hold mu or own l.
func (l *limiter) configureLocked(p *resolved) {
	l.ceiling, l.burst, l.maxWait = p.Rate, int64(max(p.Burst, 1)), int64(p.MaxWait)
	l.minRate, l.adaptive = p.MinRate, p.Adaptive == ToggleOn
	if l.minRate <= 0 {
		l.minRate = defaultMinRate
	}
}

// reconfigure applies a policy change at now, and reports the rate change
// it made, if any.
func (l *limiter) reconfigure(p *resolved, now int64) (rateChange, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	prev := l.fill
	l.configureLocked(p)
	switch {
	case !l.adaptive || !l.learnt:
		l.learnt = false
		if l.ceiling > 0 {
			l.setRateLocked(l.ceiling, now)
		}
	default:
		l.setRateLocked(l.fill, now) // within the new floor and ceiling
	}
	return rateChange{prev: prev, rate: l.fill, lastMax: l.lastMax, why: "configured"}, l.fill != prev
}

// setRate sets the rate to r, within the floor and the ceiling, and keeps
// the queue of turns already given in order: the backlog is rescaled to
// the new interval.
func (l *limiter) setRateLocked(r float64, now int64) {
	if l.ceiling > 0 {
		r = min(r, l.ceiling)
	}
	r = min(max(r, l.minRate), maxRate)
	if r == l.fill {
		return
	}
	iv := max(int64(1e9/r), 1)
	if l.tat > now && l.interval > 0 {
		l.tat = now + int64(float64(l.tat-now)*float64(iv)/float64(l.interval))
	}
	l.fill, l.interval = r, iv
}

// turn is a request's turn at a limiter, as a rate.Reservation: the
// limiter that gave it and when the request may go. The request finishes
// it or gives it back at that limiter, whatever happened to the host's
// limiter meanwhile. The zero turn is none.
type turn struct {
	lim *limiter
	at  int64 // when the request may go, ns since the epoch
}

// reserve gives the request at now its turn: the earliest time at which
// the bucket holds a token. It takes the turn and returns it when it is
// at most maxWait away and not after deadline (0 for none); otherwise it
// takes nothing and returns the turn with false. A reanchoring that was
// due comes first; its change is returned.
func (l *limiter) reserve(now, deadline int64) (tn turn, ok bool, ch rateChange, changed bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	ch, changed = l.reanchorLocked(now)
	tat := max(l.tat, now) + l.interval
	if l.held != 0 {
		tat = max(tat, l.held+l.burst*l.interval) // one token at held, then one per interval
	}
	tn = turn{lim: l, at: max(now, tat-l.burst*l.interval)}
	limit := now + l.maxWait
	if deadline > 0 {
		limit = min(limit, deadline)
	}
	if tn.at > limit {
		return tn, false, ch, changed
	}
	l.tat = tat
	l.countSendLocked(tn.at)
	return tn, true, ch, changed
}

// cancel gives back a turn that reserve gave and that will not be used:
// exactly the room it holds in the limiter's backlog, which is one
// interval at the rate now, since a rate change rescales the backlog with
// the turn in it (setRateLocked). The turns after it keep their times, and
// the next turn is where it would be had this one never been reserved.
func (tn turn) cancel() {
	l := tn.lim
	l.mu.Lock()
	l.tat -= l.interval
	l.sent = max(l.sent-1, 0)
	l.mu.Unlock()
}

// hold keeps the bucket empty until until: the requests that wait for a
// cooldown to end are then released one at a time at the limiter's rate,
// not all at once. With replace (a manual cooldown, or a reset: until is
// now) it drops a longer hold.
func (l *limiter) hold(until int64, replace bool) {
	l.mu.Lock()
	if replace {
		l.held = until
		l.tat = min(l.tat, until)
	} else {
		l.held = max(l.held, until)
	}
	l.mu.Unlock()
}

// seed counts n successes of requests sent just before at, before the
// limiter existed.
func (l *limiter) seed(n float64, at int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.addSuccessLocked(at - 1)
	l.okN[((at-1)/acceptSlot)%acceptSlots] += n - 1
}

// countSend counts a request sent at t in the measured send rate.
func (l *limiter) countSendLocked(t int64) {
	if b := t - t%sendBucket; b > l.bucket {
		cur := l.sent / (float64(b-l.bucket) / 1e9)
		l.measured = cur*sendSmooth + l.measured*(1-sendSmooth)
		l.sent, l.bucket = 0, b
	}
	l.sent++
}

// addSuccess counts a success of a request sent at t.
func (l *limiter) addSuccessLocked(t int64) {
	slot := t - t%acceptSlot
	i := (t / acceptSlot) % acceptSlots
	if l.okAt[i] != slot {
		if l.okAt[i] > slot {
			return // older than the ring
		}
		l.okAt[i], l.okN[i] = slot, 0
	}
	l.okN[i]++
}

// accepted returns the rate at which the host served requests sent in the
// window that ends at t, in requests per second.
func (l *limiter) acceptedLocked(t int64) float64 {
	var n float64
	for i, at := range l.okAt {
		if at >= t-acceptWindow && at < t {
			n += l.okN[i]
		}
	}
	return n / (float64(acceptWindow) / 1e9)
}

// success counts a success of a request sent at sent (0: before the
// limiter existed) and, when learning, lets the rate grow back along the
// CUBIC curve: C·(t−K)³ + lastMax, t in s since the throttle. As in the
// AWS SDK the curve may not lead the rate more than twice above the
// measured send rate, but only while no request queues for a turn (a queue
// says the client wants more than the rate), and that cap never lowers the
// rate, so that a cooldown (in which nothing is sent) does not collapse
// the learnt rate.
func (l *limiter) success(sent, now int64) (rateChange, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if sent == 0 {
		sent = max(l.throttleAt-1, 1) // before the limiter: in the first throttle's window
	}
	l.addSuccessLocked(sent)
	if !l.learnt {
		return rateChange{}, false
	}
	if ch, ok := l.reanchorLocked(now); ok {
		return ch, true
	}
	r := l.cubicLocked(now)
	if l.tat <= now {
		r = min(r, max(l.fill, 2*l.measured)) // no queue: the client may not need more
	}
	l.setRateLocked(r, now)
	return rateChange{}, false
}

// cubic returns the CUBIC rate at now.
func (l *limiter) cubicLocked(now int64) float64 {
	t := float64(now-l.throttleAt) / 1e9
	return cubicScale*math.Pow(t-l.window, 3) + l.lastMax
}

// throttle applies a throttling response (status) to a request sent at
// sent (0: before the limiter existed), received at now; cooldown is the
// host's cooldown deadline (0 for none) and wall the wall clock. A
// throttle of a request sent before the last one is part of its episode
// and changes nothing. Otherwise the rate is anchored on what the host
// accepted over the last 2 s (by send time; the rate now when it served
// nothing), lowered by β, and the queue is held until the cooldown ends.
// A request sent at the very instant of the last throttle was not paced
// by it: it belongs to that episode too.
func (l *limiter) throttle(sent, now, cooldown, wall int64, status int) (rateChange, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.adaptive {
		return rateChange{}, false
	}
	if l.learnt && sent <= l.throttleAt { // 0: sent before the limiter existed
		return rateChange{}, false
	}
	prev := l.fill
	anchor := l.acceptedLocked(now)
	if anchor <= 0 || anchor > l.fill {
		anchor = l.fill
	}
	l.learnt = true
	l.lastCode = status
	l.throttleAt, l.throttleNs = now, wall
	l.reanchorAt = max(cooldown, now+reanchorDelay)
	l.anchorLocked(anchor)
	l.setRateLocked(cubicBeta*l.lastMax, now)
	if cooldown > now {
		l.held = max(l.held, cooldown)
	}
	return rateChange{prev: prev, rate: l.fill, lastMax: l.lastMax, why: "throttled", status: status}, true
}

// anchor sets lastMax, within the floor and the ceiling, and the CUBIC
// window K = ∛(lastMax·(1−β)/C) that goes with it.
func (l *limiter) anchorLocked(r float64) {
	if l.ceiling > 0 {
		r = min(r, l.ceiling)
	}
	l.lastMax = max(r, l.minRate)
	l.window = math.Cbrt(l.lastMax * (1 - cubicBeta) / cubicScale)
}

// reanchor anchors the last throttle again, once its reanchor time has
// come: on the rate the host accepted in the 2 s before it, counting the
// requests that were still in flight then. Callers hold mu.
func (l *limiter) reanchorLocked(now int64) (rateChange, bool) {
	if l.reanchorAt == 0 || now < l.reanchorAt {
		return rateChange{}, false
	}
	l.reanchorAt = 0
	acc := l.acceptedLocked(l.throttleAt)
	if acc <= 0 {
		return rateChange{}, false
	}
	prev, prevMax := l.fill, l.lastMax
	l.anchorLocked(acc)
	if l.lastMax == prevMax {
		return rateChange{}, false
	}
	l.setRateLocked(l.cubicLocked(now), now)
	return rateChange{prev: prev, rate: l.fill, lastMax: l.lastMax, why: "reanchored", status: l.lastCode}, true
}

// adopt takes a rate that the fleet learnt (see Transport.adoptFleetRates),
// at the top of the CUBIC curve, as if this process had been throttled at
// that rate at wall time wall. It reports the change.
func (l *limiter) adopt(rate float64, now, wall int64) (rateChange, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.adaptive || wall <= l.throttleNs {
		return rateChange{}, false
	}
	prev := l.fill
	l.learnt = true
	l.throttleNs = wall
	l.anchorLocked(rate)
	l.throttleAt = now - int64(l.window*1e9) // at the plateau: the rate is lastMax
	l.reanchorAt = 0
	l.setRateLocked(l.lastMax, now)
	return rateChange{prev: prev, rate: l.fill, lastMax: l.lastMax, why: "fleet"}, l.fill != prev
}

// expire forgets a limit learnt more than limiterIdle ago. It reports
// whether the limiter is no longer needed (no configured rate), and the
// change it made to a configured one.
func (l *limiter) expire(now int64) (drop bool, ch rateChange, changed bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.learnt || now-l.throttleAt < limiterIdle {
		return !l.learnt && l.ceiling == 0, rateChange{}, false
	}
	prev := l.fill
	l.learnt, l.reanchorAt = false, 0
	if l.ceiling == 0 {
		return true, rateChange{prev: prev, why: "expired"}, true
	}
	l.setRateLocked(l.ceiling, now)
	return false, rateChange{prev: prev, rate: l.fill, why: "expired"}, l.fill != prev
}

// learning reports whether the limiter has learnt a rate from throttles
// (and not only paces at a configured one).
func (l *limiter) learning() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.learnt
}

// limitStatus is what Status and the store show of a limiter.
type limitStatus struct {
	rate, lastMax float64
	throttled     int64 // wall unix ns of the last throttle; 0 if it never learnt
}

func (l *limiter) status() limitStatus {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := limitStatus{rate: l.fill}
	if l.learnt {
		s.lastMax, s.throttled = l.lastMax, l.throttleNs
	}
	return s
}

// The limiter's life on a host. Each function below changes hostState.lim
// and returns the rate change it made, for the Transport to report.

// startLimiter gives h a limiter, if it has none, when its policy p sets a
// rate or when the processes sharing the store learnt one for it (fr, when
// fleet). Hosts that never throttled and have no configured rate keep
// none. It reports the change, if it started one.
func (h *hostState) startLimiter(p *resolved, fr fleetRate, fleet bool, now int64) (rateChange, bool) {
	if h.lim.Load() != nil {
		return rateChange{}, false
	}
	fleet = fleet && p.Adaptive == ToggleOn
	if p.Rate <= 0 && !fleet {
		return rateChange{}, false
	}
	l := newLimiter(p, now, max(fr.rate, p.MinRate))
	ch := rateChange{rate: l.fill, why: "configured"}
	if fleet {
		ch, _ = l.adopt(fr.rate, now, fr.throttled)
		ch.prev = 0
	}
	return ch, h.lim.CompareAndSwap(nil, l)
}

// syncLimiter applies h's policy p to its limiter after a policy change: it
// starts one for a rate that is now configured (see startLimiter), and
// drops one that has nothing left to do (no configured rate, and nothing
// learnt or learning turned off).
func (h *hostState) syncLimiter(p *resolved, fr fleetRate, fleet bool, now int64) (rateChange, bool) {
	lim := h.lim.Load()
	if lim == nil {
		return h.startLimiter(p, fr, fleet, now)
	}
	ch, changed := lim.reconfigure(p, now)
	if st := lim.status(); p.Rate <= 0 && st.throttled == 0 {
		h.lim.Store(nil)
		return rateChange{prev: ch.prev, why: "configured"}, true
	}
	return ch, changed
}

// learnLimiter returns h's limiter, giving h one at its first throttle,
// seeded with an estimate of the successes of the last 2 s: the successes
// of its entries, spread evenly over the host's life when it is older than
// that.
func (h *hostState) learnLimiter(p *resolved, now int64) *limiter {
	if lim := h.lim.Load(); lim != nil {
		return lim
	}
	var n float64
	h.each(func(e *entry) { n += float64(e.successes.Load()) })
	if age := now - h.born; age > acceptWindow {
		n *= float64(acceptWindow) / float64(age)
	}
	l := newLimiter(p, now, max(n/(float64(acceptWindow)/1e9), p.MinRate))
	l.seed(n, now)
	if !h.lim.CompareAndSwap(nil, l) {
		return h.lim.Load()
	}
	return l
}

// expireLimiter forgets h's limit if it was learnt more than limiterIdle
// ago, and drops the limiter if it has nothing left to do.
func (h *hostState) expireLimiter(now int64) (rateChange, bool) {
	lim := h.lim.Load()
	if lim == nil {
		return rateChange{}, false
	}
	drop, ch, changed := lim.expire(now)
	if drop {
		h.lim.CompareAndSwap(lim, nil)
	}
	return ch, changed
}

// limiterOf returns the limiter that an outcome of a request admitted with
// adm is recorded at: the one that gave its turn, else h's (a request sent
// before h had a limiter).
func (adm admission) limiterOf(h *hostState) *limiter {
	if adm.turn.lim != nil {
		return adm.turn.lim
	}
	return h.lim.Load()
}
