// Command demo shows what hostbreaker saves: it runs the same workload twice
// against three loopback servers — one healthy, one that fails hard for a
// while, one that rate-limits with Retry-After for a while — first through a
// plain http.Transport, then through hostbreaker, and compares how many
// requests reached each server.
//
//	go run ./cmd/demo [-duration 7s] [-workers 8] [-quiet]
//
// The sick periods scale with -duration: the flaky host fails for the first
// 2/3 of each phase, the limited host answers 429 for the first 7/12, with a
// Retry-After of a quarter of the phase, rounded (2 s for the default 7 s).
//
// On a terminal the demo redraws a live table each second; elsewhere (a
// pipe, a file) it prints the hostbreaker phase's table once, at its end,
// then the summary.
package main

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/hostbreaker/hostbreaker"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		os.Exit(0)
	case errors.As(err, new(usageError)):
		os.Exit(2) // the FlagSet has already printed the error and usage
	default:
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

// usageError is a bad command line.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

// options are the demo's settings, from the flags and derived from them.
type options struct {
	duration    time.Duration // of each phase
	workers     int
	quiet       bool
	interval    time.Duration // between two requests of one worker
	flakySick   time.Duration // the flaky host fails during this much of a phase
	limitedSick time.Duration // the limited host answers 429 during this much
	retryAfter  int           // seconds, in the limited host's Retry-After
	store       string        // store URL for hostbreaker; "" for a bbolt file in a temp dir
}

func parseFlags(args []string, stderr io.Writer) (options, error) {
	var o options
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.DurationVar(&o.duration, "duration", 7*time.Second, "length of each of the two phases")
	fs.IntVar(&o.workers, "workers", 8, "concurrent workers")
	fs.BoolVar(&o.quiet, "quiet", false, "print no live table, only the summary")
	fs.StringVar(&o.store, "store", "", "store `URL` shared by hostbreaker (a path or redis://…; default: a bbolt file in a new temp dir)")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: demo [flags]\n\n"+
			"Runs the same workload against a healthy, a flaky and a rate-limited loopback\n"+
			"server, without and then with hostbreaker, and compares the load they took.\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return o, err
		}
		return o, usageError{err}
	}
	var bad error
	switch {
	case fs.NArg() > 0:
		bad = fmt.Errorf("unexpected argument %q", fs.Arg(0))
	case o.duration <= 0:
		bad = fmt.Errorf("-duration must be positive, got %v", o.duration)
	case o.workers < 1:
		bad = fmt.Errorf("-workers must be at least 1, got %d", o.workers)
	}
	if bad != nil {
		fmt.Fprintln(stderr, bad) // as the FlagSet does for its own errors
		fs.Usage()
		return o, usageError{bad}
	}
	o.interval = 20 * time.Millisecond
	o.flakySick = o.duration * 2 / 3
	o.limitedSick = o.duration * 7 / 12 // leaves time to show the recovery
	o.retryAfter = max(1, int(math.Round(o.duration.Seconds()/4)))
	return o, nil
}

// The three hosts, in the order workers visit them.
const (
	healthy = iota
	flaky
	limited
	nHosts
)

var (
	hostNames = [nHosts]string{"healthy", "flaky", "limited"}
	hostRoles = [nHosts]string{hostbreaker.RoleMetadata, hostbreaker.RoleLanding, hostbreaker.RoleArtifact}
)

// counts are what one phase did to one host.
type counts struct {
	hits                 int64 // requests that reached the server
	ok, failed, rejected int64 // client-side outcomes
}

// phase is the outcome of one run of the workload.
type phase struct {
	name    string
	ran     bool
	elapsed time.Duration
	hosts   [nHosts]counts
}

// live is the state of a running phase, shared by servers and workers.
type live struct {
	start   time.Time
	servers [nHosts]*httptest.Server
	names   map[string]string // "127.0.0.1:port" -> host name
	hits    [nHosts]atomic.Int64
	ok      [nHosts]atomic.Int64
	failed  [nHosts]atomic.Int64
	rejects [nHosts]atomic.Int64
}

func (l *live) result(name string) phase {
	p := phase{name: name, ran: true, elapsed: time.Since(l.start)}
	for i := range nHosts {
		p.hosts[i] = counts{
			hits: l.hits[i].Load(), ok: l.ok[i].Load(),
			failed: l.failed[i].Load(), rejected: l.rejects[i].Load(),
		}
	}
	return p
}

