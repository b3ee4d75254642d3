package hostbreaker

// This file holds the Transport: its type, options and construction,
// RoundTrip (admission, the base, recording) and the background loop. The
// breaker of a (host, role) is in breaker.go, the host cooldown in
// cooldown.go, the limiter in ratelimit.go, policies in policy.go, what
// the loop does with events in journal.go and with a store in sharing.go.

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel"
	otellog "go.opentelemetry.io/otel/log"
	"go.opentelemetry.io/otel/metric"
)

// Transport is an http.RoundTripper that keeps a circuit breaker per
// (host, role) and a cooldown per host in front of a base RoundTripper. It
// rejects requests to a host that is failing or has asked for a pause with
// an *OpenError, without calling the base, and lets requests through again
// by itself once the host may have healed.
//
// Create one with NewTransport and share it: a Transport is safe for
// concurrent use, and its methods may be called while requests are in
// flight. Call Close when done with it.
type Transport struct {
	base http.RoundTripper
	log  *slog.Logger
	// classifier is the WithClassifier function, nil for none; panicked is
	// set when it first panics, so that it is logged once.
	classifier Classifier
	panicked   atomic.Bool
	extras     uint8   // extraClassifier when classifier is set; or'ed with a policy's extras on each request
	clock              // the time base of the request path: ns since its epoch
	rolling    Rolling // with defaults; Enabled false means off
	reg        *registry

	mu         sync.Mutex                  // serializes policy updates
	configured *policyTable                // the configuration with UpdateHostPolicy's changes; guarded by mu
	overrides  map[string]Policy           // tuned overrides read from the store, by Hosts key; guarded by mu
	policies   atomic.Pointer[policyTable] // in force: configured with the overrides laid over it

	sh          *sharing // nil without a store
	fleetStarts bool     // the store can hold the fleet's start at a host, and it is on: see fleetStart

	telemetry TelemetryConfig // with defaults; immutable
	tel       *telemetry      // nil if the meter provider failed

	events  chan event
	dropped atomic.Uint64 // events dropped because the queue was full
	sink    *eventSink    // owned by the background goroutine
	queries chan func()   // run on the background goroutine (Events)
	subs    subscribers   // open status pages (statuspage.go)

	untracked        atomic.Uint64                        // requests sent without a breaker: the registry was full
	untrackedLogged  atomic.Int64                         // when that was last logged, ns since the epoch
	cooldownsDropped atomic.Uint64                        // cooldowns dropped past the bound on hosts without an entry
	leakedSlots      atomic.Uint64                        // slots given back by the garbage collector (concurrency.go)
	storeErr         atomic.Pointer[error]                // the last store exchange's error; nil if it succeeded
	fleet            atomic.Pointer[map[string]fleetRate] // rates other processes learnt, by host; nil without a store
	done             chan struct{}
	wg               sync.WaitGroup
	closeOnce        sync.Once

	// stopStore cancels the context of the background goroutine's store
	// operations, so that Close does not wait for a slow one; closeBy is
	// when Close's last attempt to write to the store gives up, written
	// by Close before it closes done.
	storeCtx  context.Context
	stopStore context.CancelFunc
	closeBy   time.Time
}

var _ http.RoundTripper = (*Transport)(nil)

// Option configures a Transport. A nil Option is ignored.
type Option interface{ apply(*options) }

type options struct {
	config   Config
	logger   *slog.Logger
	store    Store
	meters   metric.MeterProvider
	loggers  otellog.LoggerProvider
	handler  func(Event)
	classify Classifier
	tweaks   fleetTweaks // for the fleet model (sharing_fleet_test.go) only
}

type optionFunc func(*options)

func (f optionFunc) apply(o *options) { f(o) }

// WithConfig sets the configuration. Without it, DefaultConfig is used.
func WithConfig(c Config) Option {
	return optionFunc(func(o *options) { o.config = c })
}

// WithLogger sets the logger for state changes and background errors. A nil
// logger, or none, discards them.
func WithLogger(l *slog.Logger) Option {
	return optionFunc(func(o *options) { o.logger = l })
}

// WithMeterProvider sets the OpenTelemetry meter provider the Transport
// reports its metrics to (see docs/telemetry.md). Without it, or with nil,
// the global provider at the time NewTransport runs: a no-op until the
// program installs an SDK.
func WithMeterProvider(mp metric.MeterProvider) Option {
	return optionFunc(func(o *options) { o.meters = mp })
}

