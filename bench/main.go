// Command bench runs hostbreaker and its peers (bare, failsafe-go,
// gobreaker) against loopback servers that fail in known ways, and prints
// what reached the servers. See docs/benchmarks.md.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"slices"
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
	// Procs: client processes (scenario 7); 0 means this process.
	Procs int `json:"procs,omitempty"`
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
	// Served: 200s the server sent (the limiter scenarios 4, 6 to 12).
	Served *int64 `json:"served,omitempty"`
	// GoodputPct: limiter scenarios (4, 6 to 12), 200s served per second
	// as a percentage of AllowedRate; scenario 5, the share of requests to
	// healthy hosts that got a 200.
	GoodputPct *float64 `json:"goodput_pct,omitempty"`
	// AllowedRate: the server's allowed rate in r/s (4, 6 to 12).
	AllowedRate float64 `json:"allowed_rate,omitempty"`
	// Timeline: the limiter scenarios, what the server served and refused
	// in each second from the first request it logged (-timeline prints
	// it after the table).
	Timeline []Second `json:"timeline,omitempty"`
	// LearntMin, LearntMax: hostbreaker's rate for the host
	// (Status.Rate from Transport.Snapshot, 0 when it is not limited),
	// sampled once a second from LearntSettle seconds on (-settle, 10 s):
	// the learning scenarios 8 to 12, hostbreaker only (LearntSettle is
	// nil for the others); nil without a sample (a run shorter than
	// LearntSettle).
	LearntMin     *float64 `json:"learnt_min,omitempty"`
	LearntMax     *float64 `json:"learnt_max,omitempty"`
	LearntSamples int      `json:"learnt_samples,omitempty"`
	LearntSettle  *float64 `json:"learnt_settle_s,omitempty"`
	// RecoveryMs: from the server healing to the first 200 the client got;
	// nil with Recovered false if none came before the scenario ended.
	RecoveryMs *float64 `json:"recovery_ms,omitempty"`
	Recovered  *bool    `json:"recovered,omitempty"`
	Elapsed    float64  `json:"elapsed_s"`
}

type options struct {
	each     time.Duration // scenarios 1, 2, 3, 5
	duration time.Duration // the limiter scenarios 4, 6 to 12
	timeout  time.Duration // http.Client.Timeout in the limiter scenarios
	settle   time.Duration // the learning scenarios 8 to 12: when hostbreaker's learnt rate starts to be judged
	workers  int           // per client (per process in scenario 7)
	procs    int           // scenario 7
	openFor  time.Duration
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == childFlag {
		if err := runChild(os.Args[2:], os.Stdout); err != nil {
			fmt.Fprintf(os.Stderr, "bench child: %v\n", err)
			os.Exit(1)
		}
		return
	}
	err := run(os.Args[1:], os.Stdout, os.Stderr)
	switch {
	case errors.Is(err, flag.ErrHelp):
	case err != nil:
		fmt.Fprintf(os.Stderr, "bench: %v\n", err)
		os.Exit(2)
	}
}

