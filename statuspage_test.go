package hostbreaker

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// hostile is attacker-chosen text as it reaches the status page: in a
// role, a note, a process name or (through a store) a host name.
const hostile = `<script>window.pwned=1</script><img src=x onerror="window.pwned=2">`

// showKeys are the keys of `breaker show -json` (cmd/breaker's row); the
// status page's snapshot has them all, in that order.
var showKeys = []string{"host", "role", "state", "until", "reason", "source", "note", "rate"}

// statusGet gets path from h and returns the response, with its body read.
func statusGet(t *testing.T, h http.Handler, path string) (*http.Response, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	resp := rec.Result()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

// statusPost posts form to path on h, with the token header tok if not
// empty, and returns the status code.
func statusPost(t *testing.T, h http.Handler, path, tok string, form url.Values) int {
	t.Helper()
	req := httptest.NewRequest(http.MethodPost, path, strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if tok != "" {
		req.Header.Set(statusTokenHeader, tok)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec.Code
}

// statusRows decodes a status.json body into generic rows.
func statusRows(t *testing.T, body string) []map[string]any {
	t.Helper()
	var rows []map[string]any
	if err := json.Unmarshal([]byte(body), &rows); err != nil {
		t.Fatalf("status.json: %v\n%s", err, body)
	}
	return rows
}

func findRow(rows []map[string]any, host, role string) map[string]any {
	for _, r := range rows {
		if r["host"] == host && r["role"] == role {
			return r
		}
	}
	return nil
}

// tripped returns a Transport whose host down.example (role "api") has
// tripped after 2 failures, with ok.example healthy, the host
// noted.example opened by hand with a hostile note, and a hostile role.
func tripped(t *testing.T, process string) *Transport {
	t.Helper()
	base := newFakeHosts(func(req *http.Request) (*http.Response, error) {
		if req.URL.Host == "down.example" {
			return status(503)(req)
		}
		return status(200)(req)
	})
	c := quick(2, time.Minute)
	c.Telemetry.Process = process
	cl, tr := client(t, base, c)
	for range 3 {
		get(t, cl, "api", "https://down.example/private/path?q=secret")
		get(t, cl, "", "https://ok.example/a?b=c")
	}
	get(t, cl, hostile, "https://ok.example/")
	if err := tr.Open("noted.example", time.Hour, hostile); err != nil {
		t.Fatal(err)
	}
	return tr
}

func TestStatusJSON(t *testing.T) {
	tr := tripped(t, "proc-1")
	resp, body := statusGet(t, tr.StatusHandler(nil), "/status.json")
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type = %q", ct)
	}
	if resp.Header.Get("X-Content-Type-Options") != "nosniff" {
		t.Error("no X-Content-Type-Options: nosniff")
	}
	for _, bad := range []string{"<", ">", "/private", "secret", "?b="} {
		if strings.Contains(body, bad) {
			t.Errorf("status.json holds %q:\n%s", bad, body)
		}
	}
	// The keys of breaker show -json, in its order, then the page's.
	var raw []json.RawMessage
	json.Unmarshal([]byte(body), &raw)
	down := findRow(statusRows(t, body), "down.example", "api")
	if down == nil {
		t.Fatalf("no row for (down.example, api):\n%s", body)
	}
	for i, r := range raw {
		if strings.Contains(string(r), `"down.example"`) {
			var keys []string
			dec := json.NewDecoder(strings.NewReader(string(raw[i])))
			dec.Token()
			for dec.More() {
				k, _ := dec.Token()
				keys = append(keys, k.(string))
				var v any
				dec.Decode(&v)
			}
			want := append(slices.Clone(showKeys[:6]), "configured_rate", "requests", "successes", "failures", "neutral", "rejected")
			want = slices.DeleteFunc(want, func(k string) bool { return k == "configured_rate" }) // 0: omitted, as rate
			if !slices.Equal(keys, want) {
				t.Errorf("keys of the tripped row = %v, want %v", keys, want)
			}
		}
	}
	if down["state"] != "open" || down["reason"] != "breaker-open" || down["source"] != tr.sink.process || !strings.HasPrefix(tr.sink.process, "proc-1#") {
		t.Errorf("tripped row = %v", down)
	}
	if u, err := time.Parse(time.RFC3339, down["until"].(string)); err != nil || time.Until(u) < 50*time.Second {
		t.Errorf("until = %v (%v), want about a minute ahead", down["until"], err)
	}
	// 3 requests: 2 failures, then 1 rejected.
	if down["requests"] != 3.0 || down["failures"] != 2.0 || down["rejected"] != 1.0 || down["successes"] != 0.0 {
		t.Errorf("counters = %v", down)
	}
	if ok := findRow(statusRows(t, body), "ok.example", ""); ok == nil || ok["state"] != "closed" || ok["successes"] != 3.0 {
		t.Errorf("healthy row = %v", ok)
	}
	noted := findRow(statusRows(t, body), "noted.example", "")
	if noted == nil || noted["note"] != hostile || noted["reason"] != "manual" {
		t.Errorf("noted row = %v, want the note as it was given", noted)
	}
	if findRow(statusRows(t, body), "ok.example", hostile) == nil {
		t.Errorf("no row with the hostile role:\n%s", body)
	}
}

func TestStatusJSONConfiguredRate(t *testing.T) {
	c := Config{Defaults: Policy{Rate: 50}}
	cl, tr := client(t, cannedBase(200), c)
	get(t, cl, "", "https://paced.example/")
	_, body := statusGet(t, tr.StatusHandler(nil), "/status.json")
	r := findRow(statusRows(t, body), "paced.example", "")
	if r == nil || r["configured_rate"] != 50.0 || r["rate"] != 50.0 {
		t.Errorf("row = %v, want rate and configured_rate 50", r)
	}
}

func TestStatusPageHTML(t *testing.T) {
	tr := tripped(t, hostile)
	h := tr.StatusHandler(nil)
	resp, body := statusGet(t, h, "/")
	if ct := resp.Header.Get("Content-Type"); ct != "text/html; charset=utf-8" {
		t.Errorf("Content-Type = %q", ct)
	}
	csp := resp.Header.Get("Content-Security-Policy")
	for _, want := range []string{"default-src 'none'", "script-src 'self'", "connect-src 'self'"} {
		if !strings.Contains(csp, want) {
			t.Errorf("CSP %q lacks %q", csp, want)
		}
	}
	if strings.Contains(csp, "unsafe") {
		t.Errorf("CSP %q allows unsafe sources", csp)
	}
	if resp.Header.Get("X-Content-Type-Options") != "nosniff" {
		t.Error("no X-Content-Type-Options: nosniff")
	}
	// The page holds no data: everything comes through status.json and
	// events, and is written as text by the script.
	for _, bad := range []string{"down.example", "window.pwned", "proc", "http://", "https://"} {
		if strings.Contains(body, bad) {
			t.Errorf("page holds %q", bad)
		}
	}
	if strings.Count(body, "<script") != 1 || !strings.Contains(body, `<script src="status.js" defer></script>`) {
		t.Errorf("page has scripts other than status.js:\n%s", body)
	}
	resp, js := statusGet(t, h, "/status.js")
	if ct := resp.Header.Get("Content-Type"); ct != "text/javascript; charset=utf-8" {
		t.Errorf("status.js Content-Type = %q", ct)
	}
	if strings.Contains(js, "innerHTML") || strings.Contains(js, "insertAdjacentHTML") || strings.Contains(js, "document.write") {
		t.Error("status.js writes markup")
	}
	if resp, _ := statusGet(t, h, "/status.css"); resp.Header.Get("Content-Type") != "text/css; charset=utf-8" {
		t.Errorf("status.css Content-Type = %q", resp.Header.Get("Content-Type"))
	}
	// Mounted under a prefix, as the README shows: the page's relative
	// URLs resolve under it.
	mux := http.NewServeMux()
	mux.Handle("/hostbreaker/", http.StripPrefix("/hostbreaker", h))
	for _, path := range []string{"/hostbreaker/", "/hostbreaker/status.js", "/hostbreaker/status.css", "/hostbreaker/status.json"} {
		if resp, _ := statusGet(t, mux, path); resp.StatusCode != http.StatusOK {
			t.Errorf("GET %s under a prefix: %d", path, resp.StatusCode)
		}
	}
	if resp, _ := statusGet(t, h, "/nothing"); resp.StatusCode != http.StatusNotFound {
		t.Errorf("/nothing: %d", resp.StatusCode)
	}
}

func TestStatusPageReadOnly(t *testing.T) {
	tr := tripped(t, "p")
	for _, opts := range []*StatusHandlerOptions{nil, {}} {
		h := tr.StatusHandler(opts)
		_, body := statusGet(t, h, "/")
		if !strings.Contains(body, `data-control="off"`) || strings.Contains(body, "<button") {
			t.Errorf("read-only page offers control:\n%s", body)
		}
		for _, path := range []string{"/open", "/close", "/", "/status.json"} {
			for _, tok := range []string{"", "anything"} {
				if code := statusPost(t, h, path, tok, url.Values{"host": {"ok.example"}, "token": {tok}}); code != http.StatusForbidden {
					t.Errorf("POST %s (token %q) = %d, want 403", path, tok, code)
				}
			}
		}
		mustState(t, tr, "ok.example", "", StateClosed)
		mustState(t, tr, "down.example", "api", StateOpen)
	}
}

func TestStatusPageToken(t *testing.T) {
	tr := tripped(t, "p")
	const tok = "s3cret-token"
	h := tr.StatusHandler(&StatusHandlerOptions{Token: tok, OpenFor: 90 * time.Second})
	_, body := statusGet(t, h, "/")
	if !strings.Contains(body, `data-control="on"`) || strings.Contains(body, tok) {
		t.Errorf("page with a token: control not on, or the token shown:\n%s", body)
	}
	open := url.Values{"host": {"ok.example"}}
	for _, bad := range []string{"", "s3cret", "s3cret-token-", "S3CRET-TOKEN"} {
		if code := statusPost(t, h, "/open", bad, open); code != http.StatusForbidden {
			t.Errorf("POST /open with token %q = %d, want 403", bad, code)
		}
	}
	mustState(t, tr, "ok.example", "", StateClosed)

	if code := statusPost(t, h, "/open", tok, open); code != http.StatusOK {
		t.Fatalf("POST /open with the token = %d", code)
	}
	s := stateOf(t, tr, "ok.example", "")
	if s.State != StateOpen || s.Reason != ReasonManual || s.Note != "opened from the status page" {
		t.Errorf("after open: %+v", s)
	}
	if left := time.Until(s.Until); left < 80*time.Second || left > 90*time.Second {
		t.Errorf("opened for %v, want OpenFor 90s", left)
	}
	// The token as a form field, to close the tripped host.
	if code := statusPost(t, h, "/close", "", url.Values{"host": {"down.example"}, "token": {tok}}); code != http.StatusOK {
		t.Fatalf("POST /close with the token field = %d", code)
	}
	mustState(t, tr, "down.example", "api", StateClosed)

	if code := statusPost(t, h, "/open", tok, url.Values{}); code != http.StatusBadRequest {
		t.Errorf("POST /open without host = %d, want 400", code)
	}
	if code := statusPost(t, h, "/open", tok, url.Values{"host": {"bad host"}}); code != http.StatusBadRequest {
		t.Errorf("POST /open of a bad host = %d, want 400", code)
	}
	if code := statusPost(t, h, "/status.json", tok, open); code != http.StatusMethodNotAllowed {
		t.Errorf("POST /status.json = %d, want 405", code)
	}
	if resp, _ := statusGet(t, h, "/open"); resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("GET /open = %d, want 405", resp.StatusCode)
	}
}

// sseEvent is one server-sent event.
type sseEvent struct {
	name string
	ev   Event
}

// readSSE reads the server-sent events of body onto the returned channel,
// until body ends.
func readSSE(body io.Reader) <-chan sseEvent {
	ch := make(chan sseEvent, 64)
	go func() {
		defer close(ch)
		sc := bufio.NewScanner(body)
		var name string
		for sc.Scan() {
			line := sc.Text()
			switch {
			case strings.HasPrefix(line, "event: "):
				name = line[len("event: "):]
			case strings.HasPrefix(line, "data: "):
				var ev Event
				json.Unmarshal([]byte(line[len("data: "):]), &ev)
				ch <- sseEvent{name, ev}
			}
		}
	}()
	return ch
}

// waitSSE returns the first event of ch that ok accepts, failing after d.
func waitSSE(t *testing.T, ch <-chan sseEvent, d time.Duration, what string, ok func(sseEvent) bool) sseEvent {
	t.Helper()
	timeout := time.After(d)
	for {
		select {
		case e, more := <-ch:
			if !more {
				t.Fatalf("stream ended before %s", what)
			}
			if ok(e) {
				return e
			}
		case <-timeout:
			t.Fatalf("no %s within %v", what, d)
		}
	}
}

// openStream opens the events stream of srv.
func openStream(t *testing.T, srv *httptest.Server) <-chan sseEvent {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+"/events", nil)
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("events Content-Type = %q", ct)
	}
	return readSSE(resp.Body)
}

