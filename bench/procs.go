package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hostbreaker/hostbreaker"
	"github.com/redis/go-redis/v9"
)

// childFlag, as the first argument, makes the bench binary a client
// process of scenario 7 (see runChild). It is not in -help.
const childFlag = "-bench-child"

// redisAddr is the Redis of the hostbreaker+redis variant.
const redisAddr = "127.0.0.1:6379"

// procVariants are the clients of scenario 7: each peer as it is, and
// hostbreaker alone in each process, then sharing a bbolt file, then Redis.
func procVariants() []variant {
	var vs []variant
	for _, c := range clients {
		vs = append(vs, variant{name: c.name, c: c})
	}
	hb, _ := clientNamed("hostbreaker")
	return append(vs,
		variant{name: "hostbreaker+bbolt", c: hb, store: "bbolt"},
		variant{name: "hostbreaker+redis", c: hb, store: "redis"},
		variant{name: "hostbreaker+cluster", c: hb, store: "cluster"})
}

// childReport is what a client process of scenario 7 prints on stdout, as
// JSON: its client-side counts. The table shows nginx's counts.
type childReport struct {
	OK        int64 `json:"ok"`
	TooMany   int64 `json:"too_many"`    // 429s received
	Other     int64 `json:"other"`       // other statuses
	Rejected  int64 `json:"rejected"`    // errors matching hostbreaker.ErrOpen
	Errors    int64 `json:"errors"`      // other errors (timeouts, the peers' rejections)
	LateMs    int64 `json:"late_ms"`     // how late the process was ready for the common start
	EndUnixMs int64 `json:"end_unix_ms"` // when its load ended
}

// procs returns scenario 7 (and 13) against the nginx zone l: o.procs
// processes of one client against one nginx zone (5 r/s, burst 5, with
// or without Retry-After), all starting at the same instant. nginx limits
// per client address, so they share the limit; hostbreaker's processes
// share nothing ("hostbreaker"), a bbolt file, a Redis key prefix, or a
// Redis Cluster of three primaries that the variant starts for itself.
func procs(l nginxLimit) func(variant, options) (Result, error) {
	return func(v variant, o options) (Result, error) { return runProcs(l, v, o) }
}

