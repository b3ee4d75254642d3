package hostbreaker

import (
	"context"
	"fmt"
	"io"
	"maps"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	sdklog "go.opentelemetry.io/otel/sdk/log"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
)

// scripted is a base whose response depends on the host: a status, and
// a Retry-After when set.
type scripted struct {
	mu         sync.Mutex
	status     map[string]int // by host; 200 when absent
	retryAfter map[string]string
}

func newScripted() *scripted {
	return &scripted{status: map[string]int{}, retryAfter: map[string]string{}}
}

func (s *scripted) set(host string, status int, retryAfter string) {
	s.mu.Lock()
	s.status[host], s.retryAfter[host] = status, retryAfter
	s.mu.Unlock()
}

func (s *scripted) RoundTrip(req *http.Request) (*http.Response, error) {
	s.mu.Lock()
	code, ra := s.status[req.URL.Host], s.retryAfter[req.URL.Host]
	s.mu.Unlock()
	if code == 0 {
		code = 200
	}
	h := http.Header{}
	if ra != "" {
		h.Set("Retry-After", ra)
	}
	return &http.Response{StatusCode: code, Header: h, Body: http.NoBody, Request: req}, nil
}

// fetch sends a GET to host under role and returns the error; the response
// body is closed.
func fetch(t testing.TB, c *http.Client, host, role string) error {
	t.Helper()
	req, err := http.NewRequestWithContext(WithRole(context.Background(), role), http.MethodGet, "http://"+host+"/x", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := c.Do(req)
	if err == nil {
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	return err
}

// attrs encodes attributes as the keys of points.
func attrs(kvs ...attribute.KeyValue) string {
	s := attribute.NewSet(kvs...)
	return s.Encoded(attribute.DefaultEncoder())
}

func addr(h string) attribute.KeyValue        { return keyServerAddress.String(h) }
func role(r string) attribute.KeyValue        { return keyRole.String(r) }
func outcomeAttr(o string) attribute.KeyValue { return keyOutcome.String(o) }
func reasonAttr(r Reason) attribute.KeyValue  { return keyReason.String(string(r)) }
func stateAttr(s State) attribute.KeyValue    { return keyState.String(s.String()) }

func wantPoints[V comparable](t testing.TB, name string, got, want map[string]V) {
	t.Helper()
	if !maps.Equal(got, want) {
		t.Errorf("%s:\n got %v\nwant %v", name, sortedPoints(got), sortedPoints(want))
	}
}

func sortedPoints[V any](m map[string]V) string {
	var b strings.Builder
	for _, k := range slices.Sorted(maps.Keys(m)) {
		fmt.Fprintf(&b, "\n  {%s} %v", k, m[k])
	}
	return b.String()
}

// TestMetrics checks every instrument after real traffic through an
// http.Client: a healthy host, one whose breaker opens, one that answers
// 429 with Retry-After; then the same after time passes.
func TestMetrics(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		base := newScripted()
		base.set("fail.test", 500, "")
		base.set("busy.test", 429, "120")
		cfg := Config{Defaults: Policy{FailMax: 2, ResetTimeout: time.Minute, HalfOpenJitter: -1}}
		tr, reader, c := metricTransport(t, base, cfg)

		for range 3 {
			if err := fetch(t, c, "ok.test", RoleMetadata); err != nil {
				t.Fatal(err)
			}
		}
		for i := range 3 {
			if err := fetch(t, c, "fail.test", ""); (err != nil) != (i == 2) {
				t.Fatalf("fail.test request %d: %v", i, err)
			}
		}
		for i := range 2 {
			if err := fetch(t, c, "busy.test", RoleLanding); (err != nil) != (i == 1) {
				t.Fatalf("busy.test request %d: %v", i, err)
			}
		}
		synctest.Wait() // the background goroutine has recorded the Retry-After

		m := collect(t, reader)
		m.checkShapes(t)
		for name := range wantInstruments {
			// No store, no configured rate, no host with max_concurrent: those report nothing.
			if _, ok := m[name]; !ok && name != "hostbreaker.store.errors" && name != "hostbreaker.rate.configured" && !strings.HasPrefix(name, "hostbreaker.concurrency.") {
				t.Errorf("no %s", name)
			}
		}
		if _, ok := m["hostbreaker.store.errors"]; ok {
			t.Error("store errors reported without a store")
		}
		wantPoints(t, "requests", m.points(t, "hostbreaker.requests"), map[string]int64{
			attrs(addr("ok.test"), role(RoleMetadata), outcomeAttr("success")):  3,
			attrs(addr("fail.test"), role(""), outcomeAttr("failure")):          2,
			attrs(addr("busy.test"), role(RoleLanding), outcomeAttr("neutral")): 1,
		})
		wantPoints(t, "rejections", m.points(t, "hostbreaker.rejections"), map[string]int64{
			attrs(addr("fail.test"), role(""), reasonAttr(ReasonBreakerOpen)):         1,
			attrs(addr("busy.test"), role(RoleLanding), reasonAttr(ReasonRetryAfter)): 1,
		})
		wantPoints(t, "transitions", m.points(t, "hostbreaker.transitions"), map[string]int64{
			attrs(addr("fail.test"), role(""), stateAttr(StateOpen)): 1,
		})
		wantPoints(t, "state", m.points(t, "hostbreaker.state"), map[string]int64{
			attrs(addr("fail.test"), role(""), stateAttr(StateOpen), reasonAttr(ReasonBreakerOpen)):         1,
			attrs(addr("busy.test"), role(RoleLanding), stateAttr(StateOpen), reasonAttr(ReasonRetryAfter)): 1,
		})
		wantPoints(t, "breakers", m.points(t, "hostbreaker.breakers"), map[string]int64{
			attrs(stateAttr(StateClosed)): 1, attrs(stateAttr(StateHalfOpen)): 0, attrs(stateAttr(StateOpen)): 2,
		})
		wantPoints(t, "cooldown", m.floatPoints(t, "hostbreaker.cooldown.remaining"), map[string]float64{
			attrs(addr("busy.test"), reasonAttr(ReasonRetryAfter)): 120,
		})
		wantPoints(t, "untracked", m.points(t, "hostbreaker.untracked"), map[string]int64{attrs(): 0})
		h := m["hostbreaker.retry_after"].Data.(metricdata.Histogram[float64])
		if len(h.DataPoints) != 1 {
			t.Fatalf("retry_after: %d points", len(h.DataPoints))
		}
		dp := h.DataPoints[0]
		if got := dp.Attributes.Encoded(attribute.DefaultEncoder()); got != attrs(addr("busy.test")) || dp.Count != 1 || dp.Sum != 120 {
			t.Errorf("retry_after: {%s} count %d sum %v", got, dp.Count, dp.Sum)
		}
		if !slices.Equal(dp.Bounds, retryAfterBuckets) {
			t.Errorf("retry_after bounds %v", dp.Bounds)
		}

		// A minute later fail.test's breaker is half-open (lazily: no
		// request moved it) and busy.test cools down for another minute.
		time.Sleep(time.Minute)
		m = collect(t, reader)
		wantPoints(t, "state after 1m", m.points(t, "hostbreaker.state"), map[string]int64{
			attrs(addr("fail.test"), role(""), stateAttr(StateHalfOpen), reasonAttr("")):                    1,
			attrs(addr("busy.test"), role(RoleLanding), stateAttr(StateOpen), reasonAttr(ReasonRetryAfter)): 1,
		})
		wantPoints(t, "breakers after 1m", m.points(t, "hostbreaker.breakers"), map[string]int64{
			attrs(stateAttr(StateClosed)): 1, attrs(stateAttr(StateHalfOpen)): 1, attrs(stateAttr(StateOpen)): 1,
		})
		wantPoints(t, "cooldown after 1m", m.floatPoints(t, "hostbreaker.cooldown.remaining"), map[string]float64{
			attrs(addr("busy.test"), reasonAttr(ReasonRetryAfter)): 60,
		})

		// The probe succeeds: the breaker closes, and the transitions say
		// so. busy.test's cooldown ends.
		base.set("fail.test", 200, "")
		if err := fetch(t, c, "fail.test", ""); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Minute)
		m = collect(t, reader)
		wantPoints(t, "transitions after the probe", m.points(t, "hostbreaker.transitions"), map[string]int64{
			attrs(addr("fail.test"), role(""), stateAttr(StateOpen)):     1,
			attrs(addr("fail.test"), role(""), stateAttr(StateHalfOpen)): 1,
			attrs(addr("fail.test"), role(""), stateAttr(StateClosed)):   1,
		})
		if p := m.points(t, "hostbreaker.state"); len(p) != 0 {
			t.Errorf("state with every breaker closed: %v", sortedPoints(p))
		}
		if p := m.floatPoints(t, "hostbreaker.cooldown.remaining"); len(p) != 0 {
			t.Errorf("cooldown after it ended: %v", sortedPoints(p))
		}
		wantPoints(t, "breakers at the end", m.points(t, "hostbreaker.breakers"), map[string]int64{
			attrs(stateAttr(StateClosed)): 3, attrs(stateAttr(StateHalfOpen)): 0, attrs(stateAttr(StateOpen)): 0,
		})
		checkTotals(t, tr, m)
	})
}