// run parses args, runs the scenarios they select and prints the results
// to stdout, progress to stderr.
func run(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var o options
	var asJSON, timeline bool
	var only, onlyClients string
	fs.DurationVar(&o.duration, "duration", 30*time.Second, "length of the limiter scenarios 4 and 6 to 12")
	fs.DurationVar(&o.each, "each", 3*time.Second, "length of scenarios 1, 2, 3 and 5")
	fs.DurationVar(&o.timeout, "timeout", 2*time.Second, "http.Client timeout in the limiter scenarios 4 and 6 to 12 (it includes a request's wait for its turn)")
	fs.DurationVar(&o.settle, "settle", 10*time.Second, "in scenarios 8 to 12, hostbreaker's learnt rate is sampled once a second from this time on")
	fs.IntVar(&o.workers, "workers", 8, "worker goroutines per client (per process in scenario 7)")
	fs.IntVar(&o.procs, "procs", 3, "client processes in scenario 7")
	fs.DurationVar(&o.openFor, "open", 60*time.Second, "how long a breaker stays open (all clients)")
	fs.BoolVar(&asJSON, "json", false, "print JSON instead of a table")
	fs.BoolVar(&timeline, "timeline", false, "after the table, print what the server served and refused in each second of the limiter scenarios")
	var ids []string
	for _, s := range scenarios {
		ids = append(ids, s.id)
	}
	fs.StringVar(&only, "scenarios", strings.Join(ids, ","), "which scenarios to run, by number")
	fs.StringVar(&onlyClients, "clients", "", "which clients (variants, as printed: hostbreaker+redis, ...) to run, comma-separated; default all")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	if o.workers < 1 || o.procs < 1 || o.duration <= 0 || o.each <= 0 || o.timeout <= 0 || o.settle < 0 {
		return errors.New("-workers and -procs must be at least 1, -duration, -each and -timeout positive, -settle not negative")
	}
	selected := map[string]bool{}
	for _, id := range strings.Split(only, ",") {
		id = strings.TrimSpace(id)
		if !slices.ContainsFunc(scenarios, func(s scenario) bool { return s.id == id }) {
			return fmt.Errorf("-scenarios: no scenario %q (want numbers 1 to %d)", id, len(scenarios))
		}
		selected[id] = true
	}
	clientSet := map[string]bool{}
	for _, name := range strings.Split(onlyClients, ",") {
		if name = strings.TrimSpace(name); name != "" {
			clientSet[name] = true
		}
	}

	var results []Result
	for _, s := range scenarios {
		if !selected[s.id] {
			continue
		}
		vs := s.variants
		if vs == nil {
			for _, c := range clients {
				vs = append(vs, variant{name: c.name, c: c})
			}
		}
		for _, v := range vs {
			if len(clientSet) > 0 && !clientSet[v.name] {
				continue
			}
			r, err := s.run(v, o)
			if err != nil {
				return fmt.Errorf("%s / %s: %w", s.name, v.name, err)
			}
			r.Scenario, r.Client = s.name, v.name
			results = append(results, r)
			fmt.Fprintf(stderr, "done: %s / %s\n", s.name, v.name)
		}
	}
	if asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(results)
	}
	printTable(stdout, results, o)
	printLearnt(stdout, results)
	printTargets(stdout, results, o)
	if timeline {
		printTimeline(stdout, results)
	}
	return nil
}

// printTimeline prints, for each limiter run, what the server served and
// refused in each second: "served/refused" from the first request on.
func printTimeline(w io.Writer, rs []Result) {
	fmt.Fprintln(w, "\nper second, served/refused (429s), from the first request the server logged:")
	for _, r := range rs {
		if len(r.Timeline) == 0 {
			continue
		}
		var b strings.Builder
		for i, s := range r.Timeline {
			if i > 0 {
				b.WriteByte(' ')
			}
			fmt.Fprintf(&b, "%d/%d", s.OK, s.Refused)
		}
		fmt.Fprintf(w, "  %s / %s: %s\n", r.Scenario, r.Client, b.String())
	}
}

// A variant is a client as one scenario runs it: scenario 7 runs
// hostbreaker without a store, then sharing a bbolt file, then Redis.
type variant struct {
	name  string // as printed
	c     client
	store string // "", "bbolt" or "redis"
}

type scenario struct {
	id, name string
	variants []variant // nil: every client once
	run      func(variant, options) (Result, error)
}

// byClient adapts a scenario that runs a client in this process.
func byClient(f func(client, options) (Result, error)) func(variant, options) (Result, error) {
	return func(v variant, o options) (Result, error) { return f(v.c, o) }
}

