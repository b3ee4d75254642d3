package hostbreaker

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

// gatedBase is a base whose responses have bodies that end only when the
// test says so: each request's body is a pipe, written and closed by
// finish(i). It records the order in which requests reached it, by their
// X-Id header.
type gatedBase struct {
	mu    sync.Mutex
	order []string
	pipes map[string]*io.PipeWriter
	fail  map[string]error // requests answered with this error instead
}

func newGatedBase() *gatedBase {
	return &gatedBase{pipes: make(map[string]*io.PipeWriter), fail: make(map[string]error)}
}

func (g *gatedBase) RoundTrip(req *http.Request) (*http.Response, error) {
	id := req.Header.Get("X-Id")
	g.mu.Lock()
	defer g.mu.Unlock()
	g.order = append(g.order, id)
	if err := g.fail[id]; err != nil {
		return nil, err
	}
	pr, pw := io.Pipe()
	g.pipes[id] = pw
	return &http.Response{StatusCode: 200, Header: http.Header{}, Body: pr, Request: req}, nil
}

// finish ends request id's body: cleanly, or with err.
func (g *gatedBase) finish(id string, err error) {
	g.mu.Lock()
	pw := g.pipes[id]
	g.mu.Unlock()
	pw.Write([]byte("done"))
	pw.CloseWithError(err)
}

func (g *gatedBase) sent() []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([]string(nil), g.order...)
}

// limitedClient is an http.Client over a Transport whose hosts allow n
// requests at once and wait at most maxWait for a slot.
func limitedClient(t *testing.T, base http.RoundTripper, n int, maxWait time.Duration) (*http.Client, *Transport) {
	t.Helper()
	return client(t, base, Config{Defaults: Policy{MaxConcurrent: n, MaxWait: maxWait}})
}

// start sends GET url with id from a goroutine; the response (with its
// body unread) or error arrives on the channel.
func start(ctx context.Context, c *http.Client, url, id string) <-chan result2 {
	ch := make(chan result2, 1)
	go func() {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		req.Header.Set("X-Id", id)
		resp, err := c.Do(req)
		ch <- result2{resp, err}
	}()
	return ch
}

type result2 struct {
	resp *http.Response
	err  error
}

// held returns how many slots of host's concurrency limit are held.
func held(tr *Transport, host string) int64 {
	h := tr.reg.host(host)
	if h == nil || h.bulk.Load() == nil {
		return 0
	}
	return h.bulk.Load().held.Load()
}

func TestMaxConcurrentFIFO(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := newGatedBase()
		c, tr := limitedClient(t, g, 2, time.Minute)
		ctx := context.Background()
		var chans []<-chan result2
		for _, id := range []string{"a", "b", "c", "d", "e"} {
			chans = append(chans, start(ctx, c, "http://api.example.org/", id))
			synctest.Wait() // each queues before the next is sent
		}
		if got := strings.Join(g.sent(), ""); got != "ab" {
			t.Fatalf("sent %q with 2 slots, want \"ab\"", got)
		}
		ra, rb := <-chans[0], <-chans[1]
		if ra.err != nil || rb.err != nil {
			t.Fatal(ra.err, rb.err)
		}
		// b's body ends first: c, the oldest waiter, takes its slot; then a's
		// goes to d, and so on.
		go g.finish("b", nil)
		io.ReadAll(rb.resp.Body) // EOF gives the slot back, without Close
		synctest.Wait()
		if got := strings.Join(g.sent(), ""); got != "abc" {
			t.Fatalf("sent %q after b's body ended, want \"abc\"", got)
		}
		ra.resp.Body.Close() // unread: Close gives it back
		synctest.Wait()
		if got := strings.Join(g.sent(), ""); got != "abcd" {
			t.Fatalf("sent %q after a's body was closed, want \"abcd\"", got)
		}
		if n := held(tr, "api.example.org"); n != 2 {
			t.Fatalf("%d slots held, want 2 (c and d)", n)
		}
		for i, id := range []string{"c", "d"} {
			go g.finish(id, nil)
			r := <-chans[2+i]
			io.Copy(io.Discard, r.resp.Body)
			r.resp.Body.Close()
		}
		synctest.Wait()
		r := <-chans[4]
		if r.err != nil {
			t.Fatal(r.err)
		}
		r.resp.Body.Close()
		if got := strings.Join(g.sent(), ""); got != "abcde" {
			t.Fatalf("sent %q, want \"abcde\"", got)
		}
		if n := held(tr, "api.example.org"); n != 0 {
			t.Fatalf("%d slots held after every body ended, want 0", n)
		}
		if s := stateOf(t, tr, "api.example.org", ""); s.Successes != 5 || s.Failures != 0 || s.Rejected != 0 {
			t.Fatalf("status %+v, want 5 successes", s)
		}
	})
}

