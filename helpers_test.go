package hostbreaker

// Helpers shared by the tests of more than one file: fake bases and
// clients, assertions, log, event and metric recorders, and the bbolt and
// Redis fixtures.

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	bolt "go.etcd.io/bbolt"
	"go.opentelemetry.io/otel/attribute"
	sdklog "go.opentelemetry.io/otel/sdk/log"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
)

// roundTripperFunc adapts a function to http.RoundTripper.
type roundTripperFunc func(*http.Request) (*http.Response, error)

func (f roundTripperFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// fakeHosts is a base RoundTripper that answers for any host with what
// its handler returns, counting the requests that reach it per host.
type fakeHosts struct {
	mu      sync.Mutex
	handler func(req *http.Request) (*http.Response, error)
	calls   map[string]int
}

func (f *fakeHosts) RoundTrip(req *http.Request) (*http.Response, error) {
	f.mu.Lock()
	f.calls[req.URL.Host]++
	h := f.handler
	f.mu.Unlock()
	return h(req)
}

func (f *fakeHosts) set(h func(req *http.Request) (*http.Response, error)) {
	f.mu.Lock()
	f.handler = h
	f.mu.Unlock()
}

func (f *fakeHosts) count(host string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls[host]
}

func newFakeHosts(h func(req *http.Request) (*http.Response, error)) *fakeHosts {
	return &fakeHosts{handler: h, calls: make(map[string]int)}
}

func status(code int, header ...string) func(*http.Request) (*http.Response, error) {
	return func(req *http.Request) (*http.Response, error) {
		h := http.Header{}
		for i := 0; i+1 < len(header); i += 2 {
			h.Set(header[i], header[i+1])
		}
		return &http.Response{StatusCode: code, Header: h, Body: io.NopCloser(strings.NewReader("body")), Request: req}, nil
	}
}

// client returns an http.Client over a new Transport on base with config c.
func client(t *testing.T, base http.RoundTripper, c Config) (*http.Client, *Transport) {
	t.Helper()
	tr, err := NewTransport(base, WithConfig(c))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	return &http.Client{Transport: tr}, tr
}

// get sends GET url with role and returns the status (0 on error) and error.
func get(t *testing.T, c *http.Client, role, url string) (int, error) {
	t.Helper()
	req, err := http.NewRequestWithContext(WithRole(context.Background(), role), http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0, err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode, nil
}

// mustReject asserts that err is an *OpenError with reason and returns it.
func mustReject(t *testing.T, err error, reason Reason) *OpenError {
	t.Helper()
	if !errors.Is(err, ErrOpen) {
		t.Fatalf("err = %v, want ErrOpen", err)
	}
	var oe *OpenError
	if !errors.As(err, &oe) {
		t.Fatalf("err = %v, not an *OpenError", err)
	}
	if oe.Reason != reason {
		t.Fatalf("reason = %q, want %q (err %v)", oe.Reason, reason, err)
	}
	return oe
}

// result is what do returns: the status (0 on error) and the error.
type result struct {
	code int
	err  error
}

func do(t *testing.T, c *http.Client, role, url string) result {
	t.Helper()
	code, err := get(t, c, role, url)
	return result{code, err}
}

func mustPass(t *testing.T, r result, want int) {
	t.Helper()
	if r.err != nil || r.code != want {
		t.Fatalf("got (%d, %v), want (%d, nil)", r.code, r.err, want)
	}
}

// quick is a policy with no jitter, for exact timing.
func quick(failMax int, reset time.Duration) Config {
	return Config{Defaults: Policy{FailMax: failMax, ResetTimeout: reset, HalfOpenJitter: -1}}
}

// mustState asserts the effective state of (host, role).
func mustState(t *testing.T, tr *Transport, host, role string, want State) {
	t.Helper()
	if s := stateOf(t, tr, host, role); s.State != want {
		t.Fatalf("state of (%s, %q) = %v, want %v", host, role, s.State, want)
	}
}

func stateOf(t *testing.T, tr *Transport, host, role string) Status {
	t.Helper()
	for _, s := range tr.Snapshot() {
		if s.Host == host && s.Role == role {
			return s
		}
	}
	t.Fatalf("no status for (%s, %q) in %+v", host, role, tr.Snapshot())
	return Status{}
}

func mustRequest(t *testing.T, url string) *http.Request {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	return req
}

// cannedBase returns the same response for every request, allocating nothing,
// so that the benchmarks measure hostbreaker's own cost.
func cannedBase(status int) roundTripperFunc {
	resp := &http.Response{StatusCode: status, Body: http.NoBody, Header: http.Header{}}
	return func(*http.Request) (*http.Response, error) { return resp, nil }
}

func benchRequests(b *testing.B, hosts int) []*http.Request {
	ctx := WithRole(context.Background(), RoleMetadata)
	reqs := make([]*http.Request, hosts)
	for i := range reqs {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("https://h%d.example.org/works", i), nil)
		if err != nil {
			b.Fatal(err)
		}
		reqs[i] = req
	}
	return reqs
}

type timeoutError struct{}

func (timeoutError) Error() string { return "i/o timeout" }

func (timeoutError) Timeout() bool { return true }

func (timeoutError) Temporary() bool { return true }

var _ net.Error = timeoutError{}

// logBuffer is a slog handler's output that tests read.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) count(s string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return strings.Count(b.buf.String(), s)
}