func TestStatusEvents(t *testing.T) {
	base := newFakeHosts(status(503))
	cl, tr := client(t, base, quick(2, time.Minute))
	get(t, cl, "", "https://early.example/")
	get(t, cl, "", "https://early.example/") // trips: in the backlog
	srv := httptest.NewServer(tr.StatusHandler(nil))
	t.Cleanup(srv.Close)
	ch := openStream(t, srv)
	waitSSE(t, ch, 10*time.Second, "the backlog's trip", func(e sseEvent) bool {
		return e.name == "backlog" && e.ev.Host == "early.example" && e.ev.State == StateOpen
	})
	get(t, cl, "api", "https://late.example/path?q=1")
	get(t, cl, "api", "https://late.example/path?q=1")
	e := waitSSE(t, ch, 10*time.Second, "the live trip", func(e sseEvent) bool {
		return e.name == "change" && e.ev.Name == EventStateChange && e.ev.Host == "late.example"
	})
	if e.ev.State != StateOpen || e.ev.Role != "api" || e.ev.Reason != ReasonBreakerOpen || e.ev.Failures != 2 || e.ev.StatusCode != 503 {
		t.Errorf("trip event = %+v", e.ev)
	}
	tr.Open("late.example", time.Minute, "maintenance")
	waitSSE(t, ch, 10*time.Second, "the cooldown", func(e sseEvent) bool {
		return e.name == "change" && e.ev.Name == EventCooldown && e.ev.Note == "maintenance"
	})
}

