package hostbreaker

// Tests of the Transport as an http.RoundTripper: the request path through
// an http.Client, the RoundTripper contract, NewTransport and its options,
// Close, and the transport fuzzer.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"
)

// Contract tests: the http.RoundTripper rules hold on every path.

func TestRejectedRequestBodyIsClosed(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		_, tr := client(t, newFakeHosts(status(200)), Config{})
		tr.Open("a.test", time.Minute, "")
		body := &trackedBody{Reader: strings.NewReader("payload")}
		req, _ := http.NewRequest(http.MethodPost, "https://a.test/", body)
		if _, err := tr.RoundTrip(req); !errors.Is(err, ErrOpen) {
			t.Fatalf("err = %v", err)
		}
		if !body.closed.Load() {
			t.Error("rejected request's body was not closed")
		}
	})
}

type trackedBody struct {
	io.Reader
	closed atomic.Bool
}

func (b *trackedBody) Close() error { b.closed.Store(true); return nil }

func TestRequestIsNotModified(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var seen *http.Request
		base := newFakeHosts(func(req *http.Request) (*http.Response, error) {
			seen = req
			return status(200)(req)
		})
		_, tr := client(t, base, Config{})
		ctx := WithRole(context.Background(), RoleArtifact)
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "https://EXAMPLE.com:443/a?b=c", nil)
		req.Header.Set("X-Test", "1")
		before := fmt.Sprintf("%v %v %v %v", req.Method, req.URL.String(), req.Host, req.Header)
		resp, err := tr.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if after := fmt.Sprintf("%v %v %v %v", req.Method, req.URL.String(), req.Host, req.Header); after != before {
			t.Errorf("request changed:\n%s\n%s", before, after)
		}
		if seen != req {
			t.Error("base did not get the caller's request")
		}
	})
}

func TestResponsesAreReturnedWhateverTheirStatus(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		_, tr := client(t, newFakeHosts(nil), Config{})
		for _, code := range []int{200, 404, 429, 500, 503} {
			want := &http.Response{StatusCode: code, Body: http.NoBody, Header: http.Header{}}
			tr.base.(*fakeHosts).set(func(*http.Request) (*http.Response, error) { return want, nil })
			got, err := tr.RoundTrip(mustRequest(t, fmt.Sprintf("https://h%d.test/", code)))
			if err != nil || got != want {
				t.Errorf("status %d: got (%p, %v), want the base's response", code, got, err)
			}
		}
		// A response with a nil body and a transport error pass through too.
		tr.base.(*fakeHosts).set(func(*http.Request) (*http.Response, error) {
			return &http.Response{StatusCode: 204}, nil
		})
		if resp, err := tr.RoundTrip(mustRequest(t, "https://nil.test/")); err != nil || resp.Body != nil {
			t.Errorf("nil body: got (%v, %v)", resp, err)
		}
		boom := errors.New("boom")
		tr.base.(*fakeHosts).set(func(*http.Request) (*http.Response, error) { return nil, boom })
		if _, err := tr.RoundTrip(mustRequest(t, "https://err.test/")); !errors.Is(err, boom) {
			t.Errorf("err = %v, want the base's error", err)
		}
	})
}

func TestInvalidHostIsAClearError(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		base := newFakeHosts(status(200))
		_, tr := client(t, base, Config{})
		req := mustRequest(t, "https://ok.test/")
		req.URL.Host = "bad host"
		if _, err := tr.RoundTrip(req); err == nil || !strings.Contains(err.Error(), "bad host") {
			t.Errorf("err = %v", err)
		}
		if base.count("bad host") != 0 {
			t.Error("base was called")
		}
	})
}

func TestNilBaseUsesDefaultTransport(t *testing.T) {
	tr, err := NewTransport(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	if tr.base != http.DefaultTransport {
		t.Error("nil base is not http.DefaultTransport")
	}
	if _, err := NewTransport(nil, WithConfig(Config{Defaults: Policy{FailMax: -1}}), nil); err == nil {
		t.Error("invalid config accepted")
	}
}

func TestCloseIsIdempotent(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tr, err := NewTransport(newFakeHosts(status(200)))
		if err != nil {
			t.Fatal(err)
		}
		tr.Close()
		tr.Close()
		resp, err := tr.RoundTrip(mustRequest(t, "https://a.test/"))
		if err != nil || resp.StatusCode != 200 {
			t.Errorf("after Close: (%v, %v)", resp, err)
		}
	})
}

