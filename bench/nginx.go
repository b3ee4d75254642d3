package main

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// The nginx config of scenario 4: a limit_req zone at 5 r/s, burst 5
// nodelay, 429 with Retry-After: 1. Everything lives in dir.
const nginxConf = `daemon off;
master_process off;
worker_processes 1;
pid {{DIR}}/nginx.pid;
error_log {{DIR}}/error.log warn;
events { worker_connections 1024; }
http {
  log_format bench '$status $msec';
  access_log {{DIR}}/access.log bench;
  client_body_temp_path {{DIR}}/body;
  proxy_temp_path {{DIR}}/proxy;
  fastcgi_temp_path {{DIR}}/fastcgi;
  uwsgi_temp_path {{DIR}}/uwsgi;
  scgi_temp_path {{DIR}}/scgi;
  limit_req_zone $binary_remote_addr zone=bench:1m rate=5r/s;
  server {
    listen 127.0.0.1:{{PORT}};
    root {{DIR}}/www;
    location / {
      limit_req zone=bench burst=5 nodelay;
      limit_req_status 429;
      add_header Retry-After 1 always;
    }
  }
}
`

const nginxRate = 5.0 // r/s, the zone's rate

// startNginx runs nginx as a child process on a free loopback port.
func startNginx() (addr, dir string, stop func(), err error) {
	dir, err = os.MkdirTemp("", "hostbreaker-bench-nginx-")
	if err != nil {
		return "", "", nil, err
	}
	cleanup := func() { os.RemoveAll(dir) }
	if err := os.MkdirAll(filepath.Join(dir, "www"), 0o755); err != nil {
		cleanup()
		return "", "", nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, "www", "ok.txt"), []byte("ok\n"), 0o644); err != nil {
		cleanup()
		return "", "", nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		cleanup()
		return "", "", nil, err
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	conf := strings.NewReplacer("{{DIR}}", dir, "{{PORT}}", strconv.Itoa(port)).Replace(nginxConf)
	confPath := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
		cleanup()
		return "", "", nil, err
	}
	cmd := exec.Command("nginx", "-p", dir, "-c", confPath)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		cleanup()
		return "", "", nil, err
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	stop = func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(3 * time.Second):
			cmd.Process.Kill()
			<-done
		}
		cleanup()
	}
	addr = fmt.Sprintf("127.0.0.1:%d", port)
	for deadline := time.Now().Add(5 * time.Second); ; {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err == nil {
			c.Close()
			return addr, dir, stop, nil
		}
		select {
		case err := <-done:
			cleanup()
			return "", "", nil, fmt.Errorf("nginx exited: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			stop()
			return "", "", nil, fmt.Errorf("nginx did not listen on %s", addr)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Scenario 4: a real nginx limit_req zone; counted from its access log.
func runNginx(c client, o options) (Result, error) {
	if _, err := exec.LookPath("nginx"); err != nil {
		return Result{Skipped: "nginx not on PATH"}, nil
	}
	addr, dir, stop, err := startNginx()
	if err != nil {
		return Result{}, err
	}
	defer stop()
	rt, closeRT, err := c.wrap(newBase(addr, o.workers), o.openFor)
	if err != nil {
		return Result{}, err
	}
	defer closeRT()
	start := time.Now()
	load(rt, addr, o.workers, o.duration, 2*time.Second,
		func(int64) string { return "http://limited.test/ok.txt" }, nil)
	elapsed := time.Since(start).Seconds()
	// nginx writes its access log unbuffered: every line is there by now.
	type line struct {
		status int
		at     float64
	}
	f, err := os.Open(filepath.Join(dir, "access.log"))
	if err != nil {
		return Result{}, err
	}
	defer f.Close()
	var lines []line
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var l line
		if _, err := fmt.Sscanf(sc.Text(), "%d %f", &l.status, &l.at); err == nil {
			lines = append(lines, l)
		}
	}
	sort.SliceStable(lines, func(i, j int) bool { return lines[i].at < lines[j].at })
	var ok, n429, inside int64
	windowEnd := 0.0
	for _, l := range lines {
		if l.at < windowEnd {
			inside++
		}
		switch l.status {
		case 200:
			ok++
		case 429:
			n429++
			windowEnd = max(windowEnd, l.at+1)
		}
	}
	return Result{
		Reached:      int64(len(lines)),
		Got429:       ptr(n429),
		InRetryAfter: ptr(inside),
		GoodputPct:   ptr(100 * float64(ok) / elapsed / nginxRate),
		Elapsed:      elapsed,
	}, nil
}
