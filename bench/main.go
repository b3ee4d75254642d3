// Command bench runs hostbreaker and its peers (bare, failsafe-go,
// gobreaker) against loopback servers that fail in known ways, and prints
// what reached the servers. See docs/benchmarks.md.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"
)

// Result is one scenario run against one client. A nil field does not
// apply to the scenario.
type Result struct {
	Scenario string `json:"scenario"`
	Client   string `json:"client"`
	Skipped  string `json:"skipped,omitempty"`
	// Reached: requests that reached the server (server-side count).
	Reached int64 `json:"reached"`
	// Wasted: requests that reached the server while it could not serve
	// them (failing phase, sick host, slow host).
	Wasted *int64 `json:"wasted,omitempty"`
	// Got429: 429 responses the server sent.
	Got429 *int64 `json:"got_429,omitempty"`
	// InRetryAfter: requests that arrived inside a Retry-After window
	// the server had announced on an earlier 429.
	InRetryAfter *int64 `json:"in_retry_after,omitempty"`
	// GoodputPct: scenario 4, served 200s per second / 5 r/s; scenario 5,
	// the share of requests to healthy hosts that got a 200.
	GoodputPct *float64 `json:"goodput_pct,omitempty"`
	// RecoveryMs: from the server healing to the first 200 the client got;
	// nil with Recovered false if none came before the scenario ended.
	RecoveryMs *float64 `json:"recovery_ms,omitempty"`
	Recovered  *bool    `json:"recovered,omitempty"`
	Elapsed    float64  `json:"elapsed_s"`
}

type options struct {
	each     time.Duration // scenarios 1, 2, 3, 5
	duration time.Duration // scenario 4 (nginx)
	workers  int
	openFor  time.Duration
}

func main() {
	var o options
	var asJSON bool
	var only string
	flag.DurationVar(&o.duration, "duration", 10*time.Second, "length of scenario 4 (nginx limit_req)")
	flag.DurationVar(&o.each, "each", 3*time.Second, "length of scenarios 1, 2, 3 and 5")
	flag.IntVar(&o.workers, "workers", 8, "worker goroutines per scenario")
	flag.DurationVar(&o.openFor, "open", 60*time.Second, "how long a breaker stays open (all clients)")
	flag.BoolVar(&asJSON, "json", false, "print JSON instead of a table")
	flag.StringVar(&only, "scenarios", "1,2,3,4,5", "which scenarios to run")
	flag.Parse()

	var results []Result
	for _, s := range scenarios {
		if !strings.Contains(only, s.id) {
			continue
		}
		for _, c := range clients {
			r, err := s.run(c, o)
			if err != nil {
				fmt.Fprintf(os.Stderr, "bench: %s / %s: %v\n", s.name, c.name, err)
				os.Exit(1)
			}
			r.Scenario, r.Client = s.name, c.name
			results = append(results, r)
			if !asJSON {
				fmt.Fprintf(os.Stderr, "done: %s / %s\n", s.name, c.name)
			}
		}
	}
	if asJSON {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		enc.Encode(results)
		return
	}
	printTable(os.Stdout, results, o)
}

type scenario struct {
	id, name string
	run      func(client, options) (Result, error)
}

var scenarios = []scenario{
	{"1", "1 outage heals", runOutage},
	{"2", "2 429 storm", runStorm},
	{"3", "3 slow host", runSlow},
	{"4", "4 nginx limit_req", runNginx},
	{"5", "5 1000 hosts/10 sick", runManyHosts},
}

func printTable(w io.Writer, rs []Result, o options) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "scenario\tclient\treached\twasted\t429s\tin Retry-After\tgoodput %%\trecovery\t\n")
	for _, r := range rs {
		if r.Skipped != "" {
			fmt.Fprintf(tw, "%s\t%s\tskipped: %s\t\t\t\t\t\t\n", r.Scenario, r.Client, r.Skipped)
			continue
		}
		rec := "-"
		if r.Recovered != nil {
			if *r.Recovered {
				rec = fmt.Sprintf("%.1f ms", *r.RecoveryMs)
			} else {
				rec = fmt.Sprintf("none in %.1fs", r.Elapsed/2)
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\t%s\t%s\t\n", r.Scenario, r.Client, r.Reached,
			num(r.Wasted), num(r.Got429), num(r.InRetryAfter), pct(r.GoodputPct), rec)
	}
	tw.Flush()
	fmt.Fprintf(w, "workers %d, scenarios 1-3,5 %s each, scenario 4 %s, breakers open after %d consecutive failures for %s\n",
		o.workers, o.each, o.duration, failMax, o.openFor)
}

