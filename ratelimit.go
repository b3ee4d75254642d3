package hostbreaker

// This file holds the rate limiter of one host: a pacer (a token bucket
// kept as a theoretical arrival time, GCRA) and, when the host's policy is
// adaptive, the CUBIC rule that learns the host's allowed rate from its
// throttling responses. The design and its sources are in
// docs/ratelimits.md.
//
// A host gets a limiter when its policy sets a rate, or at its first
// throttling response; hostState.lim stays nil otherwise, and a nil check
// is all that an unlimited host costs on the request path. The limiter
// takes the time in (ns since the Transport's epoch, see doc.go) and
// returns its rate changes as values, which the Transport reports
// (transport.go); a request waits for its turn here (acquire), as with
// rate.Limiter.Wait.

import (
	"context"
	"errors"
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
	acceptSlot   = acceptWindow / 8       // the window in slots of 250 ms
	// acceptSlots is the ring of slots: twice the window, so that the
	// successes of the second after a throttle, counted before its
	// reanchoring, do not overwrite the window before it.
	acceptSlots = 16

	// Past the last max the rate grows by probeRate per second, compounded,
	// instead of along CUBIC's convex side, whose overshoot a sliding
	// window punishes. Once the host's limit is known (two throttles in a
	// row anchored within knownSpread of each other), the limiter holds
	// it: a throttle lowers the rate by knownBeta only, the rate stays at
	// the last max for knownHold, then probes past it by knownProbe per
	// second, gently and rarely, up to knownStep times the last max; a
	// step held for stepHold while the host served more than the last max
	// becomes the last max, and the probe goes on to the next step at once
	// (a limit lowered by a storm of the host's own timing noise climbs
	// back by a step every 7 s). A
	// probe without that cap against a host with a burst (nginx
	// burst=5 nodelay) ran up to 1.3× the limit before the burst ran out.
	probeRate = 0.2
	// countingProbe is probeRate for a host that counts the requests it
	// refuses (a sliding window): refused right after slowing down (see
	// throttle). Its first refusal comes back a second or so after the
	// rate passed its limit, and a probe by probeRate had gone 1.3× past
	// it by then.
	countingProbe = 0.1
	knownSpread   = 0.2
	knownBeta     = 0.85
	knownHold     = 10.0 // s at the last max before probing past it
	knownMargin   = 0.97 // a probe refused at r anchors the known limit at knownMargin·r
	knownProbe    = 0.05
	knownStep     = 1.1
	stepHold      = 5.0 // s
	// memberStepHold is stepHold for a fleet's member whose limit is not
	// known (a bracket, such as the fleet's start teaches, or one
	// refusal's count): one window of the count of what the host served,
	// which the fleet adds up (see stepServedLocked). A fleet at its
	// start's fact of 4.5 r/s, a host's 5 less a tenth, climbed a step in
	// 7 s with stepHold and spent most of the benchmark's 30 s under it.
	memberStepHold = 2.0 // s
	// bracketProbe and bracketStepHold are knownProbe and memberStepHold
	// for a fleet's member whose limit is the bracket of the fleet's
	// start: the rate the start had reached two doublings before its
	// first refusal, which the host served, and so under its limit. At
	// knownProbe, steps held memberStepHold, 24 processes climbed from a
	// bracket of about 4 r/s to nginx's 5 in 10–13 s (94.3 % served).
	bracketProbe    = 0.1
	bracketStepHold = 1.0  // s
	knownNoise      = 0.95 // a throttle at the known limit when the host served this share of the last 2 s is noise

	// costlyMargin is how far under what the host served a costly throttle
	// (one with a cooldown, which costs the host's whole pause) anchors:
	// what a host served over a second or two, counted in slots of 250 ms,
	// varies by a request or so either way.
	costlyMargin = 0.95

	// slowStartDoubling is how fast the rate grows after a limiter's first
	// throttle, which tells little of the host's limit (it came before the
	// limiter paced anything): it doubles every slowStartDoubling until the
	// next throttle, as TCP's slow start does, where CUBIC would need
	// seconds to climb from the floor to a limit of tens of requests a
	// second. When that throttle came with a cooldown, the overshoot that
	// ends slow start will cost a cooldown too, and a sliding window keeps
	// counting it after: the rate doubles every costlyDoubling.
	slowStartDoubling = 0.25 // s
	costlyDoubling    = 0.5  // s

	// costlyPlateau is how long the rate holds at the end of a slow start
	// that a cooldown ended before it probes past it: the end of slow start
	// anchors on what the host served, and a probe refused costs a cooldown.
	costlyPlateau = 3.0 // s

	// knownSamples is how many successes an estimate of the host's limit
	// needs to count for a known limit.
	knownSamples = 4

	// settleDelay is how long after a throttle a throttle of a request sent
	// at the lowered rate is taken for the host still counting the refused
	// ones (a sliding window), not for a rate still too high.
	settleDelay = int64(time.Second)

	// reanchorDelay is how long after a throttle, at least, the anchor is
	// computed again: by then the requests that were in flight at the
	// throttle have returned and their successes are counted.
	reanchorDelay = int64(time.Second)

	// respaceGrowth is how far a learning limiter's rate grows back before
	// the turns it gave at the lower rate are spaced again.
	respaceGrowth = 1.05

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
	known      bool    // the last two throttles agreed on the limit: hold it
	member     bool    // it paces a share of a fleet's learnt limit among other processes: it probes past it gently
	bracket    bool    // a member's limit is the bracket of the fleet's start: it probes past it sooner (stepProbeLocked)
	steps      int     // the steps past the last max taken since it was last anchored (see growLocked)
	fleetAvg   float64 // what the host served the fleet's processes, per process, as of the last poll; 0: unknown
	informed   bool    // the last anchor counted knownSamples successes
	pauses     uint    // pauses since the last throttle (see settleDelay)
	counting   bool    // the host counts the requests it refuses (a sliding window): see throttle
	slowStart  bool    // after the first throttle, until the next one
	slowN      int     // the processes of a fleet the slow start is divided among (see fleetSlowStart); 0 for 1
	slowHold   bool    // in slow start, holding the rate while another process of the fleet probes
	doubling   float64 // s: slow start doubles the rate every doubling
	plateau    float64 // s at the last max before probing past it, when not known
	window     float64 // CUBIC's K: s from the throttle until the rate is back at lastMax
	throttleAt int64   // the last throttle: the end of its episode
	curveAt    int64   // CUBIC's origin: the last throttle, or earlier to start on the plateau
	reanchorAt int64   // when to compute the anchor again; 0 for never
	throttleNs int64   // wall clock of the last throttle, unix ns
	lastCode   int     // the last throttling response's status

	// The measured send rate (AWS's measuredTxRate).
	bucket   int64 // start of the current bucket
	sent     float64
	measured float64

	// Successes and throttles by the time their requests were sent: a ring
	// of slots of acceptSlot, okAt[i] the slot's start.
	okAt [acceptSlots]int64
	okN  [acceptSlots]float64
	thrN [acceptSlots]float64
	last int64 // the latest turn handed out; 0 for none
	prev int64 // the turn handed out before last; 0 for none or unknown

	// Respacing: the turns of an older generation are void.
	gen      uint64
	respace  chan struct{} // closed at the next respacing; nil until a turn is given
	spacedAt float64       // the rate at the last respacing
	taken    int64         // when the latest request that took its turn went
	fillT    float64       // the rate when the last throttle came: what the host refused
	resumeAt int64         // the end of the last throttle's cooldown; 0 for none

	// A fleet member's turns (see sharing.go, setPhase): with a bucket of
	// 1, they fall at its phase, in [0, 1), of each interval counted on
	// the wall clock (wallOff: the wall clock's unix ns minus this
	// clock's), so that the fleet's processes, which adopt one throttle,
	// see one cooldown end and grow along one curve, take their turns
	// spread over the interval instead of in step. phase 0: alone.
	phase   float64
	wallOff int64
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

// configureLocked takes the rate-limit fields of p. Callers hold mu or own
// l.
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

// setRateLocked sets the rate to r, within the floor and the ceiling. The
// backlog past the last turn handed out is rescaled to the new interval;
// the turns handed out keep their times, and the next one the new spacing
// after them (a rescaled backlog once put turns 4–12 ms apart where the
// interval was 20 ms).
func (l *limiter) setRateLocked(r float64, now int64) {
	if l.ceiling > 0 {
		r = min(r, l.ceiling)
	}
	r = min(max(r, l.minRate), maxRate)
	if r == l.fill {
		return
	}
	iv := max(int64(1e9/r), 1)
	if base := max(now, l.last); l.tat > base && l.interval > 0 {
		l.tat = base + int64(float64(l.tat-base)*float64(iv)/float64(l.interval))
	}
	l.fill, l.interval = r, iv
}

// turn is a request's turn at a limiter, as a rate.Reservation: the
// limiter that gave it, when the request may go, and the spacing it was
// given under. The request finishes it or gives it back at that limiter,
// whatever happened to the host's limiter meanwhile. The zero turn is
// none.
type turn struct {
	lim    *limiter
	at     int64  // when the request may go, ns since the epoch
	gen    uint64 // the limiter's spacing generation when it was given
	shared bool   // a turn of the fleet's shared bucket (Transport.sharedTurn): not the limiter's to give back
}

// reserve gives the request its turn: the earliest time at which the
// bucket holds a token. now is the time of this call; since is when the
// request first asked (it asks again after a respacing), from which it
// waits at most maxWait, and not after deadline (0 for none). It takes the
// turn and returns it when it is within those; otherwise it takes nothing
// and returns the turn with false. With the turn come the channel that a
// respacing of its generation closes, and when to check the limiter's rate
// again while waiting (refresh; 0 for never).
//
// A learning limiter first moves its rate along the CUBIC curve to now,
// and paces with a bucket of 1 whatever the configured burst: a limiter
// that has been throttled knows bursts are unwelcome. A reanchoring that
// was due comes first; its change is returned.
func (l *limiter) reserve(since, now, deadline int64) (tn turn, respace <-chan struct{}, recheck int64, ok bool, ch rateChange, changed bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	ch, changed = l.reanchorLocked(now)
	if l.learnt && !changed {
		l.growLocked(now)
	}
	burst := l.burstLocked()
	tat := max(l.tat, now) + l.interval
	if l.held != 0 {
		tat = max(tat, l.held+burst*l.interval) // one token at held, then one per interval
	}
	if l.respace == nil {
		l.respace = make(chan struct{})
	}
	tn = turn{lim: l, at: max(now, tat-burst*l.interval), gen: l.gen}
	if at := l.phasedLocked(tn.at); at != tn.at { // a fleet member's phase (bucket of 1)
		tat += at - tn.at
		tn.at = at
	}
	limit := since + l.maxWait
	if deadline > 0 {
		limit = min(limit, deadline)
	}
	if tn.at > limit {
		return tn, nil, 0, false, ch, changed
	}
	l.tat = tat
	l.prev, l.last = l.last, max(l.last, tn.at)
	return tn, l.respace, l.recheckLocked(now), true, ch, changed
}

// pace moves a learning limiter's rate along its curve to now, as a
// reservation does, for a request that takes its turn at the bucket the
// processes of a fleet share (see Transport.sharedTurn); it returns the
// rate, the longest wait for a turn, and the change a reanchoring made.
func (l *limiter) pace(now int64) (rate float64, maxWait int64, ch rateChange, changed bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	ch, changed = l.reanchorLocked(now)
	if l.learnt && !changed {
		l.growLocked(now)
	}
	return l.fill, l.maxWait, ch, changed
}

// takeShared counts a request that goes at now on a turn of a fleet's
// shared bucket as sent.
func (l *limiter) takeShared(now int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.taken = max(l.taken, now)
	l.prev, l.last = l.last, max(l.last, now)
	l.tat = max(l.tat, now+l.interval)
	l.countSendLocked(now)
}

// errTurnTooFar is acquire's error for a turn beyond the request's wait.
var errTurnTooFar = errors.New("turn too far")

// acquire reserves a turn for a request at now and waits for it: it
// returns the turn taken; or, with errTurnTooFar, the turn it would get
// when that is more than maxWait from now or after deadline (0 for none);
// or ctx's cause when ctx ends first, the turn given back. A respacing
// while it waits voids its turn, and it reserves again (at most maxWait
// from now, still). It also returns the last rate change its reservations
// made, for the caller to report.
func (l *limiter) acquire(ctx context.Context, c *clock, now, deadline int64) (tn turn, ch rateChange, changed bool, err error) {
	for since := now; ; now = c.now() {
		var ok, chd bool
		var rc rateChange
		var respace <-chan struct{}
		var recheck int64
		tn, respace, recheck, ok, rc, chd = l.reserve(since, now, deadline)
		if chd {
			ch, changed = rc, true
		}
		if !ok {
			return tn, ch, changed, errTurnTooFar
		}
		if tn.at <= now {
			later, took := tn.take(now)
			if took {
				tn.at = now
				return tn, ch, changed, nil
			}
			if later == 0 {
				continue
			}
		}
		if tn.wait(ctx, now, c, respace, recheck) {
			return tn, ch, changed, nil
		}
		if ctx.Err() != nil {
			tn.cancel()
			return turn{}, ch, changed, context.Cause(ctx)
		}
	}
}

// take reports whether the request may go at its turn, now: its turn was
// not voided by a respacing meanwhile (then it reserves again, and later
// is 0), and, with a bucket of 1, the request before it went at least an
// interval ago; otherwise later is when it may go. The turns are an
// interval apart, but the request before may have gone late (its timer
// fired late on a busy machine), and a limiter without a burst refuses a
// request that comes less than an interval after the one before it. It
// counts the request in the measured send rate.
func (tn turn) take(now int64) (later int64, took bool) {
	l := tn.lim
	l.mu.Lock()
	defer l.mu.Unlock()
	if tn.gen != l.gen {
		return 0, false
	}
	if l.burstLocked() == 1 && l.taken > 0 && now < l.taken+l.interval {
		return l.taken + l.interval, false
	}
	l.taken = max(l.taken, now)
	l.countSendLocked(now)
	return 0, true
}

// wait waits until the turn comes, now being the time of the call on c,
// and takes it (see take): it reports true then. It reports false when the
// turn was voided by a respacing (the request reserves again) or ctx ended
// first (the caller gives the turn back). respace and recheck are
// reserve's: while it waits it checks the limiter's rate at recheck, so
// that a turn given at a rate that has since grown is respaced in time.
func (tn turn) wait(ctx context.Context, now int64, c *clock, respace <-chan struct{}, recheck int64) bool {
	at := tn.at // when to take the turn: later than tn.at when the request before went late
	next := at
	if recheck != 0 && recheck < next {
		next = recheck
	}
	timer := time.NewTimer(time.Duration(next - now))
	defer timer.Stop()
	for {
		select {
		case <-timer.C:
			if now = c.now(); now < at {
				next = at
				if r := tn.lim.refresh(now); r > now && r < next {
					next = r
				}
				timer.Reset(time.Duration(next - now))
				continue
			}
			later, took := tn.take(now)
			if later == 0 {
				return took
			}
			at = later
			timer.Reset(time.Duration(at - now))
		case <-respace: // the limiter's rate moved: reserve again
			return false
		case <-ctx.Done():
			return false
		}
	}
}

// burstLocked returns the bucket's size: the configured burst, or 1 once
// the limiter has learnt from a throttle.
func (l *limiter) burstLocked() int64 {
	if l.learnt {
		return 1
	}
	return l.burst
}

// respaceLocked voids the turns handed out and not yet taken: their
// requests wake and reserve again, at the rate now. It runs when a
// learning limiter's rate moves far from the rate its turns were spaced
// at: down at a throttle (turns given at the old rate would go out too
// close together, which a sliding-window limiter punishes), up while it
// grows back (turns given at a low rate would wait too long). The next
// turn is one interval, at the rate now, after the last request that went.
func (l *limiter) respaceLocked(now int64) {
	l.gen++
	if l.respace != nil {
		close(l.respace)
		l.respace = nil
	}
	l.tat = max(now-l.interval, l.taken) + l.interval
	l.last, l.prev = 0, 0
	l.spacedAt = l.fill
}

// cancel gives back a turn that reserve gave and that will not be used:
// the next turn is where it would be had this one never been reserved,
// when it was the latest (with a bucket of 1: one interval, at the rate
// now, after the turn before it), and one interval of the bucket
// otherwise. The turns handed out after it keep their times; a turn that a
// respacing voided gives back nothing, nor does a turn of a fleet's shared
// bucket (the store's bucket keeps it).
func (tn turn) cancel() {
	if tn.shared {
		return
	}
	l := tn.lim
	l.mu.Lock()
	defer l.mu.Unlock()
	if tn.gen != l.gen {
		return
	}
	if tn.at == l.last && l.burstLocked() == 1 {
		l.last, l.prev = l.prev, 0
		l.tat = l.last + l.interval
		return
	}
	l.tat -= l.interval
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

// setPhase sets the phase of a fleet member's turns, in [0, 1) (0: none),
// and the wall clock's offset from the limiter's (see phase).
func (l *limiter) setPhase(p float64, wallOff int64) {
	l.mu.Lock()
	l.phase, l.wallOff = p, wallOff
	l.mu.Unlock()
}

// phasedLocked returns the first instant at or after at that falls at the
// limiter's phase of an interval on the wall clock; at itself when it has
// no phase or a bucket of more than 1.
func (l *limiter) phasedLocked(at int64) int64 {
	if l.phase == 0 || l.burstLocked() != 1 {
		return at
	}
	iv := l.interval
	off := (at + l.wallOff - int64(l.phase*float64(iv))) % iv
	if off < 0 {
		off += iv
	}
	if off == 0 {
		return at
	}
	return at + iv - off
}

// seed counts n successes of requests sent just before at, before the
// limiter existed.
func (l *limiter) seed(n float64, at int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.addSuccessLocked(at - 1)
	l.okN[((at-1)/acceptSlot)%acceptSlots] += n - 1
}

// countSendLocked counts a request sent at t in the measured send rate.
func (l *limiter) countSendLocked(t int64) {
	if b := t - t%sendBucket; b > l.bucket {
		cur := l.sent / (float64(b-l.bucket) / 1e9)
		l.measured = cur*sendSmooth + l.measured*(1-sendSmooth)
		l.sent, l.bucket = 0, b
	}
	l.sent++
}

// addSuccessLocked counts a success of a request sent at t.
func (l *limiter) addSuccessLocked(t int64) {
	if i, ok := l.slotLocked(t); ok {
		l.okN[i]++
	}
}

// addThrottleLocked counts a throttle of a request sent at t.
func (l *limiter) addThrottleLocked(t int64) {
	if i, ok := l.slotLocked(t); ok {
		l.thrN[i]++
	}
}

// slotLocked returns the index of the ring slot of t, emptying it when it
// held an older slot; false when t is older than the ring.
func (l *limiter) slotLocked(t int64) (int64, bool) {
	slot := t - t%acceptSlot
	i := (t / acceptSlot) % acceptSlots
	if l.okAt[i] != slot {
		if l.okAt[i] > slot {
			return 0, false // older than the ring
		}
		l.okAt[i], l.okN[i], l.thrN[i] = slot, 0, 0
	}
	return i, true
}

// acceptedLocked returns, for the requests sent in the window that ends at
// t, the rate at which the host served them (requests per second), the
// share of them it served among those it served or throttled (1 when it
// did neither), and how many it served.
func (l *limiter) acceptedLocked(t int64) (rate, share, n float64) {
	var thr float64
	from := slotsFrom(t, acceptWindow)
	for i, at := range l.okAt {
		if at >= from && at < t {
			n += l.okN[i]
			thr += l.thrN[i]
		}
	}
	share = 1
	if n+thr > 0 {
		share = n / (n + thr)
	}
	return n / (float64(t-from) / 1e9), share, n
}

// slotsFrom returns the start of the first whole slot of the span that
// ends at t: the counts of the slots from there to t cover t minus it,
// between span−acceptSlot and span (dividing them by span once
// underestimated a rate by up to a quarter over a second). A span that
// starts before the epoch is whole.
func slotsFrom(t int64, span int64) int64 {
	from := t - span
	if from <= 0 {
		return from // from the epoch: nothing was sent before it
	}
	if r := from % acceptSlot; r != 0 {
		from += acceptSlot - r
	}
	return from
}

// servedLocked returns the rate at which the host served the requests sent
// in the span that ends at t (at most the ring), in requests per second.
func (l *limiter) servedLocked(t int64, span time.Duration) float64 {
	return l.servedSinceLocked(slotsFrom(t, int64(span)), t)
}

// servedSinceLocked returns the rate at which the host served the requests
// sent in the slots from from, a slot's start, to t.
func (l *limiter) servedSinceLocked(from, t int64) float64 {
	var n float64
	for i, at := range l.okAt {
		if at >= from && at < t {
			n += l.okN[i]
		}
	}
	return n / (float64(t-from) / 1e9)
}

// served returns the rate at which the host served the requests sent in
// the acceptWindow that ends at now, and in the one that ended at the
// last throttle (0 if it never learnt), in requests per second: what this
// process adds to the fleet's count of what the host served (see
// sharing.go, PublishedState.Served).
func (l *limiter) served(now int64) (recent, beforeThrottle float64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	recent = l.servedLocked(now, time.Duration(acceptWindow))
	if l.learnt {
		beforeThrottle = l.servedLocked(l.throttleAt, time.Duration(acceptWindow))
	}
	return recent, beforeThrottle
}

// servedWholeLocked returns the rate at which the host served the requests
// sent from the start of the slot acceptWindow before t to t: over the
// window and up to a slot more, where servedLocked counts up to a slot
// less.
func (l *limiter) servedWholeLocked(t int64) float64 {
	from := t - acceptWindow
	if from > 0 {
		from -= from % acceptSlot
	}
	return l.servedSinceLocked(from, t)
}

// estimateLocked returns the host's allowed rate as a throttle at t tells
// it, fill being the rate it refused, and whether the estimate counts
// enough successes (knownSamples) to be trusted. What the host accepted is
// the rate it served over the window before t, or over its last second
// when higher (the rate was still growing). A host that served most of
// what was sent allows about halfway from what it accepted to the rate it
// refused: the client was sending below the limit for most of the window
// (ramping up, or paced), and what it accepted says more of the client
// than of the host. One that refused most allows what it accepted. When
// the throttle is costly (it came with a cooldown, so every refusal costs
// the host's whole pause) the estimate is what the host accepted, no more.
// For a host that counts what it refuses (l.counting), it is what the host
// served over whole slots covering the window, and at least β·lastMax.
// The estimate is at most the rate refused.
func (l *limiter) estimateLocked(t int64, fill float64, costly bool) (float64, bool) {
	acc, share, n := l.acceptedLocked(t)
	if l.counting && !costly {
		// A host that counts what it refuses allows no more than it
		// served, over whole slots (what it served over a second, or
		// over slots covering less than the window, reads its bursts
		// as a rate above its limit), and refused the rest; but no less
		// than β times the last max: what it served in a window that it
		// spent refusing what it still counted, and the client paused
		// for, said more of that pause than of its limit (anchors at
		// half the limit were seen).
		served := max(l.servedWholeLocked(t), cubicBeta*l.lastMax)
		return min(served, fill), n >= knownSamples
	}
	acc = max(acc, l.servedLocked(t, time.Second))
	if costly {
		return costlyMargin * min(acc, fill), n >= knownSamples
	}
	return min(acc+share*max(fill-acc, 0)/2, fill), n >= knownSamples
}

// success counts a success of a request sent at sent (0: before the
// limiter existed) and, when learning, lets the rate grow back along the
// CUBIC curve: C·(t−K)³ + lastMax, t in s since the throttle (growLocked).
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
	l.growLocked(now)
	return rateChange{}, false
}

// growLocked moves a learning limiter's rate along its curve to now. As in
// the AWS SDK the curve may not lead the rate more than twice above the
// measured send rate while no request queues for a turn (the client may
// not need more), and past the last max even while they queue (a
// sliding-window limiter punishes any time spent above its limit), but for
// slow start, which has no last max to speak of, and for a fleet's member
// whose fleet was served about its limit (see fleetDemandLocked). The cap
// never lowers the rate, so that a cooldown (in which nothing is sent)
// does not collapse the learnt rate.
func (l *limiter) growLocked(now int64) {
	if now < l.held {
		return
	}
	// When the probe past a known limit reaches its step, in s since
	// curveAt.
	if step := l.window + l.holdLocked() + math.Log(knownStep)/l.stepProbeLocked(); l.gentleLocked() && float64(now-l.curveAt)/1e9 >= step+l.stepHoldLocked() {
		// The probe held its step for stepHold. If the host served more
		// than the last max meanwhile, the step is the limit now and the
		// probe goes on from it; if not (the client did not need more,
		// or the host served no more though it refused nothing), the
		// step holds for stepHold again. A step taken only because it
		// was not refused let a limit creep up by 10 % every 18 s while
		// the client sent half of it.
		if l.stepServedLocked(now) > l.lastMax {
			l.anchorLocked(knownStep * l.lastMax)
			l.steps++
			step = l.window + l.holdLocked() // the probe's start
		}
		l.curveAt = now - int64(step*1e9)
	}
	r := l.cubicLocked(now)
	if (r > l.lastMax && !l.slowStart || l.tat <= now) && !l.fleetDemandLocked() {
		r = min(r, max(l.fill, 2*l.measured))
	}
	l.setRateLocked(r, now)
	if l.fill >= respaceGrowth*l.spacedAt {
		l.respaceLocked(now)
	}
}

// gentleLocked reports whether the limiter probes past its last max in
// steps (by stepProbeLocked up to knownStep, each held for
// stepHoldLocked): when the limit is known, and for a fleet's member,
// whose fleet learns of a refusal a poll late (CUBIC's probe of 20 %/s
// ran 24 processes to twice the host's limit before they slowed down).
func (l *limiter) gentleLocked() bool {
	return l.known || l.member
}

// holdLocked returns how long, in s, the limiter holds its last max
// before probing past it in steps: knownHold when the limit is known, none
// for a fleet member's limit that is not.
func (l *limiter) holdLocked() float64 {
	if l.known {
		return knownHold
	}
	return 0
}

// fleetDemandLocked reports whether the limiter is a fleet's member whose
// fleet the host served at least half its limit (per process, by the
// fleet's count): the member's rate may lead what the fleet was served by
// up to twice, as a process alone's may lead what it measures itself
// sending, and need not be capped by its own measure. A member's share
// may be a request every few seconds, which the measured rate (by 500 ms
// buckets) reads as nothing most of the time: capped by it, every member
// stayed at its share, the fleet was served no more than its limit, and
// no step was ever taken (48 processes held a fact of 1.7 r/s of 5 for a
// whole run). With the fleet's count held to 95 % of the limit instead of
// half, its noise and lag (a poll, a request or two per process per
// window) held a fleet at a start's fact of 4 r/s for 7 s.
func (l *limiter) fleetDemandLocked() bool {
	return l.member && 2*l.fleetAvg >= l.lastMax
}

// stepHoldLocked returns how long, in s, the limiter holds a step before
// it tells whether the step is the limit now: stepHold, or for a fleet's
// member whose limit is not known, memberStepHold (bracketStepHold for
// the fleet start's bracket).
func (l *limiter) stepHoldLocked() float64 {
	switch {
	case l.climbsBracketLocked():
		return bracketStepHold
	case l.member && !l.known:
		return memberStepHold
	}
	return stepHold
}

// stepProbeLocked returns how fast, per second (compounded), the limiter
// probes past its last max to the next step when it probes in steps (see
// gentleLocked): knownProbe, or bracketProbe for a fleet's member whose
// limit is the fleet start's bracket and not known.
func (l *limiter) stepProbeLocked() float64 {
	if l.climbsBracketLocked() {
		return bracketProbe
	}
	return knownProbe
}

// climbsBracketLocked reports whether the limiter is a fleet's member
// whose limit is the bracket of the fleet's start, not known: it probes
// past it by bracketProbe, each step held bracketStepHold.
func (l *limiter) climbsBracketLocked() bool {
	return l.member && !l.known && l.bracket
}

// stepServedLocked returns what the host served over the last 2 s, to
// tell whether a step held for stepHold is the limit now: for a fleet's
// member, what it served the fleet per process (a member's own count of a
// share of a request or two a second is mostly noise), else this
// process's.
func (l *limiter) stepServedLocked(now int64) float64 {
	if l.member && l.fleetAvg > 0 {
		return l.fleetAvg
	}
	return l.servedWholeLocked(now)
}

// setFleet says whether the limiter paces a share of the fleet's learnt
// limit of its host among other processes (member), whether that limit is
// the bracket of the fleet's start (bracket), and what the host served
// the fleet's processes, per process (0: unknown), as the last poll read
// them (see gentleLocked, stepServedLocked, stepProbeLocked).
func (l *limiter) setFleet(member, bracket bool, perProc float64) {
	l.mu.Lock()
	l.member, l.bracket, l.fleetAvg = member, bracket, perProc
	l.mu.Unlock()
}

// probeLocked returns how fast the rate grows past an unknown limit, per
// second (compounded): probeRate, or countingProbe for a host that counts
// the requests it refuses.
func (l *limiter) probeLocked() float64 {
	if l.counting {
		return countingProbe
	}
	return probeRate
}

// cubicLocked returns the rate of a learning limiter at now, t in s since
// the last throttle: C·(t−K)³ + lastMax, CUBIC's concave curve, up to
// lastMax at K; past it, a probe growing by probeLocked per second
// (compounded), or, once the limit is known or for a fleet's member, in
// steps: lastMax for holdLocked and then a probe by stepProbeLocked up to
// knownStep·lastMax; in slow start, the
// lowered rate doubling every l.doubling seconds.
func (l *limiter) cubicLocked(now int64) float64 {
	t := float64(now-l.curveAt) / 1e9
	switch {
	case l.slowStart && l.slowHold:
		return l.betaLocked() * l.lastMax
	case l.slowStart:
		return l.betaLocked() * l.lastMax * math.Exp2(t/l.doubling)
	case l.gentleLocked() && t > l.window:
		return l.lastMax * min(math.Exp(l.stepProbeLocked()*max(t-l.window-l.holdLocked(), 0)), knownStep)
	case t > l.window:
		return l.lastMax * math.Exp(l.probeLocked()*max(t-l.window-l.plateau, 0))
	}
	return cubicScale*math.Pow(t-l.window, 3) + l.lastMax
}

// recheckLocked returns when the rate, growing along its curve, will have
// grown enough since the last respacing for the turns given meanwhile to
// be respaced; 0 if not learning or not within maxWait of now. A request
// waiting for a far turn checks again then (refresh).
func (l *limiter) recheckLocked(now int64) int64 {
	if !l.learnt {
		return 0
	}
	r := respaceGrowth * l.spacedAt
	var t float64 // s since the throttle
	switch {
	case l.slowStart && l.slowHold:
		return 0 // held: no growth
	case l.slowStart:
		t = l.doubling * math.Log2(r/(l.betaLocked()*l.lastMax))
	case l.gentleLocked() && r > knownStep*l.lastMax:
		return 0 // the step is as far as it goes
	case l.gentleLocked() && r > l.lastMax:
		t = l.window + l.holdLocked() + math.Log(r/l.lastMax)/l.stepProbeLocked()
	case r > l.lastMax:
		t = l.window + l.plateau + math.Log(r/l.lastMax)/l.probeLocked()
	default:
		t = l.window + math.Cbrt((r-l.lastMax)/cubicScale)
	}
	at := l.curveAt + int64(t*1e9)
	if at <= now || at > now+l.maxWait {
		return 0
	}
	return max(at, l.held)
}

// refresh moves a learning limiter's rate along its curve to now, as a
// reservation does (respacing the turns given if it grew enough), and
// returns when to check again (see recheckLocked).
func (l *limiter) refresh(now int64) int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.learnt {
		return 0
	}
	l.growLocked(now)
	return l.recheckLocked(now)
}