// TestThroughRealServers runs a real http.Client against loopback servers.
func TestThroughRealServers(t *testing.T) {
	var sickHits atomic.Int64
	sick := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sickHits.Add(1)
		w.WriteHeader(http.StatusBadGateway)
	}))
	defer sick.Close()
	limited := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Retry-After", "3600")
		w.WriteHeader(http.StatusTooManyRequests)
	}))
	defer limited.Close()
	tr, err := NewTransport(nil, WithConfig(quick(3, time.Hour)))
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	c := &http.Client{Transport: tr}
	for range 10 {
		get(t, c, RoleLanding, sick.URL)
	}
	if n := sickHits.Load(); n != 3 {
		t.Errorf("sick server got %d requests, want 3", n)
	}
	mustPass(t, do(t, c, RoleMetadata, limited.URL), 429)
	mustReject(t, do(t, c, RoleArtifact, limited.URL).err, ReasonRetryAfter)
}

func TestConcurrentTrafficIsRaceFree(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var n atomic.Int64
		base := newFakeHosts(func(req *http.Request) (*http.Response, error) {
			if n.Add(1)%3 == 0 {
				return status(500)(req)
			}
			return status(200)(req)
		})
		cfg := quick(2, time.Second)
		cfg.MaxHosts = 8
		cfg.Rolling.Enabled = true
		c, tr := client(t, base, cfg)
		var wg sync.WaitGroup
		for w := range 8 {
			wg.Go(func() {
				for i := range 200 {
					get(t, c, []string{"", RoleMetadata, RoleArtifact}[i%3], fmt.Sprintf("https://h%d.test/", (w+i)%12))
					if i%50 == 0 {
						time.Sleep(time.Second)
					}
				}
			})
		}
		wg.Go(func() {
			for i := range 20 {
				tr.Snapshot()
				tr.UpdateHostPolicy("h1.test", Policy{FailMax: 1 + i%3})
				tr.Reset("h2.test")
				time.Sleep(100 * time.Millisecond)
			}
		})
		wg.Wait()
	})
}

func TestTransportKeepsItsOwnCopyOfTheConfig(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		statuses := []int{500}
		cfg := Config{Hosts: map[string]Policy{"a.test": {FailMax: 1, FailureStatuses: statuses,
			Roles: map[string]Policy{RoleArtifact: {FailMax: 2}}}}}
		c, _ := client(t, newFakeHosts(status(500)), cfg)
		statuses[0] = 404 // the caller changes its Config afterwards
		cfg.Hosts["a.test"].Roles[RoleArtifact] = Policy{FailMax: 10}
		mustPass(t, do(t, c, "", "https://a.test/"), 500)
		mustReject(t, do(t, c, "", "https://a.test/").err, ReasonBreakerOpen)
		mustPass(t, do(t, c, RoleArtifact, "https://a.test/"), 500)
		mustPass(t, do(t, c, RoleArtifact, "https://a.test/"), 500)
		mustReject(t, do(t, c, RoleArtifact, "https://a.test/").err, ReasonBreakerOpen)
	})
}

// A base that returns (nil, nil) gives its half-open slot back and
// the caller an error.
func TestNilResponseAndNilError(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		base := newFakeHosts(status(500))
		c, tr := client(t, base, quick(1, 10*time.Second))
		get(t, c, "", "https://a.test/")
		mustReject(t, do(t, c, "", "https://a.test/").err, ReasonBreakerOpen)
		time.Sleep(10 * time.Second)
		base.set(func(*http.Request) (*http.Response, error) { return nil, nil })
		for range 3 { // each probe gives its slot back: never half-open-full
			resp, err := tr.RoundTrip(mustRequest(t, "https://a.test/"))
			if resp != nil || err == nil || errors.Is(err, ErrOpen) || !strings.Contains(err.Error(), "nil *Response") {
				t.Fatalf("RoundTrip = %v, %v", resp, err)
			}
		}
		base.set(status(200))
		mustPass(t, do(t, c, "", "https://a.test/"), 200)
		mustState(t, tr, "a.test", "", StateClosed)
	})
}

type idleCloser struct {
	roundTripperFunc
	closed atomic.Int32
}

func (c *idleCloser) CloseIdleConnections() { c.closed.Add(1) }

// CloseIdleConnections reaches a base that has the method, and does
// nothing on one that has not.
func TestCloseIdleConnectionsForwards(t *testing.T) {
	base := &idleCloser{roundTripperFunc: cannedBase(200)}
	tr, err := NewTransport(base)
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	(&http.Client{Transport: tr}).CloseIdleConnections()
	if base.closed.Load() != 1 {
		t.Fatal("CloseIdleConnections not forwarded")
	}
	tr2, _ := NewTransport(cannedBase(200)) // a base without it: no panic
	defer tr2.Close()
	tr2.CloseIdleConnections()
}

