package hostbreaker

// This file holds the live status page: StatusHandler (one Transport) and
// StoreStatusHandler (the fleet, read from a Store), which share one
// implementation over a statusSource, and the subscription hook through
// which the Transport's background goroutine hands events to open pages
// (journal.go calls subscribers.publish). The page itself (HTML, CSS,
// script) is statuspage.html, statuspage.css and statuspage.js, embedded.

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"embed"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// StatusHandlerOptions configures a status page (see
// [Transport.StatusHandler] and [StoreStatusHandler]). The zero value, or
// nil, serves a read-only page: no buttons, and every POST is refused.
// The handler copies it when it is made: changing it later has no effect.
type StatusHandlerOptions struct {
	// Token, when not empty, lets the page open and close hosts: it shows
	// open and close buttons and a field for the token, and a POST to
	// open or close is carried out when it carries the token, in the
	// header X-Hostbreaker-Token or the form field "token" (compared in
	// constant time). Any other POST is refused with 403 Forbidden. The
	// token is never written into the page.
	Token string

	// OpenFor is how long the open button pauses a host (a manual
	// cooldown, as [Transport.Open]); zero means 5 minutes. It is capped at
	// [MaxOpen].
	OpenFor time.Duration
}

// The token header and form field of a status page's POSTs.
const (
	statusTokenHeader = "X-Hostbreaker-Token"
	statusTokenField  = "token"
)

// StatusHandler returns an http.Handler that serves a live status page of
// t: every (host, role) with its state, reason, time left, rate limit,
// requests, failures and rejections per second and its latest events,
// updated as they happen. Its routes, relative to where it is mounted
// (mount it at a path that ends in "/", with [http.StripPrefix] if that
// is not the root):
//
//   - GET / the page: HTML with its style and script served from this
//     handler (status.css, status.js); nothing is loaded from elsewhere,
//     so it works with no internet access;
//   - GET status.json the snapshot: an array of objects with the keys of
//     `breaker show -json` (host, role, state, until, reason, source,
//     note, rate) plus configured_rate and the counters requests,
//     successes, failures, neutral and rejected since the (host, role)
//     was first seen; source is this Transport's process name;
//   - GET events a text/event-stream of the Transport's state changes,
//     cooldowns, resets, rate and policy changes as JSON [Event]s
//     ("change" events), preceded by up to 50 of the last hour ("backlog"
//     events); a "resync" event says that events were dropped because the
//     client read too slowly, and the snapshot should be read again. A
//     stream ends when the client goes, the request's context ends (see
//     http.Server's BaseContext, to end them at shutdown) or t is closed;
//   - POST open and close, form field host: [Transport.Open] for
//     opts.OpenFor and [Transport.Reset], only with opts.Token (see
//     [StatusHandlerOptions]).
//
// Host names, roles and notes are shown as text, never as markup; nothing
// shows a URL path or query (no event or status holds one). A nil opts is
// the zero StatusHandlerOptions. The handler is safe for concurrent use;
// an open page costs the Transport's background goroutine a non-blocking
// channel send per event, and nothing when no page is open.
func (t *Transport) StatusHandler(opts *StatusHandlerOptions) http.Handler {
	return newStatusHandler(transportSource{t}, opts, 10)
}

// StoreStatusHandler returns an http.Handler that serves the status page
// of the fleet that shares s: the routes and page of
// [Transport.StatusHandler], read from the store. status.json holds the
// rows of `breaker show -json` (the cooldowns in s, role "*" when they
// apply to every role, and the states the processes published), and a
// closed row for each (host, role, process) with recent activity; the
// counters are the sums of the summary events read from the journal since
// the handler started (so they move once per [telemetry]
// summary_interval). events polls the journal every second. The open and
// close buttons write [OpenHost] and [ResetHost] records with the source
// "breaker-serve@HOSTNAME".
//
// s is read at most once a second for the snapshot, and once a second per
// open events stream; the handler does not close s. A nil opts is the zero
// StatusHandlerOptions. It is safe for concurrent use.
func StoreStatusHandler(s Store, opts *StatusHandlerOptions) http.Handler {
	return newStatusHandler(newStoreSource(s), opts, 150) // summaries come once a minute
}

