package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/hostbreaker/hostbreaker"
)

// nginxLimit is the limit_req zone of a bench nginx; every client shares
// it, since every request comes from 127.0.0.1.
type nginxLimit struct {
	rate       int // r/s
	burst      int // 0: limit_req without burst; > 0: burst=N nodelay
	retryAfter int // seconds, sent with each 429 (and only with 429s)
}

// The zones of the nginx scenarios: 5 r/s, with a burst of 5 (4, 7) or
// none (6), 429 with Retry-After: 1.
var (
	limitBurst5 = nginxLimit{rate: 5, burst: 5, retryAfter: 1}
	limitBurst0 = nginxLimit{rate: 5, burst: 0, retryAfter: 1}
)

// burst0Rate is hostbreaker's configured rate in scenario 6: 10 % under
// the zone's 5 r/s.
const burst0Rate = 4.5

// limitedHost is the host every nginx scenario requests; the base
// transport dials nginx whatever the host.
const limitedHost = "limited.test"

// The config of a bench nginx: one process (master_process off) in the
// foreground, everything under {{DIR}}. limit_req runs in the preaccess
// phase, before try_files and the static handler (a `return` would run in
// the rewrite phase and bypass it). The map sends Retry-After with 429s
// only: add_header skips an empty value. The access log is unbuffered.
// The same config as the library's nginx_test.go.
const nginxConf = `daemon off;
master_process off;
worker_processes 1;
pid {{DIR}}/nginx.pid;
error_log {{DIR}}/error.log warn;
events { worker_connections 4096; }
http {
  default_type text/plain;
  log_format bench '$msec $status $request_uri';
  access_log {{DIR}}/access.log bench;
  client_body_temp_path {{DIR}}/body;
  proxy_temp_path {{DIR}}/proxy;
  fastcgi_temp_path {{DIR}}/fastcgi;
  uwsgi_temp_path {{DIR}}/uwsgi;
  scgi_temp_path {{DIR}}/scgi;
  keepalive_requests 1000000;
  limit_req_zone $binary_remote_addr zone=bench:1m rate={{RATE}}r/s;
  map $status $bench_retry_after { 429 "{{RETRY_AFTER}}"; default ""; }
  server {
    listen 127.0.0.1:{{PORT}};
    root {{DIR}}/www;
    location / {
      limit_req zone=bench{{BURST}};
      limit_req_status 429;
      add_header Retry-After $bench_retry_after always;
      try_files /ok.txt =404;
    }
    location = /__bench_sync {
      return 204;
    }
  }
}
`

// nginxBinary returns nginx on PATH, else Debian's /usr/sbin/nginx (not on
// a non-root user's PATH).
func nginxBinary() (string, error) {
	if p, err := exec.LookPath("nginx"); err == nil {
		return p, nil
	}
	if fi, err := os.Stat("/usr/sbin/nginx"); err == nil && fi.Mode()&0o111 != 0 {
		return "/usr/sbin/nginx", nil
	}
	return "", errors.New("nginx not on PATH nor at /usr/sbin/nginx (.ci/run installs it)")
}

// nginxServer is a bench nginx, a child process.
type nginxServer struct {
	addr string // 127.0.0.1:port
	dir  string
	stop func() // stops nginx and removes dir
}

// startNginx runs nginx with zone l as a child process on a free loopback
// port, with its config, pid, logs and temp files in a temporary
// directory, and returns once the port accepts connections.
func startNginx(l nginxLimit) (*nginxServer, error) {
	bin, err := nginxBinary()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "hostbreaker-bench-nginx-")
	if err != nil {
		return nil, err
	}
	if err := os.Mkdir(filepath.Join(dir, "www"), 0o755); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, "www", "ok.txt"), []byte("ok\n"), 0o644); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	burst, retryAfter := "", ""
	if l.burst > 0 {
		burst = fmt.Sprintf(" burst=%d nodelay", l.burst)
	}
	if l.retryAfter > 0 {
		retryAfter = strconv.Itoa(l.retryAfter)
	}
	// The port is free when asked, but may be taken before nginx binds
	// it: then nginx exits, and another port is tried.
	for range 5 {
		s, err := runNginx(bin, dir, func(port int) string {
			return strings.NewReplacer("{{DIR}}", dir, "{{PORT}}", strconv.Itoa(port),
				"{{RATE}}", strconv.Itoa(l.rate), "{{BURST}}", burst,
				"{{RETRY_AFTER}}", retryAfter).Replace(nginxConf)
		})
		if err == nil || !strings.Contains(err.Error(), "Address already in use") {
			if err != nil {
				os.RemoveAll(dir)
			}
			return s, err
		}
	}
	os.RemoveAll(dir)
	return nil, errors.New("nginx: no free port in 5 tries")
}

