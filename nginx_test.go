package hostbreaker

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

// nginxLimit is the limit_req zone of a test nginx: every request from
// 127.0.0.1 shares it.
type nginxLimit struct {
	Rate       int // requests per second (≥ 1): limit_req_zone rate=Rate r/s
	Burst      int // 0: limit_req without burst (every request faster than the rate is refused); > 0: burst=Burst nodelay
	RetryAfter int // seconds sent as Retry-After with each 429; 0 sends none
}

// nginxConfTemplate is the config of a test nginx, a text/template that
// bench/nginx.go shares; the template says what it sets up and why.
const nginxConfTemplate = "testdata/nginx/limit_req.conf.tmpl"

// nginxConf is the data of nginxConfTemplate.
type nginxConf struct {
	Dir   string // the server's directory
	Port  int    // the 127.0.0.1 port
	Limit nginxLimit
}

// nginxPath returns the nginx binary: on PATH, else /usr/sbin/nginx (not
// on a non-root user's PATH on Debian). Without one the test fails: CI
// installs it, and a skipped requirement would go unnoticed.
func nginxPath(t testing.TB) string {
	t.Helper()
	if p, err := exec.LookPath("nginx"); err == nil {
		return p
	}
	if fi, err := os.Stat("/usr/sbin/nginx"); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
		return "/usr/sbin/nginx"
	}
	t.Fatal("nginx is not on PATH nor at /usr/sbin/nginx: .ci/run installs it (apt-get install --no-install-recommends nginx)")
	return ""
}