// statusRow is one row of status.json: the keys of `breaker show -json`
// (cmd/breaker's row), then what the page adds.
type statusRow struct {
	Host   string  `json:"host"`
	Role   string  `json:"role"`
	State  string  `json:"state"`
	Until  string  `json:"until,omitempty"` // RFC 3339, UTC
	Reason string  `json:"reason"`
	Source string  `json:"source"`
	Note   string  `json:"note,omitempty"`
	Rate   float64 `json:"rate,omitempty"`

	ConfiguredRate float64 `json:"configured_rate,omitempty"`
	Requests       uint64  `json:"requests"`
	Successes      uint64  `json:"successes"`
	Failures       uint64  `json:"failures"`
	Neutral        uint64  `json:"neutral"`
	Rejected       uint64  `json:"rejected"`
}

// statusSource is what a status page reads and does: a Transport's or a
// store's.
type statusSource interface {
	// rows returns the snapshot.
	rows(ctx context.Context) ([]statusRow, error)
	// recent returns the page's kind of events at or after since, oldest
	// first.
	recent(ctx context.Context, since time.Time) ([]Event, error)
	// watch starts delivering the events that happen from now on to the
	// returned subscription until stop is called (or ctx ends).
	watch(ctx context.Context) (sub *subscription, stop func())
	open(ctx context.Context, host string, d time.Duration, note string) error
	reset(ctx context.Context, host string) error
}

// pageEvent reports whether ev is of a kind the status page shows.
func pageEvent(ev Event) bool {
	switch ev.Name {
	case EventStateChange, EventCooldown, EventReset, EventRateChange, EventPolicyChange:
		return true
	}
	return false
}

// subscription is an open page's feed of events. Its channel is never
// closed; a send that would block is dropped and sets lagged. done, when
// not nil, is closed when no more events will come (the Transport closed).
type subscription struct {
	ch     chan Event
	lagged atomic.Bool
	done   <-chan struct{}
}

// subscriptionBuffer is how many events a page may fall behind before
// they are dropped (and the page told to read the snapshot again).
const subscriptionBuffer = 256

func newSubscription() *subscription {
	return &subscription{ch: make(chan Event, subscriptionBuffer)}
}

// send hands ev to the subscription without blocking.
func (s *subscription) send(ev Event) {
	select {
	case s.ch <- ev:
	default:
		s.lagged.Store(true)
	}
}

// subscribers is a Transport's set of open pages. publish is called by
// the background goroutine; with nobody subscribed it is one atomic load.
type subscribers struct {
	mu   sync.Mutex                      // serializes add and remove
	list atomic.Pointer[[]*subscription] // nil when empty; replaced, never modified
}

// publish hands ev to every subscription, without blocking.
func (s *subscribers) publish(ev Event) {
	l := s.list.Load()
	if l == nil || !pageEvent(ev) {
		return
	}
	for _, sub := range *l {
		sub.send(ev)
	}
}

func (s *subscribers) add(sub *subscription) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var l []*subscription
	if p := s.list.Load(); p != nil {
		l = slices.Clone(*p)
	}
	l = append(l, sub)
	s.list.Store(&l)
}

func (s *subscribers) remove(sub *subscription) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.list.Load()
	if p == nil {
		return
	}
	l := slices.DeleteFunc(slices.Clone(*p), func(x *subscription) bool { return x == sub })
	if len(l) == 0 {
		s.list.Store(nil)
		return
	}
	s.list.Store(&l)
}

// transportSource is a Transport's side of a status page.
type transportSource struct{ t *Transport }