func (b *logBuffer) logger() *slog.Logger { return slog.New(slog.NewTextHandler(b, nil)) }

// sendLog is a base that records when requests reach it and answers with
// the status that next returns (200 when nil).
type sendLog struct {
	mu    sync.Mutex
	times []time.Duration // since start
	start time.Time
	next  func(n int) (int, http.Header)
}

func (s *sendLog) RoundTrip(req *http.Request) (*http.Response, error) {
	s.mu.Lock()
	n := len(s.times)
	s.times = append(s.times, time.Since(s.start))
	next := s.next
	s.mu.Unlock()
	code, h := http.StatusOK, http.Header{}
	if next != nil {
		if c, hh := next(n); c != 0 {
			code, h = c, hh
		}
	}
	return &http.Response{StatusCode: code, Header: h, Body: http.NoBody, Request: req}, nil
}

func (s *sendLog) sent() []time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]time.Duration(nil), s.times...)
}

func newSendLog() *sendLog { return &sendLog{start: time.Now()} }

// send sends GET https://host/ through tr with ctx.
func send(ctx context.Context, tr *Transport, host string) error {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+host+"/", nil)
	resp, err := tr.RoundTrip(req)
	if err == nil {
		resp.Body.Close()
	}
	return err
}

func newRateTransport(t *testing.T, base http.RoundTripper, c Config, opts ...Option) *Transport {
	t.Helper()
	tr, err := NewTransport(base, append([]Option{WithConfig(c)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	return tr
}

// crawl runs workers that send GET url through rt for d, as a crawler
// does: a rejection makes the worker sleep until its Until (or 100 ms
// without one).
func crawl(t *testing.T, rt http.RoundTripper, url string, workers int, d time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for ctx.Err() == nil {
				req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
				resp, err := rt.RoundTrip(req)
				var oe *OpenError
				switch {
				case errors.As(err, &oe):
					wait := 100 * time.Millisecond
					if !oe.Until.IsZero() {
						wait = max(time.Until(oe.Until), time.Millisecond)
					}
					select {
					case <-time.After(wait):
					case <-ctx.Done():
					}
				case err == nil:
					resp.Body.Close()
				}
			}
		})
	}
	wg.Wait()
}

// memLogExporter keeps the log records exported to it.
type memLogExporter struct {
	mu      sync.Mutex
	records []sdklog.Record
}

func (m *memLogExporter) Export(_ context.Context, rs []sdklog.Record) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, r := range rs {
		m.records = append(m.records, r.Clone())
	}
	return nil
}

func (m *memLogExporter) Shutdown(context.Context) error { return nil }

func (m *memLogExporter) ForceFlush(context.Context) error { return nil }

func (m *memLogExporter) all() []sdklog.Record {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]sdklog.Record(nil), m.records...)
}

// eventLog collects the events a handler receives.
type eventLog struct {
	mu     sync.Mutex
	events []Event
}

func (l *eventLog) add(ev Event) {
	l.mu.Lock()
	l.events = append(l.events, ev)
	l.mu.Unlock()
}

func (l *eventLog) named(name string) []Event {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []Event
	for _, ev := range l.events {
		if ev.Name == name {
			out = append(out, ev)
		}
	}
	return out
}

