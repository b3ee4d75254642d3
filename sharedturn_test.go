package hostbreaker

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"sync/atomic"
	"testing"
	"time"
)

// TestSharedTurnsLetDemandFlow: two processes share a Redis store and the
// fleet's limit of a host, 10 r/s, that a third process learnt. B sends a
// request a second; A sends all it can. A takes its turns from the bucket
// the fleet shares, so it gets the turns B leaves: about 9 r/s, where
// pacing alone at its share of the limit (half, B sending too) gave it at
// most 5. Together they send no more than the rates they are paced at
// (which grow past the limit as a limiter probes, alone or in a fleet).
// Real time (Redis's clock paces), bounds generous; run with -v for the
// comparison with each process pacing alone.
func TestSharedTurnsLetDemandFlow(t *testing.T) {
	shared := measureDemandFlow(t, fleetTweaks{})
	if testing.Verbose() {
		alone := measureDemandFlow(t, fleetTweaks{noSharedTurns: true})
		t.Logf("each process pacing alone at its share: A %.1f r/s, A and B %.1f r/s, paced at %.1f r/s", alone.a, alone.total, alone.paced)
	}
	t.Logf("shared turns: A %.1f r/s, A and B %.1f r/s, paced at %.1f r/s", shared.a, shared.total, shared.paced)
	if shared.a < 7 {
		t.Errorf("A sent %.1f r/s of a fleet limit of 10 r/s that B used 1 r/s of: want at least 7 (the turns B leaves)", shared.a)
	}
	if shared.total > 1.1*shared.paced {
		t.Errorf("A and B sent %.1f r/s together: want at most the %.1f r/s they were paced at together", shared.total, shared.paced)
	}
}

// demandFlow is what measureDemandFlow measured: A's rate, A's and B's,
// and the sum of their limiters' rates at the end (the highest: no
// throttle lowers them).
type demandFlow struct{ a, total, paced float64 }

func measureDemandFlow(t *testing.T, tw fleetTweaks) demandFlow {
	const host, limit = "api.test", 10.0
	rawURL := testRedisURL(t)
	var sentA, sentB atomic.Int64
	counting := func(n *atomic.Int64) http.RoundTripper {
		return roundTripperFunc(func(req *http.Request) (*http.Response, error) {
			n.Add(1)
			return &http.Response{StatusCode: http.StatusOK, Header: http.Header{}, Body: http.NoBody, Request: req}, nil
		})
	}
	opts := []Option{WithConfig(Config{Store: StoreConfig{URL: rawURL, PollInterval: 100 * time.Millisecond}}), withFleetTweaks(tw)}
	a := sharedTransportWith(t, counting(&sentA), opts...)
	b := sharedTransportWith(t, counting(&sentB), opts...)
	peer := openTestRedis(t, rawURL)
	now := time.Now()
	err := peer.PublishStates(context.Background(), "peer", []PublishedState{{
		Host: host, State: StateClosed, FleetLimit: limit, FleetThrottled: now, FleetSource: "peer",
	}}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan struct{}, 2)
	go func() { // B: a request a second
		defer func() { done <- struct{}{} }()
		for ctx.Err() == nil {
			send(ctx, b, host)
			select {
			case <-time.After(time.Second):
			case <-ctx.Done():
			}
		}
	}()
	go func() { // A: all it can, two at a time
		defer func() { done <- struct{}{} }()
		sem := make(chan struct{}, 2)
		for ctx.Err() == nil {
			sem <- struct{}{}
			go func() {
				defer func() { <-sem }()
				var oe *OpenError
				if err := send(ctx, a, host); errors.As(err, &oe) && !oe.Until.IsZero() {
					select {
					case <-time.After(time.Until(oe.Until)):
					case <-ctx.Done():
					}
				}
			}()
		}
		for range cap(sem) {
			sem <- struct{}{}
		}
	}()
	// Both processes see the fleet's limit and each other, and their
	// limiters have grown back to their shares (the curve of a throttle
	// adopted a moment ago starts at β times the share).
	deadline := time.Now().Add(20 * time.Second)
	for {
		fa, okA := a.fleetRate(host)
		fb, okB := b.fleetRate(host)
		if okA && okB && fa.others > 0 && fb.others > 0 && rateOf(a, host) >= 0.95*limit/2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the processes did not take the fleet's limit within 20 s: A %+v, B %+v", fa, fb)
		}
		time.Sleep(50 * time.Millisecond)
	}
	const d = 4 * time.Second
	a0, b0 := sentA.Load(), sentB.Load()
	time.Sleep(d)
	a1, b1 := sentA.Load(), sentB.Load()
	paced := rateOf(a, host) + rateOf(b, host)
	cancel()
	<-done
	<-done
	return demandFlow{a: float64(a1-a0) / d.Seconds(), total: float64(a1-a0+b1-b0) / d.Seconds(), paced: paced}
}