// TestMetricsCooldownWithoutEntry: a host opened by an operator, which has
// no breaker, is listed as (host, "") like Snapshot lists it.
func TestMetricsCooldownWithoutEntry(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tr, reader, _ := metricTransport(t, newScripted(), Config{})
		if err := tr.Open("paused.test", 10*time.Minute, "maintenance"); err != nil {
			t.Fatal(err)
		}
		m := collect(t, reader)
		wantPoints(t, "state", m.points(t, "hostbreaker.state"), map[string]int64{
			attrs(addr("paused.test"), role(""), stateAttr(StateOpen), reasonAttr(ReasonManual)): 1,
		})
		wantPoints(t, "cooldown", m.floatPoints(t, "hostbreaker.cooldown.remaining"), map[string]float64{
			attrs(addr("paused.test"), reasonAttr(ReasonManual)): 600,
		})
		wantPoints(t, "breakers", m.points(t, "hostbreaker.breakers"), map[string]int64{
			attrs(stateAttr(StateClosed)): 0, attrs(stateAttr(StateHalfOpen)): 0, attrs(stateAttr(StateOpen)): 0,
		})
	})
}

// TestMetricsStoreErrors: a store that does not answer (and is not
// required) is counted by operation.
func TestMetricsStoreErrors(t *testing.T) {
	cfg := Config{Store: StoreConfig{URL: "redis://127.0.0.1:1/0"}}
	tr, reader, _ := metricTransport(t, newScripted(), cfg)
	if tr.StoreErr() == nil {
		t.Fatal("no store error")
	}
	m := collect(t, reader)
	m.checkShapes(t)
	p := m.points(t, "hostbreaker.store.errors")
	if p[attrs(keyStoreOp.String("read"))] < 1 {
		t.Errorf("store errors: %v, want read ≥ 1", sortedPoints(p))
	}
	for op := range storeOps {
		if _, ok := p[attrs(keyStoreOp.String(storeOps[op]))]; !ok {
			t.Errorf("no store errors series for %s", storeOps[op])
		}
	}
	if len(p) != len(storeOps) {
		t.Errorf("store errors: %v", sortedPoints(p))
	}
}