// The instruments, their units, and whether they are cumulative counters.
var wantInstruments = map[string]struct {
	unit    string
	counter bool
}{
	"hostbreaker.requests":            {"{request}", true},
	"hostbreaker.rejections":          {"{request}", true},
	"hostbreaker.transitions":         {"{transition}", true},
	"hostbreaker.state":               {"{breaker}", false},
	"hostbreaker.breakers":            {"{breaker}", false},
	"hostbreaker.cooldown.remaining":  {"s", false},
	"hostbreaker.rate":                {"{request}/s", false},
	"hostbreaker.rate.configured":     {"{request}/s", false},
	"hostbreaker.retry_after":         {"s", false},
	"hostbreaker.store.errors":        {"{error}", true},
	"hostbreaker.untracked":           {"{request}", true},
	"hostbreaker.concurrency.held":    {"{request}", false},
	"hostbreaker.concurrency.waiting": {"{request}", false},
	"hostbreaker.concurrency.oldest":  {"s", false},
	"hostbreaker.concurrency.leaked":  {"{request}", true},
}

// metricTransport returns a Transport in front of base that reports to a
// ManualReader of its own, and an http.Client that uses it.
func metricTransport(t testing.TB, base http.RoundTripper, cfg Config) (*Transport, *sdkmetric.ManualReader, *http.Client) {
	t.Helper()
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	t.Cleanup(func() { mp.Shutdown(context.Background()) })
	tr, err := NewTransport(base, WithConfig(cfg), WithMeterProvider(mp))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	return tr, reader, &http.Client{Transport: tr}
}

// collected is one collection of the Transport's metrics, by name.
type collected map[string]metricdata.Metrics

// points returns the data points of an int64 sum or gauge by attributes;
// nil when the instrument reported nothing.
func (c collected) points(t testing.TB, name string) map[string]int64 {
	t.Helper()
	m, ok := c[name]
	if !ok {
		return nil
	}
	var dps []metricdata.DataPoint[int64]
	switch d := m.Data.(type) {
	case metricdata.Sum[int64]:
		dps = d.DataPoints
	case metricdata.Gauge[int64]:
		dps = d.DataPoints
	default:
		t.Fatalf("%s: unexpected data %T", name, m.Data)
	}
	out := map[string]int64{}
	for _, dp := range dps {
		k := dp.Attributes.Encoded(attribute.DefaultEncoder())
		if _, dup := out[k]; dup {
			t.Errorf("%s: two points with attributes %s", name, k)
		}
		out[k] = dp.Value
	}
	return out
}

func (c collected) floatPoints(t testing.TB, name string) map[string]float64 {
	t.Helper()
	m, ok := c[name]
	if !ok {
		return nil
	}
	g, ok := m.Data.(metricdata.Gauge[float64])
	if !ok {
		t.Fatalf("%s: unexpected data %T", name, m.Data)
	}
	out := map[string]float64{}
	for _, dp := range g.DataPoints {
		out[dp.Attributes.Encoded(attribute.DefaultEncoder())] = dp.Value
	}
	return out
}

// checkShapes checks the names, units and kinds of what c holds.
func (c collected) checkShapes(t testing.TB) {
	t.Helper()
	for name, m := range c {
		want, ok := wantInstruments[name]
		if !ok {
			t.Errorf("unexpected instrument %s", name)
			continue
		}
		if m.Unit != want.unit {
			t.Errorf("%s: unit %q, want %q", name, m.Unit, want.unit)
		}
		if m.Description == "" {
			t.Errorf("%s: no description", name)
		}
		switch d := m.Data.(type) {
		case metricdata.Sum[int64]:
			if d.Temporality != metricdata.CumulativeTemporality || d.IsMonotonic != want.counter {
				t.Errorf("%s: temporality %v, monotonic %v", name, d.Temporality, d.IsMonotonic)
			}
			if name == "hostbreaker.breakers" && d.IsMonotonic {
				t.Errorf("%s is monotonic", name)
			}
		case metricdata.Gauge[int64], metricdata.Gauge[float64]:
			if want.counter {
				t.Errorf("%s: a gauge", name)
			}
		case metricdata.Histogram[float64]:
			if name != "hostbreaker.retry_after" {
				t.Errorf("%s: a histogram", name)
			}
		default:
			t.Errorf("%s: unexpected data %T", name, m.Data)
		}
	}
}

