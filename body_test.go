package hostbreaker

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"
)

// cutServer answers every request with a 200 that promises 4 KiB and
// sends 1 KiB, then drops the connection: the client reads an unexpected
// EOF.
func cutServer(t *testing.T) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { cutBody(t, w) }))
	t.Cleanup(srv.Close)
	return srv
}

// cutBody answers with a 200 that promises 4 KiB and sends 1 KiB, then
// drops the connection.
func cutBody(t *testing.T, w http.ResponseWriter) {
	conn, buf, err := http.NewResponseController(w).Hijack()
	if err != nil {
		t.Error(err)
		return
	}
	defer conn.Close()
	buf.WriteString("HTTP/1.1 200 OK\r\nContent-Length: 4096\r\nContent-Type: text/plain\r\n\r\n")
	buf.WriteString(strings.Repeat("x", 1024))
	buf.Flush()
}

// stallServer answers every request with a 200 that promises 4 KiB, sends
// 1 KiB and then sends nothing more until the client goes away.
func stallServer(t *testing.T) *httptest.Server {
	t.Helper()
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "4096")
		w.Write([]byte(strings.Repeat("x", 1024)))
		w.(http.Flusher).Flush()
		<-r.Context().Done()
	}))
	srv.Start()
	t.Cleanup(func() {
		srv.CloseClientConnections()
		srv.Close()
	})
	return srv
}

// readBody sends GET url through c with ctx and reads the whole body; it
// returns the error of the round trip or of the read.
func readBody(ctx context.Context, c *http.Client, url string) error {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, err = io.Copy(io.Discard, resp.Body)
	return err
}

func TestBodyCutIsFailure(t *testing.T) {
	srv := cutServer(t)
	c, tr := client(t, &http.Transport{}, quick(3, time.Hour))
	host := strings.TrimPrefix(srv.URL, "http://")
	for i := range 3 {
		if err := readBody(context.Background(), c, srv.URL); !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("request %d: %v, want an unexpected EOF", i, err)
		}
	}
	// Three bodies cut short are three failures, as three 502s would be:
	// the breaker is open.
	err := readBody(context.Background(), c, srv.URL)
	mustReject(t, err, ReasonBreakerOpen)
	s := stateOf(t, tr, host, "")
	if s.State != StateOpen || s.Successes != 0 || s.Failures != 3 || s.Rejected != 1 {
		t.Fatalf("status %+v, want open after 0 successes and 3 failures", s)
	}
}

func TestBodyStallIsFailure(t *testing.T) {
	srv := stallServer(t)
	tr, err := NewTransport(&http.Transport{}, WithConfig(quick(2, time.Hour)))
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	c := &http.Client{Transport: tr, Timeout: 300 * time.Millisecond}
	host := strings.TrimPrefix(srv.URL, "http://")
	for i := range 2 {
		err := readBody(context.Background(), c, srv.URL)
		if err == nil || !isTimeout(context.Background(), err) {
			t.Fatalf("request %d: %v, want the client's timeout while reading", i, err)
		}
	}
	mustReject(t, readBody(context.Background(), c, srv.URL), ReasonBreakerOpen)
	if s := stateOf(t, tr, host, ""); s.Successes != 0 || s.Failures != 2 {
		t.Fatalf("status %+v, want 2 failures and no success", s)
	}
}

// TestBodyCallerCancelIsNeutral: a caller that cancels while it reads the
// body is not the host's failure.
func TestBodyCallerCancelIsNeutral(t *testing.T) {
	srv := stallServer(t)
	c, tr := client(t, &http.Transport{}, quick(2, time.Hour))
	host := strings.TrimPrefix(srv.URL, "http://")
	for i := range 4 {
		ctx, cancel := context.WithCancel(context.Background())
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL, nil)
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		br := bufio.NewReader(resp.Body)
		if _, err := br.Peek(1024); err != nil {
			t.Fatal(err)
		}
		go func() {
			time.Sleep(20 * time.Millisecond)
			cancel()
		}()
		if _, err := io.Copy(io.Discard, br); !errors.Is(err, context.Canceled) {
			t.Fatalf("request %d: read %v, want context.Canceled", i, err)
		}
		resp.Body.Close()
	}
	if s := stateOf(t, tr, host, ""); s.State != StateClosed || s.Failures != 0 || s.Successes != 4 {
		t.Fatalf("status %+v, want closed with 4 successes", s)
	}
}

