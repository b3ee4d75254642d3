package hostbreaker

// This file runs a real HAProxy for the tests, as nginx_test.go runs
// nginx: a sliding-window rate limit (a stick-table's http_req_rate), whose
// log the tests count. HAProxy's window differs from nginx's leaky bucket
// in what a refused request costs: it counts, so a client that keeps
// sending above the limit keeps the window full.

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"text/template"
	"time"
)

// haproxyLimit is the sliding window of a test HAProxy: every request from
// one source address (every client on 127.0.0.1) shares it.
type haproxyLimit struct {
	Rate       int           // requests allowed per Period (≥ 1)
	Period     time.Duration // the window: whole milliseconds, 1 ms to 5 min
	RetryAfter int           // seconds sent as Retry-After with each 429; 0 sends none
}

// haproxyConfTemplate is the config of a test haproxy, a text/template that
// bench/haproxy.go shares; the template says what it sets up and why.
const haproxyConfTemplate = "testdata/haproxy/sliding_window.cfg.tmpl"

// haproxyConf is the data of haproxyConfTemplate.
type haproxyConf struct {
	Port  int // the 127.0.0.1 port
	Limit haproxyLimit
}

// haproxyPath returns the haproxy binary: on PATH, else /usr/sbin/haproxy
// (not on a non-root user's PATH on Debian). Without one the test fails:
// CI installs it, and a skipped requirement would go unnoticed.
func haproxyPath(t testing.TB) string {
	t.Helper()
	if p, err := exec.LookPath("haproxy"); err == nil {
		return p
	}
	if fi, err := os.Stat("/usr/sbin/haproxy"); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
		return "/usr/sbin/haproxy"
	}
	t.Fatal("haproxy is not on PATH nor at /usr/sbin/haproxy: .ci/run installs it (apt-get install --no-install-recommends haproxy)")
	return ""
}

// startHAProxy runs haproxy with the limit l as a child process in the
// foreground (-db, one thread) on a free 127.0.0.1 port, with its config
// and log in t.TempDir(), and returns once the port accepts connections.
// The server is stopped in t.Cleanup.
func startHAProxy(t *testing.T, l haproxyLimit) *loggedServer {
	t.Helper()
	if l.Rate < 1 || l.Period < time.Millisecond || l.Period > 5*time.Minute || l.Period%time.Millisecond != 0 || l.RetryAfter < 0 {
		t.Fatalf("startHAProxy: invalid limit %+v", l)
	}
	bin := haproxyPath(t)
	dir := t.TempDir()
	tmpl, err := template.ParseFiles(haproxyConfTemplate)
	if err != nil {
		t.Fatalf("startHAProxy: %v", err)
	}
	// The port is free when asked, but another process may take it before
	// haproxy binds it: then haproxy exits, and another port is tried.
	var lastErr error
	for try := range 5 {
		s, err := runHAProxy(t, bin, filepath.Join(dir, strconv.Itoa(try)), func(port int) ([]byte, error) {
			var b bytes.Buffer
			err := tmpl.Execute(&b, haproxyConf{Port: port, Limit: l})
			return b.Bytes(), err
		})
		if err == nil {
			return s
		}
		lastErr = err
		if !strings.Contains(err.Error(), "Address already in use") {
			break
		}
	}
	t.Fatalf("startHAProxy: %v", lastErr)
	return nil
}

// runHAProxy starts one haproxy on a free port with the config that conf
// returns for it, its files in dir, waits for the port, and registers its
// stop.
func runHAProxy(t *testing.T, bin, dir string, conf func(port int) ([]byte, error)) (*loggedServer, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	data, err := conf(port)
	if err != nil {
		return nil, err
	}
	confPath := filepath.Join(dir, "haproxy.cfg")
	if err := os.WriteFile(confPath, data, 0o644); err != nil {
		return nil, err
	}
	// The log goes to stdout (fd 1), here a file: haproxy's writes to it
	// block instead of dropping lines as they may on a full pipe, and
	// each line is one write(2), whole when the next request's starts.
	logPath := filepath.Join(dir, "access.log")
	logFile, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer logFile.Close() // the child has its own descriptor
	cmd := exec.Command(bin, "-db", "-f", confPath)
	stderr := &lockedBuffer{}
	cmd.Stdout, cmd.Stderr = logFile, stderr
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	err = runChildServer(t, cmd, addr, func(what string, waitErr error) error {
		return fmt.Errorf("haproxy %s (%v)\nstderr: %s", what, waitErr, stderr)
	})
	if err != nil {
		return nil, err
	}
	// date(0,ms): milliseconds since the epoch.
	return newLoggedServer("haproxy", "http://"+addr, logPath, func(f string) (time.Time, error) {
		ms, err := strconv.ParseInt(f, 10, 64)
		return time.UnixMilli(ms), err
	}), nil
}