// throttle applies a throttling response (status) to a request sent at
// sent (0: before the limiter existed), received at now; cooldown is the
// host's cooldown deadline (0 for none) and wall the wall clock. A
// throttle of a request sent before the last one is part of its episode
// and changes nothing; one of a request sent within settleDelay after it,
// outside slow start, pauses the queue instead (see settleDelay), and so
// does, once, one of the first request sent when slow start's first
// cooldown ended (a sliding window still counting what it refused then).
// Otherwise the rate is anchored on the host's allowed rate as the last
// 2 s tell it (estimateLocked, by send time) and lowered by β (knownBeta
// once the limit is known); at the end of slow start it is anchored on
// what the host served in the last second or two (without a cooldown, at
// least half the rate refused, as TCP's ssthresh) and not lowered further;
// a refused probe with a cooldown keeps the limit. A stray refusal at a
// known limit (the host served knownNoise of what was sent) only pauses
// the queue for an interval. Then
// the turns given are respaced, and the queue is held until the cooldown
// ends (where the curve starts), or for one interval without one.
// A request sent at the very instant of the last throttle was not paced
// by it: it belongs to that episode too.
//
// slowing reports whether the limiter takes the throttle as its signal to
// slow down: it learns (adaptive), and the request was not paced at its
// floor already (a throttle of the episode it reacted to counts as
// slowing). A throttle it cannot act on (the host keeps throttling at
// min_rate, or the limiter does not learn) is the host's failure
// (classify.go, throttleOutcome).
func (l *limiter) throttle(sent, now, cooldown, wall int64, status int) (ch rateChange, changed, slowing bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.adaptive {
		return rateChange{}, false, false
	}
	if l.learnt && sent <= l.throttleAt { // 0: sent before the limiter existed
		l.addThrottleLocked(max(sent, l.throttleAt-1))
		return rateChange{}, false, true // the episode it has slowed down for
	}
	atFloor := l.learnt && l.fill <= l.minRate
	if l.slowStart && l.pauses == 0 && cooldown > now && l.resumeAt != 0 && sent >= l.resumeAt && sent-l.resumeAt < settleDelay {
		// Refused again at the end of the cooldown of slow start's first
		// throttle: a sliding window still counts the requests it refused
		// then. Slow start goes on once this cooldown ends.
		l.pauses++
		l.held = max(l.held, cooldown)
		l.resumeAt = cooldown
		l.respaceLocked(now)
		return rateChange{}, false, true
	}
	if l.learnt && !l.slowStart && !atFloor && sent-l.throttleAt < settleDelay && cooldown <= now {
		// Refused again right after slowing down: a limiter that counts
		// the refused requests (a sliding window) is still over. The rate
		// is right; the host needs a pause, twice as long at each such
		// refusal. It is not counted against the host's share: it says
		// more of the window's memory than of the rate.
		l.pauses++
		l.counting = true
		l.held = max(l.held, now+int64(float64(int64(1)<<min(l.pauses, 6))*1e9/l.lastMax))
		l.respaceLocked(now)
		return rateChange{}, false, true
	}
	if sent == 0 {
		l.addThrottleLocked(now - 1) // before the limiter: in this window
	} else {
		l.addThrottleLocked(sent)
	}
	l.pauses = 0
	// Probing past a known limit's last max, which the host served for
	// knownHold: the limit lies between the two.
	probing := l.known && float64(now-l.curveAt)/1e9 > l.window+knownHold
	if _, share, _ := l.acceptedLocked(now); l.known && !probing && cooldown <= now && share >= knownNoise {
		// A stray refusal at the known limit: the host served almost all
		// that was sent (a strict limiter without a burst refuses a
		// request that comes a few ms early, when the client's timers or
		// the host's event loop run late). The limit, the rate and the
		// curve hold: the queue pauses for one interval. Before, each
		// dipped the rate and restarted the curve, whose hold before a
		// probe such refusals every few seconds then never let end.
		l.held = max(l.held, now+int64(1e9/l.lastMax))
		l.respaceLocked(now)
		return rateChange{}, false, true
	}
	prev := l.fill
	wasSlow := l.slowStart
	l.slowStart = !l.learnt
	l.slowHold = false
	l.learnt = true
	l.lastCode = status
	l.throttleAt, l.curveAt, l.throttleNs = now, now, wall
	l.reanchorAt = 0
	if l.slowStart {
		// The first throttle: the successes of the requests in flight,
		// sent before the limiter existed, are not counted yet.
		l.reanchorAt = max(cooldown, now+reanchorDelay)
		l.slowN = 0
		l.doubling = slowStartDoubling
		if cooldown > now {
			l.doubling = costlyDoubling
		}
	}
	l.fillT = l.fill
	est, informed := l.estimateLocked(now, l.fill, cooldown > now)
	if est <= 0 {
		est = l.fill // it served nothing: the rate now
	}
	if wasSlow {
		// Slow start doubled the rate each step: the host allowed what it
		// served in the last second or two and, unless refusals are
		// costly, at least about half of what it refused, as TCP's
		// ssthresh has it; what it served over the window says little,
		// the rate rose too fast for it.
		est = max(l.servedLocked(now, time.Second), l.servedLocked(now, 2*time.Second))
		if cooldown <= now {
			est = max(est, l.fill/2)
		} else {
			est *= costlyMargin
		}
	}
	switch {
	case probing && cooldown > now:
		est = l.lastMax // the probe failed, and another would cost a cooldown too: hold the known limit
	case probing:
		est = max(l.lastMax, knownMargin*l.fill) // known, held, then probed slowly: just under the rate refused
	default:
		l.known = !atFloor && informed && l.informed && math.Abs(est-l.lastMax) <= knownSpread*l.lastMax
	}
	l.informed = informed
	l.anchorLocked(est)
	l.steps = 0
	l.plateau = 0
	if wasSlow {
		// est is already what TCP's ssthresh would be: start on the plateau.
		l.curveAt = now - int64(l.window*1e9)
		l.setRateLocked(l.lastMax, now)
		if cooldown > now {
			l.plateau = costlyPlateau // what the host served: hold it before probing at a cooldown's cost
		}
	} else {
		l.setRateLocked(l.betaLocked()*l.lastMax, now)
	}
	l.respaceLocked(now)

	l.resumeAt = 0
	switch {
	case cooldown > now:
		l.held = max(l.held, cooldown)
		l.resumeAt = cooldown
		if !l.slowStart {
			l.curveAt += cooldown - now // the curve starts when the host lets requests go again
		}
	case !l.slowStart:
		// No cooldown: the next request waits one interval at the limit,
		// for a limiter that counts the refused request (a sliding
		// window) is still full.
		l.held = max(l.held, now+int64(1e9/l.lastMax))
	}
	return rateChange{prev: prev, rate: l.fill, lastMax: l.lastMax, why: "throttled", status: status}, true, !atFloor
}