// index returns the position of hostport among the servers, or nHosts.
func (l *live) index(hostport string) int {
	if i := slices.Index(hostNames[:], l.names[hostport]); i >= 0 {
		return i
	}
	return nHosts
}

func (l *live) name(hostport string) string {
	if n, ok := l.names[hostport]; ok {
		return n
	}
	return hostport
}

// startServers starts the three loopback servers; their sick periods begin
// now. The caller closes them with closeServers.
func startServers(o options) *live {
	l := &live{start: time.Now(), names: make(map[string]string)}
	sick := func(d time.Duration) bool { return time.Since(l.start) < d }
	handlers := [nHosts]http.HandlerFunc{
		healthy: func(w http.ResponseWriter, r *http.Request) {
			l.hits[healthy].Add(1)
			time.Sleep(2 * time.Millisecond)
			io.WriteString(w, "ok\n")
		},
		flaky: func(w http.ResponseWriter, r *http.Request) {
			n := l.hits[flaky].Add(1)
			if !sick(o.flakySick) {
				io.WriteString(w, "ok\n")
				return
			}
			if n%2 == 0 {
				w.WriteHeader(http.StatusServiceUnavailable) // no Retry-After
				return
			}
			// Drop the connection without an answer.
			if conn, _, err := http.NewResponseController(w).Hijack(); err == nil {
				conn.Close()
				return
			}
			w.WriteHeader(http.StatusServiceUnavailable)
		},
		limited: func(w http.ResponseWriter, r *http.Request) {
			l.hits[limited].Add(1)
			if sick(o.limitedSick) {
				w.Header().Set("Retry-After", strconv.Itoa(o.retryAfter))
				w.WriteHeader(http.StatusTooManyRequests)
				return
			}
			io.WriteString(w, "ok\n")
		},
	}
	for i, h := range handlers {
		srv := httptest.NewServer(h) // 127.0.0.1 on an ephemeral port
		l.servers[i] = srv
		u, _ := url.Parse(srv.URL)
		l.names[u.Host] = hostNames[i]
	}
	return l
}

func (l *live) closeServers() {
	for _, s := range l.servers {
		s.Close()
	}
}

// workload runs o.workers workers until ctx is done, each sending one
// request every o.interval to the next of the three hosts in turn.
func workload(ctx context.Context, o options, l *live, client *http.Client) {
	var wg sync.WaitGroup
	for w := range o.workers {
		wg.Go(func() {
			// Spread the workers over the interval.
			select {
			case <-ctx.Done():
				return
			case <-time.After(o.interval * time.Duration(w) / time.Duration(o.workers)):
			}
			tick := time.NewTicker(o.interval)
			defer tick.Stop()
			for i := w; ; i++ {
				h := i % nHosts
				request(ctx, client, l, h)
				select {
				case <-ctx.Done():
					return
				case <-tick.C:
				}
			}
		})
	}
	wg.Wait()
}

func request(ctx context.Context, client *http.Client, l *live, h int) {
	req, err := http.NewRequestWithContext(hostbreaker.WithRole(ctx, hostRoles[h]),
		http.MethodGet, l.servers[h].URL+"/", nil)
	if err != nil {
		l.failed[h].Add(1)
		return
	}
	resp, err := client.Do(req)
	switch {
	case err == nil:
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode >= 200 && resp.StatusCode < 300 {
			l.ok[h].Add(1)
		} else {
			l.failed[h].Add(1)
		}
	case errors.Is(err, hostbreaker.ErrOpen):
		l.rejects[h].Add(1)
	case ctx.Err() != nil:
		// The phase ended while the request was in flight: not counted.
	default:
		l.failed[h].Add(1)
	}
}

// console writes progress blocks; on a terminal each block replaces the
// previous one. Elsewhere the phases write one block each, at their end.
type console struct {
	w     io.Writer
	tty   bool
	lines int // lines of the block on screen, to redraw over
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// block shows s, which ends with a newline, in place of the previous block.
func (c *console) block(s string) {
	if c.tty && c.lines > 0 {
		fmt.Fprintf(c.w, "\x1b[%dA\x1b[J", c.lines) // cursor up, clear to the end
	}
	io.WriteString(c.w, s)
	c.lines = strings.Count(s, "\n")
}

// printf writes text that stays: the next block starts below it.
func (c *console) printf(format string, args ...any) {
	fmt.Fprintf(c.w, format, args...)
	c.lines = 0
}

// every calls f each second until ctx is done, and returns a function that
// waits for the loop to end.
func every(ctx context.Context, f func()) (wait func()) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
				f()
			}
		}
	}()
	return func() { <-done }
}

