package hostbreaker

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestSharedTurnsLetDemandFlow: two processes share a store and the
// fleet's limit of a host, 10 r/s, that a third process learnt. B sends a
// request a second; A sends all it can. A takes its turns from the bucket
// the fleet shares, so it gets the turns B leaves: about 9 r/s, where
// pacing alone at its share of the limit (half, B sending too) gave it at
// most 5. Together they send no more than the rates they are paced at
// (which grow past the limit as a limiter probes, alone or in a fleet).
// Real time (the store's clock paces), bounds generous; run with -v for
// the comparison with each process pacing alone.
func TestSharedTurnsLetDemandFlow(t *testing.T) { turnStores(t, testSharedTurnsLetDemandFlow) }

func testSharedTurnsLetDemandFlow(t *testing.T, url string) {
	shared := measureDemandFlow(t, url, fleetTweaks{})
	if testing.Verbose() {
		alone := measureDemandFlow(t, url, fleetTweaks{noSharedTurns: true})
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

func measureDemandFlow(t *testing.T, rawURL string, tw fleetTweaks) demandFlow {
	const host, limit = "api.test", 10.0
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
	peer := openTurnStore(t, rawURL)
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

// BenchmarkSharedTurn measures a turn of a host's bucket shared in a
// store: in a bbolt store's turns file (a read and a write of its slot
// under the file's lock), and on the test Redis (one EVALSHA round trip on
// loopback). It is what a request to a host the fleet paces costs on top
// of its own limiter.
func BenchmarkSharedTurn(b *testing.B) {
	benchTurnStores(b, func(b *testing.B, s turnTaker) {
		ctx := context.Background()
		b.ReportAllocs()
		for b.Loop() {
			if _, _, err := s.takeTurn(ctx, "api.test", time.Nanosecond, time.Minute); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkFleetStartTurn measures a turn of the fleet's start at a host,
// in a bbolt store's turns file and on the test Redis: what a request to a
// host the fleet knows nothing of costs on top of the rest while the
// start lasts. Each turn is of a start of its own, at its first turn, so
// that none waits.
func BenchmarkFleetStartTurn(b *testing.B) {
	benchTurnStores(b, func(b *testing.B, s turnTaker) {
		st := s.(starter)
		ctx := context.Background()
		b.ReportAllocs()
		for i := 0; b.Loop(); i++ {
			r, err := st.startTurn(ctx, fmt.Sprintf("h%d.test", i), "bench", startTake, time.Minute)
			if err != nil || r.code != startRamp || r.wait != 0 {
				b.Fatalf("startTurn: %+v, %v", r, err)
			}
		}
	})
}

// benchTurnStores runs f on a fresh bbolt store and on the test Redis.
func benchTurnStores(b *testing.B, f func(b *testing.B, s turnTaker)) {
	b.Run("bbolt", func(b *testing.B) { f(b, boltTestOpen(b, boltTestPath(b))) })
	b.Run("redis", func(b *testing.B) { f(b, benchRedisStore(b)) })
}

// TestSharedTurnFailurePacesAlone: when a turn of the shared bucket fails
// (here the store's client is closed under the Transport), the request is
// paced by the process's own limiter and served, never failed; the
// failure is counted as a store error of operation "turn", and the
// requests after it do not ask the store again for turnRetry.
func TestSharedTurnFailurePacesAlone(t *testing.T) { turnStores(t, testSharedTurnFailurePacesAlone) }

func testSharedTurnFailurePacesAlone(t *testing.T, rawURL string) {
	const host = "api.test"
	var sent atomic.Int64
	base := roundTripperFunc(func(req *http.Request) (*http.Response, error) {
		sent.Add(1)
		return &http.Response{StatusCode: http.StatusOK, Header: http.Header{}, Body: http.NoBody, Request: req}, nil
	})
	opts := []Option{WithConfig(Config{Store: StoreConfig{URL: rawURL, PollInterval: 100 * time.Millisecond}})}
	a := sharedTransportWith(t, base, opts...)
	b := sharedTransportWith(t, base, opts...)
	peer := openTurnStore(t, rawURL)
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

// TestFleetStartSpreadsTheFirstRequests: twelve processes of four workers
// share a store and start at one instant on a host that allows
// 5 r/s with a burst of 5 (nginx's limit_req, no Retry-After). Without
// the fleet's start, their first 48 requests reach it at once and it
// refuses 40 or more of them; with it, the fleet's requests come at a
// rate that doubles from 4 r/s, the first refusal stops it for all, and
// the host refuses far fewer in the whole 3 s, while serving about what
// it allows. Real time (the store's clock paces the start), bounds
// generous.
func TestFleetStartSpreadsTheFirstRequests(t *testing.T) {
	turnStores(t, testFleetStartSpreadsTheFirstRequests)
}

func testFleetStartSpreadsTheFirstRequests(t *testing.T, url string) {
	without := measureFleetStart(t, url, fleetTweaks{noFleetStart: true})
	with := measureFleetStart(t, url+"2", fleetTweaks{})
	t.Logf("3 s, 12 processes × 4 workers, 5 r/s burst 5: without the start %d served, %d refused; with it %d served, %d refused",
		without.served, without.rejected, with.served, with.rejected)
	if without.rejected < 30 {
		t.Errorf("without the fleet's start the host refused %d requests: want at least 30 (the test no longer shows what the start is for)", without.rejected)
	}
	if with.rejected > without.rejected/2 || with.rejected > 20 {
		t.Errorf("with the fleet's start the host refused %d requests (%d without): want at most half as many, and at most 20", with.rejected, without.rejected)
	}
	if with.served < 10 {
		t.Errorf("with the fleet's start the host served %d requests in 3 s: want at least 10 of the 20 it allows", with.served)
	}
}

// fleetStartCounts is what measureFleetStart counted at the host.
type fleetStartCounts struct{ served, rejected int }

func measureFleetStart(t *testing.T, rawURL string, tw fleetTweaks) fleetStartCounts {
	host := &leakyBucket{rate: 5, burst: 5, nodelay: true}
	// 20 ms away, so that the workers' first requests are all on their
	// way before the first answer, as over a network.
	far := roundTripperFunc(func(req *http.Request) (*http.Response, error) {
		time.Sleep(20 * time.Millisecond)
		return host.RoundTrip(req)
	})
	trs := make([]*Transport, 12)
	for i := range trs {
		trs[i] = sharedTransportWith(t, far, WithConfig(Config{Store: StoreConfig{URL: rawURL, Required: true}}), withFleetTweaks(tw))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	start := make(chan struct{})
	var wg sync.WaitGroup
	for _, tr := range trs {
		for range 4 {
			wg.Go(func() {
				<-start
				for ctx.Err() == nil {
					var oe *OpenError
					if err := send(ctx, tr, "api.test"); errors.As(err, &oe) {
						select { // rejected: back when its turn or the cooldown ends
						case <-time.After(max(time.Until(oe.Until), 100*time.Millisecond)):
						case <-ctx.Done():
						}
					}
				}
			})
		}
	}
	close(start)
	wg.Wait()
	served, rejected := host.counts()
	return fleetStartCounts{served, rejected}
}

// TestFleetStartEndsOnAHealthyHost: two processes of eight workers share a
// store and send all they can to a host that never refuses. The
// fleet's start paces their first second (its turns add up to about 9
// then), rejects none of their requests, and is over after
// fleetStartLength: from then on they send as they come, hundreds a
// second.
func TestFleetStartEndsOnAHealthyHost(t *testing.T) { turnStores(t, testFleetStartEndsOnAHealthyHost) }

func testFleetStartEndsOnAHealthyHost(t *testing.T, rawURL string) {
	log := newSendLog()
	trs := []*Transport{
		sharedTransportWith(t, log, WithConfig(Config{Store: StoreConfig{URL: rawURL, Required: true}})),
		sharedTransportWith(t, log, WithConfig(Config{Store: StoreConfig{URL: rawURL, Required: true}})),
	}
	for _, tr := range trs { // both take part from the first turn: a process alone is not paced
		if err := send(context.Background(), tr, "api.test"); err != nil {
			t.Fatal(err)
		}
	}
	sendAll(t, trs, 8, fleetStartLength+1500*time.Millisecond)
	sent := log.sent()
	if len(sent) == 0 {
		t.Fatal("nothing sent")
	}
	var first, last int
	for _, at := range sent {
		switch rel := at - sent[0]; {
		case rel < time.Second:
			first++
		case rel >= fleetStartLength+500*time.Millisecond:
			last++
		}
	}
	t.Logf("sent in the first second: %d; in the last second: %d", first, last)
	if first > 12 {
		t.Errorf("%d requests sent in the start's first second: want at most 12 (its turns add up to 8.7)", first)
	}
	if last < 200 {
		t.Errorf("%d requests sent in the second after the start: want at least 200 (sent as they come)", last)
	}
}

// TestSlowTurnsSlowsEveryProcess: a throttle's slow-down of a host's
// shared bucket, by one process, spaces the turns every process takes
// there at once: at half the rate, the interval doubles. A second
// slow-down while the first lasts changes nothing (it would compound). A
// hold (a Retry-After's cooldown) puts every process's next turn after
// it.
// The waits come from the store's clock and the turns are taken
// microseconds apart, so the bounds hold on any machine.
func TestSlowTurnsSlowsEveryProcess(t *testing.T) { turnStores(t, testSlowTurnsSlowsEveryProcess) }

func testSlowTurnsSlowsEveryProcess(t *testing.T, rawURL string) {
	a, b := openTurnStore(t, rawURL).(turnTaker), openTurnStore(t, rawURL).(turnTaker)
	ctx := context.Background()
	const interval = 100 * time.Millisecond
	take := func(s turnTaker) time.Duration {
		t.Helper()
		wait, ok, err := s.takeTurn(ctx, "api.test", interval, time.Minute)
		if err != nil || !ok {
			t.Fatalf("takeTurn: %v, %v", ok, err)
		}
		return wait
	}
	w0, w1 := take(a), take(b)
	if d := w1 - w0; d < 90*time.Millisecond || d > 110*time.Millisecond {
		t.Fatalf("turns %v apart before the slow-down, want %v", d, interval)
	}
	if err := a.slowTurns(ctx, "api.test", 0.5, time.Minute, 0); err != nil {
		t.Fatal(err)
	}
	if err := a.slowTurns(ctx, "api.test", 0.1, time.Minute, 0); err != nil {
		t.Fatal(err)
	}
	w2, w3 := take(b), take(a)
	if d := w3 - w2; d < 180*time.Millisecond || d > 220*time.Millisecond {
		t.Errorf("turns %v apart after the slow-down to half, want %v", d, 2*interval)
	}
	// A Retry-After of 5 s that A obeys holds B's turns too; a shorter
	// hold after it changes nothing.
	if err := a.slowTurns(ctx, "api.test", 1, 0, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := a.slowTurns(ctx, "api.test", 1, 0, time.Second); err != nil {
		t.Fatal(err)
	}
	if w := take(b); w < 4900*time.Millisecond || w > 5100*time.Millisecond {
		t.Errorf("B's turn %v from now after A's hold of 5 s, want 5 s", w)
	}
}

// benchRedisStore opens a store on the test Redis under a prefix of its
// own, whose keys are deleted when the benchmark ends.
func benchRedisStore(b *testing.B) *redisStore {
	url := benchRedisURL(b)
	if url == "" {
		b.Fatal("no Redis at 127.0.0.1:6379")
	}
	st, err := OpenStore(url)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { st.Close() })
	return st.(*redisStore)
}

// turnStores runs f with the URL of each store that holds shared turns
// and the fleet's start: a fresh bbolt file, and one Redis server under a
// fresh prefix (the turns of a Redis store are one script, whatever its
// topology). A measurement that needs a second fresh store appends "2"
// to the URL.
func turnStores(t *testing.T, f func(t *testing.T, url string)) {
	t.Run("bbolt", func(t *testing.T) { f(t, filepath.Join(t.TempDir(), "hb.db")) })
	t.Run("redis", func(t *testing.T) { f(t, testRedisURL(t)) })
}

// openTurnStore opens the store at url, and closes it when the test ends.
func openTurnStore(t *testing.T, url string) Store {
	t.Helper()
	st, err := OpenStore(url)
	if err != nil {
		t.Fatalf("OpenStore(%q): %v", url, err)
	}
	t.Cleanup(func() { _ = st.Close() })
	return st
}

// TestFleetStartStopRateAtTheSend: a throttle's stop of the fleet's start
// takes the start's rate when the throttled request was sent, not when its
// answer came (the rate doubles every 500 ms: a stop a loaded machine's
// 500 ms late would double the fleet's first fact). Two starts stopped
// 600 ms after their first turns: one for a request sent then, one for a
// request sent 500 ms before. The store's clock counts; bounds generous.
func TestFleetStartStopRateAtTheSend(t *testing.T) {
	turnStores(t, func(t *testing.T, url string) {
		s := openTurnStore(t, url).(starter)
		ctx := context.Background()
		for _, h := range []string{"now.test", "late.test"} {
			if r, err := s.startTurn(ctx, h, "p", startTake, time.Minute); err != nil || r.code != startRamp {
				t.Fatalf("take: %+v, %v", r, err)
			}
		}
		time.Sleep(600 * time.Millisecond)
		now, err1 := s.startTurn(ctx, "now.test", "p", startStop, 0)
		late, err2 := s.startTurn(ctx, "late.test", "p", startStop, 500*time.Millisecond)
		if err1 != nil || err2 != nil {
			t.Fatal(err1, err2)
		}
		t.Logf("reached: %.2f r/s at the stop, %.2f r/s 500 ms before", now.reached, late.reached)
		// 4 r/s doubling every 500 ms: 9.2 r/s at 600 ms; 4.6 at 100 ms.
		if now.reached < 9 || late.reached < fleetStartRate || late.reached > 7 {
			t.Errorf("reached %.2f r/s at the stop (want ≥ 9) and %.2f for a request sent 500 ms before (want 4 to 7)", now.reached, late.reached)
		}
	})
}

// TestFleetStartLeavesALoneProcess: a process alone in the fleet's start
// at a host (the only one the store counted) is not paced: four workers
// send hundreds of requests to a healthy host in its first second, where
// a fleet's start would allow about 9.
func TestFleetStartLeavesALoneProcess(t *testing.T) {
	turnStores(t, func(t *testing.T, url string) {
		log := newSendLog()
		tr := sharedTransportWith(t, log, WithConfig(Config{Store: StoreConfig{URL: url, Required: true}}))
		sendAll(t, []*Transport{tr}, 4, time.Second)
		if n := len(log.sent()); n < 100 {
			t.Errorf("%d requests sent in the first second by a process alone: want at least 100 (not paced)", n)
		}
	})
}

// sendAll sends all it can to api.test through each of trs, with workers
// goroutines each, for d; a rejected request fails the test.
func sendAll(t *testing.T, trs []*Transport, workers int, d time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	var wg sync.WaitGroup
	for _, tr := range trs {
		for range workers {
			wg.Go(func() {
				for ctx.Err() == nil {
					if err := send(ctx, tr, "api.test"); err != nil && ctx.Err() == nil {
						t.Errorf("request rejected: %v", err)
						return
					}
				}
			})
		}
	}
	wg.Wait()
}

// TestThrottleSlowsTheFleetsBucket: when A, one of two processes pacing a
// host by the fleet's shared bucket, is throttled, the turns that any
// process takes of the bucket (here a third store handle's, 100 ms apart
// at its rate) show what the throttle taught. Without Retry-After they are
// spaced twice as far for the slow-down's time: the others lower their
// rates only at their next poll, and a limiter that counts a burst
// refuses until the fleet goes well under its rate. With Retry-After: 1
// the bucket gives no turn for the second, and then turns at its rate:
// the host's limiter drained while it said to wait (see slowFleet for
// what the halving cost on nginx). Real time (the store's clock); bounds
// generous.
func TestThrottleSlowsTheFleetsBucket(t *testing.T) {
	turnStores(t, func(t *testing.T, url string) {
		for _, tc := range []struct {
			name       string
			retryAfter string
			hold       time.Duration // the least wait for the peer's first turn
			spacing    time.Duration // between the peer's two turns
		}{
			{"no Retry-After", "", 0, 200 * time.Millisecond},
			{"Retry-After", "1", 500 * time.Millisecond, 100 * time.Millisecond},
		} {
			t.Run(tc.name, func(t *testing.T) {
				host := strings.ReplaceAll(strings.ToLower(tc.name), " ", "-") + ".test"
				measureSlowedBucket(t, url, host, tc.retryAfter, tc.hold, tc.spacing)
			})
		}
	})
}

func measureSlowedBucket(t *testing.T, url, host, retryAfter string, hold, spacing time.Duration) {
	var refuse atomic.Bool
	base := roundTripperFunc(func(req *http.Request) (*http.Response, error) {
		resp := &http.Response{StatusCode: http.StatusOK, Header: http.Header{}, Body: http.NoBody, Request: req}
		if refuse.Load() {
			resp.StatusCode = http.StatusTooManyRequests
			if retryAfter != "" {
				resp.Header.Set("Retry-After", retryAfter)
			}
		}
		return resp, nil
	})
	// Without the fleet's start: a throttle in it stops it instead (the
	// limiters then take the start's fact), and this test is of the
	// bucket's pace after it.
	opts := []Option{WithConfig(Config{Store: StoreConfig{URL: url, PollInterval: time.Second}}), withFleetTweaks(fleetTweaks{noFleetStart: true})}
	a := sharedTransportWith(t, base, opts...)
	b := sharedTransportWith(t, base, opts...)
	peer := openTurnStore(t, url)
	err := peer.PublishStates(context.Background(), "peer", []PublishedState{{
		// Learnt 10 s ago: a throttle within a second of it would be
		// of its episode.
		Host: host, State: StateClosed, FleetLimit: 10, FleetThrottled: time.Now().Add(-10 * time.Second), FleetSource: "peer",
	}}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	// Both send until each sees the other sending and paces at its share
	// of the fact, and then nothing for settleDelay: a throttle sooner
	// after the last adoption of the fact only pauses the limiter (see
	// limiter.throttle).
	deadline := time.Now().Add(20 * time.Second)
	for {
		send(context.Background(), a, host)
		send(context.Background(), b, host)
		fa, okA := a.fleetRate(host)
		fb, okB := b.fleetRate(host)
		if okA && okB && fa.others > 0 && fb.others > 0 && rateOf(a, host) >= 0.95*5 && rateOf(b, host) >= 0.95*5 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the processes did not take their shares within 20 s: A %+v, B %+v", fa, fb)
		}
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(time.Duration(settleDelay))
	refuse.Store(true)
	send(context.Background(), a, host)
	// The slow-down goes to the store on a goroutine of A's, and lasts
	// two polls (2 s): it is there once A's host is no longer slowing.
	h := a.reg.host(host)
	for h.slowing.Load() {
		time.Sleep(time.Millisecond)
	}
	turns := peer.(turnTaker)
	ctx := context.Background()
	const interval = 100 * time.Millisecond
	w0, ok0, err0 := turns.takeTurn(ctx, host, interval, 5*time.Second)
	w1, ok1, err1 := turns.takeTurn(ctx, host, interval, 5*time.Second)
	if err0 != nil || err1 != nil || !ok0 || !ok1 {
		t.Fatalf("peer's turns: %v %v, %v %v", ok0, err0, ok1, err1)
	}
	if w0 < hold {
		t.Errorf("peer's first turn %v from now, want at least %v (the hold)", w0, hold)
	}
	if d := w1 - w0; d < spacing*9/10 || d > spacing*11/10 {
		t.Errorf("peer's turns %v apart after A's throttle, want %v", d, spacing)
	}
}

// TestFleetStartIsOverOnceALimiterPaces: a process that took part in the
// fleet's start at a host, and whose limiter then learnt the fleet's
// limit from a poll (here a peer's fact of 100 r/s, learnt 10 s before),
// sends to the host through its limiter: a throttle of one of those
// requests is learnt by its limiter, as any other (here about 37 r/s, β
// times its estimate; before, the throttle of a process alone under the
// fleet's fact made a fact of β times the rate refused, 70, and B paced
// about 50).
// Such requests do not go through the start, so their throttles do not
// stop it. Before, each one asked the stopped start's record (it lives
// 15 minutes) and joined the start again (joinStart: the start's two
// processes count among those sending for 3 s, and its fact is offered
// to the limiter), and B paced about 25 r/s after the same throttle.
// Real time (the stores' clocks), bounds generous.
func TestFleetStartIsOverOnceALimiterPaces(t *testing.T) {
	turnStores(t, func(t *testing.T, url string) {
		const host = "api.test"
		var refuse atomic.Bool
		base := roundTripperFunc(func(req *http.Request) (*http.Response, error) {
			resp := &http.Response{StatusCode: http.StatusOK, Header: http.Header{}, Body: http.NoBody, Request: req}
			if refuse.Load() {
				resp.StatusCode = http.StatusTooManyRequests
			}
			return resp, nil
		})
		b := sharedTransportWith(t, base, WithConfig(Config{Store: StoreConfig{URL: url, Required: true, PollInterval: 100 * time.Millisecond}}))
		if err := send(context.Background(), b, host); err != nil { // B takes part in the start
			t.Fatal(err)
		}
		peer := openTurnStore(t, url)
		ctx := context.Background()
		if _, err := peer.(starter).startTurn(ctx, host, "peer", startTake, time.Minute); err != nil { // and the peer
			t.Fatal(err)
		}
		if r, err := peer.(starter).startTurn(ctx, host, "peer", startStop, 0); err != nil || r.reached <= 0 || r.procs != 2 {
			t.Fatalf("peer's stop: %+v, %v; want the rate reached and 2 processes", r, err)
		}
		err := peer.PublishStates(ctx, "peer", []PublishedState{{
			Host: host, State: StateClosed, FleetLimit: 100, FleetThrottled: time.Now().Add(-10 * time.Second), FleetSource: "peer",
		}}, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		for deadline := time.Now().Add(10 * time.Second); rateOf(b, host) < 95; time.Sleep(10 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("B's limiter did not take the fleet's limit within 10 s: %.2f r/s", rateOf(b, host))
			}
		}
		// Requests through the limiter, then one refused, a while after
		// the adoption (a throttle within settleDelay of it only pauses).
		for range 20 {
			if err := send(ctx, b, host); err != nil {
				t.Fatal(err)
			}
		}
		time.Sleep(time.Duration(settleDelay))
		refuse.Store(true)
		send(ctx, b, host)
		time.Sleep(500 * time.Millisecond) // a stop would have been answered by now (it has 250 ms)
		r := rateOf(b, host)
		t.Logf("B paces %.2f r/s after a throttle at 100 r/s", r)
		if r < 32 {
			t.Errorf("B paces %.2f r/s after a throttle at 100 r/s: want at least 32 (its own throttle's, β times what it was served: about 37), not a share of the stopped start's (about 25)", r)
		}
	})
}

// TestFleetBucketRateHoldsWhileTheRowsComeIn: B and 23 other processes
// take part in the fleet's start at a host, which one of them stops after
// a second. B joins the fleet's first fact (a quarter of the rate
// reached, about 4 r/s), and its polls then show rows of the others that
// lag: one process's, sending at 0.02 r/s, while the start's processes
// are still coming in; or, past the start's 3 s, all 23, at 0.001 r/s
// each (rates from before they joined the fact). Sending all it can for
// 1.5 s, B takes the bucket's turns at the start's rate, or at β times
// the fleet's limit. Before, it took them at its own share plus the rows
// it saw, 0.19 r/s: its first turn booked the bucket 5 s ahead for every
// process (24 processes on bbolt sent nothing for 2–4 s after the start,
// and 48 on Redis 0–1 r/s for a second or two). Real time (the stores'
// clocks), bounds generous.
func TestFleetBucketRateHoldsWhileTheRowsComeIn(t *testing.T) {
	for _, c := range []struct {
		name  string
		rows  int           // of the others, each sending at rate
		rate  float64       //
		after time.Duration // from B's joining the fact to its sending
	}{
		{"in the start's window", 1, 0.02, 0},
		{"after it", 23, 0.001, time.Duration(startProcsFor)},
	} {
		t.Run(c.name, func(t *testing.T) {
			turnStores(t, func(t *testing.T, url string) { testBucketRateWhileRowsComeIn(t, url, c.rows, c.rate, c.after) })
		})
	}
}

func testBucketRateWhileRowsComeIn(t *testing.T, url string, rows int, rate float64, after time.Duration) {
	const host, procs = "api.test", 24
	log := newSendLog()
	b := sharedTransportWith(t, log, WithConfig(Config{Store: StoreConfig{URL: url, Required: true, PollInterval: 100 * time.Millisecond}}))
	ctx := context.Background()
	if err := send(ctx, b, host); err != nil { // B takes part in the start
		t.Fatal(err)
	}
	peer := openTurnStore(t, url)
	for i := 1; i < procs; i++ {
		if _, err := peer.(starter).startTurn(ctx, host, fmt.Sprintf("p%d", i), startTake, time.Minute); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(time.Second)
	r, err := peer.(starter).startTurn(ctx, host, "p1", startStop, 0)
	if err != nil || r.procs != procs {
		t.Fatalf("p1's stop: %+v, %v; want %d processes", r, err, procs)
	}
	if err := send(ctx, b, host); err != nil { // B joins the fact
		t.Fatal(err)
	}
	joined := time.Now()
	for i := 1; i <= rows; i++ {
		ps := PublishedState{Host: host, State: StateClosed, Sending: true, Rate: rate, LastMax: rate, Throttled: joined}
		if i == 1 {
			ps.FleetLimit, ps.FleetThrottled, ps.FleetSource, ps.FleetStart = r.reached/4, joined, "p1", true
		}
		if err := peer.PublishStates(ctx, fmt.Sprintf("p%d", i), []PublishedState{ps}, time.Hour); err != nil {
			t.Fatal(err)
		}
	}
	for deadline := time.Now().Add(2 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if fr, ok := b.fleetRate(host); ok && fr.others >= float64(rows)*rate*0.999 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("B's polls did not show the others' rows within 2 s")
		}
	}
	time.Sleep(time.Until(joined.Add(after)))
	before := len(log.sent())
	crawl(t, b, "https://"+host+"/", 2, 1500*time.Millisecond)
	sent := len(log.sent()) - before
	t.Logf("the start reached %.1f r/s (fact %.2f, B's share %.3f); %d rows at %.3f r/s; B sent %d requests in 1.5 s",
		r.reached, r.reached/4, r.reached/4/procs, rows, rate, sent)
	if want := int(r.reached / 4 * 1.5 / 2); sent < want {
		t.Errorf("B sent %d requests in 1.5 s, the fleet's limit %.2f r/s: want at least %d (half of it)", sent, r.reached/4, want)
	}
}

// TestFleetStartFactIsTheStartsBracket: B and a peer take part in the
// fleet's start at a host, which the peer stops; B's next request joins
// the start's fact and is refused. The fact B's throttle teaches the
// fleet is the start's bracket, and B publishes it so (FleetStart): a
// fact that agrees with it will not be known. Before, B flagged it only
// when the bracket was above its own limiter's last max times the
// processes, and the limiter that joinStart gave its share of the bracket
// gave the bracket again: in traced runs of 24 processes no copy of the
// start's fact said it was the start's.
func TestFleetStartFactIsTheStartsBracket(t *testing.T) {
	turnStores(t, func(t *testing.T, url string) {
		const host = "api.test"
		var refuse atomic.Bool
		log := newSendLog()
		log.next = func(int) (int, http.Header) {
			if refuse.Load() {
				return http.StatusTooManyRequests, http.Header{}
			}
			return 0, nil
		}
		b := sharedTransportWith(t, log, WithConfig(Config{Store: StoreConfig{URL: url, Required: true, PollInterval: 100 * time.Millisecond}}))
		ctx := context.Background()
		if err := send(ctx, b, host); err != nil { // B takes part in the start
			t.Fatal(err)
		}
		peer := openTurnStore(t, url)
		if _, err := peer.(starter).startTurn(ctx, host, "peer", startTake, time.Minute); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Second)
		if r, err := peer.(starter).startTurn(ctx, host, "peer", startStop, 0); err != nil || r.procs != 2 {
			t.Fatalf("peer's stop: %+v, %v; want 2 processes", r, err)
		}
		refuse.Store(true)
		send(ctx, b, host) // B joins the fact, and is refused
		var fact PublishedState
		for deadline := time.Now().Add(5 * time.Second); fact.FleetLimit == 0; time.Sleep(20 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatal("B published no fact within 5 s of its throttle")
			}
			states, err := peer.States(ctx)
			if err != nil {
				t.Fatal(err)
			}
			for _, s := range states {
				if s.Host == host && s.FleetLimit > 0 {
					fact = s
				}
			}
		}
		t.Logf("B's fact: %.2f r/s, from %s, the start's %v, known %v", fact.FleetLimit, fact.FleetSource, fact.FleetStart, fact.FleetKnown)
		if !fact.FleetStart || fact.FleetKnown {
			t.Errorf("B published the fact its throttle after the start taught (%.2f r/s) as the start's %v, known %v; want the start's, not known",
				fact.FleetLimit, fact.FleetStart, fact.FleetKnown)
		}
	})
}