func collect(t testing.TB, r *sdkmetric.ManualReader) collected {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := r.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	out := collected{}
	for _, sm := range rm.ScopeMetrics {
		if sm.Scope.Name != meterName {
			continue
		}
		if sm.Scope.Version != instrumentationVersion {
			t.Errorf("scope version %q, want %q", sm.Scope.Version, instrumentationVersion)
		}
		for _, m := range sm.Metrics {
			out[m.Name] = m
		}
	}
	return out
}

// storeKinds runs f once with a fresh bbolt file and once per Redis
// topology (one server, a cluster, Sentinel) with a fresh Redis prefix.
func storeKinds(t *testing.T, f func(t *testing.T, url string)) {
	t.Run("bbolt", func(t *testing.T) { f(t, filepath.Join(t.TempDir(), "hb.db")) })
	eachRedis(t, f)
}

// sharedTransport returns a Transport on the store at url, polling it
// every poll, over base.
func sharedTransport(t *testing.T, url string, poll time.Duration, base http.RoundTripper, c Config) *Transport {
	t.Helper()
	c.Store = StoreConfig{URL: url, PollInterval: poll, ShareTrips: c.Store.ShareTrips}
	return sharedTransportWith(t, base, WithConfig(c))
}

// bound is how long a test waits for another Transport to see a change.
// It is generous on purpose: on a loaded 2-core machine under -race a
// Redis signal can take hundreds of ms; TestPropagationLatency logs the
// real figures.
func bound(url string, poll time.Duration) time.Duration {
	return poll + 10*time.Second
}

// verdict sends one request for (host, role) through tr and returns the
// rejection reason, or "" when it was let through.
func verdict(tr *Transport, host, role string) Reason {
	req, _ := http.NewRequestWithContext(WithRole(context.Background(), role), http.MethodGet, "https://"+host+"/", nil)
	resp, err := tr.RoundTrip(req)
	var oe *OpenError
	if errors.As(err, &oe) {
		return oe.Reason
	}
	if resp != nil {
		resp.Body.Close()
	}
	return ""
}

// waitVerdict waits up to d for tr to give want for host and returns how
// long it took.
func waitVerdict(t *testing.T, tr *Transport, host string, want Reason, d time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	for {
		if got := verdict(tr, host, ""); got == want {
			return time.Since(start)
		} else if time.Since(start) > d {
			t.Fatalf("%s: verdict %q after %v, want %q", host, got, d, want)
		}
		time.Sleep(time.Millisecond)
	}
}

// journalStore is a store under test, with a way to open another store of
// the same bbolt file or Redis prefix.
type journalStore struct {
	Store
	open func() Store // another store on the same file or prefix, closed when the test ends
	path string       // the bbolt file, "" for Redis
	url  string       // the Redis URL, "" for bbolt
}

// eachJournalStore runs f against a new bbolt store and a new Redis store
// of each topology (one server, a cluster, Sentinel).
func eachJournalStore(t *testing.T, f func(t *testing.T, s journalStore)) {
	t.Run("bbolt", func(t *testing.T) {
		path := boltTestPath(t)
		open := func() Store { return boltTestOpen(t, path) }
		f(t, journalStore{Store: open(), open: open, path: path})
	})
	eachRedis(t, func(t *testing.T, u string) {
		open := func() Store { return openTestRedis(t, u) }
		f(t, journalStore{Store: open(), open: open, url: u})
	})
}