func elapsed(l *live) string {
	return fmt.Sprintf("%2.0fs", time.Since(l.start).Seconds())
}

// runPlain runs the workload through a plain http.Transport.
func runPlain(ctx context.Context, o options, c *console) phase {
	l := startServers(o)
	defer l.closeServers()
	base := newBase(o)
	defer base.CloseIdleConnections()
	client := &http.Client{Transport: base, Timeout: 2 * time.Second}

	wctx, cancel := phaseContext(ctx, o.duration)
	defer cancel()
	c.printf("Phase 1/2: plain http.Transport, %v, %d workers\n", o.duration, o.workers)
	wait := func() {}
	if !o.quiet && c.tty {
		wait = every(wctx, func() {
			c.block(fmt.Sprintf("  %s/%v  reached the servers: healthy %d, flaky %d, limited %d\n",
				elapsed(l), o.duration, l.hits[healthy].Load(), l.hits[flaky].Load(), l.hits[limited].Load()))
		})
	}
	workload(wctx, o, l, client)
	cancel()
	wait()
	p := l.result("plain")
	c.printf("  done: %d requests reached the servers\n\n", p.hosts[healthy].hits+p.hosts[flaky].hits+p.hosts[limited].hits)
	return p
}

// runHostbreaker runs the workload through hostbreaker, with a live table.
func runHostbreaker(ctx context.Context, o options, c *console) (phase, error) {
	l := startServers(o)
	defer l.closeServers()
	base := newBase(o)
	defer base.CloseIdleConnections()

	events := &eventLog{live: l}
	cfg := hostbreaker.DefaultConfig()
	cfg.Defaults.FailMax = 3
	cfg.Defaults.ResetTimeout = 2 * time.Second
	cfg.Defaults.HalfOpenJitter = 200 * time.Millisecond
	cfg.Defaults.TrialCalls = 1
	// The workers take the hosts in turn: a request waits at most 100ms
	// for its turn at a paced host, then is rejected (rate-limited), so
	// that a worker does not hold up its turns at the other hosts.
	cfg.Defaults.MaxWait = 100 * time.Millisecond
	cfg.Rolling = hostbreaker.Rolling{} // disabled
	cfg.Store.URL = o.store
	if cfg.Store.URL == "" {
		dir, err := os.MkdirTemp("", "hostbreaker-demo-")
		if err != nil {
			return phase{}, err
		}
		defer os.RemoveAll(dir)
		cfg.Store.URL = filepath.Join(dir, "hostbreaker.db")
	}
	c.printf("Store: %s (look inside while it runs: go run ./cmd/breaker show -store %s)\n", cfg.Store.URL, cfg.Store.URL)
	tr, err := hostbreaker.NewTransport(base, hostbreaker.WithConfig(cfg), hostbreaker.WithLogger(slog.New(events)))
	if err != nil {
		return phase{}, err
	}
	defer tr.Close()
	client := &http.Client{Transport: tr, Timeout: 2 * time.Second}

	wctx, cancel := phaseContext(ctx, o.duration)
	defer cancel()
	c.printf("Phase 2/2: hostbreaker (fail_max 3, reset_timeout 2s, half_open_jitter 200ms, trial_calls 1, max_wait 100ms), %v, %d workers\n",
		o.duration, o.workers)
	wait := func() {}
	if !o.quiet && c.tty {
		wait = every(wctx, func() { c.block(liveTable(o, l, tr, events, c.tty)) })
	}
	workload(wctx, o, l, client)
	cancel()
	wait()
	if !o.quiet {
		c.block(liveTable(o, l, tr, events, c.tty))
	}
	if c.tty || o.quiet {
		c.printf("\n")
	}
	return l.result("hostbreaker"), nil
}

// phaseContext returns a context that is canceled when d has passed. Not
// a deadline: hostbreaker counts a request that hits its context's
// deadline as a failure of the host (a hung host's timeouts), and the
// requests in flight when a phase ends are the demo's doing, not the
// host's; a cancellation is neutral.
func phaseContext(ctx context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(ctx)
	t := time.AfterFunc(d, cancel)
	return ctx, func() { t.Stop(); cancel() }
}

