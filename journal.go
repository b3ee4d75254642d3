package hostbreaker

// This file holds the Transport's background goroutine's side of events:
// turning internal events into Events, delivering them (handler, OTel
// logger, journal), the periodic summaries, and the log lines. The Event
// type and the journal's stored form are in event.go.

import (
	"context"
	"log/slog"
	"os"
	"strconv"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	otellog "go.opentelemetry.io/otel/log"
)

// This file turns the Transport's internal events into Events and delivers
// them, on the background goroutine only: to the WithEventHandler callback,
// to the OpenTelemetry logger, and to the journal (the store's, or an
// in-memory one). It also builds the periodic summaries.

// eventSink is the part of a Transport that delivers events. It is owned
// by the background goroutine, except where a field says otherwise.
type eventSink struct {
	process string
	cfg     TelemetryConfig // with defaults
	handler func(Event)
	logger  otellog.Logger

	mem        eventQueue // the in-memory journal, oldest first; bounded by cfg
	outbox     eventQueue // events waiting for the store's journal; bounded by maxOutbox
	maxOutbox  int
	lost       uint64    // journal events dropped: pending full, or trimmed by the store's bounds
	lastSumm   time.Time // when the last summary was emitted
	summarized map[*entry]Summary
}

// maxMemoryEvents bounds the events a Transport with a store keeps in
// memory for Events; the store's journal holds up to journal_max_events.
const maxMemoryEvents = 10000

// maxOutboxEvents bounds the events waiting for the store's journal while
// it is down; past it the oldest are dropped and counted.
const maxOutboxEvents = 10000

// processName returns the name of this process in events and the journal.
func processName(c TelemetryConfig) string {
	if c.Process != "" {
		return c.Process
	}
	host, _ := os.Hostname()
	return host + ":" + strconv.Itoa(os.Getpid())
}

func newEventSink(process string, c TelemetryConfig, lp otellog.LoggerProvider, handler func(Event)) *eventSink {
	if lp == nil {
		lp = otel.GetLoggerProvider()
	}
	return &eventSink{
		process:    process,
		cfg:        c,
		handler:    handler,
		logger:     lp.Logger(meterName, otellog.WithInstrumentationVersion(instrumentationVersion)),
		lastSumm:   time.Now(),
		maxOutbox:  maxOutboxEvents,
		summarized: make(map[*entry]Summary),
	}
}

// toEvent turns an internal event into an Event.
func (t *Transport) toEvent(ev event) Event {
	e := Event{Time: ev.at, Process: t.sink.process, Host: ev.host, Role: ev.role, Remote: ev.remote}
	switch ev.kind {
	case evState:
		e.Name, e.State, e.PreviousState = EventStateChange, ev.to, ev.from
		if ev.to == StateOpen {
			e.Reason, e.Until = ReasonBreakerOpen, t.at(ev.until)
			e.Failures, e.StatusCode, e.ErrorType = ev.failures, ev.status, ev.errType
			e.Note = ev.note // the rule that tripped it, with its figures
		}
	case evCooldown:
		e.Name, e.Reason, e.Until, e.Note = EventCooldown, ev.reason, t.at(ev.until), ev.note
		e.StatusCode, e.RetryAfter = ev.status, ev.retryAfter
	case evReset:
		e.Name = EventReset
	case evPolicy:
		e.Name, e.PreviousPolicy, e.Policy, e.Note = EventPolicyChange, ev.prevPolicy, ev.policy, ev.note
	case evRate:
		e.Name, e.Rate, e.PreviousRate, e.LastMax = EventRateChange, ev.rate, ev.prevRate, ev.lastMax
		e.Note, e.StatusCode = ev.note, ev.status
	}
	return e
}

// deliver hands an Event to the handler, the OpenTelemetry logger and the
// journal.
func (t *Transport) deliver(ev Event) {
	s := t.sink
	if s.handler != nil {
		s.handler(ev)
	}
	t.subs.publish(ev) // open status pages; one atomic load when there are none
	s.emitLog(ev)
	if s.cfg.NoJournal {
		return
	}
	s.remember(ev, t.sh == nil)
	if t.sh != nil {
		if over := s.outbox.len() - s.maxOutbox + 1; over > 0 {
			s.outbox.drop(over)
			s.lost += uint64(over)
		}
		s.outbox.push(ev)
	}
}

// remember keeps ev in the in-memory journal, within its bounds. Without a
// store that journal is the only one, and what it drops is counted.
func (s *eventSink) remember(ev Event, only bool) {
	s.mem.push(ev)
	evs := s.mem.events()
	bound := s.cfg.JournalMaxEvents
	if !only {
		bound = min(bound, maxMemoryEvents) // the store keeps the rest
	}
	cut := max(0, len(evs)-bound)
	oldest := ev.Time.Add(-s.cfg.JournalRetention)
	for cut < len(evs) && evs[cut].Time.Before(oldest) {
		cut++
	}
	if cut > 0 {
		if only {
			s.lost += uint64(cut)
		}
		s.mem.drop(cut)
	}
}