// journalTestEvent returns an event of process at t, with fields that
// depend on i.
func journalTestEvent(process string, t time.Time, i int) Event {
	names := []string{EventStateChange, EventCooldown, EventSummary, EventReset, EventPolicyChange}
	ev := Event{
		Name:    names[i%len(names)],
		Time:    t,
		Process: process,
		Host:    fmt.Sprintf("h%d.example", i%7),
		Note:    fmt.Sprintf("event %d", i),
	}
	switch ev.Name {
	case EventStateChange:
		ev.State, ev.PreviousState, ev.Failures, ev.StatusCode = StateOpen, StateClosed, 5, 503
	case EventCooldown:
		ev.Reason, ev.Until, ev.RetryAfter, ev.StatusCode = ReasonRetryAfter, t.Add(time.Minute), time.Minute, 429
	case EventSummary:
		ev.Role, ev.Interval = RoleMetadata, time.Minute
		ev.Summary = &Summary{
			Requests: 120, Successes: 100, Failures: 12, Rejected: 8, Status5xx: 12, LongestFailureRun: 5,
			Outcomes: Outcomes{
				{Kind: OutcomeSuccess, Count: 100, At: t.Add(-time.Minute)},
				{Kind: OutcomeFailure, Count: 12, At: t.Add(-30 * time.Second)},
				{Kind: OutcomeRejected, Count: 8, At: t.Add(-20 * time.Second)},
			},
		}
	case EventPolicyChange:
		ev.PreviousPolicy, ev.Policy = "fail_max = 5\n", "fail_max = 3\n"
	}
	return ev
}

// eventID identifies a test event: its process, name, time and note.
func eventID(ev Event) string {
	return fmt.Sprintf("%s/%s/%d/%s", ev.Process, ev.Name, ev.Time.UnixNano(), ev.Note)
}

// eventIDs returns the eventID of each of evs.
func eventIDs(evs []Event) []string {
	ids := make([]string, len(evs))
	for i, ev := range evs {
		ids[i] = eventID(ev)
	}
	return ids
}

// mustAppend appends events to s with limits and returns how many it dropped.
func mustAppend(t testing.TB, s Store, events []Event, limits JournalLimits) int {
	t.Helper()
	dropped, err := s.AppendEvents(context.Background(), events, limits)
	if err != nil {
		t.Fatalf("AppendEvents(%d events, %+v): %v", len(events), limits, err)
	}
	return dropped
}

// checkIDs fails t unless got has the events of want, in that order.
func checkIDs(t *testing.T, what string, got []Event, want []Event) {
	t.Helper()
	g, w := eventIDs(got), eventIDs(want)
	if !slices.Equal(g, w) {
		t.Errorf("%s: got %d events\n  %s\nwant %d\n  %s", what, len(g), strings.Join(g, "\n  "), len(w), strings.Join(w, "\n  "))
	}
}

// boltTestPath returns the path of a bbolt file in a fresh temporary directory.
func boltTestPath(t testing.TB) string {
	t.Helper()
	return filepath.Join(t.TempDir(), "hostbreaker.db")
}

// boltTestOpen opens the store at path and closes it when the test ends.
func boltTestOpen(t testing.TB, path string) *boltStore {
	t.Helper()
	st, err := openBoltStore(path)
	if err != nil {
		t.Fatalf("openBoltStore(%q): %v", path, err)
	}
	t.Cleanup(func() { _ = st.Close() })
	return st.(*boltStore)
}

// boltTestRec returns a record written now-ish.
func boltTestRec(host, role string, reason Reason, until, at time.Time) Record {
	return Record{Host: host, Role: role, Reason: reason, Until: until, At: at, Source: "test"}
}

// boltTestRecords returns s.Records or fails the test.
func boltTestRecords(t testing.TB, s Store) []Record {
	t.Helper()
	rs, err := s.Records(context.Background())
	if err != nil {
		t.Fatalf("Records: %v", err)
	}
	return rs
}

// boltTestPut calls s.Put or fails the test.
func boltTestPut(t testing.TB, s Store, r Record) {
	t.Helper()
	if err := s.Put(context.Background(), r); err != nil {
		t.Fatalf("Put(%+v): %v", r, err)
	}
}

// boltTestRaw runs fn in a read-write transaction on the file, bypassing the store.
func boltTestRaw(t testing.TB, path string, fn func(tx *bolt.Tx) error) {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 2 * time.Second})
	if err != nil {
		t.Fatalf("bolt.Open: %v", err)
	}
	defer db.Close()
	if err := db.Update(fn); err != nil {
		t.Fatalf("raw update: %v", err)
	}
}

// boltTestKeys returns the keys of bucket in the file.
func boltTestKeys(t testing.TB, path string, bucket []byte) []string {
	t.Helper()
	var keys []string
	boltTestRaw(t, path, func(tx *bolt.Tx) error {
		if b := tx.Bucket(bucket); b != nil {
			return b.ForEach(func(k, _ []byte) error {
				keys = append(keys, string(k))
				return nil
			})
		}
		return nil
	})
	return keys
}