func runNginx(bin, dir string, conf func(port int) string) (*nginxServer, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	confPath := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(confPath, []byte(conf(port)), 0o644); err != nil {
		return nil, err
	}
	// -e: the error log before the config is read (the built-in one is
	// writable by root only).
	cmd := exec.Command(bin, "-p", dir+"/", "-c", confPath, "-e", filepath.Join(dir, "error.log"))
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	exited := make(chan struct{})
	var waitErr error
	go func() { waitErr = cmd.Wait(); close(exited) }()
	kill := func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	for deadline := time.Now().Add(10 * time.Second); ; {
		if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			c.Close()
			return &nginxServer{addr: addr, dir: dir, stop: func() { kill(); os.RemoveAll(dir) }}, nil
		}
		select {
		case <-exited:
			errLog, _ := os.ReadFile(filepath.Join(dir, "error.log"))
			return nil, fmt.Errorf("nginx exited (%v): %s", waitErr, errLog)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			kill()
			return nil, fmt.Errorf("nginx did not listen on %s within 10s", addr)
		}
	}
}

// nginxCounts is what nginx's access log says of a run.
type nginxCounts struct {
	reached, ok, n429, inRetryAfter int64
}

// counts reads the access log up to a marker request that it sends first
// and waits for: nginx runs in one process and logs a request as soon as
// it has sent the response, before it handles another event, so every
// response a client had received is in the log before the marker. A
// request inside a Retry-After window is one logged less than retryAfter
// seconds after a 429 (both in log order, which is time order).
func (s *nginxServer) counts(retryAfter int) (nginxCounts, error) {
	marker := "/__bench_sync"
	c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + s.addr + marker)
	if err != nil {
		return nginxCounts{}, fmt.Errorf("nginx marker request: %w", err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	for deadline := time.Now().Add(5 * time.Second); ; {
		n, found, err := s.readLog(marker, retryAfter)
		if err != nil || found {
			return n, err
		}
		if time.Now().After(deadline) {
			return n, fmt.Errorf("nginx access log: no line for %s after 5s", marker)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (s *nginxServer) readLog(marker string, retryAfter int) (nginxCounts, bool, error) {
	f, err := os.Open(filepath.Join(s.dir, "access.log"))
	if err != nil {
		return nginxCounts{}, false, err
	}
	defer f.Close()
	var n nginxCounts
	windowEnd := 0.0
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) != 3 {
			continue // the last line, being written: not before the marker
		}
		if fields[2] == marker {
			return n, true, nil
		}
		at, err1 := strconv.ParseFloat(fields[0], 64)
		status, err2 := strconv.Atoi(fields[1])
		if err := errors.Join(err1, err2); err != nil {
			return n, false, fmt.Errorf("nginx access log: line %q: %w", sc.Text(), err)
		}
		n.reached++
		if at < windowEnd {
			n.inRetryAfter++
		}
		switch status {
		case http.StatusOK:
			n.ok++
		case http.StatusTooManyRequests:
			n.n429++
			windowEnd = max(windowEnd, at+float64(retryAfter))
		}
	}
	return n, false, sc.Err()
}

// result turns counts over elapsed seconds into a Result.
func (n nginxCounts) result(l nginxLimit, elapsed float64) Result {
	return Result{
		Reached:      n.reached,
		Got429:       ptr(n.n429),
		InRetryAfter: ptr(n.inRetryAfter),
		GoodputPct:   ptr(100 * float64(n.ok) / elapsed / float64(l.rate)),
		Elapsed:      elapsed,
	}
}

// Scenario 4: a real nginx limit_req zone, 5 r/s, burst 5 nodelay;
// hostbreaker on its defaults.
func runNginxBurst5(c client, o options) (Result, error) {
	return runNginxLimit(c, o, limitBurst5, setup{openFor: o.openFor})
}

// Scenario 6: 5 r/s without burst; hostbreaker is told a rate 10 % under
// it (Hosts["limited.test"].Rate), the other clients are unchanged.
func runNginxBurst0(c client, o options) (Result, error) {
	return runNginxLimit(c, o, limitBurst0, setup{openFor: o.openFor,
		hosts: map[string]hostbreaker.Policy{limitedHost: {Rate: burst0Rate}}})
}

// runNginxLimit runs c against a fresh nginx with zone l, counted from its
// access log.
func runNginxLimit(c client, o options, l nginxLimit, s setup) (Result, error) {
	if _, err := nginxBinary(); err != nil {
		return Result{Skipped: err.Error()}, nil
	}
	srv, err := startNginx(l)
	if err != nil {
		return Result{}, err
	}
	defer srv.stop()
	rt, closeRT, err := c.wrap(newBase(srv.addr, o.workers), s)
	if err != nil {
		return Result{}, err
	}
	defer closeRT()
	start := time.Now()
	load(rt, srv.addr, o.workers, o.duration, o.timeout,
		func(int64) string { return "http://" + limitedHost + "/ok.txt" }, nil)
	elapsed := time.Since(start).Seconds()
	n, err := srv.counts(l.retryAfter)
	if err != nil {
		return Result{}, err
	}
	return n.result(l, elapsed), nil
}
