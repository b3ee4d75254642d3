package hostbreaker

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"slices"
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
	base    http.RoundTripper
	log     *slog.Logger
	rolling Rolling // with defaults; Enabled false means off
	epoch   time.Time
	reg     *registry

	mu         sync.Mutex                  // serializes policy updates
	configured *policyTable                // the configuration with UpdateHostPolicy's changes; guarded by mu
	overrides  map[string]Policy           // tuned overrides read from the store, by Hosts key; guarded by mu
	policies   atomic.Pointer[policyTable] // in force: configured with the overrides laid over it

	sh *sharing // nil without a store

	telemetry TelemetryConfig // with defaults; immutable
	tel       *telemetry      // nil if the meter provider failed

	events  chan event
	dropped atomic.Uint64 // events dropped because the queue was full
	sink    *eventSink    // owned by the background goroutine
	queries chan func()   // run on the background goroutine (Events)

	untracked        atomic.Uint64                        // requests sent without a breaker: the registry was full
	untrackedLogged  atomic.Int64                         // when that was last logged, ns since the epoch
	cooldownsDropped atomic.Uint64                        // cooldowns dropped past the bound on hosts without an entry
	storeErr         atomic.Pointer[error]                // the last store exchange's error; nil if it succeeded
	fleet            atomic.Pointer[map[string]fleetRate] // rates other processes learnt, by host; nil without a store
	done             chan struct{}
	wg               sync.WaitGroup
	closeOnce        sync.Once
}

var _ http.RoundTripper = (*Transport)(nil)

// Option configures a Transport. A nil Option is ignored.
type Option interface{ apply(*options) }