// eventQueue is a FIFO of events whose oldest can be dropped in O(1)
// amortized: the live events are buf[head:], and the buffer is compacted
// when the dropped part grows past the live one.
type eventQueue struct {
	buf  []Event
	head int
}

func (q *eventQueue) push(ev Event)   { q.buf = append(q.buf, ev) }
func (q *eventQueue) len() int        { return len(q.buf) - q.head }
func (q *eventQueue) events() []Event { return q.buf[q.head:] }
func (q *eventQueue) reset()          { clear(q.buf); q.buf, q.head = q.buf[:0], 0 }

// drop drops the n oldest events.
func (q *eventQueue) drop(n int) {
	clear(q.buf[q.head : q.head+n]) // let the GC have them
	q.head += n
	if q.head > len(q.buf)/2 {
		n := copy(q.buf, q.buf[q.head:])
		clear(q.buf[n:])
		q.buf, q.head = q.buf[:n], 0
	}
}

// emitLog emits ev as an OpenTelemetry log record with its event name.
// Severity: WARN for a breaker opening and a cooldown, INFO otherwise.
func (s *eventSink) emitLog(ev Event) {
	ctx := context.Background()
	if !s.logger.Enabled(ctx, otellog.EnabledParameters{EventName: ev.Name, Severity: severityOf(ev)}) {
		return
	}
	var r otellog.Record
	r.SetEventName(ev.Name)
	r.SetTimestamp(ev.Time)
	r.SetObservedTimestamp(time.Now())
	sev := severityOf(ev)
	r.SetSeverity(sev)
	r.SetSeverityText(sev.String())
	r.SetBody(attribute.StringValue(ev.Name + " " + ev.Host))
	r.AddAttributes(eventAttributes(ev)...)
	s.logger.Emit(ctx, r)
}

func severityOf(ev Event) otellog.Severity {
	if ev.Name == EventCooldown || ev.Name == EventStateChange && ev.State == StateOpen {
		return otellog.SeverityWarn
	}
	return otellog.SeverityInfo
}

// eventAttributes returns the OpenTelemetry attributes of ev: semantic
// conventions where they fit, the hostbreaker.* namespace for the rest.
func eventAttributes(ev Event) []attribute.KeyValue {
	kv := []attribute.KeyValue{
		attribute.String("server.address", ev.Host),
		attribute.String("hostbreaker.process", ev.Process),
	}
	str := func(k, v string) {
		if v != "" {
			kv = append(kv, attribute.String(k, v))
		}
	}
	switch ev.Name {
	case EventStateChange:
		kv = append(kv, attribute.String("hostbreaker.role", ev.Role),
			attribute.String("hostbreaker.state.previous", ev.PreviousState.String()),
			attribute.String("hostbreaker.state", ev.State.String()))
		str("hostbreaker.reason", string(ev.Reason))
		if !ev.Until.IsZero() {
			str("hostbreaker.until", ev.Until.UTC().Format(time.RFC3339Nano))
		}
		if ev.Failures > 0 {
			kv = append(kv, attribute.Int("hostbreaker.failures", ev.Failures))
		}
		if ev.StatusCode != 0 {
			kv = append(kv, attribute.Int("http.response.status_code", ev.StatusCode))
		}
		str("error.type", ev.ErrorType)
		str("hostbreaker.note", ev.Note)
	case EventCooldown:
		str("hostbreaker.reason", string(ev.Reason))
		str("hostbreaker.until", ev.Until.UTC().Format(time.RFC3339Nano))
		str("hostbreaker.note", ev.Note)
		if ev.StatusCode != 0 {
			kv = append(kv, attribute.Int("http.response.status_code", ev.StatusCode))
		}
		if ev.RetryAfter > 0 {
			kv = append(kv, attribute.Float64("hostbreaker.retry_after", ev.RetryAfter.Seconds()))
		}
	case EventPolicyChange:
		kv = append(kv, attribute.String("hostbreaker.role", ev.Role))
		str("hostbreaker.policy.previous", ev.PreviousPolicy)
		str("hostbreaker.policy", ev.Policy)
		str("hostbreaker.note", ev.Note)
	case EventRateChange:
		kv = append(kv, attribute.Float64("hostbreaker.rate", ev.Rate),
			attribute.Float64("hostbreaker.rate.previous", ev.PreviousRate))
		if ev.LastMax > 0 {
			kv = append(kv, attribute.Float64("hostbreaker.rate.last_max", ev.LastMax))
		}
		if ev.StatusCode != 0 {
			kv = append(kv, attribute.Int("http.response.status_code", ev.StatusCode))
		}
		str("hostbreaker.note", ev.Note)
	case EventSummary:
		kv = append(kv, attribute.String("hostbreaker.role", ev.Role),
			attribute.Float64("hostbreaker.interval", ev.Interval.Seconds()))
		if s := ev.Summary; s != nil {
			for _, c := range []struct {
				k string
				v uint64
			}{
				{"hostbreaker.requests", s.Requests}, {"hostbreaker.successes", s.Successes},
				{"hostbreaker.failures", s.Failures}, {"hostbreaker.neutral", s.Neutral},
				{"hostbreaker.rejected", s.Rejected}, {"hostbreaker.responses_429", s.Status429},
				{"hostbreaker.responses_5xx", s.Status5xx}, {"hostbreaker.timeouts", s.Timeouts},
				{"hostbreaker.probes.succeeded", s.ProbesOK}, {"hostbreaker.probes.failed", s.ProbesFail},
				{"hostbreaker.longest_failure_run", s.LongestFailureRun},
			} {
				kv = append(kv, attribute.Int64("hostbreaker."+c.k[len("hostbreaker."):], int64(c.v)))
			}
			if len(s.Outcomes) > 0 {
				kv = append(kv, attribute.String("hostbreaker.outcomes", s.Outcomes.String()))
			}
		}
	}
	return kv
}

