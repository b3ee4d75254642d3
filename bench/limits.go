package main

// This file holds what the scenarios against real rate limiters (nginx.go,
// haproxy.go) share: the config templates found in the root module, the
// server's log counted up to a marker request, the run of one client
// against a fresh server, and hostbreaker's learnt rate sampled meanwhile.
// The learning scenarios 8 to 12 are defined here.

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hostbreaker/hostbreaker"
)

// A limiter is the rate limit of a real server that a scenario starts.
type limiter interface {
	// start runs a fresh server with the limit on a loopback port.
	start() (*limitServer, error)
	// available says why the server cannot run here (its binary is
	// missing), or nil.
	available() error
	allowed() float64 // the allowed rate in r/s, over a long run
	retryAfter() int  // seconds sent as Retry-After with each 429; 0: none
}

// limitedHost is the host every limiter scenario requests; the base
// transport dials the server whatever the host.
const limitedHost = "limited.test"

// rootModule is the module path of the library, whose directory holds the
// config templates.
const rootModule = "github.com/hostbreaker/hostbreaker"

// syncPrefix is where the templates serve marker requests (204, outside the
// limit, logged like any request).
const syncPrefix = "/__hostbreaker_sync/"

// findTemplate returns the path of rel, a config template in the root
// module's directory (testdata/...), shared with the library's tests. A Go
// embed cannot reach into another module, so the file is read at run time:
// in the directory of the root module, found by walking up from the working
// directory (go run . and go test run in bench/) to a go.mod that declares
// rootModule, else from the directory this source file was compiled in.
func findTemplate(rel string) (string, error) {
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
				path := filepath.Join(dir, rel)
				if _, err := os.Stat(path); err != nil {
					return "", fmt.Errorf("config template: %w (the %s checkout at %s lacks it)", err, rootModule, dir)
				}
				return path, nil
			}
			if filepath.Dir(dir) == dir {
				break
			}
		}
	}
	return "", fmt.Errorf("config template %s not found: no directory above %q holds the go.mod of %s; run the benchmark inside a checkout (cd bench && go run .)",
		rel, starts, rootModule)
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

// limitServer is a bench nginx or haproxy, a child process, whose log has
// one line "TIME STATUS URI" per request, TIME in Unix seconds with a
// fraction (nginx's $msec) or in Unix milliseconds (haproxy).
type limitServer struct {
	name string // "nginx" or "haproxy", for errors
	addr string // 127.0.0.1:port
	log  string // the log file
	stop func() // stops the server and removes its files
}

// logCounts is what a server's log says of a run.
type logCounts struct {
	reached, ok, n429, inRetryAfter int64
	perSecond                       []Second // from the first request logged
}

// Second is what a server served and refused in one second of a run,
// counted from its first request: see Result.Timeline.
type Second struct {
	OK      int64 `json:"ok"`
	Refused int64 `json:"refused"` // 429s
}