// WithLoggerProvider sets the OpenTelemetry logger provider the Transport
// emits its events to, as log records with an event name. Without it, or
// with nil, the global provider at the time NewTransport runs.
func WithLoggerProvider(lp otellog.LoggerProvider) Option {
	return optionFunc(func(o *options) { o.loggers = lp })
}

// WithEventHandler sets a function that receives every event of the
// Transport, in order, on the Transport's background goroutine: never on a
// request's goroutine, so it may block only at the cost of delaying later
// events. A nil f is ignored.
func WithEventHandler(f func(Event)) Option {
	return optionFunc(func(o *options) {
		if f != nil {
			o.handler = f
		}
	})
}

// NewTransport returns a Transport in front of base; a nil base means
// http.DefaultTransport. It returns an error if the configuration is
// invalid.
func NewTransport(base http.RoundTripper, opts ...Option) (*Transport, error) {
	o := options{config: DefaultConfig()}
	for _, opt := range opts {
		if opt != nil {
			opt.apply(&o)
		}
	}
	pt, err := o.config.validate()
	if err != nil {
		return nil, err
	}
	if base == nil {
		base = http.DefaultTransport
	}
	if o.logger == nil {
		o.logger = slog.New(slog.DiscardHandler)
	}
	maxHosts := o.config.MaxHosts
	if maxHosts == 0 {
		maxHosts = defaultMaxHosts
	}
	t := &Transport{
		base:       base,
		log:        o.logger,
		classifier: o.classify,
		extras:     extrasOfTransport(o.classify),
		clock:      clock{epoch: time.Now().Add(-time.Second)}, // so that no time on the request path is 0, which means "none"
		reg:        newRegistry(maxHosts),
		events:     make(chan event, 1024),
		queries:    make(chan func()),
		done:       make(chan struct{}),
		rolling:    o.config.Rolling.withDefaults(),

		telemetry: o.config.Telemetry.withDefaults(),
	}
	t.reg.limit = t.startLimiter
	process := fmt.Sprintf("%s#%d", processName(t.telemetry), transportSeq.Add(1))
	t.sink = newEventSink(process, t.telemetry, o.loggers, o.handler)
	t.configured = pt
	t.policies.Store(pt)
	required := o.config.Store.Required
	switch {
	case o.store != nil:
		t.sh = newSharing(o.store, false, o.config.Store, t.reg.maxBare, process, o.tweaks)
	case o.config.Store.URL != "":
		s, err := OpenStore(o.config.Store.URL)
		if err != nil {
			if required {
				return nil, err
			}
			// Not required: run under local protection, and say why.
			t.storeErr.Store(&err)
			if _, perr := StorePath(o.config.Store.URL); perr != nil {
				// A URL of the wrong form never opens.
				t.log.Warn("hostbreaker: store unavailable; running without it", "err", err)
				break
			}
			// Opened again by the background goroutine (see openStore);
			// decisions made meanwhile are queued for it.
			t.log.Warn("hostbreaker: store unavailable; requests continue under local protection, opening it again later", "err", err)
			s = nil
		}
		t.sh = newSharing(s, true, o.config.Store, t.reg.maxBare, process, o.tweaks)
		t.sh.url = o.config.Store.URL
	}
	if sh := t.sh; sh != nil {
		t.fleetStarts = sh.starts.Load() != nil
		if sh.store == nil && !sh.noFleetStart && !sh.tweaks.noFleetStart {
			_, err := StorePath(sh.url) // a store that opens later
			t.fleetStarts = err == nil
		}
	}
	if t.sh != nil && t.sh.store != nil {
		// Start with what the store knows: a host still cooling down after a
		// restart is rejected from the first request. A store that does not
		// answer in time (storeTimeout for the whole read) is read again by
		// the background goroutine.
		ctx, cancel := context.WithTimeout(context.Background(), storeTimeout)
		err := t.pull(ctx)
		cancel()
		if err != nil && required {
			if t.sh.owned {
				t.sh.store.Close()
			}
			return nil, fmt.Errorf("hostbreaker: store required: %w", err)
		}
	}
	mp := o.meters
	if mp == nil {
		mp = otel.GetMeterProvider()
	}
	if t.tel, err = newTelemetry(t, mp); err != nil {
		t.log.Warn("hostbreaker: metrics unavailable", "err", err)
	}
	t.storeCtx, t.stopStore = context.WithCancel(context.Background())
	t.wg.Add(1)
	go t.loop()
	return t, nil
}

