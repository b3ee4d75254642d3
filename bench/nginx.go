package main

// This file runs a bench nginx: a limit_req zone from the template the
// library's tests use, and the scenarios 4 and 6 against it.

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
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
	RetryAfter int // seconds, sent with each 429 (and only with 429s); 0: none
}

// The zones of the nginx scenarios 4, 6 and 7: 5 r/s, with a burst of 5
// (4, 7) or none (6), 429 with Retry-After: 1. The learning scenarios'
// zones are in limits.go.
var (
	limitBurst5 = nginxLimit{Rate: 5, Burst: 5, RetryAfter: 1}
	limitBurst0 = nginxLimit{Rate: 5, Burst: 0, RetryAfter: 1}
)

// burst0Rate is hostbreaker's configured rate in scenario 6: 10 % under
// the zone's 5 r/s.
const burst0Rate = 4.5

// nginxConfTemplate is the config of a bench nginx, a text/template
// shared with the library's nginx tests, relative to the root module's
// directory; the template says what it sets up and why.
const nginxConfTemplate = "testdata/nginx/limit_req.conf.tmpl"

// nginxConf is the data of nginxConfTemplate.
type nginxConf struct {
	Dir   string // the server's directory
	Port  int    // the 127.0.0.1 port
	Limit nginxLimit
}

func (l nginxLimit) start() (*limitServer, error) { return startNginx(l) }
func (l nginxLimit) available() error             { _, err := nginxBinary(); return err }
func (l nginxLimit) allowed() float64             { return float64(l.Rate) }
func (l nginxLimit) retryAfter() int              { return l.RetryAfter }

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

// startNginx runs nginx with zone l as a child process on a free loopback
// port, with its config, pid, logs and temp files in a temporary
// directory, and returns once the port accepts connections.
func startNginx(l nginxLimit) (*limitServer, error) {
	bin, err := nginxBinary()
	if err != nil {
		return nil, err
	}
	tmplPath, err := findTemplate(nginxConfTemplate)
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
func runNginx(bin, dir string, conf func(port int) ([]byte, error)) (*limitServer, error) {
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
			return &limitServer{name: "nginx", addr: addr, log: filepath.Join(dir, "access.log"),
				stop: func() { kill(); os.RemoveAll(dir) }}, nil
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

// Scenario 4: a real nginx limit_req zone, 5 r/s, burst 5 nodelay;
// hostbreaker on its defaults.
func runNginxBurst5(c client, o options) (Result, error) {
	return runLimited(c, o, limitBurst5, setup{openFor: o.openFor}, false)
}

// Scenario 6: 5 r/s without burst; hostbreaker is told a rate 10 % under
// it (Hosts["limited.test"].Rate), the other clients are unchanged.
func runNginxBurst0(c client, o options) (Result, error) {
	return runLimited(c, o, limitBurst0, setup{openFor: o.openFor,
		hosts: map[string]hostbreaker.Policy{limitedHost: {Rate: burst0Rate}}}, false)
}