// TestBodyReadFullyIsSuccessOnce: bodies read to the end, or closed early,
// count once each, as successes, whether they were watched or not.
func TestBodyReadFullyIsSuccessOnce(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte(strings.Repeat("y", 4096)))
	}))
	defer srv.Close()
	c, tr := client(t, &http.Transport{}, quick(1, time.Hour))
	host := strings.TrimPrefix(srv.URL, "http://")
	for i := range 40 {
		if i%3 == 0 {
			resp, err := c.Get(srv.URL)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close() // unread: the caller's choice, no failure
			continue
		}
		if err := readBody(context.Background(), c, srv.URL); err != nil {
			t.Fatal(err)
		}
	}
	if s := stateOf(t, tr, host, ""); s.State != StateClosed || s.Successes != 40 || s.Failures != 0 || s.Requests != 40 {
		t.Fatalf("status %+v, want 40 successes, counted once each", s)
	}
}

// brokenBody returns data, then err.
type brokenBody struct {
	data string
	err  error
}

func (b *brokenBody) Read(p []byte) (int, error) {
	if b.data == "" {
		return 0, b.err
	}
	n := copy(p, b.data)
	b.data = b.data[n:]
	return n, nil
}

func (b *brokenBody) Close() error { return nil }

// bodySteps is a base that answers each request with the next step: a
// status, and whether its body breaks.
func bodySteps(steps ...string) roundTripperFunc {
	i := 0
	return func(req *http.Request) (*http.Response, error) {
		step := steps[i%len(steps)]
		i++
		code, broken := 200, false
		switch step {
		case "500":
			code = 500
		case "200-cut":
			broken = true
		case "404-cut":
			code, broken = 404, true
		case "500-cut":
			code, broken = 500, true
		}
		var body io.ReadCloser = io.NopCloser(strings.NewReader("complete"))
		if broken {
			body = &brokenBody{data: "part", err: io.ErrUnexpectedEOF}
		}
		return &http.Response{StatusCode: code, Header: http.Header{}, Body: body, Request: req}, nil
	}
}