func TestMaxConcurrentMaxWait(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := newGatedBase()
		c, tr := limitedClient(t, g, 1, 2*time.Second)
		ctx := context.Background()
		a := start(ctx, c, "http://api.example.org/", "a")
		synctest.Wait()
		t0 := time.Now()
		r := <-start(ctx, c, "http://api.example.org/", "b")
		oe := mustReject(t, r.err, ReasonConcurrencyLimited)
		if waited := time.Since(t0); waited != 2*time.Second {
			t.Fatalf("rejected after %v, want max_wait (2s)", waited)
		}
		if !oe.Until.IsZero() || oe.Host != "api.example.org" {
			t.Fatalf("rejection %+v: want the host and a zero Until", oe)
		}
		if got := strings.Join(g.sent(), ""); got != "a" {
			t.Fatalf("sent %q, want only a", got)
		}
		if s := stateOf(t, tr, "api.example.org", ""); s.Rejected != 1 {
			t.Fatalf("status %+v, want 1 rejection", s)
		}
		// The waiter that gave up is out of the queue: the slot, once free,
		// goes to the next request at once.
		(<-a).resp.Body.Close()
		r = <-start(ctx, c, "http://api.example.org/", "c")
		if r.err != nil {
			t.Fatal(r.err)
		}
		r.resp.Body.Close()
	})
}

func TestMaxConcurrentNeverWait(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := newGatedBase()
		c, _ := limitedClient(t, g, 1, -1) // max_wait = "0s"
		a := start(context.Background(), c, "http://api.example.org/", "a")
		synctest.Wait()
		t0 := time.Now()
		r := <-start(context.Background(), c, "http://api.example.org/", "b")
		mustReject(t, r.err, ReasonConcurrencyLimited)
		if time.Since(t0) != 0 {
			t.Fatalf("waited %v with max_wait 0s", time.Since(t0))
		}
		(<-a).resp.Body.Close()
	})
}

func TestMaxConcurrentDeadline(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := newGatedBase()
		c, _ := limitedClient(t, g, 1, time.Minute)
		a := start(context.Background(), c, "http://api.example.org/", "a")
		synctest.Wait()

		// A deadline 4s away: it waits half of that, as for a limiter turn.
		ctx, cancel := context.WithTimeout(context.Background(), 4*time.Second)
		defer cancel()
		t0 := time.Now()
		r := <-start(ctx, c, "http://api.example.org/", "b")
		mustReject(t, r.err, ReasonConcurrencyLimited)
		if waited := time.Since(t0); waited != 2*time.Second {
			t.Fatalf("rejected after %v, want half the 4s left before the deadline", waited)
		}

		// A caller that cancels while it waits gets its context's error and
		// leaves the queue: the next waiter takes the slot.
		ctx2, cancel2 := context.WithCancel(context.Background())
		b := start(ctx2, c, "http://api.example.org/", "c")
		synctest.Wait()
		d := start(context.Background(), c, "http://api.example.org/", "d")
		synctest.Wait()
		cancel2()
		rb := <-b
		if !errors.Is(rb.err, context.Canceled) || errors.Is(rb.err, ErrOpen) {
			t.Fatalf("canceled waiter got %v, want context.Canceled", rb.err)
		}
		(<-a).resp.Body.Close()
		rd := <-d
		if rd.err != nil {
			t.Fatal(rd.err)
		}
		rd.resp.Body.Close()
		if got := strings.Join(g.sent(), ""); got != "ad" {
			t.Fatalf("sent %q, want \"ad\"", got)
		}
	})
}