func (s transportSource) rows(context.Context) ([]statusRow, error) {
	t := s.t
	pt := t.policies.Load()
	sts := t.Snapshot()
	rows := make([]statusRow, 0, len(sts))
	for _, st := range sts {
		r := statusRow{
			Host: st.Host, Role: st.Role, State: st.State.String(), Reason: string(st.Reason),
			Source: t.sink.process, Note: st.Note, Rate: st.Rate,
			Requests: st.Requests, Successes: st.Successes, Failures: st.Failures,
			Neutral: st.Neutral, Rejected: st.Rejected,
		}
		if !st.Until.IsZero() {
			r.Until = st.Until.UTC().Format(time.RFC3339)
		}
		if p, err := pt.resolve(st.Host, st.Role); err == nil {
			r.ConfiguredRate = p.Rate
		}
		rows = append(rows, r)
	}
	return rows, nil
}

func (s transportSource) recent(_ context.Context, since time.Time) ([]Event, error) {
	return slices.DeleteFunc(s.t.Events(since), func(ev Event) bool { return !pageEvent(ev) }), nil
}

func (s transportSource) watch(context.Context) (*subscription, func()) {
	sub := newSubscription()
	sub.done = s.t.done
	s.t.subs.add(sub)
	return sub, func() { s.t.subs.remove(sub) }
}

func (s transportSource) open(_ context.Context, host string, d time.Duration, note string) error {
	return s.t.Open(host, d, note)
}

func (s transportSource) reset(_ context.Context, host string) error { return s.t.Reset(host) }

// statusPage is the handler both sources share.
type statusPage struct {
	src     statusSource
	token   [sha256.Size]byte // the token's hash: compared in constant time whatever its length
	control bool              // a token was given
	openFor time.Duration
	html    []byte // the page, with its control flag set
}

// The page's files, embedded.
//
//go:embed statuspage.html statuspage.css statuspage.js
var statusFiles embed.FS

// statusCSP is the page's Content-Security-Policy: its script and style
// come from this handler only, it connects only to it, and no inline
// script or style runs.
const statusCSP = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; " +
	"img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

// newStatusHandler returns the page of src; the page computes the
// per-second rates over window seconds.
func newStatusHandler(src statusSource, opts *StatusHandlerOptions, window int) http.Handler {
	var o StatusHandlerOptions
	if opts != nil {
		o = *opts
	}
	p := &statusPage{src: src, control: o.Token != "", openFor: o.OpenFor}
	if p.openFor <= 0 {
		p.openFor = 5 * time.Minute
	}
	p.openFor = min(p.openFor, MaxOpen)
	p.token = sha256.Sum256([]byte(o.Token))
	html, _ := statusFiles.ReadFile("statuspage.html")
	page := strings.Replace(string(html), `data-window="10"`, fmt.Sprintf(`data-window="%d"`, window), 1)
	if p.control {
		page = strings.Replace(page, `data-control="off"`, `data-control="on"`, 1)
	}
	p.html = []byte(page)
	return p
}

func (p *statusPage) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Content-Security-Policy", statusCSP)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("Cache-Control", "no-store")
	route := r.URL.Path[strings.LastIndexByte(r.URL.Path, '/')+1:]
	if r.Method == http.MethodPost {
		p.post(w, r, route)
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		h.Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	switch route {
	case "", "index.html":
		p.file(w, "text/html; charset=utf-8", p.html)
	case "status.css":
		b, _ := statusFiles.ReadFile("statuspage.css")
		p.file(w, "text/css; charset=utf-8", b)
	case "status.js":
		b, _ := statusFiles.ReadFile("statuspage.js")
		p.file(w, "text/javascript; charset=utf-8", b)
	case "status.json":
		p.snapshot(w, r)
	case "events":
		p.events(w, r)
	case "open", "close":
		w.Header().Set("Allow", "POST")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
	default:
		http.NotFound(w, r)
	}
}

func (p *statusPage) file(w http.ResponseWriter, ctype string, b []byte) {
	w.Header().Set("Content-Type", ctype)
	w.Write(b)
}