// newBase returns a clone of http.DefaultTransport that keeps enough idle
// connections for every worker.
func newBase(o options) *http.Transport {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.MaxIdleConnsPerHost = o.workers
	return t
}

// liveTable renders the Transport's Snapshot.
func liveTable(o options, l *live, tr *hostbreaker.Transport, events *eventLog, tty bool) string {
	var b bytes.Buffer
	fmt.Fprintf(&b, "[%s/%v] reached the servers: healthy %d, flaky %d, limited %d\n",
		elapsed(l), o.duration, l.hits[healthy].Load(), l.hits[flaky].Load(), l.hits[limited].Load())
	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "  host\trole\tstate\tuntil\treason\trequests\tok\tfailed\tneutral\trejected")
	now := time.Now()
	rows := tr.Snapshot()
	slices.SortStableFunc(rows, func(a, b hostbreaker.Status) int { // healthy, flaky, limited
		return cmp.Or(cmp.Compare(l.index(a.Host), l.index(b.Host)), strings.Compare(a.Role, b.Role))
	})
	for _, s := range rows {
		until := "-"
		if s.Until.After(now) {
			until = fmt.Sprintf("%.1fs", s.Until.Sub(now).Seconds())
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\t%d\t%d\t%d\t%d\t%d\n", l.name(s.Host), dash(s.Role), s.State, until,
			dash(string(s.Reason)), s.Requests, s.Successes, s.Failures, s.Neutral, s.Rejected)
	}
	tw.Flush()
	var lines []string
	if tty {
		lines = events.last(6) // a fixed-size window under the table
	} else {
		lines = events.all() // the one table, at the end: the whole story
	}
	if len(lines) > 0 {
		b.WriteString("  events:\n")
		for _, e := range lines {
			fmt.Fprintf(&b, "    %s\n", e)
		}
	}
	if !tty {
		b.WriteString("\n")
	}
	return b.String()
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// eventLog is a slog.Handler that keeps hostbreaker's state changes as
// short lines for the live table.
type eventLog struct {
	live *live

	mu    sync.Mutex
	lines []string
}

func (e *eventLog) Enabled(context.Context, slog.Level) bool { return true }
func (e *eventLog) WithAttrs([]slog.Attr) slog.Handler       { return e }
func (e *eventLog) WithGroup(string) slog.Handler            { return e }

func (e *eventLog) Handle(_ context.Context, r slog.Record) error {
	rel := func(t time.Time) string { return fmt.Sprintf("%.1fs", t.Sub(e.live.start).Seconds()) }
	a := make(map[string]string)
	var keys []string // in the record's order, so that a line reads the same every run
	r.Attrs(func(at slog.Attr) bool {
		v := at.Value.Resolve()
		switch v.Kind() {
		case slog.KindTime:
			a[at.Key] = rel(v.Time())
		case slog.KindFloat64:
			a[at.Key] = strconv.FormatFloat(v.Float64(), 'g', 3, 64)
		default:
			a[at.Key] = v.String()
		}
		keys = append(keys, at.Key)
		return true
	})
	host := e.live.name(a["host"])
	msg := strings.TrimPrefix(r.Message, "hostbreaker: ")
	switch msg {
	case "breaker state changed":
		msg = fmt.Sprintf("%s/%s: %s -> %s", host, a["role"], a["from"], a["to"])
		if u := a["until"]; u != "" {
			msg += " until " + u
		}
	case "host cooling down":
		msg = fmt.Sprintf("%s: cooling down (%s) until %s", host, a["reason"], a["until"])
	case "host rate limit changed":
		if a["rate"] == a["previous_rate"] {
			return nil // no change at the precision shown
		}
		msg = fmt.Sprintf("%s: rate %s -> %s r/s (%s)", host, a["previous_rate"], a["rate"], a["why"])
	default:
		for _, k := range keys {
			msg += " " + k + "=" + a[k]
		}
	}
	line := fmt.Sprintf("%5s  %s", rel(r.Time), msg)
	e.mu.Lock()
	e.lines = append(e.lines, line)
	e.mu.Unlock()
	return nil
}

func (e *eventLog) last(n int) []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]string(nil), e.lines[max(0, len(e.lines)-n):]...)
}

func (e *eventLog) all() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]string(nil), e.lines...)
}