func TestMaxConcurrentSlotReleased(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := newGatedBase()
		g.fail["err"] = errors.New("connection refused")
		c, tr := limitedClient(t, g, 1, time.Minute)
		ctx := context.Background()
		host := "api.example.org"

		// A failed round trip gives its slot back.
		if r := <-start(ctx, c, "http://"+host+"/", "err"); r.err == nil {
			t.Fatal("want the base's error")
		}
		if n := held(tr, host); n != 0 {
			t.Fatalf("%d slots held after an error, want 0", n)
		}

		// A body that breaks gives it back.
		r := <-start(ctx, c, "http://"+host+"/", "broken")
		if n := held(tr, host); n != 1 {
			t.Fatalf("%d slots held while the body is open, want 1", n)
		}
		go g.finish("broken", io.ErrUnexpectedEOF)
		if _, err := io.ReadAll(r.resp.Body); !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("read: %v", err)
		}
		if n := held(tr, host); n != 0 {
			t.Fatalf("%d slots held after a read error, want 0", n)
		}
		r.resp.Body.Close() // a Close after the end gives nothing back twice
		r.resp.Body.Close()
		if n := held(tr, host); n != 0 {
			t.Fatalf("%d slots held, want 0", n)
		}

		// A response without a body (HEAD, 204) holds none.
		noBody := roundTripperFunc(func(req *http.Request) (*http.Response, error) {
			return &http.Response{StatusCode: 204, Header: http.Header{}, Body: http.NoBody, Request: req}, nil
		})
		c2, tr2 := limitedClient(t, noBody, 1, 0)
		for range 3 {
			mustPass(t, do(t, c2, "", "http://"+host+"/"), 204)
		}
		if n := held(tr2, host); n != 0 {
			t.Fatalf("%d slots held after bodiless responses, want 0", n)
		}
	})
}

// TestMaxConcurrentRefusesWithoutQueueing: while the breaker is open, a
// request that finds no free slot gets the breaker's rejection at once
// instead of waiting for a slot it could not use.
func TestMaxConcurrentRefusesWithoutQueueing(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := newGatedBase()
		g.fail["x"] = errors.New("connection reset")
		cfg := quick(1, time.Minute)
		cfg.Defaults.MaxConcurrent = 1
		c, _ := client(t, g, cfg)
		ctx := context.Background()
		a := start(ctx, c, "http://api.example.org/", "a") // holds the slot
		synctest.Wait()
		tr := c.Transport.(*Transport)
		if err := tr.Open("api.example.org", time.Hour, "maintenance"); err != nil {
			t.Fatal(err)
		}
		t0 := time.Now()
		r := <-start(ctx, c, "http://api.example.org/", "b")
		mustReject(t, r.err, ReasonManual)
		if time.Since(t0) != 0 {
			t.Fatalf("waited %v for a slot on a host in cooldown", time.Since(t0))
		}
		(<-a).resp.Body.Close()
	})
}

// TestMaxConcurrentLeakedBody: a body dropped without Close or EOF keeps its
// slot until the garbage collector finds it; then the slot is given back
// and counted as leaked.
func TestMaxConcurrentLeakedBody(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte(strings.Repeat("x", 100)))
	}))
	defer srv.Close()
	c, tr := limitedClient(t, nil, 1, 0)
	host := strings.TrimPrefix(srv.URL, "http://")
	func() {
		resp, err := c.Get(srv.URL)
		if err != nil {
			t.Fatal(err)
		}
		_ = resp.StatusCode // dropped: neither read nor closed
	}()
	if n := held(tr, host); n != 1 {
		t.Fatalf("%d slots held by the dropped body, want 1", n)
	}
	_, err := c.Get(srv.URL)
	mustReject(t, err, ReasonConcurrencyLimited)
	for i := 0; i < 100 && held(tr, host) != 0; i++ {
		runtime.GC()
		time.Sleep(10 * time.Millisecond) // cleanups run on their own goroutine
	}
	if n := held(tr, host); n != 0 {
		t.Fatalf("%d slots held after the body was collected, want 0", n)
	}
	if n := tr.leakedSlots.Load(); n != 1 {
		t.Fatalf("leaked slots = %d, want 1", n)
	}
	resp, err := c.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
}

