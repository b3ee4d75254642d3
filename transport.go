package hostbreaker

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
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

	mu       sync.Mutex // serializes policy updates
	policies atomic.Pointer[policyTable]

	sh *sharing // nil without a store

	events    chan event
	dropped   atomic.Uint64 // events dropped because the queue was full
	done      chan struct{}
	wg        sync.WaitGroup
	closeOnce sync.Once
}

var _ http.RoundTripper = (*Transport)(nil)

// Option configures a Transport. A nil Option is ignored.
type Option interface{ apply(*options) }

type options struct {
	config Config
	logger *slog.Logger
	store  Store
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
		epoch:   time.Now(),
		reg:     newRegistry(maxHosts),
		events:  make(chan event, 1024),
		done:    make(chan struct{}),
		rolling: o.config.Rolling.withDefaults(),
	}
	t.policies.Store(pt)
	switch {
	case o.store != nil:
		t.sh = newSharing(o.store, false, o.config.Store)
	case o.config.Store.URL != "":
		s, err := OpenStore(o.config.Store.URL)
		if err != nil {
			return nil, err
		}
		t.sh = newSharing(s, true, o.config.Store)
	}
	if t.sh != nil {
		// Start with what the store knows: a host still cooling down after a
		// restart is rejected from the first request. A store that does not
		// answer in time is read again by the background goroutine.
		t.pull(context.Background())
	}
	t.wg.Add(1)
	go t.loop()
	return t, nil
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

// admission is what RoundTrip remembers about how it let a request in.
type admission struct {
	st    uint64 // the entry's st when admitted
	probe bool   // a half-open trial request
}

// RoundTrip implements http.RoundTripper. It sends req through the base
// transport unless the host is cooling down or the (host, role) breaker
// rejects it; then it closes the request body and returns an *OpenError.
// Responses are returned whatever their status; req is not modified.
func (t *Transport) RoundTrip(req *http.Request) (resp *http.Response, err error) {
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
				return t.base.RoundTrip(req) // registry full of protected hosts: untracked
			}
		}
	}
	if !e.used.Load() {
		e.used.Store(true)
	}
	adm, rej := t.admit(e)
	if rej != nil {
		e.rejected.Add(1)
		closeBody(req)
		return nil, rej
	}
	recorded := false
	if adm.probe {
		// A half-open permit must be given back even if base panics.
		defer func() {
			if !recorded {
				t.releaseProbe(e, adm)
			}
		}()
	}
	resp, err = t.base.RoundTrip(req)
	recorded = true
	t.record(e, adm, req, resp, err)
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