// boltTestKey is the key of r's entry in the cooldowns bucket.
func boltTestKey(r Record) []byte {
	return append(boltHostPrefix(r.Host), recordSlot(r)...)
}

// sortRecords sorts rs by host, reason, role and source.
func sortRecords(rs []Record) {
	slices.SortFunc(rs, func(a, b Record) int {
		return strings.Compare(a.Host+"\x00"+string(a.Reason)+"\x00"+a.Role+"\x00"+a.Source,
			b.Host+"\x00"+string(b.Reason)+"\x00"+b.Role+"\x00"+b.Source)
	})
}

// checkRecords compares got with want, as sets.
func checkRecords(t *testing.T, got, want []Record) {
	t.Helper()
	got, want = slices.Clone(got), slices.Clone(want)
	sortRecords(got)
	sortRecords(want)
	if !slices.EqualFunc(got, want, sameRecord) {
		t.Errorf("records:\n%s\nwant:\n%s", formatRecords(got), formatRecords(want))
	}
}

func formatRecords(rs []Record) string {
	if len(rs) == 0 {
		return "\t(none)"
	}
	var b strings.Builder
	for _, r := range rs {
		fmt.Fprintf(&b, "\t%s %q %s until %s at %s from %q\n", r.Host, r.Role, r.Reason,
			r.Until.Format(time.RFC3339Nano), r.At.Format(time.RFC3339Nano), r.Source)
	}
	return b.String()
}

// mustOverrides returns s.Overrides, failing the test on an error.
func mustOverrides(t *testing.T, s Store) map[string]Policy {
	t.Helper()
	o, err := s.Overrides(context.Background())
	if err != nil {
		t.Fatalf("Overrides: %v", err)
	}
	if o == nil {
		t.Fatal("Overrides returned a nil map")
	}
	return o
}

// mustPutOverride calls s.PutOverride, failing the test on an error.
func mustPutOverride(t *testing.T, s Store, key string, p Policy) {
	t.Helper()
	if err := s.PutOverride(context.Background(), key, p); err != nil {
		t.Fatalf("PutOverride(%q, %+v): %v", key, p, err)
	}
}

// checkOverrides fails the test unless got and want hold the same policies.
func checkOverrides(t *testing.T, got, want map[string]Policy) {
	t.Helper()
	if len(got) == 0 && len(want) == 0 {
		return
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("overrides:\n got %+v\nwant %+v", got, want)
	}
}

// testRedisAddr is the Redis server the tests share.
const testRedisAddr = "127.0.0.1:6379"

var testRedisSeq atomic.Int64

// testRedisURL returns the URL of a store on the shared test Redis under a
// prefix no other test uses, and deletes every key under that prefix when
// the test ends. It skips the test (fails it when $CI is set) when Redis is
// unreachable.
func testRedisURL(t *testing.T) string {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: testRedisAddr, DialTimeout: 500 * time.Millisecond, MaxRetries: -1})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := c.Ping(ctx).Err(); err != nil {
		_ = c.Close()
		msg := fmt.Sprintf("!!! REDIS UNREACHABLE at %s: %v — Redis store tests NOT RUN !!!", testRedisAddr, err)
		if os.Getenv("CI") != "" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	prefix := fmt.Sprintf("hbtest:%d-%d-%d:", os.Getpid(), time.Now().UnixNano(), testRedisSeq.Add(1))
	t.Cleanup(func() {
		defer c.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		iter := c.Scan(ctx, 0, globEscape(prefix)+"*", 1000).Iterator()
		for iter.Next(ctx) {
			c.Del(ctx, iter.Val())
		}
		if err := iter.Err(); err != nil {
			t.Errorf("cleanup of %s: %v", prefix, err)
		}
	})
	return "redis://" + testRedisAddr + "/0?prefix=" + url.QueryEscape(prefix)
}

// globEscape escapes the characters that are special in a Redis MATCH
// pattern, so that s matches itself only.
func globEscape(s string) string {
	var b strings.Builder
	for _, c := range []byte(s) {
		switch c {
		case '*', '?', '[', ']', '\\':
			b.WriteByte('\\')
		}
		b.WriteByte(c)
	}
	return b.String()
}