func (p *statusPage) snapshot(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), storeTimeout)
	defer cancel()
	rows, err := p.src.rows(ctx)
	if err != nil {
		http.Error(w, "status unavailable: "+err.Error(), http.StatusServiceUnavailable)
		return
	}
	if rows == nil {
		rows = []statusRow{}
	}
	b, err := json.Marshal(rows)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Write(b)
}

// The events stream's bounds: the backlog sent first, and the interval of
// the comments that keep an idle connection open.
const (
	statusBacklog     = 50
	statusBacklogAge  = time.Hour
	statusKeepalive   = 15 * time.Second
	statusMaxPostBody = 4 << 10
)

func (p *statusPage) events(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	rc := http.NewResponseController(w)
	w.Header().Set("Content-Type", "text/event-stream")
	w.WriteHeader(http.StatusOK)
	// Subscribe before reading the backlog, so that nothing falls between;
	// the page drops an event it has already seen.
	sub, stop := p.src.watch(ctx)
	defer stop()
	bctx, cancel := context.WithTimeout(ctx, storeTimeout)
	backlog, err := p.src.recent(bctx, time.Now().Add(-statusBacklogAge))
	cancel()
	if err == nil {
		backlog = backlog[max(0, len(backlog)-statusBacklog):]
		for _, ev := range backlog {
			writeSSE(w, "backlog", ev)
		}
	}
	fmt.Fprint(w, ": ready\n\n")
	if rc.Flush() != nil {
		return
	}
	keepalive := time.NewTicker(statusKeepalive)
	defer keepalive.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-sub.done: // the Transport closed: nothing more to say
			return
		case <-keepalive.C:
			fmt.Fprint(w, ": keepalive\n\n")
		case ev := <-sub.ch:
			writeSSE(w, "change", ev)
			for n := len(sub.ch); n > 0; n-- { // what else is waiting, in one flush
				writeSSE(w, "change", <-sub.ch)
			}
		}
		if sub.lagged.Swap(false) {
			fmt.Fprint(w, "event: resync\ndata: {}\n\n")
		}
		if rc.Flush() != nil {
			return
		}
	}
}

// writeSSE writes ev as a server-sent event named name. JSON holds no
// newline, so one data line carries it.
func writeSSE(w http.ResponseWriter, name string, ev Event) {
	b, err := json.Marshal(ev)
	if err != nil {
		return
	}
	fmt.Fprintf(w, "event: %s\ndata: %s\n\n", name, b)
}

// post carries out an open or close, when the handler has a token and
// the request carries it.
func (p *statusPage) post(w http.ResponseWriter, r *http.Request, route string) {
	if !p.control {
		http.Error(w, "read-only: this status page was given no token", http.StatusForbidden)
		return
	}
	if route != "open" && route != "close" {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, statusMaxPostBody)
	if err := r.ParseForm(); err != nil {
		http.Error(w, "bad form: "+err.Error(), http.StatusBadRequest)
		return
	}
	tok := r.Header.Get(statusTokenHeader)
	if tok == "" {
		tok = r.PostForm.Get(statusTokenField)
	}
	sum := sha256.Sum256([]byte(tok))
	if tok == "" || subtle.ConstantTimeCompare(sum[:], p.token[:]) != 1 {
		http.Error(w, "wrong or missing token", http.StatusForbidden)
		return
	}
	host := r.PostForm.Get("host")
	if host == "" {
		http.Error(w, "missing host", http.StatusBadRequest)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), storeTimeout)
	defer cancel()
	var err error
	if route == "open" {
		err = p.src.open(ctx, host, p.openFor, "opened from the status page")
	} else {
		err = p.src.reset(ctx, host)
	}
	if err != nil {
		http.Error(w, strings.TrimPrefix(err.Error(), "hostbreaker: "), http.StatusBadRequest)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Write([]byte(`{"ok":true}` + "\n"))
}