// admit decides whether e may send now.
func (t *Transport) admit(e *entry) (admission, *OpenError) {
	hu := e.host.until.Load()
	st := e.st.Load()
	if hu == 0 && phaseOf(st) == phaseClosed {
		return admission{st: st}, nil // the hot path
	}
	now := t.now()
	if hu != 0 {
		if now < hu {
			if rej := t.hostRejection(e, now); rej != nil {
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
			if ou := e.openUntil.Load(); now < ou {
				return admission{}, &OpenError{Host: e.host.name, Role: e.role, Reason: ReasonBreakerOpen, Until: t.at(ou)}
			}
			e.mu.Lock()
			if e.st.Load() == st {
				e.toHalfOpenLocked()
				t.emit(event{kind: evState, host: e.host.name, role: e.role, from: StateOpen, to: StateHalfOpen})
			}
			e.mu.Unlock()
		case phaseHalfOpen:
			e.mu.Lock()
			if e.st.Load() == st {
				if e.probes >= e.pol.Load().TrialCalls {
					e.mu.Unlock()
					return admission{}, &OpenError{Host: e.host.name, Role: e.role, Reason: ReasonHalfOpenFull}
				}
				e.probes++
				e.mu.Unlock()
				return admission{st: st, probe: true}, nil
			}
			e.mu.Unlock()
		}
		st = e.st.Load()
	}
}

// hostRejection returns the rejection for e's host cooldown, reading the
// deadline and its reason together; nil if a reset ended it meanwhile.
func (t *Transport) hostRejection(e *entry, now int64) *OpenError {
	h := e.host
	h.mu.Lock()
	until, reason := h.until.Load(), h.reason
	h.mu.Unlock()
	if until == 0 || now >= until {
		return nil
	}
	return &OpenError{Host: h.name, Role: e.role, Reason: reason, Until: t.at(until)}
}

// toHalfOpenLocked moves e from open to half-open. Callers hold e.mu.
func (e *entry) toHalfOpenLocked() {
	e.breaker().HalfOpen()
	e.probes = 0
	e.st.Store(next(e.st.Load(), phaseHalfOpen))
}

// record counts the outcome of an admitted request and applies its effects.
func (t *Transport) record(e *entry, adm admission, req *http.Request, resp *http.Response, err error) {
	p := e.pol.Load()
	o := classify(p, req, resp, err)
	switch o {
	case outcomeSuccess:
		e.successes.Add(1)
		// In closed, a success after a success changes nothing in a
		// consecutive-failure breaker, so the common case skips the lock.
		if adm.probe || e.fails.Load() != 0 {
			t.recordLocked(e, adm, o, p)
		}
	case outcomeFailure:
		e.failures.Add(1)
		t.recordLocked(e, adm, o, p)
		if t.rolling.Enabled {
			t.rollingFailure(e.host)
		}
	case outcomeNeutral:
		e.neutral.Add(1)
		if adm.probe {
			t.releaseProbe(e, adm)
		}
	}
	if resp != nil && (resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusServiceUnavailable) {
		t.retryAfter(e, p, resp)
	}
}

// recordLocked feeds a success or failure to the breaker. Outcomes of
// requests admitted in an earlier generation (before a state change) are
// dropped, so that a slow request cannot close or reopen a breaker whose
// state it did not see.
func (t *Transport) recordLocked(e *entry, adm admission, o outcome, p *resolved) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.st.Load() != adm.st {
		return
	}
	cb := e.breaker()
	if adm.probe {
		e.probes--
	}
	if o == outcomeSuccess {
		cb.RecordSuccess()
		e.fails.Store(0)
	} else {
		cb.RecordFailure()
		if !adm.probe {
			e.fails.Add(1)
		}
	}
	switch {
	case adm.probe && cb.IsClosed():
		e.fails.Store(0)
		e.st.Store(next(adm.st, phaseClosed))
		t.emit(event{kind: evState, host: e.host.name, role: e.role, from: StateHalfOpen, to: StateClosed})
	case cb.IsOpen():
		from := StateClosed
		if adm.probe {
			from = StateHalfOpen
		}
		until := t.after(t.now(), min(p.ResetTimeout, maxWait)+jitter(p.HalfOpenJitter))
		e.openUntil.Store(until)
		e.fails.Store(0)
		e.st.Store(next(adm.st, phaseOpen))
		t.emit(event{kind: evState, host: e.host.name, role: e.role, from: from, to: StateOpen, until: until})
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

func jitter(max time.Duration) time.Duration {
	if max <= 0 {
		return 0
	}
	return rand.N(min(max, maxWait) + 1)
}

// retryAfter applies a 429/503 response's Retry-After to the whole host.
func (t *Transport) retryAfter(e *entry, p *resolved, resp *http.Response) {
	v := resp.Header.Get("Retry-After")
	if v == "" || p.RetryAfterCap <= 0 {
		return
	}
	d, ok := retryAfter(v, time.Now())
	if !ok {
		return
	}
	d = min(d, p.RetryAfterCap)
	t.setCooldown(e.host, t.after(t.now(), d), ReasonRetryAfter, "", false, false)
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
	h.window[h.wnext] = now
	h.wnext = (h.wnext + 1) % len(h.window)
	h.wn = min(h.wn+1, len(h.window))
	oldest := h.window[h.wnext%len(h.window)] // the slot to be overwritten next is the oldest
	trip := h.wn == len(h.window) && now-oldest <= int64(r.Window)
	if trip {
		h.wn = 0 // empty the window so that stale failures cannot trip it again
	}
	h.mu.Unlock()
	if trip {
		t.setCooldown(h, t.after(now, r.Cooldown), ReasonRollingWindow, "", false, false)
	}
}

// setCooldown puts h in cooldown until the deadline. An automatic cooldown
// only ever extends the current one; a manual one replaces it. remote says
// that it came from the store, and need not be shared again.
func (t *Transport) setCooldown(h *hostState, until int64, reason Reason, note string, manual, remote bool) {
	now := t.now()
	h.mu.Lock()
	cur := h.until.Load()
	apply := manual || cur == 0 || cur <= now || until > cur
	if apply {
		h.reason, h.note = reason, note
		h.until.Store(until)
	}
	h.mu.Unlock()
	if apply {
		t.emit(event{kind: evCooldown, host: h.name, reason: reason, until: until, note: note, remote: remote})
	}
}

// Open puts host (all roles) in a manual cooldown for d, with note for the
// operators. It replaces any current cooldown of the host, even a longer
// one. d <= 0 does nothing and d is capped at ten years; host may be a
// name, host:port or a URL. With a store, every Transport that shares it
// applies the cooldown too.
func (t *Transport) Open(host string, d time.Duration, note string) {
	name, err := NormalizeHost(host)
	if err != nil || d <= 0 {
		t.log.Warn("hostbreaker: open: ignored", "host", host, "for", d, "err", err)
		return
	}
	// Under the registry lock, so that eviction cannot drop the new host
	// before it is cooling down.
	t.reg.mu.Lock()
	h := t.reg.hostLocked(t.reg.hash(name), name)
	t.setCooldown(h, t.after(t.now(), d), ReasonManual, note, true, false)
	t.reg.mu.Unlock()
}

// Reset clears every cooldown of host, closes all its breakers and empties
// its rolling window. Host may be a name, host:port or a URL. With a store,
// every Transport that shares it resets the host too.
func (t *Transport) Reset(host string) {
	name, err := NormalizeHost(host)
	if err != nil {
		t.log.Warn("hostbreaker: reset: ignored", "host", host, "err", err)
		return
	}
	t.resetLocal(name, false)
}

// resetLocal resets a normalized host in this Transport; remote says that
// the reset came from the store.
func (t *Transport) resetLocal(name string, remote bool) {
	h, entries := t.reg.hostEntries(name)
	if h == nil {
		t.emit(event{kind: evReset, host: name, remote: remote})
		return
	}
	h.mu.Lock()
	h.until.Store(0)
	h.reason, h.note = "", ""
	h.wn = 0
	h.mu.Unlock()
	for _, e := range entries {
		e.mu.Lock()
		e.cb = nil
		e.probes = 0
		e.fails.Store(0)
		e.openUntil.Store(0)
		e.st.Store(next(e.st.Load(), phaseClosed))
		e.mu.Unlock()
	}
	t.emit(event{kind: evReset, host: name, remote: remote})
}

// UpdateHostPolicy changes the policy of host while the Transport runs: the
// fields that p sets (non-zero, see Policy) and its roles are laid over the
// host's current policy. New decisions use it at once. Breaker state is
// kept: an open breaker stays open until its current deadline, cooldowns
// are kept, and a closed breaker keeps its failure count (up to one less
// than the new FailMax). An invalid result is rejected with a *ConfigError
// and changes nothing.
func (t *Transport) UpdateHostPolicy(host string, p Policy) error {
	name, err := NormalizeHost(host)
	if err != nil {
		return fmt.Errorf("hostbreaker: update policy: %w", err)
	}
	prefix := "hosts." + quoteKey(name)
	if err := checkPolicy(prefix, p); err != nil {
		return err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	pt := t.policies.Load()
	merged, _ := pt.hostPolicy(name)
	overlay(&merged, p)
	npt := pt.withHost(name, merged)
	_, entries := t.reg.hostEntries(name)
	roles := roleNames(npt.defaults, merged)
	for _, e := range entries {
		roles = append(roles, e.role)
	}
	slices.Sort(roles)
	for _, role := range slices.Compact(roles) {
		if _, err := npt.resolve(name, role); err != nil {
			return err
		}
	}
	t.policies.Store(npt)
	for _, e := range entries {
		np, _ := npt.resolve(name, e.role)
		e.setPolicy(np)
	}
	return nil
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
	// same state. The open deadline lives in openUntil and is kept.
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

	// Counters since the entry was created. Requests is the sum of the other
	// four: requests that completed or were rejected.
	Requests, Successes, Failures, Neutral, Rejected uint64
}

// Snapshot returns the status of every known (host, role), sorted by host
// then role. A host in cooldown that has no breaker yet is listed with role "".
func (t *Transport) Snapshot() []Status { return t.statuses(false) }

// statuses returns the sorted statuses; with unhealthy, only those that are
// not closed, which costs little when few are.
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
		if unhealthy && phaseOf(e.st.Load()) == phaseClosed && !h.coolingDown(now) {
			return
		}
		s := Status{
			Host: e.host.name, Role: e.role,
			Successes: e.successes.Load(), Failures: e.failures.Load(),
			Neutral: e.neutral.Load(), Rejected: e.rejected.Load(),
		}
		s.Requests = s.Successes + s.Failures + s.Neutral + s.Rejected
		var until int64
		switch phaseOf(e.st.Load()) {
		case phaseOpen:
			if ou := e.openUntil.Load(); now < ou {
				s.State, s.Reason, until = StateOpen, ReasonBreakerOpen, ou
			} else {
				s.State = StateHalfOpen
			}
		case phaseHalfOpen:
			s.State = StateHalfOpen
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
}

// event is a state change, handed from the request path to the background
// goroutine, which logs it (and, with a store, shares it). Events are rare:
// the closed, healthy path emits none.
type event struct {
	kind     eventKind
	host     string
	role     string
	from, to State
	reason   Reason
	until    int64 // ns since epoch
	note     string
	remote   bool // learnt from the store: not shared again
}

type eventKind uint8

const (
	evState    eventKind = iota // a breaker changed state
	evCooldown                  // a host cooldown was set or extended
	evReset                     // a host was reset
)

// emit shares ev with the store, if any, and queues it for logging
// without blocking; when the log queue is full, the event is dropped from
// the log and counted (the change itself has already happened, and store
// writes are queued separately, never dropped).
func (t *Transport) emit(ev event) {
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
	ctx := context.Background()
	for {
		select {
		case <-t.done:
			if t.sh != nil {
				// One last attempt, bounded as a whole: Close must not hang
				// on a store that is down.
				fctx, cancel := context.WithTimeout(ctx, storeTimeout)
				t.flush(fctx)
				cancel()
			}
			return
		case ev := <-t.events:
			t.logEvent(ev)
			if n := t.dropped.Swap(0); n > 0 {
				t.log.Warn("hostbreaker: events not logged: the queue was full", "dropped", n)
			}
		case <-kick:
			t.flush(ctx)
		case <-changes:
			t.pull(ctx)
		case <-tick:
			t.flush(ctx)
			t.pull(ctx)
			t.publish(ctx)
		}
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
	}
}