// TestMetricsUntracked: with a registry of one entry held by an open
// breaker, requests to other hosts go untracked, and are counted.
func TestMetricsUntracked(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		base := newScripted()
		base.set("a.test", 500, "")
		cfg := Config{MaxHosts: 1, Defaults: Policy{FailMax: 1, ResetTimeout: time.Hour}}
		_, reader, c := metricTransport(t, base, cfg)
		fetch(t, c, "a.test", "") // opens a.test
		for range 2 {
			if err := fetch(t, c, "b.test", ""); err != nil {
				t.Fatal(err)
			}
		}
		m := collect(t, reader)
		wantPoints(t, "untracked", m.points(t, "hostbreaker.untracked"), map[string]int64{attrs(): 2})
		wantPoints(t, "requests", m.points(t, "hostbreaker.requests"), map[string]int64{
			attrs(addr("a.test"), role(""), outcomeAttr("failure")): 1,
		})
		wantPoints(t, "breakers", m.points(t, "hostbreaker.breakers"), map[string]int64{
			attrs(stateAttr(StateClosed)): 0, attrs(stateAttr(StateHalfOpen)): 0, attrs(stateAttr(StateOpen)): 1,
		})
	})
}

// counterHistory checks that counter series never go backwards across
// collections.
type counterHistory map[string]int64

