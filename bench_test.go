package hostbreaker

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"path/filepath"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// BenchmarkRoundTrip compares the bare base transport with the same base
// wrapped by hostbreaker, in the closed (healthy) state, without and with a
// store attached: the overhead per request is the difference in one run.
//
// With 10,000 hosts the requests go in creation order (sequential in
// memory, which the hardware prefetches) and, as a crawler's would, in a
// shuffled order ("10000-shuffled"), where each lookup's memory is a
// cache miss.
func BenchmarkRoundTrip(b *testing.B) {
	for _, hosts := range []int{1, 10000, -10000} {
		name := fmt.Sprint(hosts)
		shuffle := hosts < 0
		if shuffle {
			hosts = -hosts
			name = fmt.Sprintf("%d-shuffled", hosts)
		}
		reqs := benchRequests(b, hosts)
		for _, variant := range []string{"base", "hostbreaker", "hostbreaker+bbolt", "hostbreaker+redis"} {
			var rt http.RoundTripper = cannedBase(200)
			if variant != "base" {
				cfg := Config{MaxHosts: 2 * hosts}
				switch variant {
				case "hostbreaker+bbolt":
					cfg.Store.URL = filepath.Join(b.TempDir(), "hb.db")
				case "hostbreaker+redis":
					if cfg.Store.URL = benchRedisURL(b); cfg.Store.URL == "" {
						b.Log("no Redis at 127.0.0.1:6379: skipping the Redis variant")
						continue
					}
				}
				tr, err := NewTransport(rt, WithConfig(cfg))
				if err != nil {
					b.Fatal(err)
				}
				b.Cleanup(func() { tr.Close() })
				for _, r := range reqs { // warm: entries exist, as in steady state
					tr.RoundTrip(r)
				}
				if variant != "hostbreaker" {
					// The fleet's start at each host lasts fleetStartLength
					// (BenchmarkFleetStartTurn measures a turn of it); the
					// steady state is after it, once a request has found it over.
					time.Sleep(fleetStartLength + 500*time.Millisecond)
					for _, r := range reqs {
						tr.RoundTrip(r)
					}
				}
				rt = tr
			}
			if shuffle {
				rand.New(rand.NewPCG(1, 2)).Shuffle(len(reqs), func(i, j int) { reqs[i], reqs[j] = reqs[j], reqs[i] })
			}
			b.Run(fmt.Sprintf("hosts=%s/%s/seq", name, variant), func(b *testing.B) { roundTrips(b, rt, reqs) })
			b.Run(fmt.Sprintf("hosts=%s/%s/parallel", name, variant), func(b *testing.B) {
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

// roundTrips sends reqs through rt in turn, b.N requests in all.
func roundTrips(b *testing.B, rt http.RoundTripper, reqs []*http.Request) {
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
}

// benchRedisURL returns a Redis store URL under a fresh prefix, or "" when
// no Redis answers.
func benchRedisURL(b *testing.B) string {
	c, err := net.DialTimeout("tcp", "127.0.0.1:6379", 200*time.Millisecond)
	if err != nil {
		return ""
	}
	c.Close()
	prefix := fmt.Sprintf("hbbench:%d:", time.Now().UnixNano())
	b.Cleanup(func() { // the fleet's start keys live 15 minutes: not past the benchmark
		rc := redis.NewClient(&redis.Options{Addr: "127.0.0.1:6379"})
		defer rc.Close()
		ctx := context.Background()
		iter := rc.Scan(ctx, 0, globEscape(prefix)+"*", 1000).Iterator()
		for iter.Next(ctx) {
			rc.Del(ctx, iter.Val())
		}
	})
	return "redis://127.0.0.1:6379/0?prefix=" + prefix
}

// BenchmarkRoundTripLimited measures rate-limited hosts against the same
// hosts unlimited and the bare base, with 10,000 hosts in shuffled order:
// "1pct-limited" gives 100 of them (every hundredth) a configured rate,
// "all-limited" gives every host one. The rates (10,000 r/s per host) are
// far above what one host gets here, so no request waits: what is
// measured is the cost of a limiter's turn, not a wait.
func BenchmarkRoundTripLimited(b *testing.B) {
	const hosts = 10000
	reqs := benchRequests(b, hosts)
	rand.New(rand.NewPCG(1, 2)).Shuffle(len(reqs), func(i, j int) { reqs[i], reqs[j] = reqs[j], reqs[i] })
	for _, variant := range []string{"base", "unlimited", "1pct-limited", "all-limited"} {
		var rt http.RoundTripper = cannedBase(200)
		if variant != "base" {
			cfg := Config{MaxHosts: 2 * hosts}
			switch variant {
			case "1pct-limited":
				cfg.Hosts = map[string]Policy{}
				for i := 0; i < hosts; i += 100 {
					cfg.Hosts[fmt.Sprintf("h%d.example.org", i)] = Policy{Rate: 10000}
				}
			case "all-limited":
				cfg.Defaults.Rate = 10000
			}
			tr, err := NewTransport(rt, WithConfig(cfg))
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { tr.Close() })
			for _, r := range reqs {
				tr.RoundTrip(r)
			}
			rt = tr
		}
		b.Run("hosts=10000-shuffled/"+variant, func(b *testing.B) { roundTrips(b, rt, reqs) })
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

// BenchmarkRoundTripHeaders is BenchmarkRoundTrip's one host with a
// response that carries the headers a real one does (eight, none of them
// a rate-limit header), which the Transport looks up on every response.
func BenchmarkRoundTripHeaders(b *testing.B) {
	h := http.Header{}
	for _, k := range []string{"Content-Type", "Content-Length", "Date", "Server", "Cache-Control", "Etag", "Vary", "Connection"} {
		h.Set(k, "x")
	}
	resp := &http.Response{StatusCode: 200, Body: http.NoBody, Header: h}
	base := roundTripperFunc(func(*http.Request) (*http.Response, error) { return resp, nil })
	req := benchRequests(b, 1)[0]
	for _, variant := range []string{"base", "hostbreaker"} {
		var rt http.RoundTripper = base
		if variant != "base" {
			tr, err := NewTransport(base)
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { tr.Close() })
			rt = tr
		}
		b.Run(variant, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := rt.RoundTrip(req); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