// run is the whole demo; main only wires signals and the exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	o, err := parseFlags(args, stderr)
	if err != nil {
		return err
	}
	c := &console{w: stdout, tty: isTerminal(stdout)}
	c.printf("hostbreaker demo: %d workers, a request every %v each, hosts in turn; 2 s client timeout.\n"+
		"  healthy  (metadata)  200 after 2 ms\n"+
		"  flaky    (landing)   503 or a dropped connection for the first %v, then 200\n"+
		"  limited  (artifact)  429 with Retry-After: %d for the first %v, then 200\n\n",
		o.workers, o.interval, durOrDash(o.flakySick), o.retryAfter, durOrDash(o.limitedSick))

	plain := runPlain(ctx, o, c)
	hb := phase{name: "hostbreaker"}
	if ctx.Err() == nil {
		if hb, err = runHostbreaker(ctx, o, c); err != nil {
			return err
		}
	}
	summary(stdout, o, plain, hb, ctx.Err() != nil)
	return nil
}

// summary prints the comparison of the two phases and a conclusion.
func summary(w io.Writer, o options, plain, hb phase, interrupted bool) {
	fmt.Fprintf(w, "Summary: the same workload (%v, %d workers) without and with hostbreaker\n", o.duration, o.workers)
	if interrupted {
		fmt.Fprintf(w, "  (interrupted: plain ran %v, hostbreaker %v)\n", plain.elapsed.Round(100*time.Millisecond),
			hb.elapsed.Round(100*time.Millisecond))
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "host\trole\tsick for\treached server: plain\thostbreaker\treduction\tfailed: plain\thostbreaker\trejected by hostbreaker")
	sick := [nHosts]time.Duration{0, o.flakySick, o.limitedSick}
	for i := range nHosts {
		p, h := plain.hosts[i], hb.hosts[i]
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\t%d\t%s\t%s\n", hostNames[i], hostRoles[i], durOrDash(sick[i]),
			p.hits, num(hb.ran, h.hits), reduction(hb.ran, p.hits, h.hits),
			p.failed, num(hb.ran, h.failed), num(hb.ran, h.rejected))
	}
	tw.Flush()
	if p := plain.hosts[flaky]; p.hits > (p.ok+p.failed)*11/10 {
		fmt.Fprintf(w, "(flaky took more plain requests than the workers sent (%d): net/http retries a GET once\n"+
			" when a reused connection is dropped.)\n", p.ok+p.failed)
	}

	switch {
	case !hb.ran:
		fmt.Fprintln(w, "\nInterrupted before the hostbreaker phase: nothing to compare.")
		return
	case interrupted:
		fmt.Fprintln(w, "\nInterrupted during the hostbreaker phase: the two phases ran for different times, so compare with care.")
		return
	}
	sickPlain := plain.hosts[flaky].hits + plain.hosts[limited].hits
	sickHB := hb.hosts[flaky].hits + hb.hosts[limited].hits
	rejected := hb.hosts[flaky].rejected + hb.hosts[limited].rejected
	healthyShare := 100.0
	if plain.hosts[healthy].hits > 0 {
		healthyShare = 100 * float64(hb.hosts[healthy].hits) / float64(plain.hosts[healthy].hits)
	}
	fmt.Fprintln(w)
	if sickHB < sickPlain {
		fmt.Fprintf(w, "Conclusion: with hostbreaker the sick hosts took %s fewer requests (%d instead of %d), "+
			"%d requests failed fast on the client instead, and the healthy host still got %.0f%% of its plain traffic.\n",
			reduction(true, sickPlain, sickHB), sickHB, sickPlain, rejected, healthyShare)
	} else {
		fmt.Fprintf(w, "Conclusion: hostbreaker did not reduce the load on the sick hosts in this run (%d vs %d requests).\n",
			sickHB, sickPlain)
	}
}

func num(ok bool, n int64) string {
	if !ok {
		return "-"
	}
	return strconv.FormatInt(n, 10)
}

func reduction(ok bool, plain, hb int64) string {
	if !ok || plain == 0 {
		return "-"
	}
	r := math.Round(100 * float64(plain-hb) / float64(plain))
	if r == 0 {
		r = 0 // not -0
	}
	return fmt.Sprintf("%.0f%%", r)
}

func durOrDash(d time.Duration) string {
	if d == 0 {
		return "-"
	}
	return d.Round(100 * time.Millisecond).String()
}