func (h counterHistory) check(t testing.TB, m collected) {
	t.Helper()
	seen := map[string]bool{}
	for name, want := range wantInstruments {
		if !want.counter {
			continue
		}
		for k, v := range m.points(t, name) {
			key := name + "{" + k + "}"
			seen[key] = true
			if prev, ok := h[key]; ok && v < prev {
				t.Errorf("%s went from %d to %d", key, prev, v)
			}
			h[key] = v
		}
	}
	for key := range h {
		if !seen[key] {
			t.Errorf("%s is gone", key)
		}
	}
}

// checkTotals checks that the counter series add up to the Transport's
// totals.
func checkTotals(t testing.TB, tr *Transport, m collected) {
	t.Helper()
	var want counts
	tr.reg.each(func(_ *hostState, e *entry) {
		if e != nil {
			want.add(ptr(readCounts(e)), &counts{})
		}
	})
	var got counts
	for k, v := range m.points(t, "hostbreaker.requests") {
		for i, o := range outcomeNames {
			if strings.Contains(k, string(keyOutcome)+"="+o) {
				got[i] += uint64(v)
			}
		}
	}
	for k, v := range m.points(t, "hostbreaker.rejections") {
		for i, r := range rejectReasons {
			if strings.Contains(k, string(keyReason)+"="+string(r)) {
				got[cRejected+i] += uint64(v)
			}
		}
	}
	for k, v := range m.points(t, "hostbreaker.transitions") {
		for s := range 3 {
			if strings.Contains(k, string(keyState)+"="+State(s).String()) {
				got[cTransitions+s] += uint64(v)
			}
		}
	}
	if got != want {
		t.Errorf("the series add up to %v, the Transport's totals are %v", got, want)
	}
	var snap Status
	for _, s := range tr.Snapshot() {
		snap.Successes += s.Successes
		snap.Failures += s.Failures
		snap.Neutral += s.Neutral
		snap.Rejected += s.Rejected
	}
	var rejected uint64
	for i := range rejectReasons {
		rejected += got[cRejected+i]
	}
	if got[cSuccess] != snap.Successes || got[cFailure] != snap.Failures || got[cNeutral] != snap.Neutral || rejected != snap.Rejected {
		t.Errorf("the series add up to %v; Snapshot says %+v", got, snap)
	}
}

func ptr[T any](v T) *T { return &v }

// addresses returns the server.address values of m.
func addresses(t testing.TB, m collected) []string {
	set := map[string]bool{}
	for _, name := range []string{"hostbreaker.requests", "hostbreaker.rejections", "hostbreaker.transitions", "hostbreaker.state"} {
		for k := range m.points(t, name) {
			for kv := range strings.SplitSeq(k, ",") {
				if v, ok := strings.CutPrefix(kv, string(keyServerAddress)+"="); ok {
					set[v] = true
				}
			}
		}
	}
	return slices.Sorted(maps.Keys(set))
}