// runProcs runs scenario 7 against the nginx zone l.
func runProcs(l nginxLimit, v variant, o options) (Result, error) {
	if _, err := nginxBinary(); err != nil {
		return Result{Skipped: err.Error()}, nil
	}
	self, err := os.Executable()
	if err != nil {
		return Result{}, err
	}
	var storeURL string
	switch v.store {
	case "bbolt":
		dir, err := os.MkdirTemp("", "hostbreaker-bench-bbolt-")
		if err != nil {
			return Result{}, err
		}
		defer os.RemoveAll(dir)
		storeURL = filepath.Join(dir, "hostbreaker.db")
	case "redis":
		c, err := net.DialTimeout("tcp", redisAddr, time.Second)
		if err != nil {
			return Result{Skipped: "no Redis at " + redisAddr}, nil
		}
		c.Close()
		prefix := fmt.Sprintf("hostbreaker-bench-%d-%d:", os.Getpid(), time.Now().UnixNano())
		storeURL = "redis://" + redisAddr + "/0?prefix=" + prefix
		defer deleteRedisPrefix(prefix)
	case "cluster":
		url, stop, err := startCluster()
		if err != nil {
			return Result{Skipped: "no Redis Cluster: " + err.Error()}, nil
		}
		defer stop()
		storeURL = url
	}
	srv, err := startNginx(l)
	if err != nil {
		return Result{}, err
	}
	defer srv.stop()

	// The processes start at one instant, 2 s and 0.1 s per process from
	// now: time to start the processes and for each NewTransport to read
	// its store (48 processes opening one bbolt file take turns on its lock).
	start := time.Now().Add(2*time.Second + time.Duration(o.procs)*100*time.Millisecond).Truncate(time.Millisecond)
	args := []string{childFlag,
		"-client", v.c.name, "-addr", srv.addr, "-store", storeURL,
		"-start", strconv.FormatInt(start.UnixMilli(), 10), "-duration", o.duration.String(),
		"-workers", strconv.Itoa(o.workers), "-open", o.openFor.String(), "-timeout", o.timeout.String()}
	reports := make([]childReport, o.procs)
	errs := make([]error, o.procs)
	var wg sync.WaitGroup
	for i := range o.procs {
		wg.Go(func() {
			var out bytes.Buffer
			cmd := exec.Command(self, args...)
			cmd.Stdout, cmd.Stderr = &out, os.Stderr
			if err := cmd.Run(); err != nil {
				errs[i] = fmt.Errorf("client process %d: %w", i, err)
				return
			}
			if err := json.Unmarshal(out.Bytes(), &reports[i]); err != nil {
				errs[i] = fmt.Errorf("client process %d: report %q: %w", i, out.String(), err)
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return Result{}, err
	}
	var end int64
	var client childReport
	for _, r := range reports {
		end = max(end, r.EndUnixMs)
		client.OK += r.OK
		if r.LateMs > 0 {
			fmt.Fprintf(os.Stderr, "bench: %s: a client process was ready %d ms after the common start\n", v.name, r.LateMs)
		}
	}
	n, err := srv.counts(l.retryAfter())
	if err != nil {
		return Result{}, err
	}
	if client.OK != n.ok {
		fmt.Fprintf(os.Stderr, "bench: %s: the client processes counted %d 200s, nginx logged %d (a request can time out client-side after nginx answered it)\n", v.name, client.OK, n.ok)
	}
	r := n.result(l.allowed(), l.retryAfter(), float64(end-start.UnixMilli())/1000)
	r.Procs = o.procs
	return r, nil
}

// runChild is a client process of scenario 7: it waits for the common
// start, loads the server through its client until start + duration, and
// prints a childReport.
func runChild(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("bench child", flag.ContinueOnError)
	name := fs.String("client", "", "client name")
	addr := fs.String("addr", "", "nginx address")
	storeURL := fs.String("store", "", "hostbreaker's store URL")
	startMs := fs.Int64("start", 0, "common start, Unix milliseconds")
	dur := fs.Duration("duration", 0, "length of the load")
	workers := fs.Int("workers", 8, "worker goroutines")
	openFor := fs.Duration("open", 60*time.Second, "how long a breaker stays open")
	timeout := fs.Duration("timeout", 2*time.Second, "http.Client timeout")
	if err := fs.Parse(args); err != nil {
		return err
	}
	c, ok := clientNamed(*name)
	if !ok {
		return fmt.Errorf("no client %q", *name)
	}
	// A store is required; 24 or 48 processes opening one bbolt file at
	// once can time out on its lock: try again a few times before the
	// common start.
	var rt http.RoundTripper
	var closeRT func()
	var err error
	for attempt := 1; ; attempt++ {
		rt, closeRT, err = c.wrap(newBase(*addr, *workers), setup{openFor: *openFor, storeURL: *storeURL})
		if err == nil || time.Until(time.UnixMilli(*startMs)) < 300*time.Millisecond {
			break
		}
		time.Sleep(time.Duration(50+rand.IntN(100*min(attempt, 5))) * time.Millisecond)
	}
	if err != nil {
		return err
	}
	start := time.UnixMilli(*startMs)
	var rep childReport
	if late := time.Since(start); late > 0 {
		rep.LateMs = late.Milliseconds()
	}
	time.Sleep(time.Until(start))
	var okN, tooMany, other, rejected, errN atomic.Int64
	load(rt, *addr, *workers, time.Until(start.Add(*dur)), *timeout,
		func(int64) string { return "http://" + limitedHost + "/ok.txt" },
		func(oc outcome) {
			switch {
			case errors.Is(oc.err, hostbreaker.ErrOpen):
				rejected.Add(1)
			case oc.err != nil:
				errN.Add(1)
			case oc.status == http.StatusOK:
				okN.Add(1)
			case oc.status == http.StatusTooManyRequests:
				tooMany.Add(1)
			default:
				other.Add(1)
			}
		})
	rep.EndUnixMs = time.Now().UnixMilli()
	closeRT()
	rep.OK, rep.TooMany, rep.Other, rep.Rejected, rep.Errors = okN.Load(), tooMany.Load(), other.Load(), rejected.Load(), errN.Load()
	return json.NewEncoder(stdout).Encode(rep)
}

// deleteRedisPrefix deletes the keys a run left under prefix.
func deleteRedisPrefix(prefix string) {
	rdb := redis.NewClient(&redis.Options{Addr: redisAddr})
	defer rdb.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	iter := rdb.Scan(ctx, 0, prefix+"*", 1000).Iterator()
	var keys []string
	for iter.Next(ctx) {
		keys = append(keys, iter.Val())
	}
	if err := iter.Err(); err != nil {
		fmt.Fprintf(os.Stderr, "bench: redis: scan %s*: %v\n", prefix, err)
		return
	}
	if len(keys) > 0 {
		if err := rdb.Del(ctx, keys...).Err(); err != nil {
			fmt.Fprintf(os.Stderr, "bench: redis: delete %d keys under %s: %v\n", len(keys), prefix, err)
		}
	}
}
