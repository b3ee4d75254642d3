package hostbreaker

// A model of the fleet benchmark (bench/ scenarios 7 and 13): N processes
// of 2 workers, each a Transport with its own handle on one shared store,
// against one nginx limit_req zone (5 r/s, burst 5 nodelay, with and
// without Retry-After: 1), all starting at one instant, on synctest's fake
// clock. Every 429 is attributed to what let its request go (see
// fleetCause), so that the fleet's 429s can be read by cause and by second.

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

// The causes of a 429 in the fleet model, in the order they are tested.
const (
	causeInitial   = "initial"    // sent unpaced before any 429 came back to anyone
	causeUnpaced   = "unpaced"    // sent unpaced after the fleet had been throttled: the process had not learnt of it yet
	causeCooldown  = "cooldown"   // sent while another process's Retry-After ran, which this process had not seen
	causeSlowStart = "slow-start" // sent by a limiter in its own slow start
	causeFactLag   = "fact-lag"   // the fleet had a newer throttle than the one this process paced by
	causeShare     = "share"      // this process paced above its share of the fleet's limit
	causeFleetOver = "fleet-over" // the processes' rates added up to more than the host allows
	causeTiming    = "timing"     // within the rates: the burst or the timing of the arrivals
)

var fleetCauses = []string{causeInitial, causeUnpaced, causeCooldown, causeSlowStart, causeFactLag, causeShare, causeFleetOver, causeTiming}

// fleetModel is one run of the model.
type fleetModel struct {
	procs      int
	workers    int
	retryAfter int           // the zone's Retry-After, 0 for none
	d          time.Duration // the load's length
	opts       func(i int) []Option
	trace      func(s int, x fleetSample) // called every second with the fleet's state, if set

	srv   *leakyBucket
	trs   []*Transport
	start time.Time

	mu          sync.Mutex
	first429    time.Time        // when the first 429 came back
	cooling     time.Time        // the end of the latest Retry-After any process received
	causes      map[string]int   // 429s by cause
	bySecond    map[int]int      // 429s by second of the run
	sent        int              // requests sent, for the trace
	byProcCause []map[string]int // 429s by process and cause
}

// fleetResult is what a run of the model measured.
type fleetResult struct {
	served, rejected int
	goodput          float64 // served / allowed
	causes           map[string]int
	bySecond         map[int]int
}

func (r fleetResult) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "served %d (%.1f%%), 429s %d:", r.served, 100*r.goodput, r.rejected)
	for _, c := range fleetCauses {
		if n := r.causes[c]; n > 0 {
			fmt.Fprintf(&b, " %s %d", c, n)
		}
	}
	b.WriteString("; by second:")
	for _, s := range slices.Sorted(maps.Keys(r.bySecond)) {
		fmt.Fprintf(&b, " %d:%d", s, r.bySecond[s])
	}
	return b.String()
}

// fleetProc is the base RoundTripper of process i: it attributes each
// request's outcome, then sends it to the shared zone.
type fleetProc struct {
	m *fleetModel
	i int
}

const modelHost = "limited.test"

// fleetLatency is the model's one-way network latency: the first requests
// of all the processes reach the zone before any 429 came back.
const fleetLatency = time.Millisecond