// prefixOf returns the prefix query parameter of a test URL.
func prefixOf(t *testing.T, rawURL string) string {
	t.Helper()
	u, err := url.Parse(rawURL)
	if err != nil {
		t.Fatal(err)
	}
	return u.Query().Get("prefix")
}

// withPrefix returns rawURL with its prefix replaced.
func withPrefix(t *testing.T, rawURL, prefix string) string {
	t.Helper()
	u, err := url.Parse(rawURL)
	if err != nil {
		t.Fatal(err)
	}
	q := u.Query()
	q.Set("prefix", prefix)
	u.RawQuery = q.Encode()
	return u.String()
}

// openTestRedis opens a store on rawURL and closes it when the test ends.
func openTestRedis(t *testing.T, rawURL string) *redisStore {
	t.Helper()
	st, err := OpenStore(rawURL)
	if err != nil {
		t.Fatalf("OpenStore(%q): %v", rawURL, err)
	}
	t.Cleanup(func() { _ = st.Close() })
	return st.(*redisStore)
}

// rawClient returns a plain client on the shared test Redis.
func rawClient(t *testing.T) *redis.Client {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: testRedisAddr})
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// waitChange waits up to d for a value on s.Changes and reports whether
// one came.
func waitChange(s Store, d time.Duration) bool {
	select {
	case <-s.Changes():
		return true
	case <-time.After(d):
		return false
	}
}

// drain empties s.Changes.
func drain(s Store) {
	for {
		select {
		case <-s.Changes():
		default:
			return
		}
	}
}

func mustRecords(t *testing.T, s Store) []Record {
	t.Helper()
	rs, err := s.Records(context.Background())
	if err != nil {
		t.Fatalf("Records: %v", err)
	}
	sort.Slice(rs, func(i, j int) bool {
		if rs[i].Host != rs[j].Host {
			return rs[i].Host < rs[j].Host
		}
		if rs[i].Reason != rs[j].Reason {
			return rs[i].Reason < rs[j].Reason
		}
		return rs[i].Role < rs[j].Role
	})
	return rs
}

// find returns the cooldown of (host, role), or the marker of host when
// reset is set.
func find(rs []Record, host, role string, reset bool) (Record, bool) {
	for _, r := range rs {
		if r.Host == host && (r.Reason == ReasonReset) == reset && (reset || r.Role == role) {
			return r, true
		}
	}
	return Record{}, false
}

// freePort returns a loopback TCP port that was free a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// redisServer is a redis-server process a test starts and stops.
type redisServer struct {
	t    *testing.T
	port int
	dir  string
	cmd  *exec.Cmd
}

// start runs redis-server on the server's port and waits until it answers.
func (r *redisServer) start() {
	r.t.Helper()
	r.cmd = exec.Command("redis-server", "--port", strconv.Itoa(r.port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", r.dir, "--loglevel", "warning")
	if err := r.cmd.Start(); err != nil {
		r.t.Fatalf("start redis-server: %v", err)
	}
	addr := "127.0.0.1:" + strconv.Itoa(r.port)
	deadline := time.Now().Add(5 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, 100*time.Millisecond)
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("redis-server on %s did not come up: %v", addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// stop kills the server and waits for it to exit.
func (r *redisServer) stop() {
	if r.cmd != nil && r.cmd.Process != nil {
		_ = r.cmd.Process.Kill()
		_ = r.cmd.Wait()
		r.cmd = nil
	}
}

// cmdCounter is a go-redis hook that records the names of the commands a
// client sends, pipelined or not.
type cmdCounter struct {
	mu    sync.Mutex
	names []string
}

func (h *cmdCounter) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h *cmdCounter) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		h.add(cmd)
		return next(ctx, cmd)
	}
}

func (h *cmdCounter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		h.add(cmds...)
		return next(ctx, cmds)
	}
}

func (h *cmdCounter) add(cmds ...redis.Cmder) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, c := range cmds {
		h.names = append(h.names, c.Name())
	}
}

// take returns the names recorded since the last take, sorted.
func (h *cmdCounter) take() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	names := h.names
	h.names = nil
	slices.Sort(names)
	return names
}