// summarize emits a summary event for each (host, role) with activity since
// the last summary.
func (t *Transport) summarize(now time.Time) {
	s := t.sink
	interval := now.Sub(s.lastSumm)
	s.lastSumm = now
	live := make(map[*entry]bool)
	t.reg.eachUnlocked(func(h *hostState, e *entry) {
		if e != nil {
			live[e] = true
			t.summarizeEntry(e, now, interval)
		}
	})
	for e := range s.summarized {
		if !live[e] {
			t.summarizeEntry(e, now, interval) // evicted: its last activity
			delete(s.summarized, e)
		}
	}
}

// summarizeEntry emits the summary of e's activity since the last one, if
// any.
func (t *Transport) summarizeEntry(e *entry, now time.Time, interval time.Duration) {
	s := t.sink
	cur := Summary{
		Successes: e.successes.Load(), Failures: e.failures.Load(),
		Neutral: e.neutral.Load(), Rejected: e.rejected.Load(),
	}
	if st := e.extra.Load(); st != nil {
		cur.Status429, cur.Status5xx, cur.Timeouts = st.status429.Load(), st.status5xx.Load(), st.timeouts.Load()
		cur.ProbesOK, cur.ProbesFail = st.probesOK.Load(), st.probesFail.Load()
	}
	prev := s.summarized[e]
	s.summarized[e] = cur
	d := Summary{
		Successes: cur.Successes - prev.Successes, Failures: cur.Failures - prev.Failures,
		Neutral: cur.Neutral - prev.Neutral, Rejected: cur.Rejected - prev.Rejected,
		Status429: cur.Status429 - prev.Status429, Status5xx: cur.Status5xx - prev.Status5xx,
		Timeouts: cur.Timeouts - prev.Timeouts, ProbesOK: cur.ProbesOK - prev.ProbesOK,
		ProbesFail: cur.ProbesFail - prev.ProbesFail,
	}
	d.Requests = d.Successes + d.Failures + d.Neutral + d.Rejected
	d.Outcomes, d.LongestFailureRun = e.take(now)
	if d.Requests == 0 && len(d.Outcomes) == 0 {
		return
	}
	t.deliver(Event{Name: EventSummary, Time: now, Process: s.process, Host: e.host.name, Role: e.role,
		Interval: interval, Summary: &d})
}

// flushJournal appends the pending events to the store's journal.
func (t *Transport) flushJournal(ctx context.Context) {
	s := t.sink
	if t.sh == nil || s.outbox.len() == 0 {
		return
	}
	cctx, cancel := context.WithTimeout(ctx, storeTimeout)
	dropped, err := t.sh.store.AppendEvents(cctx, s.outbox.events(), JournalLimits{Retention: s.cfg.JournalRetention, MaxEvents: s.cfg.JournalMaxEvents})
	cancel()
	if err != nil {
		t.storeError(opJournal, err)
		return // kept, bounded, for the next flush
	}
	s.lost += uint64(dropped)
	s.outbox.reset()
}

// Events returns this Transport's events at or after since, oldest first,
// from its in-memory journal: without a store, the journal itself, bounded
// by [telemetry] journal_retention and journal_max_events; with one, the
// latest 10,000 of them at most, and [ReadJournal] returns every process's
// events from the store. It is safe for concurrent use.
func (t *Transport) Events(since time.Time) []Event {
	reply := make(chan []Event, 1)
	select {
	case t.queries <- func() { reply <- t.sink.since(since) }:
		return <-reply
	case <-t.done:
		// Closed: once the background goroutine is gone, nothing else
		// touches the sink.
		t.wg.Wait()
		return t.sink.since(since)
	}
}

// since returns the in-memory journal's events at or after since.
func (s *eventSink) since(since time.Time) []Event {
	var out []Event
	for _, ev := range s.mem.events() {
		if !ev.Time.Before(since) {
			out = append(out, ev)
		}
	}
	return out
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
	case evResolveError:
		t.log.LogAttrs(ctx, slog.LevelError, "hostbreaker: resolve policy; using the built-in defaults",
			slog.String("host", ev.host), slog.String("role", ev.role), slog.String("err", ev.note))
	}
}