// counts reads the log up to a marker request that it sends first and
// waits for: both servers run one process (one thread) and log a request
// as soon as they have sent its response, before they handle another
// event, so every response a client had received is in the log before the
// marker. A request inside a Retry-After window is one logged less than
// retryAfter seconds after a 429 (both in log order, which is time order).
func (s *limitServer) counts(retryAfter int) (logCounts, error) {
	marker := syncPrefix + "counts"
	c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + s.addr + marker)
	if err != nil {
		return logCounts{}, fmt.Errorf("%s marker request: %w", s.name, err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	for deadline := time.Now().Add(5 * time.Second); ; {
		n, found, err := s.readLog(marker, retryAfter)
		if err != nil || found {
			return n, err
		}
		if time.Now().After(deadline) {
			return n, fmt.Errorf("%s log: no line for %s after 5s", s.name, marker)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (s *limitServer) readLog(marker string, retryAfter int) (logCounts, bool, error) {
	f, err := os.Open(s.log)
	if err != nil {
		return logCounts{}, false, err
	}
	defer f.Close()
	var n logCounts
	windowEnd, first := 0.0, -1.0
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) != 3 {
			continue // the last line, being written: not before the marker
		}
		if fields[2] == marker {
			return n, true, nil
		}
		at, err1 := logTime(fields[0])
		status, err2 := strconv.Atoi(fields[1])
		if err := errors.Join(err1, err2); err != nil {
			return n, false, fmt.Errorf("%s log: line %q: %w", s.name, sc.Text(), err)
		}
		if first < 0 {
			first = at
		}
		sec := int(at - first)
		for len(n.perSecond) <= sec {
			n.perSecond = append(n.perSecond, Second{})
		}
		n.reached++
		if at < windowEnd {
			n.inRetryAfter++
		}
		switch status {
		case http.StatusOK:
			n.ok++
			n.perSecond[sec].OK++
		case http.StatusTooManyRequests:
			n.n429++
			n.perSecond[sec].Refused++
			windowEnd = max(windowEnd, at+float64(retryAfter))
		}
	}
	return n, false, sc.Err()
}

// logTime parses a log's time into Unix seconds: seconds with a fraction
// (nginx's $msec, "1712345678.123") or whole milliseconds (haproxy's
// date(0,ms), "1712345678123").
func logTime(s string) (float64, error) {
	if strings.Contains(s, ".") {
		return strconv.ParseFloat(s, 64)
	}
	ms, err := strconv.ParseInt(s, 10, 64)
	return float64(ms) / 1000, err
}

// result turns counts over elapsed seconds against a server that allows
// allowed r/s and sends Retry-After: retryAfter (0: none) into a Result.
func (n logCounts) result(allowed float64, retryAfter int, elapsed float64) Result {
	r := Result{
		Reached:     n.reached,
		Served:      ptr(n.ok),
		Got429:      ptr(n.n429),
		GoodputPct:  ptr(100 * float64(n.ok) / elapsed / allowed),
		AllowedRate: allowed,
		Elapsed:     elapsed,
		Timeline:    n.perSecond,
	}
	if retryAfter > 0 {
		r.InRetryAfter = ptr(n.inRetryAfter)
	}
	return r
}

// runLimited runs c against a fresh server with limit l for o.duration,
// counted from the server's log. With learn, a hostbreaker client's learnt
// rate for limitedHost is sampled once a second meanwhile, and the samples
// from o.settle on are reported.
func runLimited(c client, o options, l limiter, s setup, learn bool) (Result, error) {
	if err := l.available(); err != nil {
		return Result{Skipped: err.Error()}, nil
	}
	srv, err := l.start()
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
	var learnt *rateSampler
	if tr, ok := rt.(*hostbreaker.Transport); ok && learn {
		learnt = sampleRate(tr, limitedHost, start, o.settle)
	}
	load(rt, srv.addr, o.workers, o.duration, o.timeout,
		func(int64) string { return "http://" + limitedHost + "/ok.txt" }, nil)
	elapsed := time.Since(start).Seconds()
	if learnt != nil {
		learnt.stop()
	}
	n, err := srv.counts(l.retryAfter())
	if err != nil {
		return Result{}, err
	}
	r := n.result(l.allowed(), l.retryAfter(), elapsed)
	if learnt != nil {
		learnt.fill(&r)
	}
	return r, nil
}

// rateSampler reads a Transport's rate for one host once a second.
type rateSampler struct {
	done     chan struct{}
	finished chan struct{}
	settle   time.Duration
	mu       sync.Mutex
	samples  []float64 // guarded by mu
}

// sampleRate starts reading tr's rate for host (Status.Rate, 0 when the
// host is not limited) every second from start, keeping the samples taken
// from start+settle on, until stop.
func sampleRate(tr *hostbreaker.Transport, host string, start time.Time, settle time.Duration) *rateSampler {
	s := &rateSampler{done: make(chan struct{}), finished: make(chan struct{}), settle: settle}
	go func() {
		defer close(s.finished)
		for k := 1; ; k++ {
			select {
			case <-s.done:
				return
			case <-time.After(time.Until(start.Add(time.Duration(k) * time.Second))):
			}
			if time.Since(start) < settle {
				continue
			}
			rate := 0.0
			for _, st := range tr.Snapshot() {
				if st.Host == host {
					rate = st.Rate // host-wide: every role shows the same
					break
				}
			}
			s.mu.Lock()
			s.samples = append(s.samples, rate)
			s.mu.Unlock()
		}
	}()
	return s
}

func (s *rateSampler) stop() {
	close(s.done)
	<-s.finished
}

// fill sets r's learnt-rate fields from the samples.
func (s *rateSampler) fill(r *Result) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r.LearntSettle = ptr(s.settle.Seconds())
	r.LearntSamples = len(s.samples)
	if len(s.samples) == 0 {
		return
	}
	lo, hi := math.Inf(1), math.Inf(-1)
	for _, v := range s.samples {
		lo, hi = min(lo, v), max(hi, v)
	}
	r.LearntMin, r.LearntMax = ptr(lo), ptr(hi)
}

// The limits of the learning scenarios 8 to 12: no Retry-After (but 11),
// and hostbreaker on its defaults, with no rate configured: it has to learn
// each one from the 429s.
var (
	limit5NoRA       = nginxLimit{Rate: 5, Burst: 0}
	limit5Burst5NoRA = nginxLimit{Rate: 5, Burst: 5}
	limit50NoRA      = nginxLimit{Rate: 50, Burst: 0}
	window5NoRA      = haproxyLimit{Rate: 5, Period: time.Second}
	window5RA1       = haproxyLimit{Rate: 5, Period: time.Second, RetryAfter: 1}
)

// learning runs a learning scenario against l: every client as it is,
// hostbreaker with no option at all, and its learnt rate sampled.
func learning(l limiter) func(client, options) (Result, error) {
	return func(c client, o options) (Result, error) {
		return runLimited(c, o, l, setup{openFor: o.openFor}, true)
	}
}