// TestBodyErrorTakesBackSuccess: a success counted at the headers whose
// body breaks is taken back and counted as a failure, once, with the
// breaker's accounting as if the request had failed at the headers.
func TestBodyErrorTakesBackSuccess(t *testing.T) {
	const host = "api.example.org"
	url := "http://" + host + "/"
	t.Run("closed: the failure run it ended is given back", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			// 500, then a 200 whose body breaks: with fail_max 2 that is two
			// failures in a row. Counting the 200 as a success at the headers
			// had reset the run.
			c, tr := client(t, bodySteps("500", "200-cut"), quick(2, time.Hour))
			get(t, c, "", url)
			mustState(t, tr, host, "", StateClosed)
			get(t, c, "", url) // the body breaks while get reads it
			s := stateOf(t, tr, host, "")
			if s.State != StateOpen || s.Successes != 0 || s.Failures != 2 {
				t.Fatalf("status %+v, want open with 2 failures and no success", s)
			}
		})
	})
	t.Run("closed: a later success breaks the run", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			base := bodySteps("500", "200-cut", "200")
			c, tr := client(t, base, quick(2, time.Hour))
			get(t, c, "", url)
			req, _ := http.NewRequest(http.MethodGet, url, nil)
			resp, err := c.Do(req) // its body is read after the next success
			if err != nil {
				t.Fatal(err)
			}
			get(t, c, "", url)
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			// 500, 200 (fails later), 200: the run after the last success is
			// the body's failure alone.
			s := stateOf(t, tr, host, "")
			if s.State != StateClosed || s.Successes != 1 || s.Failures != 2 {
				t.Fatalf("status %+v, want closed, 1 success, 2 failures", s)
			}
		})
	})
	t.Run("a probe whose success closed the breaker reopens it", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			var evs eventLog
			tr, err := NewTransport(bodySteps("500", "200-cut"), WithConfig(quick(1, time.Minute)), WithEventHandler(evs.add))
			if err != nil {
				t.Fatal(err)
			}
			defer tr.Close()
			c := &http.Client{Transport: tr}
			get(t, c, "", url) // 500: open
			time.Sleep(time.Minute)
			get(t, c, "", url) // the probe: a 200, closing the breaker, whose body breaks
			s := stateOf(t, tr, host, "")
			if s.State != StateOpen || s.Successes != 0 || s.Failures != 2 {
				t.Fatalf("status %+v, want open again, 2 failures, no success", s)
			}
			tr.Close()
			var path []string
			for _, ev := range evs.named(EventStateChange) {
				path = append(path, ev.PreviousState.String()+">"+ev.State.String())
				if ev.State == StateOpen && ev.PreviousState == StateClosed && len(path) > 1 && ev.ErrorType != "body:unexpected-eof" {
					t.Errorf("reopening's error type %q, want body:unexpected-eof", ev.ErrorType)
				}
			}
			if got := strings.Join(path, " "); got != "closed>open open>half-open half-open>closed closed>open" {
				t.Fatalf("transitions %q", got)
			}
		})
	})
	t.Run("half-open: a probe's success toward success_threshold is taken back", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			cfg := quick(1, time.Minute)
			cfg.Defaults.SuccessThreshold = 2
			c, tr := client(t, bodySteps("500", "200-cut"), cfg)
			get(t, c, "", url)
			time.Sleep(time.Minute)
			get(t, c, "", url)
			if s := stateOf(t, tr, host, ""); s.State != StateOpen || s.Failures != 2 || s.Successes != 0 {
				t.Fatalf("status %+v, want open: the probe failed", s)
			}
		})
	})
	t.Run("neutral and failed headers", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			c, tr := client(t, bodySteps("200-cut", "404-cut", "500-cut"), quick(5, time.Hour))
			get(t, c, "", url) // the first success is watched; its body breaking makes the host watched
			get(t, c, "", url) // a 404 is neutral; its body breaking is a failure
			get(t, c, "", url) // a 500 is a failure already: counted once
			if s := stateOf(t, tr, host, ""); s.Neutral != 0 || s.Successes != 0 || s.Failures != 3 || s.Requests != 3 {
				t.Fatalf("status %+v, want 3 failures in 3 requests", s)
			}
		})
	})
}

// TestBodyWatchSampling: a host with no body error has one body in 16
// watched; after a body error, every one, however many are clean.
func TestBodyWatchSampling(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		wrapped := 0
		base := roundTripperFunc(func(req *http.Request) (*http.Response, error) {
			return &http.Response{StatusCode: 200, Header: http.Header{}, Body: io.NopCloser(strings.NewReader("ok")), Request: req}, nil
		})
		tr, err := NewTransport(base)
		if err != nil {
			t.Fatal(err)
		}
		defer tr.Close()
		send := func() {
			resp, err := tr.RoundTrip(mustRequest(t, "http://api.example.org/"))
			if err != nil {
				t.Fatal(err)
			}
			if _, ok := resp.Body.(*body); ok {
				wrapped++
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		for range 64 {
			send()
		}
		if wrapped != 4 {
			t.Fatalf("%d of 64 bodies watched on a healthy host, want 4", wrapped)
		}
		e := tr.reg.lookup("api.example.org", "")
		e.flags.Or(flagBodyWatch) // as after a body error
		wrapped = 0
		for range 200 {
			send()
		}
		if wrapped != 200 {
			t.Fatalf("%d of 200 bodies watched after a body error, want every one", wrapped)
		}
	})
}