// anchorLocked sets lastMax, within the floor and the ceiling, and the
// CUBIC window K = ∛(lastMax·(1−β)/C) that goes with it.
func (l *limiter) anchorLocked(r float64) {
	if l.ceiling > 0 {
		r = min(r, l.ceiling)
	}
	l.lastMax = max(r, l.minRate)
	l.window = math.Cbrt(l.lastMax * (1 - l.betaLocked()) / cubicScale)
}

// betaLocked returns the factor a throttle lowers the rate by: CUBIC's β,
// or knownBeta once the limit is known.
func (l *limiter) betaLocked() float64 {
	if l.known {
		return knownBeta
	}
	return cubicBeta
}

// reanchorLocked anchors the last throttle again, once its reanchor time
// has come: on the estimate of the 2 s before it, counting the requests
// that were still in flight then. Callers hold mu.
func (l *limiter) reanchorLocked(now int64) (rateChange, bool) {
	if l.reanchorAt == 0 || now < l.reanchorAt {
		return rateChange{}, false
	}
	l.reanchorAt = 0
	est, informed := l.estimateLocked(l.throttleAt, l.fillT, false)
	l.informed = l.informed || informed
	if est <= 0 {
		return rateChange{}, false
	}
	prev, prevMax := l.fill, l.lastMax
	l.anchorLocked(est)
	if l.lastMax == prevMax {
		return rateChange{}, false
	}
	l.setRateLocked(l.cubicLocked(now), now)
	l.respaceLocked(now)
	return rateChange{prev: prev, rate: l.fill, lastMax: l.lastMax, why: "reanchored", status: l.lastCode}, true
}