// transportSeq numbers the Transports of this process, so that each has a
// name of its own in events, the journal and the store.
var transportSeq atomic.Uint64

// StoreErr returns the error of the Transport's last exchange with its
// store, or nil when that exchange succeeded or there is no store. Store
// errors never fail requests; this is how a program sees them without a
// logger. It is safe for concurrent use.
func (t *Transport) StoreErr() error {
	if p := t.storeErr.Load(); p != nil {
		return *p
	}
	return nil
}

// Close stops the Transport's background goroutines and waits for them,
// after a last attempt to write pending changes to the store. It returns
// within about 2s (the store timeout) however many changes are pending and
// whatever the store does, as long as the store honours its contexts (both
// of OpenStore's do). It closes the
// store only if the Transport opened it from Config.Store.URL. Requests made
// after Close still work, under local protection. Close does not close the
// base transport. It is safe to call more than once.
func (t *Transport) Close() error {
	var err error
	t.closeOnce.Do(func() {
		t.closeBy = time.Now().Add(storeTimeout)
		t.stopStore()
		close(t.done)
		t.wg.Wait()
		t.tel.close()
		if t.sh != nil && t.sh.owned && t.sh.store != nil {
			err = t.sh.store.Close()
		}
	})
	t.wg.Wait()
	return err
}

// RoundTrip implements http.RoundTripper. It sends req through the base
// transport unless the host is cooling down or the (host, role) breaker
// rejects it; then it closes the request body and returns an *OpenError.
// Responses are returned whatever their status; req is not modified. The
// outcome is decided when the response headers arrive, and a body that
// breaks later (a read error other than the caller's cancellation) turns
// it into a failure then (body.go). On a host with MaxConcurrent, the
// request holds a slot until its body is closed or read to the end.
func (t *Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.URL == nil {
		closeBody(req)
		return nil, fmt.Errorf("hostbreaker: request has no URL")
	}
	role := RoleFromContext(req.Context())
	// The registry holds canonical names only, so a host without a port
	// that it finds as written needs no normalization.
	host := req.URL.Host
	var e *entry
	if strings.IndexByte(host, ':') < 0 {
		e = t.reg.lookup(host, role)
	}
	if e == nil {
		var err error
		if host, err = normalizeHost(req.URL.Scheme, host); err != nil {
			closeBody(req)
			return nil, fmt.Errorf("hostbreaker: %w", err)
		}
		if e = t.reg.lookup(host, role); e == nil {
			if e = t.reg.create(host, role, t.resolve, t.now()); e == nil {
				return t.roundTripUntracked(req, host, role)
			}
		}
	}
	if e.flags.Load()&flagUsed == 0 {
		e.flags.Or(flagUsed)
	}
	p := e.pol.Load()
	if p.extras&extraSlots != 0 {
		return t.roundTripSlot(req, e, p)
	}
	return t.send(req, e, p, nil)
}

// extrasOfTransport returns the extras bits (see extraSlots) that a
// Transport with the classifier c adds to every policy's.
func extrasOfTransport(c Classifier) uint8 {
	if c != nil {
		return extraClassifier
	}
	return 0
}

// roundTripSlot sends req to e's host, which has a concurrency limit (p),
// once it holds a slot there.
func (t *Transport) roundTripSlot(req *http.Request, e *entry, p *resolved) (*http.Response, error) {
	sl, err := t.takeSlot(req, e, p)
	if err != nil {
		closeBody(req)
		return nil, err
	}
	// Given back when the round trip ends (or panics), unless the
	// response's body took it (wrapBody). A host in shadow mode may send
	// without one (takeSlot).
	defer func() {
		if sl != nil && !sl.handed {
			sl.release()
		}
	}()
	return t.send(req, e, p, sl)
}