// TestMaxConcurrentPolicyChange: raising the limit, or removing it, lets
// the waiters in at once.
func TestMaxConcurrentPolicyChange(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := newGatedBase()
		c, tr := limitedClient(t, g, 1, time.Minute)
		ctx := context.Background()
		a := start(ctx, c, "http://api.example.org/", "a")
		synctest.Wait()
		b := start(ctx, c, "http://api.example.org/", "b")
		synctest.Wait() // b queues before c
		cc := start(ctx, c, "http://api.example.org/", "c")
		synctest.Wait()
		if err := tr.UpdateHostPolicy("api.example.org", Policy{MaxConcurrent: 2}); err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		if got := strings.Join(g.sent(), ""); got != "ab" {
			t.Fatalf("sent %q after raising the limit to 2, want \"ab\"", got)
		}
		if err := tr.UpdateHostPolicy("api.example.org", Policy{MaxConcurrent: -1}); err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		if got := strings.Join(g.sent(), ""); got != "abc" {
			t.Fatalf("sent %q after removing the limit, want \"abc\"", got)
		}
		for _, ch := range []<-chan result2{a, b, cc} {
			r := <-ch
			if r.err != nil {
				t.Fatal(r.err)
			}
			r.resp.Body.Close()
		}
		if p, _ := tr.Policy("api.example.org", ""); p.MaxConcurrent != -1 {
			t.Fatalf("Policy().MaxConcurrent = %d, want -1 (unlimited)", p.MaxConcurrent)
		}
	})
}

func TestMaxConcurrentConfig(t *testing.T) {
	c, err := ParseConfig([]byte(`
[defaults]
max_concurrent = 8
[hosts."api.example.org"]
max_concurrent = 2
[hosts."free.example.org"]
max_concurrent = 0
`))
	if err != nil {
		t.Fatal(err)
	}
	tr, err := NewTransport(nil, WithConfig(c))
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	for host, want := range map[string]int{"api.example.org": 2, "free.example.org": -1, "other.example.org": 8} {
		if p, _ := tr.Policy(host, "metadata"); p.MaxConcurrent != want {
			t.Errorf("Policy(%s).MaxConcurrent = %d, want %d", host, p.MaxConcurrent, want)
		}
	}
	for _, tc := range []struct{ toml, key, msg string }{
		{"[defaults]\nfail_max = 3\nmax_concurrent = -1\n", "defaults.max_concurrent", "line 3: defaults.max_concurrent: must not be negative"},
		{"[hosts.\"a.org\"]\nmax_concurrent = 2000000\n", `hosts."a.org".max_concurrent`, "line 2"},
		{"[defaults.roles.artifact]\n\nmax_concurrent = 2\n", "defaults.roles.artifact.max_concurrent", "line 3: defaults.roles.artifact.max_concurrent: a concurrency limit is host-wide"},
		{"[defaults]\nmax_concurrent = \"2\"\n", "defaults.max_concurrent", "line 2"},
	} {
		_, err := ParseConfig([]byte(tc.toml))
		var ce *ConfigError
		if !errors.As(err, &ce) || ce.Key != tc.key || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("ParseConfig(%q) = %v, want key %s and %q", tc.toml, err, tc.key, tc.msg)
		}
	}
	err = (Config{Hosts: map[string]Policy{"a.org": {Roles: map[string]Policy{"x": {MaxConcurrent: 1}}}}}).Validate()
	if ce := (*ConfigError)(nil); !errors.As(err, &ce) || ce.Key != `hosts."a.org".roles.x.max_concurrent` {
		t.Errorf("Validate = %v, want the role's max_concurrent named", err)
	}
}