// storeSource is a fleet's side of a status page: the store's records,
// published states and journal.
type storeSource struct {
	s      Store
	source string // of the records the buttons write
	poll   time.Duration

	mu     sync.Mutex // guards what follows
	cached []statusRow
	at     time.Time // when cached was read
	cur    journalCursor
	totals map[fleetKey]*fleetTotals
}

// fleetKey is a (host, role, process) of the fleet.
type fleetKey struct{ host, role, source string }

// fleetTotals sums a fleet key's summary events.
type fleetTotals struct {
	Summary
	seen time.Time // the newest summary's time
}

// The fleet page's bounds: how long a (host, role, process) with no
// summary stays listed, and how many are kept.
const (
	fleetActiveFor = 10 * time.Minute
	fleetMaxKeys   = 10000
)

func newStoreSource(s Store) *storeSource {
	h, _ := os.Hostname()
	if h == "" {
		h = "unknown"
	}
	return &storeSource{s: s, source: "breaker-serve@" + h, poll: time.Second, totals: make(map[fleetKey]*fleetTotals)}
}

func (s *storeSource) rows(ctx context.Context) ([]statusRow, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	if s.cached != nil && now.Sub(s.at) < s.poll {
		return s.cached, nil
	}
	recs, err := s.s.Records(ctx)
	if err != nil {
		return nil, err
	}
	states, err := s.s.States(ctx)
	if err != nil {
		return nil, err
	}
	if s.cur.since.IsZero() {
		s.cur.since = now.Add(-fleetActiveFor)
	}
	evs, err := s.cur.next(ctx, s.s)
	if err != nil {
		return nil, err
	}
	for _, ev := range evs {
		if ev.Name != EventSummary || ev.Summary == nil {
			continue
		}
		k := fleetKey{ev.Host, ev.Role, ev.Process}
		t := s.totals[k]
		if t == nil {
			if len(s.totals) >= fleetMaxKeys {
				continue
			}
			t = &fleetTotals{}
			s.totals[k] = t
		}
		t.add(ev.Summary)
		t.seen = laterOf(t.seen, ev.Time)
	}
	for k, t := range s.totals {
		if now.Sub(t.seen) > fleetActiveFor {
			delete(s.totals, k)
		}
	}
	s.cached, s.at = fleetRows(recs, states, s.totals), now
	return s.cached, nil
}

func (t *fleetTotals) add(d *Summary) {
	t.Requests += d.Requests
	t.Successes += d.Successes
	t.Failures += d.Failures
	t.Neutral += d.Neutral
	t.Rejected += d.Rejected
}

// fleetRows returns the rows of `breaker show -json` for the records and
// states (see cmd/breaker's collectRows), with the totals' counters on the
// published states, and a closed row for each active key without one;
// sorted by host, role, source.
func fleetRows(recs []Record, states []PublishedState, totals map[fleetKey]*fleetTotals) []statusRow {
	rows := make([]statusRow, 0, len(recs)+len(states)+len(totals))
	for _, r := range recs {
		if r.Reason == ReasonReset {
			continue
		}
		role := r.Role
		if role == "" {
			role = "*"
		}
		rows = append(rows, statusRow{Host: r.Host, Role: role, State: StateOpen.String(),
			Until: utcRFC3339(r.Until), Reason: string(r.Reason), Source: r.Source, Note: r.Note})
	}
	listed := make(map[fleetKey]bool, len(states))
	for _, st := range states {
		k := fleetKey{st.Host, st.Role, st.Source}
		row := statusRow{Host: st.Host, Role: st.Role, State: st.State.String(),
			Until: utcRFC3339(st.Until), Reason: string(st.Reason), Source: st.Source, Rate: st.Rate}
		if t := totals[k]; t != nil && !listed[k] {
			row.setCounts(&t.Summary)
		}
		listed[k] = true
		rows = append(rows, row)
	}
	for k, t := range totals {
		if !listed[k] {
			row := statusRow{Host: k.host, Role: k.role, State: StateClosed.String(), Source: k.source}
			row.setCounts(&t.Summary)
			rows = append(rows, row)
		}
	}
	slices.SortFunc(rows, func(a, b statusRow) int {
		if c := strings.Compare(a.Host, b.Host); c != 0 {
			return c
		}
		if c := strings.Compare(a.Role, b.Role); c != 0 {
			return c
		}
		if c := strings.Compare(a.Source, b.Source); c != 0 {
			return c
		}
		if c := strings.Compare(a.State, b.State); c != 0 {
			return c
		}
		return strings.Compare(a.Until, b.Until)
	})
	return rows
}