// send sends req to e's host under p, e's policy when the request began,
// holding sl, its slot at the host's concurrency limit (nil for none): it
// waits for the request's turn at the host's limiter, admits it at e's
// breaker, calls the base and records the outcome. A RoundTrip without a slot has no defer but a half-open probe's:
// RoundTrip's many returns would otherwise turn its defers into runtime
// calls on every request.
func (t *Transport) send(req *http.Request, e *entry, p *resolved, sl *slot) (*http.Response, error) {
	var tn turn // the request's turn at the host's limiter; none for an unlimited host
	viaStart := false
	if lim := e.host.lim.Load(); lim != nil {
		var err error
		if tn, err = t.wait(req, e, lim); err != nil {
			closeBody(req)
			return nil, err
		}
	} else if t.fleetStarts && e.flags.Load()&flagStarted == 0 {
		var err error
		if viaStart, err = t.fleetStart(req.Context(), e, p); err != nil {
			closeBody(req)
			return nil, err
		}
	}
	adm, rej := t.admit(e)
	if rej != nil {
		if tn.lim != nil {
			tn.cancel() // a cooldown began while it waited: its turn is given back
		}
		if p.extras&extraShadow == 0 {
			e.reject(rej.Reason)
			closeBody(req)
			return nil, rej
		}
		// Shadow mode: counted as a rejection it would have been, and
		// sent; its outcome is counted but not fed to the breaker.
		e.wouldReject(rej.Reason)
		adm = admission{st: shadowSt}
	}
	if tn.lim != nil {
		adm.turn = &tn
	}
	if p.extras&extraSlow != 0 || viaStart {
		adm.began = t.now() // a throttle's stop of the start says when it was sent
	} else if _, ok := req.Context().Deadline(); ok {
		adm.began = t.now()
	}
	recorded := false
	if adm.probe {
		// A half-open permit must be given back even if base panics.
		defer func() {
			if !recorded {
				e.releaseProbe(adm)
			}
		}()
	}
	resp, err := t.base.RoundTrip(req)
	recorded = true
	if resp == nil && err == nil {
		e.record(adm, outcomeNeutral, false, &t.clock) // gives a probe's slot back
		return nil, t.nilResponse()
	}
	// A body is wrapped only when it holds a slot or is to be watched for
	// read errors (body.go): on a healthy host, one response in 16.
	if o, counted, n := t.record(e, adm, req, resp, err); sl != nil || o != outcomeFailure && e.watchBody(n) {
		if t.wrapBody(e, admission{st: adm.st, probe: adm.probe, began: adm.began}, req, resp, o, counted, sl) { // without its turn, on this frame
			sl.handed = true
		}
	}
	return resp, err
}

// admit lets a request to e in, or returns its rejection: the host's
// cooldown first (cooldown.go), then the breaker (breaker.go), whose
// transition it reports. The healthy path is two atomic loads.
func (t *Transport) admit(e *entry) (admission, *OpenError) {
	hu := e.host.until.Load()
	if hu == 0 {
		if adm, ok := e.admitClosed(); ok {
			return adm, nil // the hot path: two atomic loads
		}
	} else if rej := e.host.gate(hu, e.role, &t.clock); rej != nil {
		return admission{}, rej
	}
	adm, halfOpened, rej := e.admit(&t.clock)
	if halfOpened {
		t.emitTransition(e, transition{from: StateOpen, to: StateHalfOpen}, cause{})
	}
	return adm, rej
}

// wait waits for the request's turn at the host's limiter (see
// limiter.acquire), within the policy's MaxWait and half the time left
// before the request's deadline, and returns the turn. (A request sent at
// its deadline would time out, a timeout counts as the host's failure, and
// its turn would be wasted; half leaves the round trip as much time as the
// wait took.) A request whose turn is further away is rejected at once
// with ReasonRateLimited and its turn as Until; one whose context ends
// while it waits gives its turn back. A host that is cooling down gives no
// turns: admit rejects the request (the zero turn, nil).
func (t *Transport) wait(req *http.Request, e *entry, lim *limiter) (turn, error) {
	now := t.now()
	if e.host.coolingDown(now) {
		return turn{}, nil
	}
	ctx := req.Context()
	var deadline int64
	if d, ok := ctx.Deadline(); ok {
		if left := int64(time.Until(d)); left > 0 {
			deadline = now + left/2
		} // else already past: the base reports it
	}
	tn, err, shared := t.sharedTurn(ctx, e, lim, now, deadline)
	if !shared {
		var ch rateChange
		var changed bool
		tn, ch, changed, err = lim.acquire(ctx, &t.clock, now, deadline)
		if changed {
			t.emitRate(e.host.name, ch)
		}
	}
	switch {
	case err == errTurnTooFar:
		if e.pol.Load().shadow {
			e.wouldReject(ReasonRateLimited) // shadow mode: sent without a turn
			return turn{}, nil
		}
		e.reject(ReasonRateLimited)
		return turn{}, &OpenError{Host: e.host.name, Role: e.role, Reason: ReasonRateLimited, Until: t.at(tn.at)}
	case err != nil:
		return turn{}, fmt.Errorf("hostbreaker: %s: waiting for a turn: %w", e.host.name, err)
	}
	return tn, nil
}

