package hostbreaker

// Tests of what a Transport's poll costs the store (storePoller): the
// Redis store reads only what changed, measured on the wire.

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// redisProxy is a TCP proxy to the test Redis that counts, on the
// connections that never subscribed, the commands clients send and the
// bytes both ways.
type redisProxy struct {
	ln net.Listener

	mu    sync.Mutex
	conns []*proxyConn
}

type proxyConn struct {
	mu         sync.Mutex
	subscribed bool
	cmds       int
	names      map[string]int
	in, out    int64 // bytes client→server, server→client
}

func startRedisProxy(t *testing.T) *redisProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &redisProxy{ln: ln}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", testRedisAddr)
			if err != nil {
				c.Close()
				continue
			}
			pc := &proxyConn{names: map[string]int{}}
			p.mu.Lock()
			p.conns = append(p.conns, pc)
			p.mu.Unlock()
			pr, pw := io.Pipe()
			go pc.parse(pr)
			go func() {
				io.Copy(io.MultiWriter(s, pw, countWriter{pc, true}), c)
				pw.Close()
				s.Close()
			}()
			go func() {
				io.Copy(io.MultiWriter(c, countWriter{pc, false}), s)
				c.Close()
			}()
		}
	}()
	return p
}

type countWriter struct {
	pc *proxyConn
	in bool
}

func (w countWriter) Write(b []byte) (int, error) {
	w.pc.mu.Lock()
	if w.in {
		w.pc.in += int64(len(b))
	} else {
		w.pc.out += int64(len(b))
	}
	w.pc.mu.Unlock()
	return len(b), nil
}

// parse counts the RESP commands of a client's stream.
func (pc *proxyConn) parse(r io.Reader) {
	br := bufio.NewReader(r)
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			io.Copy(io.Discard, br)
			return
		}
		if !strings.HasPrefix(line, "*") {
			continue // an inline command: none here
		}
		n, _ := strconv.Atoi(strings.TrimSpace(line[1:]))
		var name string
		for i := range n {
			l, err := br.ReadString('\n')
			if err != nil {
				return
			}
			size, _ := strconv.Atoi(strings.TrimSpace(l[1:]))
			buf := make([]byte, size+2)
			if _, err := io.ReadFull(br, buf); err != nil {
				return
			}
			if i == 0 {
				name = strings.ToUpper(string(buf[:size]))
			}
		}
		pc.mu.Lock()
		pc.cmds++
		pc.names[name]++
		if name == "SUBSCRIBE" {
			pc.subscribed = true
		}
		pc.mu.Unlock()
	}
}

// proxyCount is what the non-subscribed connections carried.
type proxyCount struct {
	cmds    int
	in, out int64
	names   map[string]int
}

func (p *redisProxy) count() proxyCount {
	time.Sleep(50 * time.Millisecond) // the parser follows the stream
	p.mu.Lock()
	defer p.mu.Unlock()
	c := proxyCount{names: map[string]int{}}
	for _, pc := range p.conns {
		pc.mu.Lock()
		if !pc.subscribed {
			c.cmds += pc.cmds
			c.in += pc.in
			c.out += pc.out
			for k, v := range pc.names {
				c.names[k] += v
			}
		}
		pc.mu.Unlock()
	}
	return c
}

func (c proxyCount) minus(d proxyCount) proxyCount {
	out := proxyCount{cmds: c.cmds - d.cmds, in: c.in - d.in, out: c.out - d.out, names: map[string]int{}}
	for k, v := range c.names {
		if n := v - d.names[k]; n != 0 {
			out.names[k] = n
		}
	}
	return out
}

func (c proxyCount) String() string {
	var names []string
	for _, k := range slices.Sorted(mapKeys(c.names)) {
		names = append(names, fmt.Sprintf("%s×%d", k, c.names[k]))
	}
	return fmt.Sprintf("%d commands (%s), %d B sent, %d B received", c.cmds, strings.Join(names, " "), c.in, c.out)
}