func (r *statusRow) setCounts(s *Summary) {
	r.Requests, r.Successes, r.Failures, r.Neutral, r.Rejected = s.Requests, s.Successes, s.Failures, s.Neutral, s.Rejected
}

func utcRFC3339(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339)
}

func (s *storeSource) recent(ctx context.Context, since time.Time) ([]Event, error) {
	evs, err := ReadJournal(ctx, s.s, since)
	if err != nil {
		return nil, err
	}
	return slices.DeleteFunc(evs, func(ev Event) bool { return !pageEvent(ev) }), nil
}

// watch polls the journal every poll interval on a goroutine of its own,
// which stop ends and waits for.
func (s *storeSource) watch(ctx context.Context) (*subscription, func()) {
	sub := newSubscription()
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		cur := journalCursor{since: time.Now()}
		tick := time.NewTicker(s.poll)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			pctx, pcancel := context.WithTimeout(ctx, storeTimeout)
			evs, err := cur.next(pctx, s.s)
			pcancel()
			if err != nil {
				continue // the store is down: try again at the next tick
			}
			for _, ev := range evs {
				if pageEvent(ev) {
					sub.send(ev)
				}
			}
		}
	}()
	return sub, func() { cancel(); <-done }
}

func (s *storeSource) open(ctx context.Context, host string, d time.Duration, note string) error {
	_, err := OpenHost(ctx, s.s, time.Time{}, host, d, note, s.source)
	return err
}

func (s *storeSource) reset(ctx context.Context, host string) error {
	_, err := ResetHost(ctx, s.s, time.Time{}, host, s.source)
	return err
}

// journalLag is how late an event may reach a journal after its time and
// still be read by a journalCursor: a Transport appends its events at its
// next store round, a slow store delays that, and its background goroutine
// may log an event (a summary, at its tick) before an earlier one it has
// not handled yet.
const journalLag = 10 * time.Second

// journalCursor reads a journal's new events, each once: it reads from
// journalLag before the newest time it has returned (Store.Events is
// inclusive), never before since, and skips the events it has returned.
type journalCursor struct {
	since  time.Time            // no event before it is returned
	newest time.Time            // the newest event time returned
	seen   map[string]time.Time // the events returned within journalLag of newest, by encoding
}

// next returns the events of s's journal that the cursor has not returned.
func (c *journalCursor) next(ctx context.Context, s Store) ([]Event, error) {
	from := c.since
	if lagged := c.newest.Add(-journalLag); lagged.After(from) {
		from = lagged
	}
	evs, err := ReadJournal(ctx, s, from)
	if err != nil {
		return nil, err
	}
	out := evs[:0]
	for _, ev := range evs {
		if ev.Time.Before(c.since) {
			continue
		}
		k := string(encodeEvent(ev))
		if _, ok := c.seen[k]; ok {
			continue
		}
		if c.seen == nil {
			c.seen = make(map[string]time.Time)
		}
		c.seen[k] = ev.Time
		c.newest = laterOf(c.newest, ev.Time)
		out = append(out, ev)
	}
	for k, at := range c.seen {
		if at.Before(c.newest.Add(-journalLag)) {
			delete(c.seen, k)
		}
	}
	return out, nil
}