// nilResponse is the error for a base that returned neither a response nor
// an error, which the RoundTripper contract forbids; such a request counts
// neither way.
func (t *Transport) nilResponse() error {
	return fmt.Errorf("hostbreaker: %T returned a nil *Response with a nil error", t.base)
}

// roundTripUntracked sends req without a breaker, because the registry is
// full of entries that must be kept. The host's cooldown still applies, a
// Retry-After still cools the host, and the request is counted.
func (t *Transport) roundTripUntracked(req *http.Request, host, role string) (*http.Response, error) {
	now := t.now()
	if h := t.reg.host(host); h != nil && h.coolingDown(now) {
		if rej := h.rejection(role, &t.clock, now); rej != nil && !t.resolve(host, role).shadow {
			closeBody(req)
			return nil, rej
		}
	}
	t.untracked.Add(1)
	// Logged at most once per errorLogInterval; untrackedLogged holds the
	// time of the last log plus one, so that zero means never.
	if last := t.untrackedLogged.Load(); last == 0 || now+1-last >= int64(errorLogInterval) {
		if t.untrackedLogged.CompareAndSwap(last, now+1) {
			t.emit(event{kind: evUntracked}) // wakes logCounters
		}
	}
	resp, err := t.base.RoundTrip(req)
	if resp == nil && err == nil {
		return nil, t.nilResponse()
	}
	if resp != nil && err == nil && mayRetryAfter(resp.StatusCode) {
		t.obeyRetryAfter(host, t.resolve(host, role), resp)
	}
	return resp, err
}

func closeBody(req *http.Request) {
	if req.Body != nil {
		req.Body.Close()
	}
}

// record counts the outcome of an admitted request and applies its
// effects, in this order: the host's cooldown (a usable Retry-After cools
// the host and counts neither way: the server said when to come back; quota
// headers), the host's limiter (a throttle slows it down, a success lets it
// grow back), then the breaker and the rolling window. It reports the
// breaker's transition, and returns the outcome it counted and when the
// rate rules' window counted it (0 if none did: see transition.counted),
// and on the healthy path the success count it left (0 otherwise: see
// watchBody).
func (t *Transport) record(e *entry, adm admission, req *http.Request, resp *http.Response, err error) (outcome, int64, uint64) {
	h, p := e.host, e.pol.Load()
	x := p.extras | t.extras // 0 for a host that uses none of slow_call, a rate rule, shadow mode or a classifier
	o := classify(p, req, resp, err)
	var slow bool
	if adm.began != 0 {
		waited := t.now() - adm.began
		slow = p.SlowCall > 0 && waited > int64(p.SlowCall)
		if o == outcomeFailure && callersDeadline(req, err, waited, p.SlowCall) {
			o = outcomeNeutral
		}
	}
	// The healthy path: a success in closed with no failure counted, which
	// changes nothing but a counter.
	healthy := o == outcomeSuccess && e.healthy(adm, x)
	if err == nil {
		code := resp.StatusCode
		var cooled, slowing bool
		if code >= 400 {
			cooled = t.obeyRetryAfter(h.name, p, resp)
			var slowed bool
			if p.isThrottle(code) {
				slowing, slowed = t.slowDown(h, p, adm, code)
			}
			if cooled || slowed {
				t.slowFleet(h, slowed, cooled)
			}
			if (cooled || p.isThrottle(code)) && t.fleetStarts && adm.turn == nil && h.start.Load() == hostStarting {
				// The fleet's start ends here: a request sent by it (a
				// limiter's is not) was refused.
				t.stopStart(h, adm.began)
			}
		}
		if t.quotaDue(e, resp, healthy) && t.obeyQuota(e, p, resp) && code >= 400 {
			cooled = cooled || p.isThrottle(code)
		}
		switch {
		case code >= 400 && p.isThrottle(code):
			o = throttleOutcome(o, cooled, slowing)
		case cooled: // a usable Retry-After on a 503 (or a 429 that is not a throttle status)
			o = outcomeNeutral
		}
		healthy = healthy && o == outcomeSuccess
	}
	if x&extraClassifier != 0 {
		if v := t.classify(req, resp, err); v != CountDefault {
			o = v.outcome()
			healthy = o == outcomeSuccess && e.healthy(adm, x)
		}
	}
	if o == outcomeSuccess {
		if lim := adm.limiterOf(h); lim != nil {
			if ch, ok := lim.success(adm.sentAt(), t.now()); ok {
				t.emitRate(h.name, ch)
			}
		}
	}
	if healthy {
		return o, 0, e.recordHealthy()
	}
	c := e.cause(req, resp, err)
	if o == outcomeFailure && e.evicted() {
		// The entry was evicted while the request was in flight (it was
		// idle then): the failure goes to the live one. A success or a
		// neutral outcome would change nothing in an idle entry.
		if e, adm = t.reattach(e); e == nil {
			return o, 0, 0
		}
	}
	tr := e.record(adm, o, slow, &t.clock)
	if tr.changed() {
		t.emitTransition(e, tr, c)
	}
	if o == outcomeFailure && t.rolling.Enabled {
		t.rollingFailure(e.host)
	}
	return o, tr.counted, 0
}