func num(p *int64) string {
	if p == nil {
		return "-"
	}
	return fmt.Sprint(*p)
}

func pct(p *float64) string {
	if p == nil {
		return "-"
	}
	return fmt.Sprintf("%.1f", *p)
}

func ptr[T any](v T) *T { return &v }

// newBase is the fresh http.Transport under every client: all dials go to
// addr whatever the host, so h0.test ... h999.test share one listener.
func newBase(addr string, workers int) *http.Transport {
	d := &net.Dialer{Timeout: 2 * time.Second}
	return &http.Transport{
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return d.DialContext(ctx, network, addr)
		},
		MaxIdleConns:        0, // no total limit: scenario 5 has 1000 hosts
		MaxIdleConnsPerHost: workers,
		IdleConnTimeout:     30 * time.Second,
	}
}

// serve starts h on a free loopback port.
func serve(h http.Handler) (addr string, stop func(), err error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	srv := &http.Server{Handler: h}
	go srv.Serve(ln)
	return ln.Addr().String(), func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		srv.Close()
	}, nil
}

// outcome is what one request got, client-side.
type outcome struct {
	url    string
	status int // 0 on error
	err    error
	at     time.Time // when the response (or error) came back
}

// load runs workers goroutines, each looping requests through rt until dur
// has passed. urlFor picks the URL of the n-th request (n counted over all
// workers). After an error (a rejection included) a worker pauses 1 ms, the
// same for every client, so that instant rejections do not spin the CPU.
func load(rt http.RoundTripper, addr string, workers int, dur, timeout time.Duration,
	urlFor func(n int64) string, observe func(outcome)) {
	c := &http.Client{Transport: rt, Timeout: timeout}
	var seq atomic.Int64
	deadline := time.Now().Add(dur)
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for time.Now().Before(deadline) {
				u := urlFor(seq.Add(1) - 1)
				resp, err := c.Get(u)
				o := outcome{url: u, err: err}
				if err == nil {
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					o.status = resp.StatusCode
				}
				o.at = time.Now()
				if observe != nil {
					observe(o)
				}
				if err != nil {
					time.Sleep(time.Millisecond)
				}
			}
		})
	}
	wg.Wait()
}

// firstSuccess records the first 200 at or after a moment.
type firstSuccess struct {
	mu    sync.Mutex
	after time.Time
	first time.Time
}

func (f *firstSuccess) observe(o outcome) {
	if o.status != http.StatusOK {
		return
	}
	f.mu.Lock()
	if !f.after.IsZero() && !o.at.Before(f.after) && f.first.IsZero() {
		f.first = o.at
	}
	f.mu.Unlock()
}

func (f *firstSuccess) fill(r *Result) {
	f.mu.Lock()
	defer f.mu.Unlock()
	r.Recovered = ptr(!f.first.IsZero())
	if !f.first.IsZero() {
		r.RecoveryMs = ptr(float64(f.first.Sub(f.after).Microseconds()) / 1000)
	}
}

// Scenario 1: the server answers 500 for the first half, then 200.
func runOutage(c client, o options) (Result, error) {
	var reached, wasted atomic.Int64
	start := time.Now()
	heal := start.Add(o.each / 2)
	addr, stop, err := serve(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		reached.Add(1)
		if time.Now().Before(heal) {
			wasted.Add(1)
			w.WriteHeader(http.StatusInternalServerError)
			return
		}
		w.WriteHeader(http.StatusOK)
	}))
	if err != nil {
		return Result{}, err
	}
	defer stop()
	rt, closeRT, err := c.wrap(newBase(addr, o.workers), o.openFor)
	if err != nil {
		return Result{}, err
	}
	defer closeRT()
	fs := &firstSuccess{after: heal}
	load(rt, addr, o.workers, o.each-time.Since(start), 2*time.Second,
		func(int64) string { return "http://outage.test/" }, fs.observe)
	r := Result{Reached: reached.Load(), Wasted: ptr(wasted.Load()), Elapsed: time.Since(start).Seconds()}
	fs.fill(&r)
	return r, nil
}

// raWindow tracks the Retry-After windows a server announced.
type raWindow struct {
	mu     sync.Mutex
	end    time.Time
	inside int64
}