// TestMetricsCardinality: with two names, the busiest healthy host takes
// one; the others share _other, and keep their counts there when one of
// them is named for failing. Every counter series only grows, and they
// add up to the Transport's totals, at every collection.
func TestMetricsCardinality(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		base := newScripted()
		cfg := Config{Telemetry: TelemetryConfig{MaxHosts: 2}}
		tr, reader, c := metricTransport(t, base, cfg)
		history := counterHistory{}
		step := func(what string) collected {
			t.Helper()
			m := collect(t, reader)
			history.check(t, m)
			checkTotals(t, tr, m)
			if a := addresses(t, m); len(a) > 3 {
				t.Errorf("%s: %d addresses: %v", what, len(a), a)
			}
			return m
		}
		send := func(host string, n int) {
			t.Helper()
			for range n {
				fetch(t, c, host, "")
			}
		}

		send("a.test", 3)
		send("b.test", 2)
		send("c.test", 1)
		m := step("healthy")
		// One name is kept for hosts in trouble: only the busiest is named.
		wantPoints(t, "requests, healthy", m.points(t, "hostbreaker.requests"), map[string]int64{
			attrs(addr("a.test"), role(""), outcomeAttr("success")): 3,
			attrs(addr("_other"), role(""), outcomeAttr("success")): 3,
		})

		// c.test fails: it takes the last name. Its earlier success stays in
		// _other, and so does its failure, counted before the collection
		// that named it.
		base.set("c.test", 500, "")
		send("c.test", 1)
		m = step("c.test failed")
		wantPoints(t, "requests, c.test failed", m.points(t, "hostbreaker.requests"), map[string]int64{
			attrs(addr("a.test"), role(""), outcomeAttr("success")): 3,
			attrs(addr("_other"), role(""), outcomeAttr("success")): 3,
			attrs(addr("_other"), role(""), outcomeAttr("failure")): 1,
		})

		// From now on c.test's counts are its own. b.test fails too, but
		// there is no name left: it stays in _other.
		send("c.test", 2)
		base.set("b.test", 500, "")
		send("b.test", 1)
		send("a.test", 1)
		m = step("b.test failed")
		wantPoints(t, "requests, b.test failed", m.points(t, "hostbreaker.requests"), map[string]int64{
			attrs(addr("a.test"), role(""), outcomeAttr("success")): 4,
			attrs(addr("_other"), role(""), outcomeAttr("success")): 3,
			attrs(addr("_other"), role(""), outcomeAttr("failure")): 2,
			attrs(addr("c.test"), role(""), outcomeAttr("failure")): 2,
		})
		if got := addresses(t, m); !slices.Equal(got, []string{"_other", "a.test", "c.test"}) {
			t.Errorf("addresses %v", got)
		}

		// c.test's breaker opens (fail_max 5): a gauge, so named at once.
		send("c.test", 3)
		send("b.test", 5)
		m = step("breakers open")
		wantPoints(t, "state, breakers open", m.points(t, "hostbreaker.state"), map[string]int64{
			attrs(addr("c.test"), role(""), stateAttr(StateOpen), reasonAttr(ReasonBreakerOpen)): 1,
			attrs(addr("_other"), role(""), stateAttr(StateOpen), reasonAttr(ReasonBreakerOpen)): 1,
		})
	})
}

// TestMetricsEviction: entries evicted from a registry of two leave their
// counts in their series, which keep growing and adding up to every
// request sent.
func TestMetricsEviction(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cfg := Config{MaxHosts: 2, Telemetry: TelemetryConfig{MaxHosts: 2}}
		tr, reader, c := metricTransport(t, newScripted(), cfg)
		history := counterHistory{}
		sent := int64(0)
		for i := range 40 {
			host := fmt.Sprintf("h%d.test", i%10)
			if err := fetch(t, c, host, []string{"", RoleMetadata}[i%2]); err != nil {
				t.Fatal(err)
			}
			sent++
			m := collect(t, reader)
			history.check(t, m)
			var sum int64
			for _, v := range m.points(t, "hostbreaker.requests") {
				sum += v
			}
			if sum != sent {
				t.Fatalf("after %d requests the series add up to %d", sent, sum)
			}
		}
		if n := len(tr.Snapshot()); n > 2 {
			t.Fatalf("%d entries in a registry of 2", n)
		}
		tel := tr.tel
		tel.mu.Lock()
		defer tel.mu.Unlock()
		if len(tel.tracks) > 2*2 || len(tel.list) > tel.maxSeries {
			t.Errorf("%d tracks, %d series (bound %d)", len(tel.tracks), len(tel.list), tel.maxSeries)
		}
	})
}