// startNginx runs nginx with the limit l as a child process on a free
// 127.0.0.1 port, with its config, pid, logs and temp files in
// t.TempDir(), and returns once the port accepts connections. It works as
// root and as any other user. The server is stopped in t.Cleanup.
func startNginx(t *testing.T, l nginxLimit) *loggedServer {
	t.Helper()
	if l.Rate < 1 || l.Burst < 0 || l.RetryAfter < 0 {
		t.Fatalf("startNginx: invalid limit %+v", l)
	}
	bin := nginxPath(t)
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "www"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "www", "ok.txt"), []byte("ok\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	tmpl, err := template.ParseFiles(nginxConfTemplate)
	if err != nil {
		t.Fatalf("startNginx: %v", err)
	}
	// The port is free when asked, but another process may take it before
	// nginx binds it: then nginx exits, and another port is tried.
	var lastErr error
	for range 5 {
		s, err := runNginx(t, bin, dir, func(port int) ([]byte, error) {
			var b bytes.Buffer
			err := tmpl.Execute(&b, nginxConf{Dir: dir, Port: port, Limit: l})
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
	t.Fatalf("startNginx: %v", lastErr)
	return nil
}

// runNginx starts one nginx on a free port with the config that conf
// returns for it, waits for the port, and registers its stop.
func runNginx(t *testing.T, bin, dir string, conf func(port int) ([]byte, error)) (*loggedServer, error) {
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
	confPath := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(confPath, data, 0o644); err != nil {
		return nil, err
	}
	// -e: the error log before the config is read (the built-in path,
	// /var/log/nginx/error.log, is not writable by other users than root).
	cmd := exec.Command(bin, "-p", dir+"/", "-c", confPath, "-e", filepath.Join(dir, "error.log"))
	stderr := &lockedBuffer{}
	cmd.Stdout, cmd.Stderr = stderr, stderr
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	err = runChildServer(t, cmd, addr, func(what string, waitErr error) error {
		errLog, _ := os.ReadFile(filepath.Join(dir, "error.log"))
		return fmt.Errorf("nginx %s (%v)\nstderr: %s\nerror.log: %s", what, waitErr, stderr, errLog)
	})
	if err != nil {
		return nil, err
	}
	// $msec: seconds with millisecond resolution.
	return newLoggedServer("nginx", "http://"+addr, filepath.Join(dir, "access.log"), func(f string) (time.Time, error) {
		sec, err := strconv.ParseFloat(f, 64)
		return time.UnixMilli(int64(sec*1000 + 0.5)), err
	}), nil
}

// lockedBuffer is a bytes.Buffer that a child process writes while a test
// may read it.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// TestNginxHarness checks the harness with a bare client: sequential
// requests for 1.5 s against 5 r/s without burst get 200s and 429s, each
// 429 with Retry-After: 1 and no 200 with one, and nginx's log counts the
// same responses as the client.
func TestNginxHarness(t *testing.T) {
	s := startNginx(t, nginxLimit{Rate: 5, Burst: 0, RetryAfter: 1})
	c := &http.Client{Timeout: 5 * time.Second}
	var client loggedCounts
	badHeader := 0
	start := time.Now()
	for time.Since(start) < 1500*time.Millisecond {
		resp, err := c.Get(s.URL + "/works")
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		ra := resp.Header.Get("Retry-After")
		switch resp.StatusCode {
		case http.StatusOK:
			client.OK++
			if ra != "" {
				badHeader++
				t.Logf("200 with Retry-After: %q", ra)
			}
		case http.StatusTooManyRequests:
			client.TooMany++
			if ra != "1" {
				badHeader++
				t.Logf("429 with Retry-After: %q, want \"1\"", ra)
			}
		default:
			client.Other++
		}
	}
	elapsed := time.Since(start)
	server := s.Counts(t)
	t.Logf("in %v: client %+v, server %+v", elapsed.Round(time.Millisecond), client, server)
	if client.OK == 0 || client.TooMany == 0 {
		t.Errorf("client got %+v, want both 200s and 429s", client)
	}
	if badHeader > 0 {
		t.Errorf("%d responses had the wrong Retry-After (see the log above)", badHeader)
	}
	if client != server {
		t.Errorf("client counted %+v, nginx logged %+v", client, server)
	}
	// 5 r/s: at most one 200 per 200 ms, plus a second's slack.
	if limit := int(5*elapsed.Seconds()) + 5; server.OK > limit {
		t.Errorf("nginx served %d in %v, want at most %d at 5 r/s", server.OK, elapsed, limit)
	}
}

// TestNginxVariants checks the zones of the benchmark's scenarios without
// Retry-After (RetryAfter 0): 5 r/s without burst, 5 r/s with burst 5
// nodelay, 50 r/s without burst. Back to back, a fresh zone serves 1 + burst
// requests and refuses the next; a sequential bare client for 1 s is served
// about the rate (at least half, at most rate × seconds + burst + 1) and
// refused the rest; no response carries Retry-After; nginx's log counts
// what the client got.
func TestNginxVariants(t *testing.T) {
	for _, l := range []nginxLimit{
		{Rate: 5, Burst: 0},
		{Rate: 5, Burst: 5},
		{Rate: 50, Burst: 0},
	} {
		t.Run(fmt.Sprintf("rate=%d,burst=%d", l.Rate, l.Burst), func(t *testing.T) {
			s := startNginx(t, l)
			c := &http.Client{Timeout: 5 * time.Second}
			var client loggedCounts
			var statuses []int
			badHeader := 0
			start := time.Now()
			for time.Since(start) < time.Second {
				resp, err := c.Get(s.URL + "/variant")
				if err != nil {
					t.Fatal(err)
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if v := resp.Header.Values("Retry-After"); len(v) > 0 {
					badHeader++
					t.Logf("%d with Retry-After: %q, want none", resp.StatusCode, v)
				}
				if len(statuses) <= l.Burst+1 {
					statuses = append(statuses, resp.StatusCode)
				}
				switch resp.StatusCode {
				case http.StatusOK:
					client.OK++
				case http.StatusTooManyRequests:
					client.TooMany++
				default:
					client.Other++
				}
			}
			elapsed := time.Since(start)
			server := s.Counts(t)
			t.Logf("in %v: client %+v, server %+v; first statuses %v", elapsed.Round(time.Millisecond), client, server, statuses)
			if badHeader > 0 {
				t.Errorf("%d responses had a Retry-After header (see the log above)", badHeader)
			}
			if client != server {
				t.Errorf("client counted %+v, nginx logged %+v", client, server)
			}
			for i, st := range statuses {
				want := http.StatusOK
				if i == l.Burst+1 {
					want = http.StatusTooManyRequests
				}
				if st != want {
					t.Errorf("back to back, request %d got %d, want %d (%d served, then refused)", i+1, st, want, l.Burst+1)
				}
			}
			if client.TooMany == 0 {
				t.Errorf("no 429 in %v", elapsed)
			}
			lo, hi := int(0.5*float64(l.Rate)*elapsed.Seconds()), int(float64(l.Rate)*elapsed.Seconds())+l.Burst+1
			if server.OK < lo || server.OK > hi {
				t.Errorf("nginx served %d in %v, want %d to %d at %d r/s with burst %d", server.OK, elapsed, lo, hi, l.Rate, l.Burst)
			}
		})
	}
}