// adopt takes this process's share of the limit that the fleet learnt
// (see sharing.go, pullFleetRates) as its last max, as if this process
// had been throttled at wall time wall (wall unix ns; wallNow is the wall
// clock now): the rate is where the CUBIC curve of that throttle is now,
// so that the processes of a fleet grow back in step, and at most at the
// plateau (the rate is the last max). floor is this process's share of
// min_rate: min_rate bounds the fleet's limit, not each share, so the
// limiter's floor becomes floor (never above the configured one). It takes
// a throttle newer than the limiter's own (wall after its last throttle)
// and, with redivide, the same throttle again, divided among a number of
// processes that changed. With known, the fact's source found it known:
// the limiter holds a new fact as its own known limit (see known), for
// knownHold at the plateau and then probing past it slowly; a redivision
// keeps what the limiter knew, the steps it took past its share, and a
// fleet member's place on its curve.
// It reports the change.
//
// It never turns learning off: it only runs on an adaptive limiter, and
// leaves it learning; a later throttle of this process is learnt as any
// other.
func (l *limiter) adopt(rate, floor float64, now, wall, wallNow int64, redivide, known bool) (rateChange, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.adaptive || wall < l.throttleNs || wall == l.throttleNs && !redivide {
		return rateChange{}, false
	}
	prev := l.fill
	if floor > 0 {
		l.minRate = min(l.minRate, floor)
	}
	l.learnt, l.slowStart, l.plateau = true, false, 0
	l.throttleNs = wall
	if !redivide {
		l.known, l.steps = known, 0
	}
	// A redivision keeps the steps the member took past its share (the
	// fleet was served more than its fact, see stepServedLocked): on
	// bbolt, whose processes poll slowly, the number of processes sending
	// moved every few seconds, and each redivision took the fleet back to
	// its fact.
	l.anchorLocked(rate * math.Pow(knownStep, float64(l.steps)))
	if !redivide || !l.member {
		since := min(max(wallNow-wall, 0), int64(l.window*1e9)) // at most at the plateau
		l.throttleAt = now - since
		l.curveAt = l.throttleAt
	} // else a fleet's member stays where it is on its curve: its share changed, not the fleet's probe
	l.reanchorAt = 0
	r := l.cubicLocked(now)
	if r > l.lastMax && !l.fleetDemandLocked() {
		r = min(r, max(l.lastMax, 2*l.measured)) // as growLocked caps it
	}
	l.setRateLocked(r, now)
	l.respaceLocked(now)
	return rateChange{prev: prev, rate: l.fill, lastMax: l.lastMax, why: "fleet"}, l.fill != prev
}