func TestMaxConcurrentMetrics(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := newGatedBase()
		tr, reader, c := metricTransport(t, g, Config{Defaults: Policy{MaxConcurrent: 1, MaxWait: time.Minute}})
		_ = tr
		ctx := context.Background()
		a := start(ctx, c, "http://api.example.org/", "a")
		synctest.Wait()
		b := start(ctx, c, "http://api.example.org/", "b")
		synctest.Wait()
		time.Sleep(3 * time.Second)
		m := collect(t, reader)
		m.checkShapes(t)
		if got := m.points(t, "hostbreaker.concurrency.held"); got["server.address=api.example.org"] != 1 {
			t.Errorf("held = %v, want 1 for api.example.org", got)
		}
		if got := m.points(t, "hostbreaker.concurrency.waiting"); got["server.address=api.example.org"] != 1 {
			t.Errorf("waiting = %v, want 1 for api.example.org", got)
		}
		if got := m.floatPoints(t, "hostbreaker.concurrency.oldest"); got["server.address=api.example.org"] != 3 {
			t.Errorf("oldest = %v, want 3 (s) for api.example.org", got)
		}
		(<-a).resp.Body.Close()
		(<-b).resp.Body.Close()
		m = collect(t, reader)
		if got := m.points(t, "hostbreaker.concurrency.held"); got["server.address=api.example.org"] != 0 {
			t.Errorf("held = %v after every body was closed, want 0", got)
		}
		if got := m.points(t, "hostbreaker.concurrency.leaked"); got[""] != 0 {
			t.Errorf("leaked = %v, want 0", got)
		}
	})
}

// TestMaxConcurrentShadow: a host in shadow mode rejects nothing for want
// of a slot: a request that would be concurrency-limited (after its
// MaxWait) is counted as would_reject with that reason and sent without a
// slot; slots still order the requests within MaxWait. A host in enforce
// mode rejects the same request.
func TestMaxConcurrentShadow(t *testing.T) {
	for _, mode := range []Mode{ModeEnforce, ModeShadow} {
		t.Run(mode.String(), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				g := newGatedBase()
				c, tr := client(t, g, Config{Defaults: Policy{MaxConcurrent: 1, MaxWait: time.Second, Mode: mode}})
				ctx := context.Background()
				a := start(ctx, c, "http://api.example.org/", "a") // holds the slot
				synctest.Wait()
				t0 := time.Now()
				r := <-start(ctx, c, "http://api.example.org/", "b")
				if waited := time.Since(t0); waited != time.Second {
					t.Errorf("b waited %v, want its max_wait of 1s", waited)
				}
				s := stateOf(t, tr, "api.example.org", "")
				switch mode {
				case ModeEnforce:
					mustReject(t, r.err, ReasonConcurrencyLimited)
					if s.Rejected != 1 || s.WouldReject != 0 {
						t.Errorf("enforce: status %+v, want 1 rejected", s)
					}
				case ModeShadow:
					if r.err != nil {
						t.Fatalf("shadow: b: %v, want it sent", r.err)
					}
					r.resp.Body.Close()
					st := tr.reg.lookup("api.example.org", "").stats()
					if s.Rejected != 0 || s.WouldReject != 1 || st.wouldRejectBy[reasonIndex(ReasonConcurrencyLimited)].Load() != 1 {
						t.Errorf("shadow: status %+v, want 1 would_reject (concurrency-limited), none rejected", s)
					}
					if got := g.sent(); len(got) != 2 {
						t.Errorf("sent %v, want a and b", got)
					}
				}
				if n := held(tr, "api.example.org"); n != 1 {
					t.Errorf("%d slots held, want a's alone", n)
				}
				(<-a).resp.Body.Close()
				if n := held(tr, "api.example.org"); n != 0 {
					t.Errorf("%d slots held after a's body closed, want 0", n)
				}
			})
		})
	}
}
