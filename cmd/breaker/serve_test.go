package main

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hostbreaker/hostbreaker"
)

// lockedBuffer is an io.Writer safe for the server goroutine and the test.
type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// startServe runs `breaker serve` on a free loopback port until the test
// ends, and returns its base URL and a function that stops it and
// returns run's error.
func startServe(t *testing.T, args ...string) (base string, stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var out, errb lockedBuffer
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, append([]string{"serve", "-addr", "127.0.0.1:0"}, args...), &out, &errb)
	}()
	var once sync.Once
	var runErr error
	stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case runErr = <-done:
			case <-time.After(15 * time.Second):
				t.Fatal("serve did not stop within 15s of its context's end")
			}
		})
		return runErr
	}
	t.Cleanup(func() { stop() })
	addr := regexp.MustCompile(`http://(127\.0\.0\.1:\d+)/`)
	deadline := time.Now().Add(15 * time.Second)
	for {
		if m := addr.FindStringSubmatch(out.String()); m != nil {
			return "http://" + m[1], stop
		}
		select {
		case err := <-done:
			t.Fatalf("serve ended: %v\nstdout: %s\nstderr: %s", err, out.String(), errb.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("serve printed no address: %q", out.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func httpGet(t *testing.T, u string) (*http.Response, string) {
	t.Helper()
	resp, err := http.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

// TestServeShowShape checks that serve's status.json holds the rows of
// show -json, key for key, for the same store.
func TestServeShowShape(t *testing.T) {
	path := filepath.Join(t.TempDir(), "hb.db")
	s, err := hostbreaker.OpenStore(path)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := hostbreaker.OpenHost(ctx, s, time.Time{}, "paused.example", time.Hour, "<b>maintenance</b>", "ops"); err != nil {
		t.Fatal(err)
	}
	if err := s.PublishStates(ctx, "worker-1", []hostbreaker.PublishedState{
		{Host: "down.example", Role: "api", State: hostbreaker.StateOpen, Reason: hostbreaker.ReasonBreakerOpen, Until: time.Now().Add(time.Minute)},
		{Host: "slow.example", State: hostbreaker.StateClosed, Rate: 2.5, LastMax: 3, Throttled: time.Now()},
	}, time.Hour); err != nil {
		t.Fatal(err)
	}
	s.Close()

	var show []map[string]any
	if err := json.Unmarshal([]byte(mustRun(t, "show", "-json", "-store", path)), &show); err != nil {
		t.Fatal(err)
	}
	if len(show) != 3 {
		t.Fatalf("show -json: %d rows, want 3: %v", len(show), show)
	}
	base, stop := startServe(t, "-store", path)
	resp, body := httpGet(t, base+"/status.json")
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("status.json: %s %q", resp.Status, resp.Header.Get("Content-Type"))
	}
	var page []map[string]any
	if err := json.Unmarshal([]byte(body), &page); err != nil {
		t.Fatal(err)
	}
	if len(page) != len(show) {
		t.Fatalf("status.json: %d rows, show -json %d:\n%s", len(page), len(show), body)
	}
	for i, want := range show {
		for k, v := range want {
			if page[i][k] != v {
				t.Errorf("row %d: %s = %v, show -json says %v", i, k, page[i][k], v)
			}
		}
		for k := range page[i] {
			if _, ok := want[k]; !ok && !slices.Contains([]string{"configured_rate", "requests", "successes", "failures", "neutral", "rejected", "until", "note", "rate"}, k) {
				t.Errorf("row %d: key %q is neither show's nor the page's", i, k)
			}
		}
	}
	if strings.Contains(body, "<b>") {
		t.Errorf("status.json holds markup unescaped: %s", body)
	}
	if resp, page := httpGet(t, base+"/"); resp.StatusCode != http.StatusOK || !strings.Contains(page, `data-control="off"`) {
		t.Errorf("page: %s, control not off", resp.Status)
	}

	// An open event stream does not keep serve from stopping.
	ereq, _ := http.NewRequest(http.MethodGet, base+"/events", nil)
	eresp, err := http.DefaultClient.Do(ereq)
	if err != nil {
		t.Fatal(err)
	}
	defer eresp.Body.Close()
	if line, _ := bufio.NewReader(eresp.Body).ReadString('\n'); !strings.HasPrefix(line, ":") && !strings.HasPrefix(line, "event:") {
		t.Errorf("events stream starts with %q", line)
	}
	if err := stop(); err != nil {
		t.Errorf("serve: %v", err)
	}
}

func TestServeToken(t *testing.T) {
	path := filepath.Join(t.TempDir(), "hb.db")
	mustRun(t, "open", "-store", path, "-f", "seed.example", "-for", "1m") // -f: a new store, a host it does not know yet
	post := func(base, tok, route, host string) int {
		req, _ := http.NewRequest(http.MethodPost, base+"/"+route, strings.NewReader(url.Values{"host": {host}}.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		if tok != "" {
			req.Header.Set("X-Hostbreaker-Token", tok)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}

	t.Setenv("HOSTBREAKER_TOKEN", "")
	base, stop := startServe(t, "-store", path)
	if code := post(base, "guess", "open", "x.example"); code != http.StatusForbidden {
		t.Errorf("read-only serve: POST open = %d, want 403", code)
	}
	stop()

	t.Setenv("HOSTBREAKER_TOKEN", "operator-secret")
	base, _ = startServe(t, "-store", path, "-open-for", "2m")
	if _, page := httpGet(t, base+"/"); !strings.Contains(page, `data-control="on"`) || strings.Contains(page, "operator-secret") {
		t.Error("serve with a token: control not on, or the token in the page")
	}
	if code := post(base, "wrong", "open", "x.example"); code != http.StatusForbidden {
		t.Errorf("POST open with a wrong token = %d, want 403", code)
	}
	if code := post(base, "operator-secret", "open", "x.example"); code != http.StatusOK {
		t.Fatalf("POST open with the token = %d", code)
	}
	out := mustRun(t, "show", "-json", "-store", path, "x.example")
	if !strings.Contains(out, `"reason": "manual"`) || !strings.Contains(out, `"source": "breaker-serve@`) {
		t.Errorf("after the page's open, show says:\n%s", out)
	}
}

func TestServeUsage(t *testing.T) {
	if _, _, err := runCmd(t, "serve", "-store", filepath.Join(t.TempDir(), "none.db")); err == nil || !strings.Contains(err.Error(), "no store at") {
		t.Errorf("serve of a missing store: %v", err)
	}
	if _, _, err := runCmd(t, "serve", "-open-for", "0s"); err == nil {
		t.Error("serve -open-for 0s: no error")
	}
	if _, _, err := runCmd(t, "serve", "extra"); err == nil {
		t.Error("serve with an argument: no error")
	}
}