// rewindBody is a body that can be read again after Rewind, so that a
// benchmark's base allocates nothing per request.
type rewindBody struct {
	data string
	off  int
}

func (r *rewindBody) Read(p []byte) (int, error) {
	if r.off >= len(r.data) {
		return 0, io.EOF
	}
	n := copy(p, r.data[r.off:])
	r.off += n
	return n, nil
}

func (r *rewindBody) Close() error { return nil }

// BenchmarkRoundTripBody measures a request whose body is read to the end
// and closed, as a client does: the bare base, hostbreaker on a healthy
// host (one body in 16 watched), on a host that has shown a body error
// (every body watched), and on a host with max_concurrent (every body
// wrapped, and a slot taken and given back).
func BenchmarkRoundTripBody(b *testing.B) {
	for _, variant := range []string{"base", "hostbreaker", "hostbreaker+watched", "hostbreaker+max_concurrent"} {
		rb := &rewindBody{data: "a response body"}
		resp := &http.Response{StatusCode: 200, Header: http.Header{}}
		var rt http.RoundTripper = roundTripperFunc(func(*http.Request) (*http.Response, error) {
			rb.off = 0
			resp.Body = rb
			return resp, nil
		})
		req := benchRequests(b, 1)[0]
		var watch func()
		if variant != "base" {
			var cfg Config
			if variant == "hostbreaker+max_concurrent" {
				cfg.Defaults.MaxConcurrent = 8
			}
			tr, err := NewTransport(rt, WithConfig(cfg))
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { tr.Close() })
			tr.RoundTrip(req)
			if variant == "hostbreaker+watched" {
				e := tr.reg.lookup("h0.example.org", RoleMetadata)
				watch = func() { e.flags.Or(flagBodyWatch) } // as after a body error (a no-op after the first)
			}
			rt = tr
		}
		buf := make([]byte, 64)
		b.Run(variant, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if watch != nil {
					watch()
				}
				resp, err := rt.RoundTrip(req)
				if err != nil {
					b.Fatal(err)
				}
				for {
					if _, err := resp.Body.Read(buf); err != nil {
						break
					}
				}
				resp.Body.Close()
			}
		})
	}
}

// TestBodyErrorFailureRate: under failure_rate, a success that the rule's
// window counted at the headers and whose body breaks becomes a failure in
// the window, not a second outcome: two broken bodies in four requests are
// 2 of 4 and trip a rate of 0.5 at the fourth request (counted twice, they
// would be 2 of 6, and it would stay closed).
func TestBodyErrorFailureRate(t *testing.T) {
	const url = "http://api.example.org/"
	t.Run("the success becomes a failure", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			c := quick(100, time.Minute)
			c.Defaults.FailureRate, c.Defaults.MinRequests = 0.5, 4
			cl, tr, log := ruleClient(t, bodySteps("200-cut", "200", "200-cut", "200"), c)
			for range 3 {
				get(t, cl, "", url)
			}
			mustState(t, tr, "api.example.org", "", StateClosed) // 2 of 3: below min_requests
			get(t, cl, "", url)
			synctest.Wait()
			const want = "failure_rate: 2 of 4 requests failed in 60s"
			if ev := opened(log); len(ev) != 1 || ev[0].Note != want {
				t.Fatalf("open events = %+v, want one with note %q", ev, want)
			}
			if s := stateOf(t, tr, "api.example.org", ""); s.Successes != 2 || s.Failures != 2 {
				t.Fatalf("status %+v, want 2 successes and 2 failures", s)
			}
		})
	})
	t.Run("a success that has left the window", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			// The body breaks after the window has moved past its success:
			// the failure is counted when it happens, once.
			c := quick(100, time.Minute)
			c.Defaults.FailureRate, c.Defaults.MinRequests = 0.5, 2
			cl, tr, log := ruleClient(t, bodySteps("200-cut", "200"), c)
			resp, err := cl.Get(url)
			if err != nil {
				t.Fatal(err)
			}
			time.Sleep(2 * time.Minute)
			io.Copy(io.Discard, resp.Body) // breaks: 1 of 1
			resp.Body.Close()
			mustState(t, tr, "api.example.org", "", StateClosed)
			get(t, cl, "", url) // 1 of 2 failed
			synctest.Wait()
			const want = "failure_rate: 1 of 2 requests failed in 60s"
			if ev := opened(log); len(ev) != 1 || ev[0].Note != want {
				t.Fatalf("open events = %+v, want one with note %q", ev, want)
			}
		})
	})
}