var scenarios = []scenario{
	{id: "1", name: "1 outage heals", run: byClient(runOutage)},
	{id: "2", name: "2 429 storm", run: byClient(runStorm)},
	{id: "3", name: "3 slow host", run: byClient(runSlow)},
	{id: "4", name: "4 nginx burst 5", run: byClient(runNginxBurst5)},
	{id: "5", name: "5 1000 hosts/10 sick", run: byClient(runManyHosts)},
	{id: "6", name: "6 nginx burst 0", run: byClient(runNginxBurst0)},
	{id: "7", name: "7 nginx burst 5, procs", variants: procVariants(), run: procs(limitBurst5)},
	// The learning scenarios: hostbreaker on its defaults must learn each
	// server's rate from its 429s (limits.go).
	{id: "8", name: "8 nginx 5r/s burst 0, no RA", run: byClient(learning(limit5NoRA))},
	{id: "9", name: "9 nginx 5r/s burst 5, no RA", run: byClient(learning(limit5Burst5NoRA))},
	{id: "10", name: "10 haproxy 5/1s window, no RA", run: byClient(learning(window5NoRA))},
	{id: "11", name: "11 haproxy 5/1s window, RA 1", run: byClient(learning(window5RA1))},
	{id: "12", name: "12 nginx 50r/s burst 0, no RA", run: byClient(learning(limit50NoRA))},
	// Scenario 7 without Retry-After: the fleet learns from the 429s alone.
	{id: "13", name: "13 nginx burst 5, no RA, procs", variants: procVariants(), run: procs(limit5Burst5NoRA)},
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
	fmt.Fprintf(w, "workers %d, scenarios 1-3,5 %s each, limiter scenarios 4,6-12 %s with a %s client timeout (7: %d processes of %d workers), breakers open after %d consecutive failures for %s\n",
		o.workers, o.each, o.duration, o.timeout, o.procs, o.workers, failMax, o.openFor)
}

// A target is what hostbreaker must achieve in one scenario, stated over
// 30 s. Each clause is judged on its own line.
type target struct {
	scenario   string
	setup      string
	minGoodput float64 // % of the allowed rate
	max429Pct  float64 // % of the bare client's 429s in the same run
	// The learning scenarios' further clauses; zero: none.
	max429PerServed float64    // 429s per request served
	learnt          [2]float64 // the learnt rate's bounds after -settle, as multiples of the allowed rate
}

// learningTarget is the target of a learning scenario (8 to 12): minGoodput
// % of the allowed rate served, at most 1 % of the bare client's 429s and
// one 429 per 5 requests served, and a learnt rate within 0.6 to 1.2 times
// the allowed one after the first 10 s.
func learningTarget(scenario string, minGoodput float64) target {
	return target{scenario: scenario, setup: "on its defaults", minGoodput: minGoodput, max429Pct: 1,
		max429PerServed: 1.0 / 5, learnt: [2]float64{0.6, 1.2}}
}

// The targets for hostbreaker against real rate limiters.
var targets = []target{
	{scenario: "4 nginx burst 5", setup: "on its defaults", minGoodput: 80, max429Pct: 1},
	{scenario: "6 nginx burst 0", setup: fmt.Sprintf("with rate %.1f, 10 %% under the limit", burst0Rate), minGoodput: 85, max429Pct: 1},
	learningTarget("8 nginx 5r/s burst 0, no RA", 80),
	learningTarget("9 nginx 5r/s burst 5, no RA", 85),
	learningTarget("10 haproxy 5/1s window, no RA", 80),
	learningTarget("11 haproxy 5/1s window, RA 1", 85),
	learningTarget("12 nginx 50r/s burst 0, no RA", 80),
}

// verdict is the word a target line starts with.
func verdict(ok bool) string {
	if ok {
		return "MET    "
	}
	return "NOT MET"
}