// quotaDue reports whether the quota headers of resp, a response of e,
// are to be read: on every response off the healthy path and of an entry
// that has sent them, and otherwise on its 1st, 17th, 33rd… success to find
// out whether it does: two header lookups on every response would cost
// more than the rest of the healthy path.
func (t *Transport) quotaDue(e *entry, resp *http.Response, healthy bool) bool {
	if !healthy {
		return true
	}
	return len(resp.Header) > 0 && ((e.successes.Load()+1)&quotaProbeMask == 1 || e.flags.Load()&flagQuota != 0)
}

// quotaProbeMask sets how often an entry that has not sent quota headers
// is checked for them: when its success count & mask is 1.
const quotaProbeMask = 15

// cause is what a failure was: a status code, or an error type.
type cause struct {
	status  int
	errType string // "timeout", or the error's Go type
}

// cause returns the cause of an outcome off the healthy path, and counts
// the rare ones (429s, 5xx, timeouts) in e's stats.
func (e *entry) cause(req *http.Request, resp *http.Response, err error) cause {
	var c cause
	switch {
	case err != nil:
		if isTimeout(req.Context(), err) {
			e.stats().timeouts.Add(1)
			c.errType = "timeout"
		} else {
			c.errType = fmt.Sprintf("%T", err)
		}
	case resp.StatusCode == http.StatusTooManyRequests:
		e.stats().status429.Add(1)
		c.status = resp.StatusCode
	case resp.StatusCode >= 500 && resp.StatusCode <= 599:
		e.stats().status5xx.Add(1)
		c.status = resp.StatusCode
	default:
		c.status = resp.StatusCode
	}
	return c
}

// reattach returns the live entry of an evicted entry's (host, role), and
// an admission in its current generation; nil when it cannot be tracked or
// is not closed (an outcome from before it opened would be stale).
func (t *Transport) reattach(old *entry) (*entry, admission) {
	name := old.host.name
	e := t.reg.lookup(name, old.role)
	if e == nil {
		if e = t.reg.create(name, old.role, t.resolve, t.now()); e == nil {
			return nil, admission{}
		}
	}
	st := e.st.Load()
	if phaseOf(st) != phaseClosed {
		return nil, admission{}
	}
	return e, admission{st: st}
}

// slowDown applies a throttling response of status to the host's limiter:
// the one that gave the request its turn, else h's, which it starts at the
// host's first throttle when its policy is adaptive. It reports whether the
// limiter slows down for it (see limiter.throttle), and whether its rate
// dropped.
func (t *Transport) slowDown(h *hostState, p *resolved, adm admission, status int) (slowing, dropped bool) {
	now := t.now()
	lim := adm.limiterOf(h)
	if lim == nil {
		if p.Adaptive != ToggleOn {
			return false, false
		}
		lim = h.learnLimiter(p, now)
	}
	ch, changed, slowing := lim.throttle(adm.sentAt(), now, h.until.Load(), time.Now().UnixNano(), status)
	if changed {
		t.emitRate(h.name, ch)
	}
	return slowing, changed && ch.rate < ch.prev
}