// TestHAProxyHarness checks the harness with bare clients. With and
// without Retry-After, 8 goroutines send without pause for 1.5 s: the
// window serves its first 5 and, as every refused request counts, nothing
// more; each 429 carries Retry-After exactly when configured, no 200 does,
// and haproxy's log counts the same responses as the clients. Then one
// client paced at exactly 5 r/s on a fresh window is served every request.
func TestHAProxyHarness(t *testing.T) {
	const rate, period = 5, time.Second
	for _, ra := range []int{0, 1} {
		t.Run(fmt.Sprintf("RetryAfter=%d", ra), func(t *testing.T) {
			s := startHAProxy(t, haproxyLimit{Rate: rate, Period: period, RetryAfter: ra})
			c := &http.Client{Timeout: 5 * time.Second}
			want := ""
			if ra > 0 {
				want = strconv.Itoa(ra)
			}
			var mu sync.Mutex
			var client loggedCounts
			badHeader := 0
			start := time.Now()
			var wg sync.WaitGroup
			for range 8 {
				wg.Go(func() {
					for time.Since(start) < 1500*time.Millisecond {
						resp, err := c.Get(s.URL + "/works?rows=1")
						if err != nil {
							t.Error(err)
							return
						}
						io.Copy(io.Discard, resp.Body)
						resp.Body.Close()
						got, hasRA := resp.Header.Get("Retry-After"), len(resp.Header.Values("Retry-After")) > 0
						mu.Lock()
						switch resp.StatusCode {
						case http.StatusOK:
							client.OK++
							if hasRA {
								badHeader++
								t.Logf("200 with Retry-After: %q", got)
							}
						case http.StatusTooManyRequests:
							client.TooMany++
							if got != want || hasRA != (want != "") {
								badHeader++
								t.Logf("429 with Retry-After: %q (present %v), want %q", got, hasRA, want)
							}
						default:
							client.Other++
						}
						mu.Unlock()
					}
				})
			}
			wg.Wait()
			elapsed := time.Since(start)
			reqs := s.Requests(t)
			var server loggedCounts
			for _, r := range reqs {
				switch r.Status {
				case http.StatusOK:
					server.OK++
				case http.StatusTooManyRequests:
					server.TooMany++
				default:
					server.Other++
				}
				if r.URI != "/works?rows=1" {
					t.Errorf("haproxy logged URI %q, want /works?rows=1", r.URI)
					break
				}
			}
			t.Logf("in %v: client %+v, server %+v", elapsed.Round(time.Millisecond), client, server)
			if badHeader > 0 {
				t.Errorf("%d responses had the wrong Retry-After (see the log above)", badHeader)
			}
			if client != server {
				t.Errorf("client counted %+v, haproxy logged %+v", client, server)
			}
			if server.OK == 0 || server.TooMany < 100 {
				t.Errorf("haproxy logged %+v, want 200s and many 429s", server)
			}
			// Without pause the window never empties: the first 5 are
			// served, then none (one period of slack).
			if limit := 2 * rate; server.OK > limit {
				t.Errorf("haproxy served %d in %v to clients that never paused, want at most %d: a refused request should count", server.OK, elapsed, limit)
			}
			if len(reqs) > 0 {
				if span := reqs[len(reqs)-1].At.Sub(reqs[0].At); span < elapsed/2 || span > elapsed+time.Second {
					t.Errorf("haproxy's log spans %v for a load of %v", span, elapsed)
				}
			}
		})
	}
	t.Run("paced", func(t *testing.T) {
		s := startHAProxy(t, haproxyLimit{Rate: rate, Period: period})
		got, sent := pacedGets(t, s.URL+"/paced", rate, 3*time.Second)
		server := s.Counts(t)
		t.Logf("paced at %d r/s for 3s: client %d of %d served, server %+v", rate, got, sent, server)
		if got != sent || server.OK != sent || server.TooMany != 0 {
			t.Errorf("a client paced at exactly %d r/s got %d of %d served (haproxy: %+v), want all", rate, got, sent, server)
		}
	})
}

// pacedGets sends GET url at exactly rate requests per second for d, one at a
// time over one connection, and returns the 200s and the requests sent.
// HAProxy's window starts at the first request it counts, and with an even
// client every later request falls within a millisecond of a period
// boundary: one that arrives early is refused and, since a refused request
// counts, keeps the next ones refused. So the schedule starts when the
// first response is back (after haproxy counted that request) plus 1 ms:
// request k goes at that instant + k/rate, never earlier than k/rate after
// the first one was counted. The connection is opened first by a marker
// request, outside the limit.
func pacedGets(t *testing.T, url string, rate int, d time.Duration) (ok, sent int) {
	t.Helper()
	c := &http.Client{Transport: &http.Transport{}, Timeout: 5 * time.Second}
	defer c.CloseIdleConnections()
	get := func(u string) int {
		resp, err := c.Get(u)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	base, _, _ := strings.Cut(strings.TrimPrefix(url, "http://"), "/")
	get("http://" + base + "/__hostbreaker_sync/warm")
	interval := time.Second / time.Duration(rate)
	var start time.Time
	for k := range int(d / interval) {
		if k > 0 {
			time.Sleep(time.Until(start.Add(time.Duration(k) * interval)))
		}
		if get(url) == http.StatusOK {
			ok++
		}
		sent++
		if k == 0 {
			start = time.Now().Add(time.Millisecond)
		}
	}
	return ok, sent
}