// TestMetricsNoRegistryLock: a collection takes no lock that the request
// path waits on: the registry's and the entries' locks may be held.
func TestMetricsNoRegistryLock(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		base := newScripted()
		base.set("fail.test", 500, "")
		tr, reader, c := metricTransport(t, base, Config{Defaults: Policy{FailMax: 1}})
		fetch(t, c, "ok.test", "")
		fetch(t, c, "fail.test", "")
		e := tr.reg.lookup("fail.test", "")
		tr.reg.mu.Lock()
		e.mu.Lock()
		m := collect(t, reader) // would deadlock, which synctest reports
		e.mu.Unlock()
		tr.reg.mu.Unlock()
		if len(m.points(t, "hostbreaker.requests")) != 2 {
			t.Errorf("requests: %v", sortedPoints(m.points(t, "hostbreaker.requests")))
		}
	})
}

// TestMetricsEntrySeenTwice: a lock-free walk that races with a change of
// a host's entry list may see an entry twice; it counts once.
func TestMetricsEntrySeenTwice(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tr, _, c := metricTransport(t, newScripted(), Config{})
		fetch(t, c, "ok.test", "")
		fetch(t, c, "ok.test", "")
		tel := tr.tel
		h, es := tr.reg.hostEntries("ok.test")
		tel.mu.Lock()
		defer tel.mu.Unlock()
		tel.gen++
		var breakers [3]int64
		tel.host(h, []*entry{es[0], es[0]}, tr.now(), &breakers)
		s := tel.tracks[es[0]].s
		if s.cur[cSuccess] != 2 || s.live != 1 || breakers[StateClosed] != 1 {
			t.Errorf("successes %d, live %d, closed %d; want 2, 1, 1", s.cur[cSuccess], s.live, breakers[StateClosed])
		}
	})
}

// TestMetricsClose: a closed Transport reports nothing.
func TestMetricsClose(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tr, reader, c := metricTransport(t, newScripted(), Config{})
		fetch(t, c, "ok.test", "")
		if m := collect(t, reader); len(m) == 0 {
			t.Fatal("nothing reported before Close")
		}
		tr.Close()
		if m := collect(t, reader); len(m) != 0 {
			t.Errorf("reported after Close: %v", slices.Sorted(maps.Keys(m)))
		}
	})
}

// TestMetricsGlobalProvider: without WithMeterProvider, NewTransport uses
// the global provider of that moment, not of package init.
func TestMetricsGlobalProvider(t *testing.T) {
	prev := otel.GetMeterProvider()
	t.Cleanup(func() { otel.SetMeterProvider(prev) })
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	t.Cleanup(func() { mp.Shutdown(context.Background()) })
	otel.SetMeterProvider(mp)
	tr, err := NewTransport(newScripted())
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	fetch(t, &http.Client{Transport: tr}, "ok.test", "")
	m := collect(t, reader)
	wantPoints(t, "requests", m.points(t, "hostbreaker.requests"), map[string]int64{
		attrs(addr("ok.test"), role(""), outcomeAttr("success")): 1,
	})
}