// startLimiter gives h a limiter when its policy p or the fleet's learnt
// rate wants one (see hostState.startLimiter). The registry calls it, under
// its lock, before a new entry's first request.
func (t *Transport) startLimiter(h *hostState, p *resolved) {
	if h.lim.Load() != nil {
		return
	}
	fr, fleet := t.fleetRate(h.name)
	if ch, ok := h.startLimiter(p, fr, fleet, t.now()); ok {
		t.emitRate(h.name, ch)
	}
}

// syncLimiter applies h's policy p to its limiter after a policy change
// (see hostState.syncLimiter). Callers hold registry.mu.
func (t *Transport) syncLimiter(h *hostState, p *resolved) {
	fr, fleet := t.fleetRate(h.name)
	if ch, ok := h.syncLimiter(p, fr, fleet, t.now()); ok {
		t.emitRate(h.name, ch)
	}
}

// expireLimiters forgets the limits learnt more than 15 minutes ago, and
// drops the limiters that have nothing left to do.
func (t *Transport) expireLimiters() {
	var hosts []*hostState
	t.reg.mu.Lock()
	t.reg.tab.Load().each(func(h *hostState) {
		if h.lim.Load() != nil {
			hosts = append(hosts, h)
		}
	})
	t.reg.mu.Unlock()
	now := t.now()
	for _, h := range hosts {
		if ch, ok := h.expireLimiter(now); ok {
			t.emitRate(h.name, ch)
		}
	}
}

// emitRate emits a rate change of host.
func (t *Transport) emitRate(host string, ch rateChange) {
	t.emit(event{kind: evRate, host: host, rate: ch.rate, prevRate: ch.prev, lastMax: ch.lastMax,
		note: ch.why, status: ch.status})
}

// emitTransition emits a transition of e's breaker; c is the cause of the
// failure that tripped it.
func (t *Transport) emitTransition(e *entry, tr transition, c cause) {
	t.emit(event{kind: evState, host: e.host.name, role: e.role, from: tr.from, to: tr.to, until: tr.until,
		failures: tr.failures, status: c.status, errType: c.errType, note: tr.rule})
}

// CloseIdleConnections closes the idle connections of the base transport,
// when it has such a method (as *http.Transport does).
func (t *Transport) CloseIdleConnections() {
	if c, ok := t.base.(interface{ CloseIdleConnections() }); ok {
		c.CloseIdleConnections()
	}
}

// event is a state change, handed from the request path to the background
// goroutine, which logs it (and, with a store, shares it). Events are rare:
// the closed, healthy path emits none.
type event struct {
	kind       eventKind
	at         time.Time // when it happened; set by emit
	host       string
	role       string
	from, to   State
	reason     Reason
	until      int64 // ns since epoch
	note       string
	remote     bool // learnt from the store: not shared again
	failures   int  // evState to open: the consecutive failures that tripped it
	status     int  // the last failure's status, or the Retry-After response's
	errType    string
	retryAfter time.Duration // evCooldown, evRetryAfter: as the server sent it

	rate, prevRate, lastMax float64 // evRate: the limiter's rates

	prevPolicy, policy string // evPolicy: the changed keys as TOML
}

type eventKind uint8

const (
	evState        eventKind = iota // a breaker changed state
	evCooldown                      // a host cooldown was set or extended
	evReset                         // a host was reset
	evUntracked                     // requests go without a breaker: wakes logCounters
	evDropped                       // a cooldown was dropped: too many hosts without an entry
	evPolicy                        // a policy was changed
	evRetryAfter                    // a usable Retry-After was received: recorded in the metrics
	evRate                          // a host's limiter changed its rate
	evResolveError                  // a policy did not resolve (a bug): logged
)

// emit shares ev with the store, if any, and queues it for logging
// without blocking; when the log queue is full, the event is dropped from
// the log and counted (the change itself has already happened, and store
// writes are queued separately).
func (t *Transport) emit(ev event) {
	if ev.at.IsZero() {
		ev.at = time.Now()
	}
	t.share(ev)
	select {
	case t.events <- ev:
	default:
		t.dropped.Add(1)
	}
}