// TestBodyErrorReopenGrows: a probe whose success closed the breaker and
// whose body then breaks reopens it as a failed probe does: counted as a
// failed probe, for an open time doubled once more (max_reset_timeout).
func TestBodyErrorReopenGrows(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const url = "http://api.example.org/"
		c := quick(1, 10*time.Second)
		c.Defaults.MaxResetTimeout = time.Hour
		cl, tr, log := ruleClient(t, bodySteps("500", "500", "200-cut", "200"), c)
		get(t, cl, "", url) // 500: open for 10s
		time.Sleep(10 * time.Second)
		get(t, cl, "", url) // the probe fails: open for 20s
		time.Sleep(20 * time.Second)
		get(t, cl, "", url) // the probe's 200 closes the breaker; its body breaks: open for 40s
		synctest.Wait()
		ev := opened(log)
		if len(ev) != 3 {
			t.Fatalf("open events = %+v, want 3", ev)
		}
		if d := time.Until(ev[2].Until); ev[2].PreviousState != StateClosed || d != 40*time.Second || ev[2].Note != "probe failed" {
			t.Fatalf("reopening: %+v, open for %v; want from closed, for 40s, note \"probe failed\"", ev[2], d)
		}
		_, err := get(t, cl, "", url)
		if d := time.Until(mustReject(t, err, ReasonBreakerOpen).Until); d != 40*time.Second {
			t.Fatalf("open for %v, want 40s", d)
		}
		st := tr.reg.lookup("api.example.org", "").stats()
		if ok, failed := st.probesOK.Load(), st.probesFail.Load(); ok != 0 || failed != 2 {
			t.Fatalf("probes: %d ok, %d failed; want 0 and 2", ok, failed)
		}
	})
}

// TestBodyErrorsCaughtThroughClient: through an http.Client, against a
// server that serves clean bodies and then cuts every one (a
// Content-Length larger than what it sends, then it closes the
// connection): the first cut body is caught within 16 requests however
// many clean ones came before (one body in 16 is watched), and from then on
// every one is, so that the breaker opens fail_max − 1 requests later.
func TestBodyErrorsCaughtThroughClient(t *testing.T) {
	for _, clean := range []int{0, 1, 2, 7, 16, 17, 40} {
		t.Run(fmt.Sprintf("after %d clean", clean), func(t *testing.T) {
			var n atomic.Int64
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if n.Add(1) <= int64(clean) {
					w.Write([]byte(strings.Repeat("x", 4096)))
					return
				}
				cutBody(t, w)
			}))
			defer srv.Close()
			c, tr := client(t, &http.Transport{}, quick(3, time.Hour))
			host := strings.TrimPrefix(srv.URL, "http://")
			sent := 0
			for {
				err := readBody(context.Background(), c, srv.URL)
				var oe *OpenError
				if errors.As(err, &oe) {
					break
				}
				if sent++; sent > clean+16+2 {
					t.Fatalf("still closed after %d requests, %d of them cut", sent, sent-clean)
				}
			}
			cut := sent - clean
			s := stateOf(t, tr, host, "")
			if s.State != StateOpen || s.Failures != 3 || s.Successes != uint64(sent-3) {
				t.Fatalf("status %+v after %d requests; want open, 3 failures and %d successes", s, sent, sent-3)
			}
			// The first caught is the first whose success count is 1 mod 16;
			// the two after it are caught as every body is watched.
			first := 16 - (clean-1)%16
			if clean == 0 {
				first = 1
			}
			if cut != first+2 {
				t.Fatalf("%d cut bodies before the breaker opened, want %d", cut, first+2)
			}
		})
	}
}