type options struct {
	config  Config
	logger  *slog.Logger
	store   Store
	meters  metric.MeterProvider
	loggers otellog.LoggerProvider
	handler func(Event)
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
		base:    base,
		log:     o.logger,
		epoch:   time.Now().Add(-time.Second), // so that no time on the request path is 0, which means "none"
		reg:     newRegistry(maxHosts),
		events:  make(chan event, 1024),
		queries: make(chan func()),
		done:    make(chan struct{}),
		rolling: o.config.Rolling.withDefaults(),

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
		t.sh = newSharing(o.store, false, o.config.Store, t.reg.maxBare, process)
	case o.config.Store.URL != "":
		s, err := OpenStore(o.config.Store.URL)
		if err != nil {
			if required {
				return nil, err
			}
			// Not required: run under local protection, and say why.
			t.storeErr.Store(&err)
			t.log.Warn("hostbreaker: store unavailable; running without it", "err", err)
			break
		}
		t.sh = newSharing(s, true, o.config.Store, t.reg.maxBare, process)
	}
	if t.sh != nil {
		// Start with what the store knows: a host still cooling down after a
		// restart is rejected from the first request. A store that does not
		// answer in time is read again by the background goroutine.
		if err := t.pull(context.Background()); err != nil && required {
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
// after a last attempt to write pending changes to the store. It closes the
// store only if the Transport opened it from Config.Store.URL. Requests made
// after Close still work, under local protection. Close does not close the
// base transport. It is safe to call more than once.
func (t *Transport) Close() error {
	var err error
	t.closeOnce.Do(func() {
		close(t.done)
		t.wg.Wait()
		t.tel.close()
		if t.sh != nil && t.sh.owned {
			err = t.sh.store.Close()
		}
	})
	t.wg.Wait()
	return err
}

// now returns the monotonic time since the Transport's epoch, in ns.
func (t *Transport) now() int64 { return int64(time.Since(t.epoch)) }

// maxWait bounds every deadline the Transport sets, so that no duration from
// a configuration, a server or an operator can overflow the clock or a
// store's timestamps. Nobody waits ten years for a host.
const maxWait = 10 * 365 * 24 * time.Hour

// after returns the deadline d after now (ns since the epoch), d capped at
// maxWait.
func (t *Transport) after(now int64, d time.Duration) int64 {
	return now + int64(min(d, maxWait))
}

// at converts a time since the epoch to a time.Time.
func (t *Transport) at(ns int64) time.Time { return t.epoch.Add(time.Duration(ns)) }

// RoundTrip implements http.RoundTripper. It sends req through the base
// transport unless the host is cooling down or the (host, role) breaker
// rejects it; then it closes the request body and returns an *OpenError.
// Responses are returned whatever their status; req is not modified. The
// outcome is decided when the response headers arrive: reading the body
// later, or failing to, does not count.
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
	var sent int64 // when the limiter let the request go; 0 without one
	lim := e.host.lim.Load()
	if lim != nil {
		var err error
		if sent, err = t.await(req, e, lim); err != nil {
			closeBody(req)
			return nil, err
		}
	}
	adm, rej := t.admit(e)
	if rej != nil {
		if sent != 0 {
			lim.cancel() // a cooldown began while it waited: its turn is given back
		}
		e.reject(rej.Reason)
		closeBody(req)
		return nil, rej
	}
	adm.sent = sent
	recorded := false
	if adm.probe {
		// A half-open permit must be given back even if base panics.
		defer func() {
			if !recorded {
				t.releaseProbe(e, adm)
			}
		}()
	}
	resp, err := t.base.RoundTrip(req)
	recorded = true
	if resp == nil && err == nil {
		t.apply(e, adm, outcomeNeutral, cause{}) // gives a probe's slot back
		return nil, t.nilResponse()
	}
	t.record(e, adm, req, resp, err)
	return resp, err
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
		if rej := t.hostRejection(h, role, now); rej != nil {
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
	if resp != nil && err == nil && throttled(resp.StatusCode) {
		t.obeyRetryAfter(host, t.resolve(host, role), resp)
	}
	return resp, err
}

func closeBody(req *http.Request) {
	if req.Body != nil {
		req.Body.Close()
	}
}

// resolve returns the current effective policy of (host, role).
func (t *Transport) resolve(host, role string) *resolved {
	p, err := t.policies.Load().resolve(host, role)
	if err != nil {
		// Validation checks every combination that can occur, so this is a
		// bug; fall back to the defaults rather than fail requests.
		t.log.Error("hostbreaker: resolve policy", "host", host, "role", role, "err", err)
		p, _ = (&policyTable{defaults: builtinPolicy()}).resolve(host, role)
	}
	return p
}

// hostRejection returns the rejection for h's cooldown, reading the
// deadline and its reason together; nil if a reset ended it meanwhile.
func (t *Transport) hostRejection(h *hostState, role string, now int64) *OpenError {
	h.mu.Lock()
	until, reason := h.until.Load(), h.reason
	h.mu.Unlock()
	if until == 0 || now >= until {
		return nil
	}
	return &OpenError{Host: h.name, Role: role, Reason: reason, Until: t.at(until)}
}

// record counts the outcome of an admitted request and applies its
// effects: a usable Retry-After cools the host and counts neither way (the
// server said when to come back), other outcomes go to the breaker and the
// rolling window.
func (t *Transport) record(e *entry, adm admission, req *http.Request, resp *http.Response, err error) {
	p := e.pol.Load()
	o := classify(p, req, resp, err)
	if err == nil && resp.StatusCode >= 400 {
		if throttled(resp.StatusCode) && t.obeyRetryAfter(e.host.name, p, resp) {
			o = outcomeNeutral
		}
		if p.throttles(resp.StatusCode) {
			t.throttle(e.host, p, adm.sent, resp.StatusCode)
		}
		t.obeyRateLimitReset(e, p, resp)
	}
	if o == outcomeSuccess {
		if lim := e.host.lim.Load(); lim != nil {
			t.limitSuccess(e.host.name, lim, adm.sent)
		}
		if !adm.probe && e.fails.Load() == 0 {
			// The healthy path. The quota headers are read on every
			// response of an entry that has sent them, and on its 1st,
			// 17th, 33rd… to find out whether it does: two header lookups
			// on every response would cost more than the rest of the path.
			if n := e.successes.Add(1); (n&quotaProbeMask == 1 || e.flags.Load()&flagQuota != 0) && len(resp.Header) > 0 {
				t.obeyRateLimitReset(e, p, resp)
			}
			return
		}
	}
	if err == nil && resp.StatusCode < 400 {
		t.obeyRateLimitReset(e, p, resp)
	}
	t.recordSlow(e, adm, req, resp, err, o)
}

// quotaProbeMask sets how often an entry that has not sent quota headers
// is checked for them: when its success count & mask is 1.
const quotaProbeMask = 15

// recordSlow is record past the healthy path: the cause of a failure, the
// rare counters, and the breaker.
func (t *Transport) recordSlow(e *entry, adm admission, req *http.Request, resp *http.Response, err error, o outcome) {
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
	if o == outcomeFailure && e.evicted() {
		// The entry was evicted while the request was in flight (it was
		// idle then): the failure goes to the live one. A success or a
		// neutral outcome would change nothing in an idle entry.
		if e, adm = t.reattach(e); e == nil {
			return
		}
	}
	t.apply(e, adm, o, c)
	if o == outcomeFailure && t.rolling.Enabled {
		t.rollingFailure(e.host)
	}
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

// obeyRetryAfter applies the Retry-After of a 429 or 503 response to the
// whole host, capped by the policy, and reports whether the header was
// usable.
func (t *Transport) obeyRetryAfter(host string, p *resolved, resp *http.Response) bool {
	if !throttled(resp.StatusCode) {
		return false
	}
	v := resp.Header.Get("Retry-After")
	if v == "" || p.RetryAfterCap <= 0 {
		return false
	}
	wall := time.Now()
	d, ok := retryAfter(v, wall)
	if !ok {
		return false
	}
	t.emit(event{kind: evRetryAfter, host: host, retryAfter: d}) // every value received, for the histogram
	t.setCooldown(host, cooldown{until: t.after(t.now(), min(d, p.RetryAfterCap)), reason: ReasonRetryAfter,
		at: wall.UnixNano(), status: resp.StatusCode, retryAfter: d})
	return true
}

// throttled reports whether a response with code may carry a Retry-After
// that cools the host: 429 and 503.
func throttled(code int) bool {
	return code == http.StatusTooManyRequests || code == http.StatusServiceUnavailable
}

// rollingFailure adds a failure to the host's rolling window and puts the
// host in cooldown when the window holds ThresholdFailures failures.
func (t *Transport) rollingFailure(h *hostState) {
	r := t.rolling
	now := t.now()
	h.mu.Lock()
	if len(h.window) != r.ThresholdFailures {
		h.window = make([]int64, r.ThresholdFailures)
		h.wnext, h.wn = 0, 0
	}
	n := int32(len(h.window))
	h.window[h.wnext] = now
	h.wnext = (h.wnext + 1) % n
	h.wn = min(h.wn+1, n)
	oldest := h.window[h.wnext%n] // the slot to be overwritten next is the oldest
	trip := h.wn == n && now-oldest <= int64(r.Window)
	if trip {
		h.wn = 0 // empty the window so that stale failures cannot trip it again
	}
	h.mu.Unlock()
	if trip {
		t.setCooldown(h.name, cooldown{until: t.after(now, r.Cooldown), reason: ReasonRollingWindow, at: time.Now().UnixNano()})
	}
}

// setCooldown puts host in cooldown c (see hostState.apply) and reports
// whether it did. A host that has no entry gets a state of its own, within
// the registry's bound on such hosts; past it the cooldown that ends
// soonest is dropped, counted and logged. It works under the registry
// lock, so that an eviction cannot drop the host before it cools down.
func (t *Transport) setCooldown(host string, c cooldown) bool {
	now := t.now()
	t.reg.mu.Lock()
	h, dropped := t.reg.bareHostLocked(host, c.until, now)
	applied := h != nil && h.apply(c, now)
	t.reg.mu.Unlock()
	if dropped != "" {
		t.cooldownsDropped.Add(1)
		t.emit(event{kind: evDropped, host: dropped})
	}
	if applied {
		if lim := h.lim.Load(); lim != nil {
			lim.hold(c.until, c.manual)
		}
		t.emit(event{kind: evCooldown, host: host, reason: c.reason, until: c.until, note: c.note, remote: c.remote,
			status: c.status, retryAfter: c.retryAfter})
	}
	return applied
}

// Open puts host (all roles) in a manual cooldown for d, with note for the
// operators. It replaces any current cooldown of the host, even a longer
// one; d is capped at ten years. host may be a name, host:port or a URL
// (see NormalizeHost). With a store, every Transport that shares it applies
// the cooldown too. It returns an error for a host that does not parse, a
// d that is not positive, or when the registry's bound on hosts that only
// cool down is reached and every one of them ends later.
func (t *Transport) Open(host string, d time.Duration, note string) error {
	name, err := NormalizeHost(host)
	if err != nil {
		return fmt.Errorf("hostbreaker: open %q: %w", host, err)
	}
	if d <= 0 {
		return fmt.Errorf("hostbreaker: open %s: duration %v is not positive", name, d)
	}
	c := cooldown{until: t.after(t.now(), d), reason: ReasonManual, note: note, manual: true, at: time.Now().UnixNano()}
	if !t.setCooldown(name, c) {
		return fmt.Errorf("hostbreaker: open %s: %d hosts cool down for longer already (the bound on hosts without a breaker)", name, t.reg.maxBare)
	}
	return nil
}

// Reset clears every cooldown of host, closes all its breakers and empties
// its rolling window. host may be a name, host:port or a URL (see
// NormalizeHost); one that does not parse is an error. With a store, every
// Transport that shares it resets the host too.
func (t *Transport) Reset(host string) error {
	name, err := NormalizeHost(host)
	if err != nil {
		return fmt.Errorf("hostbreaker: reset %q: %w", host, err)
	}
	t.resetLocal(name, time.Now().UnixNano(), false)
	return nil
}

// resetLocal resets a normalized host in this Transport: its breakers, and
// its cooldown if that was decided at or before at (wall-clock unix ns), so
// that a reset read late from the store does not clear a newer cooldown.
// remote says that the reset came from the store.
func (t *Transport) resetLocal(name string, at int64, remote bool) {
	h, entries := t.reg.hostEntries(name)
	if h != nil {
		h.mu.Lock()
		if h.setAt <= at {
			h.until.Store(0)
			h.reason, h.note = "", ""
			if lim := h.lim.Load(); lim != nil {
				lim.hold(t.now(), true) // the cooldown's hold ends with it
			}
		}
		h.wn = 0
		h.mu.Unlock()
		for _, e := range entries {
			e.reset()
		}
	}
	t.emit(event{kind: evReset, host: name, remote: remote})
}

// CloseIdleConnections closes the idle connections of the base transport,
// when it has such a method (as *http.Transport does).
func (t *Transport) CloseIdleConnections() {
	if c, ok := t.base.(interface{ CloseIdleConnections() }); ok {
		c.CloseIdleConnections()
	}
}

// UpdateHostPolicy changes a policy while the Transport runs: the fields
// that p sets (non-zero, see Policy) and its roles are laid over the policy
// of the Hosts key host, which is written as in Config.Hosts: an exact host
// (a name, host:port or URL) or a wildcard "*.example.org". It applies to
// exactly the (host, role)s that the key matches (see Config), those that
// exist and those created later: once it returns, every one of them uses
// the new policy. Breaker state is kept: an open breaker stays open until
// its current deadline, cooldowns are kept, and a closed breaker keeps its
// failure count (up to one less than the new FailMax). An invalid key or
// result is a *ConfigError and changes nothing.
func (t *Transport) UpdateHostPolicy(host string, p Policy) error {
	key, err := hostsKey(host)
	if err != nil {
		return &ConfigError{Key: "hosts." + quoteKey(host), Msg: err.Error()}
	}
	if err := checkPolicy("hosts."+quoteKey(key), p); err != nil {
		return err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	before := t.policies.Load().keyPolicy(key)
	configured, _, err := t.configured.withUpdate(key, p)
	if err != nil {
		return err
	}
	t.configured = configured
	t.applyPolicies()
	t.emit(event{kind: evPolicy, host: key, prevPolicy: policyTOML(before, p),
		policy: policyTOML(t.policies.Load().keyPolicy(key), p), note: "UpdateHostPolicy"})
	return nil
}

// applyPolicies publishes the policy table in force, t.configured with the tuned
// overrides laid over it, and switches every entry to it. Callers hold t.mu.
//
// Entries are created under the registry lock with the policy table of
// that moment: publishing the table and updating the entries under the
// same lock leaves no entry behind.
func (t *Transport) applyPolicies() {
	pt := t.configured
	for _, key := range slices.Sorted(maps.Keys(t.overrides)) {
		npt, _, err := pt.withUpdate(key, t.overrides[key])
		if err != nil {
			// Tune validated it against its bounds; a configuration that
			// conflicts with it (a status list, say) keeps its values.
			t.log.Warn("hostbreaker: tuned policy not applied", "key", key, "err", err)
			continue
		}
		pt = npt
	}
	t.reg.mu.Lock()
	defer t.reg.mu.Unlock()
	t.policies.Store(pt)
	t.reg.tab.Load().each(func(h *hostState) {
		h.each(func(e *entry) {
			np, _ := pt.resolve(h.name, e.role)
			e.setPolicy(np)
		})
		if hp, err := pt.resolve(h.name, ""); err == nil && !h.bare() {
			t.syncLimiter(h, hp) // the rate limits are host-wide: any role's policy has them
		}
	})
}

// Policy returns the effective policy of (host, role) now: every field
// resolved, from the built-in defaults, the configuration, UpdateHostPolicy
// and the tuned overrides read from the store, in that order. Its Roles is
// nil. host may be a name, host:port or a URL. It is safe for concurrent
// use.
func (t *Transport) Policy(host, role string) (Policy, error) {
	name, err := NormalizeHost(host)
	if err != nil {
		return Policy{}, fmt.Errorf("hostbreaker: policy of %q: %w", host, err)
	}
	p, err := t.policies.Load().resolve(name, role)
	if err != nil {
		return Policy{}, err
	}
	out := p.Policy
	out.FailureStatuses = slices.Clone(out.FailureStatuses)
	out.NeutralStatuses = slices.Clone(out.NeutralStatuses)
	return out, nil
}

// Status is the state of one (host, role) at the time of a Snapshot: a
// value, detached from the Transport.
type Status struct {
	Host  string
	Role  string
	State State     // effective: an open breaker whose delay has passed is half-open
	Until time.Time // when an open breaker or host cooldown ends; zero if none
	// Reason is why State is not closed: the breaker (breaker-open) or the
	// host's cooldown (retry-after, rolling-window, manual), whichever ends
	// later. Empty when closed or half-open.
	Reason Reason
	Note   string // the operator's note of a manual cooldown

	// Rate is the host's rate limit now, in requests per second: the
	// configured rate, or the rate its limiter learnt from throttling
	// responses; 0 when the host is not limited. It is host-wide: every
	// role of the host shows the same.
	Rate float64

	// Counters since the entry was created. Requests is the sum of the other
	// four: requests that completed or were rejected.
	Requests, Successes, Failures, Neutral, Rejected uint64
}

// Snapshot returns the status of every known (host, role), sorted by host
// then role. A host in cooldown that has no breaker yet is listed with role "".
func (t *Transport) Snapshot() []Status { return t.statuses(false) }

// statuses returns the sorted statuses; with unhealthy, only those that are
// not closed or whose host has a learnt rate, which costs little when few
// are.
func (t *Transport) statuses(unhealthy bool) []Status {
	now := t.now()
	var out []Status
	t.reg.each(func(h *hostState, e *entry) {
		if e == nil { // a host in cooldown with no entry
			if h.coolingDown(now) {
				s := Status{Host: h.name}
				t.hostStatus(h, now, &s, 0)
				out = append(out, s)
			}
			return
		}
		if unhealthy && phaseOf(e.st.Load()) == phaseClosed && !h.coolingDown(now) && !learning(h) {
			return
		}
		s := Status{
			Host: e.host.name, Role: e.role,
			Successes: e.successes.Load(), Failures: e.failures.Load(),
			Neutral: e.neutral.Load(), Rejected: e.rejected.Load(),
		}
		s.Requests = s.Successes + s.Failures + s.Neutral + s.Rejected
		var until int64
		if s.State, until = e.status(now); s.State == StateOpen {
			s.Reason = ReasonBreakerOpen
		}
		t.hostStatus(h, now, &s, until)
		out = append(out, s)
	})
	slices.SortFunc(out, func(a, b Status) int {
		if c := strings.Compare(a.Host, b.Host); c != 0 {
			return c
		}
		return strings.Compare(a.Role, b.Role)
	})
	return out
}

// learning reports whether h's limiter has learnt a rate from throttles:
// such a host is listed among the unhealthy ones (and so published), a
// host paced only at its configured rate is not.
func learning(h *hostState) bool {
	lim := h.lim.Load()
	return lim != nil && lim.learning()
}

// hostStatus lays the host's cooldown over s when it ends later than the
// breaker's open deadline.
func (t *Transport) hostStatus(h *hostState, now int64, s *Status, breakerUntil int64) {
	h.mu.Lock()
	hu, reason, note := h.until.Load(), h.reason, h.note
	h.mu.Unlock()
	if hu > now && hu > breakerUntil {
		s.State, s.Reason, s.Note, breakerUntil = StateOpen, reason, note, hu
	}
	if breakerUntil > 0 {
		s.Until = t.at(breakerUntil)
	}
	if lim := h.lim.Load(); lim != nil {
		s.Rate = lim.status().rate
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
	evState      eventKind = iota // a breaker changed state
	evCooldown                    // a host cooldown was set or extended
	evReset                       // a host was reset
	evUntracked                   // requests go without a breaker: wakes logCounters
	evDropped                     // a cooldown was dropped: too many hosts without an entry
	evPolicy                      // a policy was changed
	evRetryAfter                  // a usable Retry-After was received: recorded in the metrics
	evRate                        // a host's limiter changed its rate
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
// the breaker states.
func (t *Transport) loop() {
	defer t.wg.Done()
	var tick <-chan time.Time
	var changes, kick <-chan struct{}
	if t.sh != nil {
		ticker := time.NewTicker(t.sh.poll)
		defer ticker.Stop()
		tick, changes, kick = ticker.C, t.sh.store.Changes(), t.sh.kick
	}
	sweep := time.NewTicker(bareSweepInterval)
	defer sweep.Stop()
	summary := time.NewTicker(t.sink.cfg.SummaryInterval)
	defer summary.Stop()
	ctx := context.Background()
	var logs counterLogs
	for {
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
			for len(t.events) > 0 {
				t.handle(<-t.events)
			}
			t.summarize(time.Now()) // the last, partial one
			t.logCounters(&logs)
			if t.sh != nil {
				// One last attempt, bounded as a whole: Close must not hang
				// on a store that is down.
				fctx, cancel := context.WithTimeout(ctx, storeTimeout)
				t.flush(fctx)
				t.flushJournal(fctx)
				cancel()
			}
			return
		case ev := <-t.events:
			t.handle(ev)
			t.logCounters(&logs)
		case <-kick:
			t.flush(ctx)
		case <-changes:
			t.pull(ctx)
		case <-tick:
			t.flush(ctx)
			t.pull(ctx)
			t.publish(ctx)
			t.flushJournal(ctx)
		}
	}
}

// handle logs an internal event and delivers it as an Event.
func (t *Transport) handle(ev event) {
	t.logEvent(ev)
	switch ev.kind {
	case evState, evCooldown, evReset, evPolicy, evRate:
		t.deliver(t.toEvent(ev))
	}
}

// counterLogs is what the background goroutine last logged of the
// counters that logCounters reports.
type counterLogs struct {
	dropped, untracked, cooldownsDropped, journalLost counterLog
}

type counterLog struct {
	n  uint64    // the total last logged
	at time.Time // when; zero if never
}

// logCounters logs, at most once per errorLogInterval each, the counters of
// rare trouble that grew since they were last logged: events the queue
// dropped, requests sent untracked, cooldowns dropped past the bound. The
// request path counts them and at most wakes this goroutine; it never logs.
func (t *Transport) logCounters(l *counterLogs) {
	now := time.Now()
	due := func(c *counterLog, n uint64) bool {
		if n == c.n || !c.at.IsZero() && now.Sub(c.at) < errorLogInterval {
			return false
		}
		c.n, c.at = n, now
		return true
	}
	if n := t.dropped.Load(); due(&l.dropped, n) {
		t.log.Warn("hostbreaker: events not logged: the queue was full", "dropped_total", n)
	}
	if n := t.untracked.Load(); due(&l.untracked, n) {
		t.log.Warn("hostbreaker: registry full of protected entries; requests to new (host, role)s go without a breaker (host cooldowns still apply)",
			"max_hosts", t.reg.max, "untracked_total", n)
	}
	if n := t.sink.lost; due(&l.journalLost, n) {
		t.log.Warn("hostbreaker: journal events dropped (its bounds, or the store was down too long)", "dropped_total", n)
	}
	if n := t.cooldownsDropped.Load(); due(&l.cooldownsDropped, n) {
		t.log.Warn("hostbreaker: too many hosts cooling down without a breaker; dropped the cooldowns that end soonest",
			"bound", t.reg.maxBare, "dropped_total", n)
	}
}

func (t *Transport) logEvent(ev event) {
	ctx := context.Background()
	switch ev.kind {
	case evState:
		attrs := []slog.Attr{slog.String("host", ev.host), slog.String("role", ev.role),
			slog.String("from", ev.from.String()), slog.String("to", ev.to.String())}
		if ev.until != 0 {
			attrs = append(attrs, slog.Time("until", t.at(ev.until)))
		}
		t.log.LogAttrs(ctx, slog.LevelInfo, "hostbreaker: breaker state changed", attrs...)
	case evCooldown:
		t.log.LogAttrs(ctx, slog.LevelInfo, "hostbreaker: host cooling down",
			slog.String("host", ev.host), slog.String("reason", string(ev.reason)),
			slog.Time("until", t.at(ev.until)), slog.String("note", ev.note))
	case evReset:
		t.log.LogAttrs(ctx, slog.LevelInfo, "hostbreaker: host reset", slog.String("host", ev.host))
	case evRate:
		t.log.LogAttrs(ctx, slog.LevelInfo, "hostbreaker: host rate limit changed", slog.String("host", ev.host),
			slog.Float64("rate", ev.rate), slog.Float64("previous_rate", ev.prevRate), slog.String("why", ev.note))
	case evDropped:
		t.log.LogAttrs(ctx, slog.LevelDebug, "hostbreaker: dropped a cooldown: too many hosts cooling down without a breaker",
			slog.String("host", ev.host))
	case evRetryAfter:
		t.tel.recordRetryAfter(ctx, ev.host, ev.retryAfter)
	}
}
