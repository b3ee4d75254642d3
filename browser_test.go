package hostbreaker

// The status page in a real headless Chromium (Debian's chromium, which
// .ci/run installs), driven through the DevTools protocol by chromedp.

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

var updateScreenshot = flag.Bool("update-screenshot", false, "write the status page's screenshot to docs/img/status.png")

// browser starts a headless Chromium for the test and returns a tab's
// context. It fails the test when Chromium is not installed.
func browser(t *testing.T) context.Context {
	t.Helper()
	path, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatalf("chromium not found (%v): install the Debian packages chromium and chromium-driver (.ci/run does)", err)
	}
	dir := t.TempDir() // removed after the browser has stopped (cleanups run last first)
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(path),
		chromedp.Headless, chromedp.NoSandbox, chromedp.DisableGPU, chromedp.NoFirstRun,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.UserDataDir(dir),
		chromedp.WindowSize(1360, 760),
	)
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelTab := chromedp.NewContext(actx)
	ctx, cancelTime := context.WithTimeout(ctx, 2*time.Minute)
	t.Cleanup(func() { cancelTime(); cancelTab(); cancelAlloc() })
	start := time.Now()
	if err := chromedp.Do(ctx); err != nil { // starts the browser
		t.Fatalf("start chromium: %v", err)
	}
	t.Logf("chromium started in %v", time.Since(start).Round(time.Millisecond))
	return ctx
}

// jsString is s as a JavaScript string literal.
func jsString(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// rowJS is a JavaScript expression for the page's row of (host, role), or
// null.
func rowJS(host, role string) string {
	if role == "" {
		role = "-" // as the page shows the default role
	}
	return fmt.Sprintf(`[...document.querySelectorAll("#rows tr")].find(tr => tr.cells[0].textContent === %s && tr.cells[1].textContent === %s) || null`,
		jsString(host), jsString(role))
}

// evalJS evaluates expr in the tab and returns its value.
func evalJS[T any](t *testing.T, ctx context.Context, expr string) T {
	t.Helper()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr, chromedp.EvalAwaitPromise))
	if err != nil {
		t.Fatalf("evaluate %s: %v", expr, err)
	}
	return v
}

// waitJS waits until expr is truthy in the tab, up to d. A poll started
// in an execution context that the page's navigation then replaced fails
// at once ("Cannot find context with specified id", seen once in CI on
// the shared tab): it polls again in the new one.
func waitJS(t *testing.T, ctx context.Context, what, expr string, d time.Duration) {
	t.Helper()
	end := time.Now().Add(d)
	for {
		_, err := chromedp.Run(ctx, chromedp.Poll[chromedp.Void](expr,
			chromedp.WithPollingMutation(), chromedp.WithPollingTimeout(time.Until(end))))
		switch {
		case err == nil:
			return
		case strings.Contains(err.Error(), "Cannot find context with specified id") && time.Until(end) > 0:
			continue
		}
		t.Fatalf("%s: not within %v: %v", what, d, err)
	}
}

// fleetBase is a base transport that sends the requests to every host
// to srv, so that the test can use many host names on one loopback server.
func fleetBase(srv *httptest.Server) *http.Transport {
	addr := srv.Listener.Addr().String()
	return &http.Transport{DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}}
}

// TestStatusPageBrowser runs the status pages in one headless Chromium,
// a tab each.
func TestStatusPageBrowser(t *testing.T) {
	ctx := browser(t)
	t.Run("transport", func(t *testing.T) { browserTransportPage(t, ctx) })
	t.Run("fleet", func(t *testing.T) { browserFleetPage(t, ctx) })
}

// newTab returns the browser's tab for a page, and leaves the page (for
// about:blank) when the test ends: call it after starting the servers the
// page visits, so that it leaves them first (an httptest.Server's Close
// waits for the page's event stream). The pages share the one tab that
// Chromium starts with: opening a tab of its own took each page 0.3–0.4 s.
func newTab(t *testing.T, ctx context.Context) context.Context {
	t.Helper()
	t.Cleanup(func() {
		if err := chromedp.Do(ctx, chromedp.Navigate("about:blank")); err != nil {
			t.Errorf("leave the page: %v", err)
		}
	})
	return ctx
}