// fleetSlowStart shares the limiter's slow start with the n processes of
// a fleet that send to the host while the fleet knows no limit of it yet
// (see sharing.go, pullFleetRates): unless probe, it holds its share, the
// rate it is at divided by n, while another process of the fleet, in slow
// start as it would be alone, probes the host for all of them: one slow
// start ends with one refusal, where n ended with n or more (and 24
// processes each at min_rate or more sent 8 r/s to a host that allows 5
// before any of them doubled). floor, min_rate divided among them, is its
// floor. It does nothing out of slow start, and reports the change it
// made.
func (l *limiter) fleetSlowStart(n int, floor float64, probe bool, now int64) (rateChange, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	div := n
	if probe {
		div = 1
	}
	if !l.slowStart || !l.adaptive || div == max(l.slowN, 1) && l.slowHold == !probe {
		return rateChange{}, false
	}
	prev := l.fill
	// The curve starts again from the rate now (where it grew to, capped
	// by what the process sends), divided anew.
	l.growLocked(now)
	r := l.fill * float64(max(l.slowN, 1)) / float64(div)
	l.minRate = floor
	l.anchorLocked(r / l.betaLocked())
	l.curveAt, l.slowHold, l.slowN = now, !probe, div
	l.setRateLocked(l.cubicLocked(now), now)
	l.respaceLocked(now)
	return rateChange{prev: prev, rate: l.fill, lastMax: l.lastMax, why: "fleet"}, l.fill != prev
}