func TestStatusEventsEndWithClient(t *testing.T) {
	_, tr := client(t, cannedBase(200), Config{})
	srv := httptest.NewServer(tr.StatusHandler(nil))
	t.Cleanup(srv.Close)
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+"/events", nil)
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if tr.subs.list.Load() == nil {
		t.Fatal("no subscription while a stream is open")
	}
	cancel()
	resp.Body.Close()
	deadline := time.Now().Add(10 * time.Second)
	for tr.subs.list.Load() != nil {
		if time.Now().After(deadline) {
			t.Fatal("the subscription outlived its stream")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestStatusEventsEndWithTransport(t *testing.T) {
	tr, err := NewTransport(cannedBase(200))
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(tr.StatusHandler(nil))
	t.Cleanup(srv.Close)
	ch := openStream(t, srv)
	tr.Close()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case _, more := <-ch:
			if !more {
				return // the stream ended
			}
		case <-timeout:
			t.Fatal("the stream outlived its Transport")
		}
	}
}

func TestSubscribersNeverBlock(t *testing.T) {
	var s subscribers
	ev := Event{Name: EventCooldown, Host: "h"}
	if n := testing.AllocsPerRun(100, func() { s.publish(ev) }); n != 0 {
		t.Errorf("publish with no subscriber: %v allocs", n)
	}
	slow, fast := newSubscription(), newSubscription()
	s.add(slow)
	s.add(fast)
	for i := range subscriptionBuffer + 10 {
		s.publish(ev) // never blocks, though nobody reads slow
		if i%2 == 0 {
			<-fast.ch
		}
	}
	if !slow.lagged.Load() || len(slow.ch) != subscriptionBuffer {
		t.Errorf("slow: lagged %v, %d queued", slow.lagged.Load(), len(slow.ch))
	}
	s.publish(Event{Name: EventSummary}) // not the page's kind
	s.remove(slow)
	s.remove(fast)
	if s.list.Load() != nil {
		t.Error("list not empty after removing every subscription")
	}
}