func (p fleetProc) RoundTrip(req *http.Request) (*http.Response, error) {
	m := p.m
	cause := m.cause(p.i)
	m.mu.Lock()
	m.sent++
	m.mu.Unlock()
	time.Sleep(fleetLatency) // to the server
	resp, err := m.srv.RoundTrip(req)
	time.Sleep(fleetLatency) // back
	if err != nil || resp.StatusCode != http.StatusTooManyRequests {
		return resp, err
	}
	now := time.Now()
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.first429.IsZero() {
		m.first429 = now
	}
	if m.retryAfter > 0 {
		m.cooling = later(m.cooling, now.Add(time.Duration(m.retryAfter)*time.Second))
	}
	m.causes[cause]++
	m.byProcCause[p.i][cause]++
	m.bySecond[int(now.Sub(m.start)/time.Second)]++
	return resp, err
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// cause returns what lets the request that process i sends now go, should
// it be refused: see the causes above. It reads the limiters' state under
// their locks, as the request leaves.
func (m *fleetModel) cause(i int) string {
	now := time.Now()
	m.mu.Lock()
	first, cooling := m.first429, m.cooling
	m.mu.Unlock()
	tr := m.trs[i]
	h := tr.reg.host(modelHost)
	var lim *limiter
	if h != nil {
		lim = h.lim.Load()
	}
	if lim == nil {
		if first.IsZero() || !first.Before(now) {
			return causeInitial
		}
		return causeUnpaced
	}
	if now.Before(cooling) {
		return causeCooldown
	}
	lim.mu.Lock()
	slow, fill, throttled := lim.slowStart, lim.fill, lim.throttleNs
	lim.mu.Unlock()
	if slow {
		return causeSlowStart
	}
	var newest int64
	var sum float64
	for _, o := range m.trs {
		if oh := o.reg.host(modelHost); oh != nil {
			if ol := oh.lim.Load(); ol != nil {
				ol.mu.Lock()
				newest = max(newest, ol.throttleNs)
				sum += ol.fill
				ol.mu.Unlock()
			}
		}
	}
	if throttled < newest-int64(time.Millisecond) {
		return causeFactLag
	}
	if fr, ok := tr.fleetRate(modelHost); ok && fill > 1.05*fr.rate {
		return causeShare
	}
	if sum > m.srv.rate*1.05 {
		return causeFleetOver
	}
	return causeTiming
}

// run runs the model: the processes start at one instant and load the zone
// for d, each worker sending one request after the other as the
// benchmark's do (an http.Client with a 2 s timeout; a rejection is
// retried when it says, at most 100 ms later).
func (m *fleetModel) run(t *testing.T) fleetResult {
	t.Helper()
	m.srv = &leakyBucket{rate: 5, burst: 5, nodelay: true, retryAfter: m.retryAfter}
	m.causes, m.bySecond = make(map[string]int), make(map[int]int)
	m.trs = make([]*Transport, m.procs)
	m.byProcCause = make([]map[string]int, m.procs)
	for i := range m.trs {
		// The processes start one after the other, as the benchmark's
		// do: their polls are not in step.
		time.Sleep(time.Second / time.Duration(m.procs))
		m.byProcCause[i] = make(map[string]int)
		tr, err := NewTransport(fleetProc{m, i}, m.opts(i)...)
		if err != nil {
			t.Fatal(err)
		}
		m.trs[i] = tr
	}
	defer func() {
		for _, tr := range m.trs {
			tr.Close()
		}
	}()
	// The common start, on a second boundary of the fake clock after the
	// stores were opened.
	time.Sleep(time.Until(time.Now().Truncate(time.Second).Add(time.Second)))
	m.start = time.Now()
	ctx, cancel := context.WithDeadline(context.Background(), m.start.Add(m.d))
	defer cancel()
	var wg sync.WaitGroup
	for _, tr := range m.trs {
		c := &http.Client{Transport: tr, Timeout: 2 * time.Second}
		for range m.workers {
			wg.Go(func() {
				for ctx.Err() == nil {
					req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+modelHost+"/ok.txt", nil)
					resp, err := c.Do(req)
					var oe *OpenError
					switch {
					case errors.As(err, &oe):
						wait := 100 * time.Millisecond
						if !oe.Until.IsZero() {
							wait = min(max(time.Until(oe.Until), time.Millisecond), wait)
						}
						select {
						case <-time.After(wait):
						case <-ctx.Done():
						}
					case err == nil:
						resp.Body.Close()
					default:
						select {
						case <-time.After(time.Millisecond):
						case <-ctx.Done():
						}
					}
				}
			})
		}
	}
	if m.trace != nil {
		wg.Go(func() {
			for s := 1; ; s++ {
				select {
				case <-ctx.Done():
					return
				case <-time.After(time.Until(m.start.Add(time.Duration(s) * time.Second))):
				}
				x := m.sample()
				m.mu.Lock()
				x.sent, m.sent = m.sent, 0
				m.mu.Unlock()
				m.trace(s, x)
			}
		})
	}
	wg.Wait()
	served, rejected := m.srv.counts()
	return fleetResult{served: served, rejected: rejected, goodput: float64(served) / (m.srv.rate*m.d.Seconds() + m.srv.burst),
		causes: m.causes, bySecond: m.bySecond}
}