// lastTurn returns the latest turn the limiter handed out or a request
// took (ns since the epoch); 0 for none. A request waiting for its turn
// moves it: it is the host's heartbeat in the store (sharing.go).
func (l *limiter) lastTurn() int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return max(l.last, l.taken)
}

// expire forgets a limit learnt limiterIdle or more ago: by now on the
// monotonic clock since its throttle, or by wall, the wall clock now,
// since the throttle it learnt or adopted from the fleet (the fleet's
// limit expires 15 minutes after the newest throttle in the fleet,
// whenever this process adopted it). It reports whether the limiter is no
// longer needed (no configured rate), and the change it made to a
// configured one.
func (l *limiter) expire(now, wall int64) (drop bool, ch rateChange, changed bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.learnt || now-l.throttleAt < limiterIdle && wall-l.throttleNs < limiterIdle {
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
	throttled     int64   // wall unix ns of the last throttle; 0 if it never learnt
	slowStart     bool    // after the first throttle, which anchored nothing yet: lastMax is the birth rate
	refused       float64 // the rate when the last throttle came
	holding       bool    // in slow start, holding while another process of the fleet probes
}

func (l *limiter) status() limitStatus {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := limitStatus{rate: l.fill}
	if l.learnt {
		s.lastMax, s.throttled, s.slowStart, s.refused, s.holding = l.lastMax, l.throttleNs, l.slowStart, l.fillT, l.slowStart && l.slowHold
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
		ch, _ = l.adopt(fr.rate, fr.floor, now, fr.throttled, time.Now().UnixNano(), false, fr.known)
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
// ago, by the monotonic clock now or by the wall clock of its throttle
// (a limit adopted from the fleet expires 15 minutes after the fleet's
// throttle, not after its adoption), and drops the limiter if it has
// nothing left to do.
func (h *hostState) expireLimiter(now int64) (rateChange, bool) {
	lim := h.lim.Load()
	if lim == nil {
		return rateChange{}, false
	}
	drop, ch, changed := lim.expire(now, time.Now().UnixNano())
	if drop {
		h.lim.CompareAndSwap(lim, nil)
	}
	return ch, changed
}

// sentAt returns when the limiter let the request admitted with adm go; 0
// when none paced it.
func (adm admission) sentAt() int64 {
	if adm.turn == nil {
		return 0
	}
	return adm.turn.at
}

// limiterOf returns the limiter that an outcome of a request admitted with
// adm is recorded at: the one that gave its turn, else h's (a request sent
// before h had a limiter).
func (adm admission) limiterOf(h *hostState) *limiter {
	if adm.turn != nil && adm.turn.lim != nil {
		return adm.turn.lim
	}
	return h.lim.Load()
}