// TestMetricsConcurrent collects while requests, failures, evictions and
// resets run, for the race detector, and checks that the counters only
// grow.
func TestMetricsConcurrent(t *testing.T) {
	base := newScripted()
	for i := range 20 {
		if i%3 == 0 {
			base.set(fmt.Sprintf("h%d.test", i), 500, "")
		}
		if i%7 == 0 {
			base.set(fmt.Sprintf("h%d.test", i), 429, "1")
		}
	}
	cfg := Config{MaxHosts: 8, Defaults: Policy{FailMax: 2, ResetTimeout: 10 * time.Millisecond},
		Telemetry: TelemetryConfig{MaxHosts: 4}}
	tr, reader, c := metricTransport(t, base, cfg)
	var stop atomic.Bool
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for i := 0; !stop.Load(); i++ {
				fetch(t, c, fmt.Sprintf("h%d.test", (i*7+w)%20), []string{"", "a", "b"}[i%3])
				if i%50 == 0 {
					tr.Reset(fmt.Sprintf("h%d.test", i%20))
				}
			}
		})
	}
	history := counterHistory{}
	for range 50 {
		history.check(t, collect(t, reader))
		time.Sleep(time.Millisecond)
	}
	stop.Store(true)
	wg.Wait()
	m := collect(t, reader)
	history.check(t, m)
	if a := addresses(t, m); len(a) > 5 {
		t.Errorf("%d addresses: %v", len(a), a)
	}
}

// BenchmarkCollect measures one collection through a ManualReader of a
// Transport with 10,000 (host, role) entries and 100 named hosts, 200 of
// the hosts failing.
func BenchmarkCollect(b *testing.B) {
	const hosts = 10000
	base := newScripted()
	for i := range 200 {
		base.set(fmt.Sprintf("h%d.example.org", i*50), 500, "")
	}
	tr, reader, _ := metricTransport(b, base, Config{MaxHosts: hosts})
	for _, r := range benchRequests(b, hosts) {
		if resp, err := tr.RoundTrip(r); err == nil {
			resp.Body.Close()
		}
	}
	var rm metricdata.ResourceMetrics
	reader.Collect(context.Background(), &rm) // names the hosts, tracks the entries
	b.ReportAllocs()
	for b.Loop() {
		if err := reader.Collect(context.Background(), &rm); err != nil {
			b.Fatal(err)
		}
	}
	points := 0
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			switch d := m.Data.(type) {
			case metricdata.Sum[int64]:
				points += len(d.DataPoints)
			case metricdata.Gauge[int64]:
				points += len(d.DataPoints)
			case metricdata.Gauge[float64]:
				points += len(d.DataPoints)
			}
		}
	}
	b.ReportMetric(float64(points), "points")
}

// BenchmarkRoundTripWithSDK is BenchmarkRoundTrip's closed path with an SDK
// MeterProvider installed: it costs the same and allocates nothing, as
// the request path does not touch OpenTelemetry.
func BenchmarkRoundTripWithSDK(b *testing.B) {
	reqs := benchRequests(b, 1)
	for _, variant := range []string{"base", "hostbreaker", "hostbreaker+sdk"} {
		var rt http.RoundTripper = cannedBase(200)
		switch variant {
		case "hostbreaker":
			tr, err := NewTransport(rt)
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { tr.Close() })
			rt = tr
		case "hostbreaker+sdk":
			// An SDK MeterProvider (a ManualReader) and an SDK
			// LoggerProvider, both installed.
			lp := sdklog.NewLoggerProvider(sdklog.WithProcessor(sdklog.NewSimpleProcessor(&memLogExporter{})))
			b.Cleanup(func() { lp.Shutdown(context.Background()) })
			reader := sdkmetric.NewManualReader()
			mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
			b.Cleanup(func() { mp.Shutdown(context.Background()) })
			tr, err := NewTransport(rt, WithMeterProvider(mp), WithLoggerProvider(lp))
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { tr.Close() })
			rt = tr
			rt.RoundTrip(reqs[0])
			var rm metricdata.ResourceMetrics
			reader.Collect(context.Background(), &rm)
		}
		b.Run(variant+"/seq", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := rt.RoundTrip(reqs[0]); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(variant+"/parallel", func(b *testing.B) {
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, err := rt.RoundTrip(reqs[0]); err != nil {
						b.Fatal(err)
					}
				}
			})
		})
	}
}