// TestFleetModel runs the fleet model over its table, 1, 4, 8 and 24
// processes of 2 workers sharing a bbolt file, against nginx 5 r/s burst
// 5 with and without Retry-After: 1, 30 s of fake time, with the fleet's
// refinements (fleetTweaks), and with -v also without them: the table it
// logs then compares the two in one run, with each run's 429s by cause and
// by second.
//
// The bounds hold the refinements' runs, and are the model's regression
// bounds, not issue 15's targets: all processes start at one instant, and
// their first 2N requests reach the zone before anything is learnt (2N − 6
// refusals, 42 for 24 processes), which no shared limit can avoid; what
// the bounds hold is what follows. Goroutines are scheduled in varying
// order inside the bubble, so the bounds sit above what the runs reach
// (measured, 429s: RA 1, 5–8, 15–20, 23–30, 48–58; no RA, 11–14, 26–39,
// 35–67, 87–141; served 85–99 %, but 71–90 % for 24 processes with
// Retry-After, whose cooldowns the fleet's polls see at different times).
func TestFleetModel(t *testing.T) {
	bounds := map[fleetCell]struct {
		max429     int
		minGoodput float64
	}{
		{1, 1}: {12, 0.80}, {1, 4}: {32, 0.85}, {1, 8}: {45, 0.85}, {1, 24}: {90, 0.60},
		{0, 1}: {20, 0.80}, {0, 4}: {55, 0.80}, {0, 8}: {90, 0.85}, {0, 24}: {180, 0.80},
	}
	before := fleetTweaks{servedDemand: true, youngFacts: true, ownFactOnly: true, noPhase: true, ownSlowStart: true}
	var table strings.Builder
	fmt.Fprintf(&table, "429s (served %%), without → with the fleet's refinements:")
	for _, c := range fleetCells {
		var rb, ra fleetResult
		t.Run(fmt.Sprintf("RA%d/%d procs", c.ra, c.n), func(t *testing.T) {
			ra = runFleetCell(t, c, fleetTweaks{})
			if testing.Verbose() { // the comparison doubles the run: CI runs without -v
				rb = runFleetCell(t, c, before)
				t.Logf("without: %v", rb)
				t.Logf("with:    %v", ra)
			}
			b := bounds[c]
			if ra.rejected > b.max429 || ra.goodput < b.minGoodput {
				t.Errorf("%d 429s (want ≤ %d), %.1f%% served (want ≥ %.0f%%)", ra.rejected, b.max429, 100*ra.goodput, 100*b.minGoodput)
			}
		})
		if testing.Verbose() {
			fmt.Fprintf(&table, "\n  RA %d, %2d procs: %3d (%3.0f%%) → %3d (%3.0f%%)", c.ra, c.n, rb.rejected, 100*rb.goodput, ra.rejected, 100*ra.goodput)
		}
	}
	if testing.Verbose() {
		t.Log(table.String())
	}
}

// fleetSample is the fleet's state at one instant.
type fleetSample struct {
	limited, slow, fleet int     // processes with a limiter, in slow start, with a fleet rate
	sum, lo, hi          float64 // their rates: sum, least and greatest
	shares               float64 // the sum of their fleet shares
	floor                float64 // the greatest floor of their limiters
	sent                 int     // requests sent in the second before
}

