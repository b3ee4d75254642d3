package main

// This file runs a bench HAProxy: a sliding-window rate limit (a
// stick-table's http_req_rate) from the template the library's tests use.

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
)

// haproxyLimit is the sliding window of a bench haproxy; every client
// shares it, since every request comes from 127.0.0.1. Its fields are
// exported for the config template.
type haproxyLimit struct {
	Rate       int           // requests allowed per Period
	Period     time.Duration // the window, whole milliseconds up to 5 min
	RetryAfter int           // seconds, sent with each 429 (and only with 429s); 0: none
}

// haproxyConfTemplate is the config of a bench haproxy, a text/template
// shared with the library's HAProxy tests, relative to the root module's
// directory; the template says what it sets up and why (a refused request
// counts in the window).
const haproxyConfTemplate = "testdata/haproxy/sliding_window.cfg.tmpl"

// haproxyConf is the data of haproxyConfTemplate.
type haproxyConf struct {
	Port  int // the 127.0.0.1 port
	Limit haproxyLimit
}

func (l haproxyLimit) start() (*limitServer, error) { return startHAProxy(l) }
func (l haproxyLimit) available() error             { _, err := haproxyBinary(); return err }
func (l haproxyLimit) allowed() float64             { return float64(l.Rate) / l.Period.Seconds() }
func (l haproxyLimit) retryAfter() int              { return l.RetryAfter }

// haproxyBinary returns haproxy on PATH, else Debian's /usr/sbin/haproxy
// (not on a non-root user's PATH).
func haproxyBinary() (string, error) {
	if p, err := exec.LookPath("haproxy"); err == nil {
		return p, nil
	}
	if fi, err := os.Stat("/usr/sbin/haproxy"); err == nil && fi.Mode()&0o111 != 0 {
		return "/usr/sbin/haproxy", nil
	}
	return "", errors.New("haproxy not on PATH nor at /usr/sbin/haproxy (.ci/run installs it)")
}

// startHAProxy runs haproxy with the window l as a child process in the
// foreground (-db, one thread) on a free loopback port, with its config and
// log in a temporary directory, and returns once the port accepts
// connections.
func startHAProxy(l haproxyLimit) (*limitServer, error) {
	if l.Rate < 1 || l.Period < time.Millisecond || l.Period > 5*time.Minute || l.Period%time.Millisecond != 0 || l.RetryAfter < 0 {
		return nil, fmt.Errorf("haproxy: invalid limit %+v", l)
	}
	bin, err := haproxyBinary()
	if err != nil {
		return nil, err
	}
	tmplPath, err := findTemplate(haproxyConfTemplate)
	if err != nil {
		return nil, err
	}
	tmpl, err := template.ParseFiles(tmplPath)
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "hostbreaker-bench-haproxy-")
	if err != nil {
		return nil, err
	}
	// The port is free when asked, but may be taken before haproxy binds
	// it: then haproxy exits, and another port is tried.
	var lastErr error
	for try := range 5 {
		sub := filepath.Join(dir, strconv.Itoa(try))
		if err := os.Mkdir(sub, 0o755); err != nil {
			os.RemoveAll(dir)
			return nil, err
		}
		s, err := runHAProxy(bin, sub, func(port int) ([]byte, error) {
			var b bytes.Buffer
			err := tmpl.Execute(&b, haproxyConf{Port: port, Limit: l})
			return b.Bytes(), err
		})
		if err == nil {
			kill := s.stop
			s.stop = func() { kill(); os.RemoveAll(dir) }
			return s, nil
		}
		lastErr = err
		if !strings.Contains(err.Error(), "Address already in use") {
			break
		}
	}
	os.RemoveAll(dir)
	return nil, lastErr
}

// runHAProxy starts one haproxy on a free port with the config that conf
// returns for it, its files in dir, and waits for the port. The returned
// server's stop stops haproxy only.
func runHAProxy(bin, dir string, conf func(port int) ([]byte, error)) (*limitServer, error) {
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
	// The log goes to stdout, here a file: haproxy's writes to a file
	// block where a full pipe would make it drop lines.
	logPath := filepath.Join(dir, "access.log")
	logFile, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer logFile.Close() // the child has its own descriptor
	var stderr bytes.Buffer
	cmd := exec.Command(bin, "-db", "-f", confPath)
	cmd.Stdout, cmd.Stderr = logFile, &stderr
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
		if stderr.Len() > 0 {
			fmt.Fprintf(os.Stderr, "bench: haproxy: %s", stderr.String())
		}
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	for deadline := time.Now().Add(10 * time.Second); ; {
		if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			c.Close()
			return &limitServer{name: "haproxy", addr: addr, log: logPath, stop: kill}, nil
		}
		select {
		case <-exited:
			return nil, fmt.Errorf("haproxy exited (%v): %s", waitErr, stderr.String())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			kill()
			return nil, fmt.Errorf("haproxy did not listen on %s within 10s", addr)
		}
	}
}