// BenchmarkSharedTurn measures a turn of a host's bucket shared on the
// test Redis (one EVALSHA round trip on loopback): what a request to a
// host the fleet paces costs on top of its own limiter.
func BenchmarkSharedTurn(b *testing.B) {
	prefix := fmt.Sprintf("hbbench:%d-%d:", os.Getpid(), time.Now().UnixNano())
	st, err := OpenStore("redis://" + testRedisAddr + "/0?prefix=" + prefix)
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	s := st.(*redisStore)
	ctx := context.Background()
	defer s.client.Del(ctx, s.key(redisKindTurn, "api.test"))
	b.ReportAllocs()
	for b.Loop() {
		if _, _, err := s.takeTurn(ctx, "api.test", time.Nanosecond, time.Minute); err != nil {
			b.Fatal(err)
		}
	}
}

// TestSharedTurnFailurePacesAlone: when a turn of the shared bucket fails
// (here the store's client is closed under the Transport), the request is
// paced by the process's own limiter and served, never failed; the
// failure is counted as a store error of operation "turn", and the
// requests after it do not ask the store again for turnRetry.
func TestSharedTurnFailurePacesAlone(t *testing.T) {
	const host = "api.test"
	rawURL := testRedisURL(t)
	var sent atomic.Int64
	base := roundTripperFunc(func(req *http.Request) (*http.Response, error) {
		sent.Add(1)
		return &http.Response{StatusCode: http.StatusOK, Header: http.Header{}, Body: http.NoBody, Request: req}, nil
	})
	opts := []Option{WithConfig(Config{Store: StoreConfig{URL: rawURL, PollInterval: 100 * time.Millisecond}})}
	a := sharedTransportWith(t, base, opts...)
	b := sharedTransportWith(t, base, opts...)
	peer := openTestRedis(t, rawURL)
	if err := peer.PublishStates(context.Background(), "peer", []PublishedState{{
		Host: host, State: StateClosed, FleetLimit: 20, FleetThrottled: time.Now(), FleetSource: "peer",
	}}, time.Hour); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(20 * time.Second); ; {
		send(context.Background(), a, host)
		send(context.Background(), b, host)
		if fa, ok := a.fleetRate(host); ok && fa.others > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("A did not see B sending under the fleet's limit within 20 s")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if n := a.sh.errOps[opTurn].Load(); n != 0 {
		t.Fatalf("%d failed turns before the store failed", n)
	}
	a.sh.store.Close()
	before := sent.Load()
	for i := range 5 {
		if err := send(context.Background(), a, host); err != nil {
			t.Fatalf("request %d after the store failed: %v", i, err)
		}
	}
	if got := sent.Load() - before; got != 5 {
		t.Errorf("%d of 5 requests reached the host", got)
	}
	if n := a.sh.errOps[opTurn].Load(); n != 1 {
		t.Errorf("%d failed turns counted: want 1 (the requests after it pace alone for %v without asking)", n, turnRetry)
	}
}