// browserTransportPage: a Transport's page shows a trip live, hostile
// text as text, and offers control only with a token.
func browserTransportPage(t *testing.T, browserCtx context.Context) {
	// The hosts: one that fails (tripped during the test), one that asks
	// for a pause (Retry-After), one paced at a configured rate, one
	// healthy, and one opened by hand with a hostile note.
	var failing atomic.Bool
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.Host == "pdf.slowpub.example" && failing.Load():
			w.WriteHeader(http.StatusServiceUnavailable)
		case r.Host == "export.arxiv.example":
			w.Header().Set("Retry-After", "90")
			w.WriteHeader(http.StatusTooManyRequests)
		default:
			w.Write([]byte("ok"))
		}
	}))
	t.Cleanup(srv.Close)
	base := fleetBase(srv)
	t.Cleanup(base.CloseIdleConnections)
	c := Config{
		Defaults:  Policy{FailMax: 3, ResetTimeout: 2 * time.Minute, HalfOpenJitter: -1},
		Hosts:     map[string]Policy{"landing.example.org": {Rate: 8}},
		Telemetry: TelemetryConfig{Process: "harvester-1"},
	}
	cl, tr := client(t, base, c)
	send := func(role, url string) { get(t, cl, role, url) }
	send("artifact", "http://pdf.slowpub.example/files/1.pdf")
	send("metadata", "http://api.crossref.example/works?query=secret")
	send(hostile, "http://api.crossref.example/works")
	send("metadata", "http://export.arxiv.example/api/query?id=1")
	send("landing", "http://landing.example.org/article/1")
	if err := tr.Open("mirror.example.net", time.Hour, hostile); err != nil {
		t.Fatal(err)
	}
	// Traffic, for the per-second rates.
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			send("metadata", "http://api.crossref.example/works")
			if i%3 == 0 {
				send("landing", "http://landing.example.org/article/2")
				send("metadata", "http://export.arxiv.example/api/query")
			}
		}
	}()
	t.Cleanup(func() { close(stop); <-done })

	readOnly := httptest.NewServer(tr.StatusHandler(nil))
	t.Cleanup(readOnly.Close)
	const token = "browser-test-token"
	control := httptest.NewServer(tr.StatusHandler(&StatusHandlerOptions{Token: token}))
	t.Cleanup(control.Close)
	lap := stopwatch(t)
	ctx := newTab(t, browserCtx)

	start := time.Now()
	if err := chromedp.Do(ctx, chromedp.Navigate(readOnly.URL+"/")); err != nil {
		t.Fatal(err)
	}
	waitJS(t, ctx, "the page is live with its rows",
		`document.getElementById("conn").textContent === "live" && (`+rowJS("pdf.slowpub.example", "artifact")+`) !== null`, 10*time.Second)
	t.Logf("page loaded and live in %v", time.Since(start).Round(time.Millisecond))
	evalJS[int](t, ctx, `window.loadMark = 1`)

	// Trip pdf.slowpub.example through the Transport; the page shows it
	// open, from the events stream, without a reload.
	failing.Store(true)
	for range 3 {
		send("artifact", "http://pdf.slowpub.example/files/2.pdf")
	}
	tripped := time.Now()
	mustState(t, tr, "pdf.slowpub.example", "artifact", StateOpen)
	row := rowJS("pdf.slowpub.example", "artifact")
	waitJS(t, ctx, "the tripped host shown open", fmt.Sprintf(`(() => { const r = %s; return r !== null && r.dataset.state === "open" && r.dataset.via === "event" })()`, row), 2*time.Second)
	shown := time.Since(tripped)
	t.Logf("tripped host shown open %v after the trip", shown.Round(time.Millisecond))
	if shown > 2*time.Second {
		t.Errorf("shown open %v after the trip, want within 2s", shown)
	}
	if evalJS[int](t, ctx, `window.loadMark || 0`) != 1 {
		t.Error("the page reloaded")
	}
	if got := evalJS[string](t, ctx, fmt.Sprintf(`(%s).cells[3].textContent`, row)); got != "breaker-open" {
		t.Errorf("reason cell = %q", got)
	}
	if got := evalJS[string](t, ctx, fmt.Sprintf(`(%s).cells[10].textContent`, row)); !containsAll(got, "closed → open", "breaker-open", "after 3 failures", "last 503") {
		t.Errorf("last events cell = %q", got)
	}

	// Hostile text is text: in the role and the note cells, with no
	// element made of it and no script run.
	hostileRow := rowJS("api.crossref.example", hostile)
	if got := evalJS[string](t, ctx, fmt.Sprintf(`(%s).cells[1].textContent`, hostileRow)); got != hostile {
		t.Errorf("hostile role cell = %q", got)
	}
	noted := rowJS("mirror.example.net", "")
	if got := evalJS[string](t, ctx, fmt.Sprintf(`(%s).querySelector(".note").textContent`, noted)); got != hostile {
		t.Errorf("hostile note = %q", got)
	}
	if n := evalJS[int](t, ctx, `document.images.length + document.scripts.length`); n != 1 {
		t.Errorf("%d images and scripts, want only status.js", n)
	}
	if v := evalJS[bool](t, ctx, `window.pwned !== undefined`); v {
		t.Error("a hostile script ran")
	}

	// Read-only: no button, and a POST is refused.
	if n := evalJS[int](t, ctx, `document.querySelectorAll("button").length`); n != 0 {
		t.Errorf("read-only page shows %d buttons", n)
	}
	code := evalJS[int](t, ctx, `fetch("open", {method: "POST", headers: {"X-Hostbreaker-Token": "guess"}, body: new URLSearchParams({host: "api.crossref.example"})}).then(r => r.status)`)
	if code != http.StatusForbidden {
		t.Errorf("POST from the read-only page: %d, want 403", code)
	}
	mustState(t, tr, "api.crossref.example", "metadata", StateClosed)
	lap("trip, hostile text and read-only checked")

	// With a token: buttons, and the close button, with the token typed
	// in, closes the tripped host.
	if err := chromedp.Do(ctx, chromedp.Navigate(control.URL+"/")); err != nil {
		t.Fatal(err)
	}
	waitJS(t, ctx, "the control page's rows", row+` !== null && document.getElementById("conn").textContent === "live"`, 10*time.Second)
	if n := evalJS[int](t, ctx, `document.querySelectorAll("#rows button").length`); n == 0 {
		t.Error("the page with a token shows no buttons")
	}
	evalJS[bool](t, ctx, fmt.Sprintf(`(() => { document.getElementById("token").value = %s; [...(%s).querySelectorAll("button")].find(b => b.textContent === "close").click(); return true })()`, jsString(token), row))
	waitJS(t, ctx, "the host closed by the button", fmt.Sprintf(`(() => { const r = %s; return r !== null && r.dataset.state === "closed" })()`, row), 5*time.Second)
	mustState(t, tr, "pdf.slowpub.example", "artifact", StateClosed)
	lap("control page checked")

	if *updateScreenshot {
		// The picture for the README: trip it again, and let the rates
		// fill in.
		for range 3 {
			send("artifact", "http://pdf.slowpub.example/files/3.pdf")
		}
		if err := chromedp.Do(ctx, chromedp.Navigate(readOnly.URL+"/")); err != nil {
			t.Fatal(err)
		}
		waitJS(t, ctx, "the rates", `[...document.querySelectorAll("#rows td:nth-child(7)")].some(td => Number(td.textContent) > 0)`, 15*time.Second)
		time.Sleep(2500 * time.Millisecond) // two snapshots more, so every row has its rates
		png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
		if err != nil {
			t.Fatal(err)
		}
		out := filepath.Join("docs", "img", "status.png")
		if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(out, png, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("wrote %s (%d bytes)", out, len(png))
	}
}