// runChildServer starts cmd, a server that will listen on addr, as a child
// process of the test: it waits up to 10 s for the port to accept
// connections and stops the server in t.Cleanup (SIGTERM, then SIGKILL
// after 5 s). An error says why it did not listen, through failure, which
// adds what the server wrote.
func runChildServer(t *testing.T, cmd *exec.Cmd, addr string, failure func(what string, waitErr error) error) error {
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", cmd.Path, err)
	}
	exited := make(chan struct{})
	var waitErr error
	go func() { waitErr = cmd.Wait(); close(exited) }()
	stop := func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
	}
	for deadline := time.Now().Add(10 * time.Second); ; {
		if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			c.Close()
			break
		}
		select {
		case <-exited:
			return failure("exited before listening", waitErr)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			stop()
			return failure("did not listen on "+addr+" within 10s", waitErr)
		}
	}
	t.Cleanup(stop)
	return nil
}

// loggedServer is a real server (nginx, haproxy) that a test runs as a
// child process on loopback, and whose log it reads: one line a request,
// "time status uri". Any path under URL goes through the server's limit.
// The server must log a request as soon as it has sent the response,
// before it handles another event (nginx in one process, haproxy in one
// thread): then every response a client had received before a marker
// request is in the log before the marker's line.
type loggedServer struct {
	URL string // http://127.0.0.1:port

	name  string                          // in errors
	log   string                          // the log file
	at    func(string) (time.Time, error) // parses a line's time field
	sync  *http.Client                    // the marker requests, outside the limit
	mu    sync.Mutex
	nsync int
}

// loggedCounts are the responses a server logged, marker requests left out.
type loggedCounts struct {
	OK, TooMany, Other int // 200s, 429s, any other status (the client went away: 499 for nginx, -1 for haproxy)
}

// loggedRequest is one line of a server's log.
type loggedRequest struct {
	At     time.Time // when the server logged it (after sending the response)
	Status int
	URI    string // path and query as the client sent them
}

func newLoggedServer(name, url, log string, at func(string) (time.Time, error)) *loggedServer {
	return &loggedServer{URL: url, name: name, log: log, at: at,
		sync: &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 5 * time.Second}}
}

// Requests returns the requests the server has logged, in log order, up
// to a marker request that it sends and waits for (see loggedServer).
// Marker requests are left out.
func (s *loggedServer) Requests(t testing.TB) []loggedRequest {
	t.Helper()
	s.mu.Lock()
	s.nsync++
	marker := fmt.Sprintf("/__hostbreaker_sync/%d", s.nsync)
	s.mu.Unlock()
	resp, err := s.sync.Get(s.URL + marker)
	if err != nil {
		t.Fatalf("%s marker request: %v", s.name, err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	for deadline := time.Now().Add(5 * time.Second); ; {
		reqs, found, err := s.readLog(marker)
		if err != nil {
			t.Fatalf("%s log: %v", s.name, err)
		}
		if found {
			return reqs
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s log: no line for %s after 5s", s.name, marker)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Counts returns the statuses the server has logged; see Requests.
func (s *loggedServer) Counts(t testing.TB) loggedCounts {
	t.Helper()
	var c loggedCounts
	for _, r := range s.Requests(t) {
		switch r.Status {
		case http.StatusOK:
			c.OK++
		case http.StatusTooManyRequests:
			c.TooMany++
		default:
			c.Other++
		}
	}
	return c
}

// readLog parses the log up to marker, and says whether it found it. The
// lines before the marker are whole: the server wrote them before it.
func (s *loggedServer) readLog(marker string) ([]loggedRequest, bool, error) {
	f, err := os.Open(s.log)
	if err != nil {
		return nil, false, err
	}
	defer f.Close()
	var reqs []loggedRequest
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) == 3 && fields[2] == marker {
			return reqs, true, nil
		}
		if len(fields) != 3 {
			continue // the last line, being written: not before the marker
		}
		if strings.HasPrefix(fields[2], "/__hostbreaker_sync/") {
			continue
		}
		at, err1 := s.at(fields[0])
		status, err2 := strconv.Atoi(fields[1])
		if err := errors.Join(err1, err2); err != nil {
			return nil, false, fmt.Errorf("line %q: %w", sc.Text(), err)
		}
		reqs = append(reqs, loggedRequest{At: at, Status: status, URI: fields[2]})
	}
	return nil, false, sc.Err()
}
