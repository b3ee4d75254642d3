package hostbreaker

// Tests of sharing.go's flush and store opening: Close and Events are
// bounded however many writes are pending and whatever the store does, and
// a store that fails to open is opened again.

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

// deadStore is a Store that never answers: every operation waits for its
// context to end and returns its error. It counts the Puts it was asked.
type deadStore struct {
	mu   sync.Mutex
	puts int
}

func (d *deadStore) wait(ctx context.Context) error { <-ctx.Done(); return ctx.Err() }

func (d *deadStore) Records(ctx context.Context) ([]Record, error) { return nil, d.wait(ctx) }
func (d *deadStore) Put(ctx context.Context, r Record) error {
	d.mu.Lock()
	d.puts++
	d.mu.Unlock()
	return d.wait(ctx)
}
func (d *deadStore) PublishStates(ctx context.Context, _ string, _ []PublishedState, _ time.Duration) error {
	return d.wait(ctx)
}
func (d *deadStore) States(ctx context.Context) ([]PublishedState, error) { return nil, d.wait(ctx) }
func (d *deadStore) AppendEvents(ctx context.Context, _ []Event, _ JournalLimits) (int, error) {
	return 0, d.wait(ctx)
}
func (d *deadStore) Events(ctx context.Context, _ time.Time) ([]Event, error) {
	return nil, d.wait(ctx)
}
func (d *deadStore) Overrides(ctx context.Context) (map[string]Policy, error) {
	return nil, d.wait(ctx)
}
func (d *deadStore) PutOverride(ctx context.Context, _ string, _ Policy) error { return d.wait(ctx) }
func (d *deadStore) PublishConfig(ctx context.Context, _ PublishedConfig, _ time.Duration) error {
	return d.wait(ctx)
}
func (d *deadStore) Configs(ctx context.Context) ([]PublishedConfig, error) { return nil, d.wait(ctx) }
func (d *deadStore) Changes() <-chan struct{}                               { return nil }
func (d *deadStore) Close() error                                           { return nil }

// With 150 hosts' cooldowns pending on a store that never answers, Events
// and Close each return within the store timeout plus a second (on the
// bubble's clock), where a timeout per record took 150 × 2s; requests
// never fail meanwhile.
func TestCloseAndEventsBoundedOnDeadStore(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		dead := &deadStore{}
		start := time.Now()
		tr, err := NewTransport(newFakeHosts(status(http.StatusOK)), WithStore(dead), WithConfig(Config{Store: StoreConfig{PollInterval: time.Second}}))
		if err != nil {
			t.Fatal(err)
		}
		if d := time.Since(start); d > storeTimeout+time.Second {
			t.Errorf("NewTransport took %v on a dead store", d)
		}
		const hosts = 150
		for i := range hosts {
			tr.Open(fmt.Sprintf("h%d.test", i), time.Hour, "maintenance")
		}
		time.Sleep(10 * time.Millisecond) // the flush is under way
		mustPass(t, do(t, &http.Client{Transport: tr}, "", "https://other.test/"), http.StatusOK)

		start = time.Now()
		evs := tr.Events(time.Time{})
		dEvents := time.Since(start)
		if dEvents > storeTimeout+time.Second {
			t.Errorf("Events took %v with %d writes pending on a dead store", dEvents, hosts)
		}
		if len(evs) < hosts {
			t.Errorf("Events returned %d events, want the %d cooldowns at least", len(evs), hosts)
		}
		time.Sleep(10 * time.Millisecond)
		start = time.Now()
		if err := tr.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		dClose := time.Since(start)
		if dClose > storeTimeout+time.Second {
			t.Errorf("Close took %v with %d writes pending on a dead store", dClose, hosts)
		}
		if tr.StoreErr() == nil {
			t.Error("StoreErr = nil on a dead store")
		}
		mustPass(t, do(t, &http.Client{Transport: tr}, "", "https://after-close.test/"), http.StatusOK)
		dead.mu.Lock()
		t.Logf("bubble clock: Events took %v, Close %v; %d Puts tried on the dead store", dEvents, dClose, dead.puts)
		dead.mu.Unlock()
	})
}

// blackhole is a TCP listener that accepts connections and never answers.
func blackhole(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return l.Addr().String()
}

// The same against a real Redis store whose server accepts connections and
// never answers, on the real clock: 120 hosts pending.
func TestCloseBoundedOnBlackholedRedis(t *testing.T) {
	addr := blackhole(t)
	tr, err := NewTransport(newFakeHosts(status(http.StatusOK)), WithConfig(Config{Store: StoreConfig{
		URL: "redis://" + addr + "/0?prefix=blackhole:", PollInterval: time.Second}}))
	if err != nil {
		t.Fatal(err)
	}
	const hosts = 120
	for i := range hosts {
		tr.Open(fmt.Sprintf("h%d.test", i), time.Hour, "")
	}
	time.Sleep(100 * time.Millisecond) // the flush is under way
	start := time.Now()
	tr.Events(time.Time{})
	if d := time.Since(start); d > storeTimeout+time.Second {
		t.Errorf("Events took %v with %d writes pending on a blackholed Redis", d, hosts)
	}
	start = time.Now()
	if err := tr.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	d := time.Since(start)
	if d > storeTimeout+time.Second {
		t.Errorf("Close took %v with %d writes pending on a blackholed Redis", d, hosts)
	}
	t.Logf("Close took %v with %d writes pending on a blackholed Redis", d.Round(time.Millisecond), hosts)
}

// A bbolt store whose directory is missing is opened again, with backoff,
// until it opens: then StoreErr clears, and what was decided before is
// written for the other processes.
func TestStoreOpenRetried(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "later")
	path := filepath.Join(dir, "hb.db")
	synctest.Test(t, func(t *testing.T) {
		a, err := NewTransport(newFakeHosts(status(http.StatusOK)), WithConfig(Config{Store: StoreConfig{URL: path, PollInterval: time.Second}}))
		if err != nil {
			t.Fatal(err)
		}
		defer a.Close()
		if err := a.StoreErr(); err == nil || !strings.Contains(err.Error(), "later") {
			t.Fatalf("StoreErr = %v, want the missing directory", err)
		}
		a.Open("early.test", time.Hour, "decided before the store opened")
		time.Sleep(1500 * time.Millisecond) // one attempt, which fails
		synctest.Wait()
		if a.StoreErr() == nil {
			t.Fatal("StoreErr cleared while the directory is still missing")
		}
		if n := a.sh.errOps[opOpen].Load(); n != 1 {
			t.Errorf("%d failed opens counted after one retry, want 1", n)
		}
		if err := os.Mkdir(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		time.Sleep(2 * time.Second) // the next attempt, after a doubled backoff
		synctest.Wait()
		if err := a.StoreErr(); err != nil {
			t.Fatalf("StoreErr = %v after the directory was created", err)
		}
		b := sharedTransport(t, path, time.Second, newFakeHosts(status(http.StatusOK)), Config{})
		if v := verdict(b, "early.test", ""); v != ReasonManual {
			t.Errorf("another Transport on the store: %q for the cooldown decided before it opened, want manual", v)
		}
		a.Open("late.test", time.Hour, "")
		time.Sleep(1100 * time.Millisecond)
		synctest.Wait()
		if v := verdict(b, "late.test", ""); v != ReasonManual {
			t.Errorf("another Transport on the store: %q for a cooldown decided after it opened, want manual", v)
		}
	})
}