// arrive counts a request arriving at t inside an announced window.
func (w *raWindow) arrive(t time.Time) {
	w.mu.Lock()
	if t.Before(w.end) {
		w.inside++
	}
	w.mu.Unlock()
}

// announce records a 429 with Retry-After: secs sent at t.
func (w *raWindow) announce(t time.Time, secs int) {
	w.mu.Lock()
	if e := t.Add(time.Duration(secs) * time.Second); e.After(w.end) {
		w.end = e
	}
	w.mu.Unlock()
}

// Scenario 2: for the first half every request gets 429 with
// Retry-After: 1, then 200.
func runStorm(c client, o options) (Result, error) {
	var reached, n429 atomic.Int64
	var win raWindow
	start := time.Now()
	heal := start.Add(o.each / 2)
	addr, stop, err := serve(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		now := time.Now()
		reached.Add(1)
		win.arrive(now)
		if now.Before(heal) {
			n429.Add(1)
			win.announce(now, 1)
			w.Header().Set("Retry-After", "1")
			w.WriteHeader(http.StatusTooManyRequests)
			return
		}
		w.WriteHeader(http.StatusOK)
	}))
	if err != nil {
		return Result{}, err
	}
	defer stop()
	rt, closeRT, err := c.wrap(newBase(addr, o.workers), o.openFor)
	if err != nil {
		return Result{}, err
	}
	defer closeRT()
	fs := &firstSuccess{after: heal}
	load(rt, addr, o.workers, o.each-time.Since(start), 2*time.Second,
		func(int64) string { return "http://storm.test/" }, fs.observe)
	win.mu.Lock()
	inside := win.inside
	win.mu.Unlock()
	r := Result{Reached: reached.Load(), Got429: ptr(n429.Load()), InRetryAfter: ptr(inside), Elapsed: time.Since(start).Seconds()}
	fs.fill(&r)
	return r, nil
}

// Scenario 3: the handler takes 1 s, the client gives up after 200 ms.
func runSlow(c client, o options) (Result, error) {
	var reached atomic.Int64
	start := time.Now()
	addr, stop, err := serve(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		reached.Add(1)
		select {
		case <-time.After(time.Second):
			w.WriteHeader(http.StatusOK)
		case <-r.Context().Done():
		}
	}))
	if err != nil {
		return Result{}, err
	}
	defer stop()
	rt, closeRT, err := c.wrap(newBase(addr, o.workers), o.openFor)
	if err != nil {
		return Result{}, err
	}
	defer closeRT()
	load(rt, addr, o.workers, o.each, 200*time.Millisecond,
		func(int64) string { return "http://slow.test/" }, nil)
	n := reached.Load()
	return Result{Reached: n, Wasted: ptr(n), Elapsed: time.Since(start).Seconds()}, nil
}

// Scenario 5: 1000 hosts on one listener; h0, h100, ..., h900 answer 500.
func runManyHosts(c client, o options) (Result, error) {
	const hosts = 1000
	sick := func(i int) bool { return i%100 == 0 }
	var reached, wasted atomic.Int64
	start := time.Now()
	addr, stop, err := serve(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		reached.Add(1)
		var i int
		fmt.Sscanf(r.Host, "h%d.test", &i)
		if sick(i) {
			wasted.Add(1)
			w.WriteHeader(http.StatusInternalServerError)
			return
		}
		w.WriteHeader(http.StatusOK)
	}))
	if err != nil {
		return Result{}, err
	}
	defer stop()
	base := newBase(addr, 2)
	rt, closeRT, err := c.wrap(base, o.openFor)
	if err != nil {
		return Result{}, err
	}
	defer closeRT()
	defer base.CloseIdleConnections()
	var healthyTried, healthyOK atomic.Int64
	load(rt, addr, o.workers, o.each, 2*time.Second,
		func(n int64) string { return fmt.Sprintf("http://h%d.test/", n%hosts) },
		func(oc outcome) {
			var i int
			fmt.Sscanf(oc.url, "http://h%d.test/", &i)
			if sick(i) {
				return
			}
			healthyTried.Add(1)
			if oc.status == http.StatusOK {
				healthyOK.Add(1)
			}
		})
	r := Result{Reached: reached.Load(), Wasted: ptr(wasted.Load()), Elapsed: time.Since(start).Seconds()}
	if t := healthyTried.Load(); t > 0 {
		r.GoodputPct = ptr(100 * float64(healthyOK.Load()) / float64(t))
	}
	return r, nil
}