func (x fleetSample) String() string {
	return fmt.Sprintf("limited %d slow %d fleet %d; rates sum %.2f (%.3f–%.3f), shares sum %.2f, floor ≤ %.3f; sent %d", x.limited, x.slow, x.fleet, x.sum, x.lo, x.hi, x.shares, x.floor, x.sent)
}

func (m *fleetModel) sample() fleetSample {
	x := fleetSample{lo: 1e9}
	for _, tr := range m.trs {
		if fr, ok := tr.fleetRate(modelHost); ok {
			x.fleet++
			x.shares += fr.rate
		}
		h := tr.reg.host(modelHost)
		if h == nil {
			continue
		}
		l := h.lim.Load()
		if l == nil {
			continue
		}
		l.mu.Lock()
		x.limited++
		if l.slowStart {
			x.slow++
		}
		x.sum += l.fill
		x.floor = max(x.floor, l.minRate)
		x.lo, x.hi = min(x.lo, l.fill), max(x.hi, l.fill)
		l.mu.Unlock()
	}
	return x
}

// fleetCell is one cell of the model's table: n processes, the zone's
// Retry-After.
type fleetCell struct{ ra, n int }

var fleetCells = []fleetCell{{1, 1}, {1, 4}, {1, 8}, {1, 24}, {0, 1}, {0, 4}, {0, 8}, {0, 24}}

// runFleetCell runs the model for one cell with the fleet tweaks tw.
func runFleetCell(t *testing.T, c fleetCell, tw fleetTweaks) fleetResult {
	path := filepath.Join(t.TempDir(), "hb.db")
	var r fleetResult
	synctest.Test(t, func(t *testing.T) {
		m := &fleetModel{procs: c.n, workers: 2, retryAfter: c.ra, d: 30 * time.Second, opts: func(int) []Option {
			return []Option{WithConfig(Config{Store: StoreConfig{URL: path}}), withFleetTweaks(tw)}
		}}
		r = m.run(t)
	})
	return r
}

// TestFleetModelVariants runs the model's table for each variant of the
// fleet's tweaks named in HB_FLEET_VARIANTS (comma-separated; "all" for
// all of them): a measuring tool, skipped without it.
func TestFleetModelVariants(t *testing.T) {
	variants := map[string]fleetTweaks{
		"on":       {},
		"off":      {servedDemand: true, youngFacts: true, ownFactOnly: true, noPhase: true, ownSlowStart: true},
		"-fss":     {ownSlowStart: true},
		"-demand":  {servedDemand: true},
		"-young":   {youngFacts: true},
		"-refused": {ownFactOnly: true},
		"-phase":   {noPhase: true},
		"+demand":  {youngFacts: true, ownFactOnly: true, noPhase: true},
		"+young":   {servedDemand: true, ownFactOnly: true, noPhase: true},
		"+refused": {servedDemand: true, youngFacts: true, noPhase: true},
		"+phase":   {servedDemand: true, youngFacts: true, ownFactOnly: true},
	}
	env := os.Getenv("HB_FLEET_VARIANTS")
	if env == "" {
		t.Skip("HB_FLEET_VARIANTS not set")
	}
	names := strings.Split(env, ",")
	if env == "all" {
		names = slices.Sorted(maps.Keys(variants))
	}
	for _, name := range names {
		tw, ok := variants[name]
		if !ok {
			t.Fatalf("no variant %q", name)
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			var b strings.Builder
			for _, c := range fleetCells {
				r := runFleetCell(t, c, tw)
				if os.Getenv("HB_FLEET_DETAIL") != "" {
					t.Logf("%s RA%d/%d: %v", name, c.ra, c.n, r)
				}
				fmt.Fprintf(&b, " | RA%d/%2d %3d %3.0f%%", c.ra, c.n, r.rejected, 100*r.goodput)
			}
			t.Logf("%-9s%s", name, b.String())
		})
	}
}