// printTargets prints a MET or NOT MET line per target clause whose
// scenario ran, with the numbers it was judged on.
func printTargets(w io.Writer, rs []Result, o options) {
	header := false
	for _, t := range targets {
		hb, bare := findResult(rs, t.scenario, "hostbreaker"), findResult(rs, t.scenario, "bare")
		if hb == nil {
			continue
		}
		if !header {
			fmt.Fprintf(w, "\ntargets, stated over 30s (this run: %s):\n", o.duration)
			header = true
		}
		g := *hb.GoodputPct
		fmt.Fprintf(w, "  %s  %s, hostbreaker %s: goodput %.1f %% (want >= %.0f %%)\n",
			verdict(g >= t.minGoodput), t.scenario, t.setup, g, t.minGoodput)
		if bare == nil {
			fmt.Fprintf(w, "  NOT MEASURED  %s: 429s need the bare client's run\n", t.scenario)
		} else {
			limit := float64(*bare.Got429) * t.max429Pct / 100
			fmt.Fprintf(w, "  %s  %s, hostbreaker %s: %d 429s (want <= %.0f %% of bare's %d = %.1f)\n",
				verdict(float64(*hb.Got429) <= limit), t.scenario, t.setup, *hb.Got429, t.max429Pct, *bare.Got429, limit)
		}
		if t.max429PerServed > 0 {
			limit := float64(*hb.Served) * t.max429PerServed
			fmt.Fprintf(w, "  %s  %s, hostbreaker %s: %d 429s for %d served (want <= 1 per %.0f served = %.1f)\n",
				verdict(float64(*hb.Got429) <= limit), t.scenario, t.setup, *hb.Got429, *hb.Served, 1/t.max429PerServed, limit)
		}
		if t.learnt != [2]float64{} {
			if hb.LearntMin == nil {
				fmt.Fprintf(w, "  NOT MEASURED  %s: no sample of the learnt rate after %s (the run lasted %.1fs)\n",
					t.scenario, settleOf(hb), hb.Elapsed)
				continue
			}
			lo, hi := *hb.LearntMin/hb.AllowedRate, *hb.LearntMax/hb.AllowedRate
			fmt.Fprintf(w, "  %s  %s, hostbreaker %s: learnt rate %.2f to %.2f r/s after %s = %.2fx to %.2fx of %g r/s (want %.1fx to %.1fx)\n",
				verdict(lo >= t.learnt[0] && hi <= t.learnt[1]), t.scenario, t.setup,
				*hb.LearntMin, *hb.LearntMax, settleOf(hb), lo, hi, hb.AllowedRate, t.learnt[0], t.learnt[1])
		}
	}
}

// printLearnt prints hostbreaker's learnt rate in the scenarios that
// sampled it.
func printLearnt(w io.Writer, rs []Result) {
	header := false
	for _, r := range rs {
		if r.Skipped != "" || r.LearntSettle == nil {
			continue
		}
		if !header {
			fmt.Fprintf(w, "\nhostbreaker's learnt rate for %s, read from Snapshot() once a second (0: not limited):\n", limitedHost)
			header = true
		}
		if r.LearntMin == nil {
			fmt.Fprintf(w, "  %s: no sample from %s on (the run lasted %.1fs)\n", r.Scenario, settleOf(&r), r.Elapsed)
			continue
		}
		fmt.Fprintf(w, "  %s: from %s on, min %.2f r/s (%.2fx), max %.2f r/s (%.2fx) of %g r/s allowed, %d samples\n",
			r.Scenario, settleOf(&r), *r.LearntMin, *r.LearntMin/r.AllowedRate, *r.LearntMax, *r.LearntMax/r.AllowedRate, r.AllowedRate, r.LearntSamples)
	}
}

// settleOf is when r's learnt rate started to be sampled, as printed.
func settleOf(r *Result) string {
	if r.LearntSettle == nil {
		return "-"
	}
	return (time.Duration(*r.LearntSettle * float64(time.Second))).String()
}

// findResult returns the result of client in scenario, nil if it did not
// run or was skipped.
func findResult(rs []Result, scenario, client string) *Result {
	for i := range rs {
		if rs[i].Scenario == scenario && rs[i].Client == client && rs[i].Skipped == "" {
			return &rs[i]
		}
	}
	return nil
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
	rt, closeRT, err := c.wrap(newBase(addr, o.workers), setup{openFor: o.openFor})
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
	rt, closeRT, err := c.wrap(newBase(addr, o.workers), setup{openFor: o.openFor})
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
	rt, closeRT, err := c.wrap(newBase(addr, o.workers), setup{openFor: o.openFor})
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
	rt, closeRT, err := c.wrap(base, setup{openFor: o.openFor})
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