// TestMetricsNoOtherBelowLimit: while fewer hosts than the name limit have
// been seen, every host is named at the first collection that sees it, with
// all its counts, failures before that collection included: no _other
// series (issue 16: an _other failure series with five hosts).
func TestMetricsNoOtherBelowLimit(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		base := newScripted()
		base.set("d.test", 500, "")
		tr, reader, c := metricTransport(t, base, Config{Telemetry: TelemetryConfig{MaxHosts: 5}})
		for i, host := range []string{"a.test", "b.test", "c.test", "d.test"} {
			for range i + 1 {
				fetch(t, c, host, "")
			}
		}
		m := collect(t, reader)
		checkTotals(t, tr, m)
		if got := addresses(t, m); !slices.Equal(got, []string{"a.test", "b.test", "c.test", "d.test"}) {
			t.Errorf("addresses %v, want the four hosts and no _other", got)
		}
		wantPoints(t, "requests", m.points(t, "hostbreaker.requests"), map[string]int64{
			attrs(addr("a.test"), role(""), outcomeAttr("success")): 1,
			attrs(addr("b.test"), role(""), outcomeAttr("success")): 2,
			attrs(addr("c.test"), role(""), outcomeAttr("success")): 3,
			attrs(addr("d.test"), role(""), outcomeAttr("failure")): 4,
		})
		// Two more healthy hosts for the one name left: more hosts than
		// names, so the last name is kept for a host in trouble, and they
		// share _other until one has trouble.
		fetch(t, c, "e.test", "")
		fetch(t, c, "f.test", "")
		m = collect(t, reader)
		checkTotals(t, tr, m)
		if got := addresses(t, m); !slices.Equal(got, []string{"_other", "a.test", "b.test", "c.test", "d.test"}) {
			t.Errorf("addresses %v, want _other and the four hosts", got)
		}
	})
}

// TestRetryAfterHistogramCapped: a hostile Retry-After is recorded after
// retry_after_cap, as it is obeyed: one "Retry-After: 99999999999" must not
// put 9.22e9 s into the histogram's sum (issue 16).
func TestRetryAfterHistogramCapped(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		base := newScripted()
		base.set("hostile.test", 429, "99999999999")
		base.set("polite.test", 429, "30")
		_, reader, c := metricTransport(t, base, Config{})
		fetch(t, c, "hostile.test", "")
		fetch(t, c, "polite.test", "")
		synctest.Wait()
		m := collect(t, reader)
		h := m["hostbreaker.retry_after"].Data.(metricdata.Histogram[float64])
		sums := map[string]float64{}
		for _, dp := range h.DataPoints {
			sums[dp.Attributes.Encoded(attribute.DefaultEncoder())] = dp.Sum
		}
		want := map[string]float64{attrs(addr("hostile.test")): 900, attrs(addr("polite.test")): 30} // the default cap: 15m
		if !maps.Equal(sums, want) {
			t.Errorf("retry_after sums %v, want %v", sums, want)
		}
	})
}

// TestRateConfiguredGauge: beside hostbreaker.rate (the rate in force), a
// host with a configured rate has hostbreaker.rate.configured; a host
// without one has neither, and an unlimited learning host only the first.
func TestRateConfiguredGauge(t *testing.T) {
	tr, reader, _ := metricTransport(t, newSendLog(), Config{Hosts: map[string]Policy{"limited.test": {Rate: 3}}})
	send(context.Background(), tr, "limited.test")
	send(context.Background(), tr, "free.test")
	m := collect(t, reader)
	wantPoints(t, "rate.configured", m.floatPoints(t, "hostbreaker.rate.configured"), map[string]float64{attrs(addr("limited.test")): 3})
	wantPoints(t, "rate", m.floatPoints(t, "hostbreaker.rate"), map[string]float64{attrs(addr("limited.test")): 3})
}