// loop is the Transport's background goroutine: it logs events and, with
// a store, writes local decisions to it, reads other processes' decisions
// every poll interval or when the store signals a change, and publishes
// the breaker states. A store that failed to open is opened again, with
// backoff (see openStore).
//
// Each round of store operations has one deadline, storeTimeout, for all of
// them (see storeRound), and queries (Events) and Close are served before
// anything else: neither waits longer than the round in progress, however
// many records are pending and whatever the store does.
func (t *Transport) loop() {
	defer t.wg.Done()
	var tick <-chan time.Time
	var changes, kick <-chan struct{}
	var ticker *time.Ticker
	listen := func() {
		ticker = time.NewTicker(t.sh.poll)
		tick, changes, kick = ticker.C, t.sh.store.Changes(), t.sh.kick
	}
	var reopen <-chan time.Time
	var reopenTimer *time.Timer
	var backoff time.Duration
	switch {
	case t.sh == nil:
	case t.sh.store != nil:
		listen()
	default:
		backoff = t.sh.poll
		reopenTimer = time.NewTimer(backoff)
		reopen = reopenTimer.C
	}
	defer func() {
		if ticker != nil {
			ticker.Stop()
		}
		if reopenTimer != nil {
			reopenTimer.Stop()
		}
	}()
	sweep := time.NewTicker(bareSweepInterval)
	defer sweep.Stop()
	summary := time.NewTicker(t.sink.cfg.SummaryInterval)
	defer summary.Stop()
	ctx := t.storeCtx
	var logs counterLogs
	for {
		select {
		case <-t.done:
			t.finish(&logs)
			return
		case q := <-t.queries:
			for len(t.events) > 0 { // what happened before the query
				t.handle(<-t.events)
			}
			q()
			continue
		default:
		}
		select {
		case <-sweep.C:
			t.reg.pruneBare(t.now())
			t.expireLimiters()
			t.logCounters(&logs)
		case now := <-summary.C:
			t.summarize(now)
		case q := <-t.queries:
			q()
		case <-t.done:
			t.finish(&logs)
			return
		case ev := <-t.events:
			t.handle(ev)
			t.logCounters(&logs)
		case <-reopen:
			if !t.openStore() {
				backoff = min(2*backoff, maxStoreOpenBackoff)
				reopenTimer.Reset(backoff)
				continue
			}
			reopen = nil
			listen()
			t.storeRound(ctx, t.sync)
		case <-kick:
			t.storeRound(ctx, t.flush)
		case <-changes:
			t.storeRound(ctx, func(ctx context.Context) { t.pull(ctx) })
		case <-tick:
			t.storeRound(ctx, t.sync)
		}
	}
}

// sync is the background goroutine's round with the store at each poll:
// it writes what is pending, reads what changed, publishes the states and
// appends the journal.
func (t *Transport) sync(ctx context.Context) {
	t.flush(ctx)
	t.pull(ctx)
	t.publish(ctx)
	t.flushJournal(ctx)
}

// storeRound runs f with a context that ends storeTimeout from now, or when
// Close is called: one deadline for every store operation of the round.
func (t *Transport) storeRound(ctx context.Context, f func(context.Context)) {
	ctx, cancel := context.WithTimeout(ctx, storeTimeout)
	defer cancel()
	f(ctx)
}

// finish is the background goroutine's last work, when Close was called:
// it logs the events left, the last summary and counters, and makes one
// last attempt to write what is pending to the store, by closeBy.
func (t *Transport) finish(logs *counterLogs) {
	for len(t.events) > 0 {
		t.handle(<-t.events)
	}
	t.summarize(time.Now()) // the last, partial one
	t.logCounters(logs)
	if t.sh != nil && t.sh.store != nil {
		// One last attempt, bounded as a whole: Close must not hang
		// on a store that is down.
		fctx, cancel := context.WithDeadline(context.Background(), t.closeBy)
		t.flush(fctx)
		t.flushJournal(fctx)
		t.withdrawConfig(fctx)
		cancel()
	}
}

// WithStore shares cooldowns, resets and (with share_trips) breaker trips
// with every Transport that uses the same Store, and publishes this
// Transport's breaker states for `breaker show`. It wins over the store URL
// of the Config. The Transport does not close a Store given this way; it
// closes one it opened from Config.Store.URL. A nil Store is ignored.
//
// NewTransport reads the store once before it returns, so that a host still
// cooling down after a restart is rejected from the first request; it waits
// at most 2s for a store that does not answer, and reads it again later.
func WithStore(s Store) Option {
	return optionFunc(func(o *options) {
		if s != nil {
			o.store = s
		}
	})
}