// TestStoreStatusHandler serves the fleet from a bbolt store shared by a
// Transport, with hostile host names and sources written to the store.
func TestStoreStatusHandler(t *testing.T) {
	path := filepath.Join(t.TempDir(), "hb.db")
	base := newFakeHosts(func(req *http.Request) (*http.Response, error) {
		if req.URL.Host == "down.example" {
			return status(503)(req)
		}
		return status(200)(req)
	})
	c := quick(2, time.Minute)
	c.Telemetry.Process = "worker-1"
	c.Telemetry.SummaryInterval = 50 * time.Millisecond
	tr := sharedTransport(t, path, 50*time.Millisecond, base, c)
	cl := &http.Client{Transport: tr}
	s, err := OpenStore(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	ctx := context.Background()
	if err := s.PublishStates(ctx, hostile, []PublishedState{{Host: hostile, Role: hostile, State: StateOpen,
		Reason: ReasonBreakerOpen, Until: time.Now().Add(time.Hour)}}, time.Hour); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenHost(ctx, s, time.Time{}, "manual.example", time.Hour, hostile, "ops"); err != nil {
		t.Fatal(err)
	}
	const tok = "tok"
	h := StoreStatusHandler(s, &StatusHandlerOptions{Token: tok})
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	ch := openStream(t, srv)

	get(t, cl, "api", "https://down.example/x?secret=1")
	get(t, cl, "api", "https://down.example/x?secret=1")
	get(t, cl, "", "https://ok.example/")
	waitSSE(t, ch, 15*time.Second, "the trip from the journal", func(e sseEvent) bool {
		return e.name == "change" && e.ev.Name == EventStateChange && e.ev.Host == "down.example" &&
			e.ev.State == StateOpen && e.ev.Process == tr.sink.process
	})

	var rows []map[string]any
	var body string
	deadline := time.Now().Add(15 * time.Second)
	for {
		_, body = statusGet(t, h, "/status.json")
		rows = statusRows(t, body)
		d, ok := findRow(rows, "down.example", "api"), findRow(rows, "ok.example", "")
		if d != nil && ok != nil && d["failures"] == 2.0 && ok["successes"] == 1.0 {
			if d["state"] != "open" || d["reason"] != "breaker-open" || ok["state"] != "closed" {
				t.Errorf("fleet rows: %v, %v", d, ok)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the fleet's rows never showed the trip and the summaries:\n%s", body)
		}
		time.Sleep(100 * time.Millisecond)
	}
	for _, bad := range []string{"<", ">", "secret"} {
		if strings.Contains(body, bad) {
			t.Errorf("status.json holds %q:\n%s", bad, body)
		}
	}
	if r := findRow(rows, hostile, hostile); r == nil || r["source"] != hostile || r["state"] != "open" {
		t.Errorf("hostile row = %v", r)
	}
	if r := findRow(rows, "manual.example", "*"); r == nil || r["note"] != hostile || r["source"] != "ops" {
		t.Errorf("manual row = %v", r)
	}

	// The buttons write to the store, with the token only.
	if code := statusPost(t, h, "/open", "", url.Values{"host": {"ok.example"}}); code != http.StatusForbidden {
		t.Errorf("POST /open without the token = %d", code)
	}
	if code := statusPost(t, h, "/open", tok, url.Values{"host": {"ok.example"}}); code != http.StatusOK {
		t.Fatalf("POST /open = %d", code)
	}
	recs, err := s.Records(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(recs, func(r Record) bool {
		return r.Host == "ok.example" && r.Reason == ReasonManual && strings.HasPrefix(r.Source, "breaker-serve@")
	}) {
		t.Errorf("no manual record for ok.example in %+v", recs)
	}
	waitVerdict(t, tr, "ok.example", ReasonManual, 15*time.Second)
	if code := statusPost(t, h, "/close", tok, url.Values{"host": {"ok.example"}}); code != http.StatusOK {
		t.Fatalf("POST /close = %d", code)
	}
	waitVerdict(t, tr, "ok.example", "", 15*time.Second)
}

func TestJournalCursor(t *testing.T) {
	s, err := OpenStore(filepath.Join(t.TempDir(), "hb.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	t0 := time.Now().Add(-time.Minute).Truncate(time.Millisecond)
	mk := func(host string, at time.Time) Event {
		return Event{Name: EventCooldown, Time: at, Process: "p", Host: host, Reason: ReasonManual, Until: at.Add(time.Hour)}
	}
	limits := JournalLimits{Retention: time.Hour, MaxEvents: 100}
	mustAppend(t, s, []Event{mk("a", t0), mk("b", t0.Add(time.Second))}, limits)
	cur := journalCursor{since: t0.Add(-time.Second)}
	hosts := func(evs []Event) string {
		var hs []string
		for _, ev := range evs {
			hs = append(hs, ev.Host)
		}
		return strings.Join(hs, ",")
	}
	if evs, err := cur.next(ctx, s); err != nil || hosts(evs) != "a,b" {
		t.Fatalf("first read: %q, %v", hosts(evs), err)
	}
	// An event at the newest time read, written later, is returned once;
	// those already returned are not.
	mustAppend(t, s, []Event{mk("c", t0.Add(time.Second)), mk("d", t0.Add(2*time.Second))}, limits)
	if evs, _ := cur.next(ctx, s); hosts(evs) != "c,d" {
		t.Errorf("second read: %q, want c,d", hosts(evs))
	}
	if evs, _ := cur.next(ctx, s); len(evs) != 0 {
		t.Errorf("third read: %q, want nothing", hosts(evs))
	}
	// An event older than the newest read, written later (a Transport's
	// background goroutine logged a summary before an earlier trip it had
	// not handled yet), is returned once, within journalLag; before since,
	// never.
	mustAppend(t, s, []Event{mk("e", t0.Add(1500*time.Millisecond)), mk("f", t0.Add(-2*time.Second))}, limits)
	if evs, _ := cur.next(ctx, s); hosts(evs) != "e" {
		t.Errorf("fourth read: %q, want e", hosts(evs))
	}
	if evs, _ := cur.next(ctx, s); len(evs) != 0 {
		t.Errorf("fifth read: %q, want nothing", hosts(evs))
	}
}
