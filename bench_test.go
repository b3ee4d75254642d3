package hostbreaker

import (
	"context"
	"fmt"
	"net/http"
	"runtime"
	"sync/atomic"
	"testing"
	"time"
)

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

// BenchmarkRoundTrip compares the bare base transport with the same base
// wrapped by hostbreaker, in the closed (healthy) state: the overhead per
// request is the difference of the two in one run.
func BenchmarkRoundTrip(b *testing.B) {
	for _, hosts := range []int{1, 10000} {
		reqs := benchRequests(b, hosts)
		for _, wrapped := range []bool{false, true} {
			name := "base"
			if wrapped {
				name = "hostbreaker"
			}
			var rt http.RoundTripper = cannedBase(200)
			if wrapped {
				tr, err := NewTransport(rt, WithConfig(Config{MaxHosts: 2 * hosts}))
				if err != nil {
					b.Fatal(err)
				}
				b.Cleanup(func() { tr.Close() })
				for _, r := range reqs { // warm: entries exist, as in steady state
					tr.RoundTrip(r)
				}
				rt = tr
			}
			b.Run(fmt.Sprintf("hosts=%d/%s/seq", hosts, name), func(b *testing.B) {
				b.ReportAllocs()
				i := 0
				for b.Loop() {
					if _, err := rt.RoundTrip(reqs[i]); err != nil {
						b.Fatal(err)
					}
					if i++; i == len(reqs) {
						i = 0
					}
				}
			})
			b.Run(fmt.Sprintf("hosts=%d/%s/parallel", hosts, name), func(b *testing.B) {
				b.ReportAllocs()
				var next atomic.Int64
				b.RunParallel(func(pb *testing.PB) {
					i := int(next.Add(7919)) % len(reqs)
					for pb.Next() {
						if _, err := rt.RoundTrip(reqs[i]); err != nil {
							b.Fatal(err)
						}
						if i++; i == len(reqs) {
							i = 0
						}
					}
				})
			})
		}
	}
}

// BenchmarkReject measures a rejection by an open breaker.
func BenchmarkReject(b *testing.B) {
	tr, err := NewTransport(cannedBase(500), WithConfig(Config{Defaults: Policy{FailMax: 1, ResetTimeout: time.Hour}}))
	if err != nil {
		b.Fatal(err)
	}
	defer tr.Close()
	req := benchRequests(b, 1)[0]
	tr.RoundTrip(req) // opens the breaker
	b.ReportAllocs()
	for b.Loop() {
		if _, err := tr.RoundTrip(req); err == nil {
			b.Fatal("not rejected")
		}
	}
}

// BenchmarkEntryMemory reports the heap held per idle (host, role) entry.
func BenchmarkEntryMemory(b *testing.B) {
	const hosts = 10000
	for b.Loop() {
		b.StopTimer()
		reqs := benchRequests(b, hosts)
		tr, err := NewTransport(cannedBase(200), WithConfig(Config{MaxHosts: hosts}))
		if err != nil {
			b.Fatal(err)
		}
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		b.StartTimer()
		for _, r := range reqs {
			tr.RoundTrip(r)
		}
		b.StopTimer()
		runtime.GC()
		runtime.ReadMemStats(&after)
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/hosts, "B/entry")
		runtime.KeepAlive(reqs)
		tr.Close()
		b.StartTimer()
	}
}
