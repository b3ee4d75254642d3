package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"text/template"
	"time"

	"github.com/hostbreaker/hostbreaker"
)

// nginxLimit is the limit_req zone of a bench nginx; every client shares
// it, since every request comes from 127.0.0.1. Its fields are exported for
// the config template.
type nginxLimit struct {
	Rate       int // r/s
	Burst      int // 0: limit_req without burst; > 0: burst=N nodelay
	RetryAfter int // seconds, sent with each 429 (and only with 429s)
}

// The zones of the nginx scenarios: 5 r/s, with a burst of 5 (4, 7) or
// none (6), 429 with Retry-After: 1.
var (
	limitBurst5 = nginxLimit{Rate: 5, Burst: 5, RetryAfter: 1}
	limitBurst0 = nginxLimit{Rate: 5, Burst: 0, RetryAfter: 1}
)

// burst0Rate is hostbreaker's configured rate in scenario 6: 10 % under
// the zone's 5 r/s.
const burst0Rate = 4.5

// limitedHost is the host every nginx scenario requests; the base
// transport dials nginx whatever the host.
const limitedHost = "limited.test"

// nginxConfTemplate is the config of a bench nginx, a text/template
// shared with the library's nginx tests, relative to the root module's
// directory; the template says what it sets up and why.
const nginxConfTemplate = "testdata/nginx/limit_req.conf.tmpl"

// rootModule is the module path of the library, whose directory holds
// nginxConfTemplate.
const rootModule = "github.com/hostbreaker/hostbreaker"

// nginxConf is the data of nginxConfTemplate.
type nginxConf struct {
	Dir   string // the server's directory
	Port  int    // the 127.0.0.1 port
	Limit nginxLimit
}

// syncPrefix is where the template serves marker requests (204, outside
// the zone, logged like any request).
const syncPrefix = "/__hostbreaker_sync/"

// findNginxConfTemplate returns the path of nginxConfTemplate. A Go embed
// cannot reach into another module, so the file is read at run time: in
// the directory of the root module, found by walking up from the working
// directory (go run . and go test run in bench/) to a go.mod that declares
// rootModule, else from the directory this source file was compiled in.
func findNginxConfTemplate() (string, error) {
	var starts []string
	if wd, err := os.Getwd(); err == nil {
		starts = append(starts, wd)
	}
	if _, file, _, ok := runtime.Caller(0); ok {
		starts = append(starts, filepath.Dir(file))
	}
	for _, dir := range starts {
		for ; ; dir = filepath.Dir(dir) {
			if modfile, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil && declaresModule(modfile, rootModule) {
				path := filepath.Join(dir, nginxConfTemplate)
				if _, err := os.Stat(path); err != nil {
					return "", fmt.Errorf("nginx config template: %w (the %s checkout at %s lacks it)", err, rootModule, dir)
				}
				return path, nil
			}
			if filepath.Dir(dir) == dir {
				break
			}
		}
	}
	return "", fmt.Errorf("nginx config template %s not found: no directory above %q holds the go.mod of %s; run the benchmark inside a checkout (cd bench && go run .)",
		nginxConfTemplate, starts, rootModule)
}

// declaresModule reports whether the go.mod file modfile declares module path.
func declaresModule(modfile []byte, path string) bool {
	for line := range strings.SplitSeq(string(modfile), "\n") {
		if f := strings.Fields(line); len(f) == 2 && f[0] == "module" && strings.Trim(f[1], `"`) == path {
			return true
		}
	}
	return false
}

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
	tmplPath, err := findNginxConfTemplate()
	if err != nil {
		return nil, err
	}
	tmpl, err := template.ParseFiles(tmplPath)
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
	// The port is free when asked, but may be taken before nginx binds
	// it: then nginx exits, and another port is tried.
	for range 5 {
		s, err := runNginx(bin, dir, func(port int) ([]byte, error) {
			var b bytes.Buffer
			err := tmpl.Execute(&b, nginxConf{Dir: dir, Port: port, Limit: l})
			return b.Bytes(), err
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

// runNginx starts one nginx on a free port with the config that conf
// returns for it and waits for the port.
func runNginx(bin, dir string, conf func(port int) ([]byte, error)) (*nginxServer, error) {
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
	marker := syncPrefix + "counts"
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
		GoodputPct:   ptr(100 * float64(n.ok) / elapsed / float64(l.Rate)),
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
	n, err := srv.counts(l.RetryAfter)
	if err != nil {
		return Result{}, err
	}
	return n.result(l, elapsed), nil
}