// TestBodyWatchStays: a host that has cut one body is watched for good:
// after 100 clean bodies, its next two cut bodies are two failures (with
// fail_max 2, the breaker opens), although neither falls on a sampled
// count.
func TestBodyWatchStays(t *testing.T) {
	var n atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if i := n.Add(1); i > 1 && i <= 101 {
			w.Write([]byte(strings.Repeat("x", 4096)))
			return
		}
		cutBody(t, w)
	}))
	defer srv.Close()
	c, tr := client(t, &http.Transport{}, quick(2, time.Hour))
	host := strings.TrimPrefix(srv.URL, "http://")
	if err := readBody(context.Background(), c, srv.URL); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("first request: %v, want an unexpected EOF", err)
	}
	for i := range 100 {
		if err := readBody(context.Background(), c, srv.URL); err != nil {
			t.Fatalf("clean request %d: %v", i, err)
		}
	}
	for range 2 {
		if err := readBody(context.Background(), c, srv.URL); !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("%v, want an unexpected EOF", err)
		}
	}
	mustReject(t, readBody(context.Background(), c, srv.URL), ReasonBreakerOpen)
	if s := stateOf(t, tr, host, ""); s.Failures != 3 || s.Successes != 100 {
		t.Fatalf("status %+v, want 3 failures and 100 successes", s)
	}
}

// ctxBody sends one byte, then blocks until its request's context ends and
// fails with the context's error, as net/http's bodies do.
type ctxBody struct {
	ctx  context.Context
	sent bool
}

func (b *ctxBody) Read(p []byte) (int, error) {
	if !b.sent && len(p) > 0 {
		b.sent = true
		p[0] = 'x'
		return 1, nil
	}
	<-b.ctx.Done()
	return 0, b.ctx.Err()
}

func (b *ctxBody) Close() error { return nil }

// TestBodyCallersDeadlineIsNeutral: the caller's-deadline rule holds for a
// deadline that ends the request while its body is read, as it does at
// the headers: a job-wide deadline that comes less than slow_call (1 s
// when unset) after the request was sent is the caller's, neutral, and the
// success counted at the headers stands; a deadline after a longer wait,
// and http.Client.Timeout, stay the host's failures.
func TestBodyCallersDeadlineIsNeutral(t *testing.T) {
	base := roundTripperFunc(func(req *http.Request) (*http.Response, error) {
		return &http.Response{StatusCode: 200, Header: http.Header{}, Body: &ctxBody{ctx: req.Context()}, Request: req}, nil
	})
	for _, tc := range deadlineCases {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				tr, resp, err := doInJob(t, base, tc, true)
				if err != nil {
					t.Fatal(err)
				}
				if _, err := io.Copy(io.Discard, resp.Body); err == nil {
					t.Fatal("body read to its end")
				}
				resp.Body.Close()
				s := stateOf(t, tr, "a.test", "")
				if s.State != tc.want {
					t.Fatalf("state = %v, want %v (%+v)", s.State, tc.want, s)
				}
				if tc.want == StateClosed && (s.Successes != 1 || s.Failures != 0) {
					t.Errorf("status %+v, want the success counted at the headers, no failure", s)
				}
			})
		})
	}
}