// FuzzTransport drives a Transport with a fuzzed policy and a fuzzed
// sequence of responses, Retry-After values, roles, hosts, operator calls
// and pauses, on a fake clock, and checks what must always hold: no panic,
// every rejection is an *OpenError with a known reason that never reached
// the base, and the counters add up.
func FuzzTransport(f *testing.F) {
	f.Add([]byte{3, 1, 1, 0, 0, 5, 0, 0, 5, 0, 0, 5, 0, 0, 9, 0, 0})
	f.Add([]byte{1, 2, 2, 1, 3, 1, 2, 0, 1, 200, 1, 0, 2, 0, 1, 7, 3, 3, 8, 1, 1})
	f.Add([]byte{2, 1, 1, 0x40, 0, 0, 6, 0, 0, 6, 0, 0, 6, 0, 0, 6, 6, 0, 255, 5, 0, 30, 0, 0, 5})
	f.Add([]byte("\x02\x01\x03\x01\xff\x00\x10\x20\x30\x40\x50\x60\x70\x80\x90\xa0"))
	statuses := []int{200, 204, 301, 404, 408, 429, 500, 502, 503, 504, 400, 451, 0}
	retryAfters := []string{"", "1", "0", "-3", "120", "99999999999999999999", "soon", "Wed, 21 Oct 2099 07:28:00 GMT", "Sun, 06 Nov 1994 08:49:37 GMT"}
	hosts := []string{"a.test", "B.test", "b.test.", "c.test:8443", "[::1]:8080", "xn--bcher-kva.example"}
	roles := []string{"", RoleMetadata, RoleArtifact}
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) < 4 {
			return
		}
		cfg := Config{
			MaxHosts: 1 + int(data[0]%8),
			Defaults: Policy{
				FailMax:          1 + int(data[0]%4),
				SuccessThreshold: 1 + int(data[1]%3),
				TrialCalls:       1 + int(data[2]%3),
				ResetTimeout:     time.Duration(1+data[3]%5) * time.Second,
				HalfOpenJitter:   time.Duration(data[1]%3) * 100 * time.Millisecond,
				RetryAfterCap:    time.Duration(data[2]%4) * time.Minute,
			},
			Rolling: Rolling{Enabled: data[3]&0x80 != 0, ThresholdFailures: 2, Window: 5 * time.Second, Cooldown: 3 * time.Second},
		}
		if cfg.Defaults.RetryAfterCap == 0 {
			cfg.Defaults.RetryAfterCap = -1
		}
		if data[3]&0x40 != 0 { // extremes: nothing may overflow
			huge := time.Duration(1<<63 - 1)
			cfg.Defaults.ResetTimeout, cfg.Defaults.HalfOpenJitter, cfg.Defaults.RetryAfterCap = huge, huge, huge
		}
		synctest.Test(t, func(t *testing.T) {
			var next int
			var reached, answered int
			base := newFakeHosts(func(req *http.Request) (*http.Response, error) {
				reached++
				code := statuses[next%len(statuses)]
				if code == 0 {
					return nil, errors.New("connection reset")
				}
				ra := retryAfters[(next/len(statuses))%len(retryAfters)]
				return status(code, "Retry-After", ra)(req)
			})
			tr, err := NewTransport(base, WithConfig(cfg))
			if err != nil {
				t.Fatalf("valid config rejected: %v", err)
			}
			defer tr.Close()
			var rejected int
			for i := 4; i+2 < len(data); i += 3 {
				op, a, b := data[i], int(data[i+1]), int(data[i+2])
				host := hosts[a%len(hosts)]
				switch op % 8 {
				case 5:
					time.Sleep(time.Duration(b%40) * 100 * time.Millisecond)
					continue
				case 6:
					tr.Open(host, time.Duration(b%10)*time.Second, "fuzz")
					continue
				case 7:
					tr.Reset(host)
					continue
				}
				next = b
				scheme := "https://"
				if a&1 == 0 {
					scheme = "http://"
				}
				req, _ := http.NewRequestWithContext(WithRole(t.Context(), roles[op%3]), http.MethodGet, scheme+host+"/", nil)
				before := reached
				resp, err := tr.RoundTrip(req)
				var oe *OpenError
				switch {
				case errors.As(err, &oe):
					rejected++
					if reached != before {
						t.Fatalf("rejected request %d reached the base", i)
					}
					switch oe.Reason {
					case ReasonBreakerOpen, ReasonHalfOpenFull, ReasonRetryAfter, ReasonRollingWindow, ReasonManual:
					default:
						t.Fatalf("unknown reason %q", oe.Reason)
					}
					if !errors.Is(err, ErrOpen) {
						t.Fatal("OpenError does not match ErrOpen")
					}
				case err == nil:
					answered++
					resp.Body.Close()
				}
			}
			var sum uint64
			for _, s := range tr.Snapshot() {
				if s.Requests != s.Successes+s.Failures+s.Neutral+s.Rejected {
					t.Fatalf("counters do not add up: %+v", s)
				}
				sum += s.Successes + s.Failures + s.Neutral
				if s.State < StateClosed || s.State > StateOpen {
					t.Fatalf("bad state %v", s.State)
				}
			}
			// Evicted entries take their counts with them, so the snapshot
			// can only undercount what reached the base.
			if sum > uint64(reached) {
				t.Fatalf("snapshot counts %d outcomes, base saw %d", sum, reached)
			}
		})
	})
}