// browserFleetPage: the fleet page of a store that holds a hostile host
// name, published by a process with a hostile name, shows them as text.
func browserFleetPage(t *testing.T, browserCtx context.Context) {
	s, err := OpenStore(filepath.Join(t.TempDir(), "hb.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	if err := s.PublishStates(context.Background(), hostile, []PublishedState{{Host: hostile, Role: "landing",
		State: StateOpen, Reason: ReasonBreakerOpen, Until: time.Now().Add(time.Hour)}}, time.Hour); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(StoreStatusHandler(s, nil))
	t.Cleanup(srv.Close)
	lap := stopwatch(t)
	ctx := newTab(t, browserCtx)
	if err := chromedp.Do(ctx, chromedp.Navigate(srv.URL+"/")); err != nil {
		t.Fatal(err)
	}
	row := rowJS(hostile, "landing")
	waitJS(t, ctx, "the hostile host's row", row+` !== null`, 10*time.Second)
	lap("row shown")
	if got := evalJS[string](t, ctx, fmt.Sprintf(`(%s).cells[9].textContent`, row)); got != hostile {
		t.Errorf("source cell = %q", got)
	}
	if got := evalJS[string](t, ctx, fmt.Sprintf(`(%s).dataset.state`, row)); got != "open" {
		t.Errorf("state = %q", got)
	}
	if n := evalJS[int](t, ctx, `document.images.length + document.scripts.length + document.querySelectorAll("button").length`); n != 1 {
		t.Errorf("%d images, scripts and buttons, want only status.js", n)
	}
	if v := evalJS[bool](t, ctx, `window.pwned !== undefined`); v {
		t.Error("a hostile script ran")
	}
}

func containsAll(s string, subs ...string) bool {
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			return false
		}
	}
	return true
}

// stopwatch returns a function that logs what was done and how long it
// took since the last call.
func stopwatch(t *testing.T) func(what string) {
	last := time.Now()
	return func(what string) {
		t.Helper()
		now := time.Now()
		t.Logf("%s in %v", what, now.Sub(last).Round(time.Millisecond))
		last = now
	}
}