func mapKeys(m map[string]int) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// TestRedisPollCost measures, on the wire, what a poll costs with 10,000
// hosts cooling down (and a process publishing their 10,000 states) and
// nothing changing: at most 5 commands and 2 KB, where reading everything
// (Records, Overrides, States: what a poll did before) costs 20,000
// commands and megabytes. With k hosts changed, a poll costs O(k): two
// commands per host. Its results are those of a full read.
func TestRedisPollCost(t *testing.T) {
	const hosts, k = 10000, 10
	// Long timeouts: reading everything of 10,000 hosts takes longer than
	// the store's default 500 ms on a loaded machine.
	rawURL := testRedisURL(t) + "&read_timeout=20s&write_timeout=20s"
	w, err := OpenStore(rawURL)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	ws := w.(*redisStore)
	ctx := context.Background()
	now := time.Now()
	until := now.Add(time.Hour)
	pipe := ws.client.Pipeline()
	var states []PublishedState
	for i := range hosts {
		host := fmt.Sprintf("h%05d.test", i)
		r := Record{Host: host, Reason: ReasonRetryAfter, Until: until, At: now, Source: "writer"}
		pipe.HSet(ctx, ws.key(redisKindCooldowns, host), slotCooldown, encodeRecord(r))
		pipe.PExpireAt(ctx, ws.key(redisKindCooldowns, host), until)
		pipe.ZAdd(ctx, ws.prefix+redisHostsIndex, redis.Z{Score: float64(ceilMilli(until)), Member: host})
		states = append(states, PublishedState{Source: "writer", Host: host, State: StateOpen, Until: until, Reason: ReasonRetryAfter})
		if i%500 == 499 {
			if _, err := pipe.Exec(ctx); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := w.PublishStates(ctx, "writer", states, time.Hour); err != nil {
		t.Fatal(err)
	}

	proxy := startRedisProxy(t)
	u, _ := url.Parse(rawURL)
	u.Host = proxy.ln.Addr().String()
	r, err := OpenStore(u.String())
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	rs := r.(*redisStore)
	select { // subscribed: a (re)subscription makes the next poll read everything
	case <-r.Changes():
	case <-time.After(10 * time.Second):
		t.Fatal("the store never subscribed")
	}
	first, err := rs.poll(ctx) // the first poll reads everything
	if err != nil {
		t.Fatal(err)
	}
	if len(first.records) != hosts || len(first.states) != hosts {
		t.Fatalf("first poll: %d records and %d states, want %d", len(first.records), len(first.states), hosts)
	}

	// Before: a poll read everything.
	c0 := proxy.count()
	recs, err := r.Records(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Overrides(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := r.States(ctx); err != nil {
		t.Fatal(err)
	}
	full := proxy.count().minus(c0)
	t.Logf("read everything (a poll before): %v", full)

	// Now: nothing changed.
	const polls = 5
	c1 := proxy.count()
	for range polls {
		got, err := rs.poll(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(got.records) != len(recs) || len(got.states) != hosts {
			t.Fatalf("poll: %d records and %d states, want %d and %d", len(got.records), len(got.states), len(recs), hosts)
		}
	}
	idle := proxy.count().minus(c1)
	perCmds, perBytes := float64(idle.cmds)/polls, float64(idle.in+idle.out)/polls
	t.Logf("a poll, nothing changed: %.1f commands, %.0f B (%d polls: %v)", perCmds, perBytes, polls, idle)
	if perCmds > 5 || perBytes > 2048 {
		t.Errorf("a poll with nothing changed costs %.1f commands and %.0f B, want at most 5 and 2 KB", perCmds, perBytes)
	}

	// k hosts change.
	for i := range k {
		host := fmt.Sprintf("h%05d.test", i)
		if err := w.Put(ctx, Record{Host: host, Reason: ReasonManual, Until: until.Add(time.Hour), At: time.Now(), Source: "writer"}); err != nil {
			t.Fatal(err)
		}
	}
	c2 := proxy.count()
	got, err := rs.poll(ctx)
	if err != nil {
		t.Fatal(err)
	}
	changed := proxy.count().minus(c2)
	t.Logf("a poll, %d hosts changed: %v", k, changed)
	if changed.cmds > 2+2*k+2 {
		t.Errorf("a poll after %d changes costs %d commands, want at most %d", k, changed.cmds, 2+2*k+2)
	}
	manual := 0
	for _, rec := range got.records {
		if rec.Reason == ReasonManual {
			manual++
		}
	}
	if manual != k || len(got.records) != hosts {
		t.Errorf("after %d changes the poll returns %d records, %d of them manual; want %d and %d", k, len(got.records), manual, hosts, k)
	}
}
