package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/hostbreaker/hostbreaker"
)

const serveUsage = `Usage: breaker serve [-store URL] [-addr 127.0.0.1:8080] [-open-for 5m]

Serves the live status page of every process that shares the store, at
http://ADDR/: the cooldowns in the store, the breaker states the processes
published and their latest events, read from the store and its journal
about once a second (see hostbreaker.StoreStatusHandler). status.json is
the snapshot (the rows of "breaker show -json", with counters) and events
a text/event-stream of the journal's state changes, cooldowns, resets and
rate changes.

The page is read-only unless $HOSTBREAKER_TOKEN is set: then it shows open
and close buttons, and carries out an open (for -open-for) or a close only
when the request carries that token. The token is read from the
environment, not a flag, so that it does not show in the process list.
Serve on a loopback address, or behind a proxy that authenticates: the
page shows every host the fleet talks to.

Stops on SIGINT or SIGTERM.
`

func runServe(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	c := newCommand("serve", serveUsage)
	addr := c.fs.String("addr", "127.0.0.1:8080", "address to listen on (host:port)")
	openFor := c.fs.Duration("open-for", 5*time.Minute, "how long the page's open button pauses a host; > 0")
	pos, err := c.parse(args, stdout)
	if errors.Is(err, errHelp) {
		return nil
	} else if err != nil {
		return err
	}
	if pos != "" {
		return usagef(c.fullUsage(), "serve: unexpected argument %q", pos)
	}
	if *openFor <= 0 || *openFor > hostbreaker.MaxOpen {
		return usagef(c.fullUsage(), "serve: -open-for must be positive and at most %v, not %v", hostbreaker.MaxOpen, *openFor)
	}
	store, err := c.openStore(stderr, false)
	if err != nil {
		return err
	}
	defer store.Close()
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return fmt.Errorf("serve: %w", err)
	}
	opts := &hostbreaker.StatusHandlerOptions{Token: os.Getenv("HOSTBREAKER_TOKEN"), OpenFor: *openFor}
	mode := "read-only"
	if opts.Token != "" {
		mode = "open and close with $HOSTBREAKER_TOKEN"
	}
	srv := &http.Server{
		Handler:           hostbreaker.StoreStatusHandler(store, opts),
		ReadHeaderTimeout: 10 * time.Second,
		// The event streams end with ctx, so that Shutdown does not wait
		// for them.
		BaseContext: func(net.Listener) context.Context { return ctx },
	}
	fmt.Fprintf(stdout, "breaker: status page on http://%s/ (%s)\n", ln.Addr(), mode)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	select {
	case err := <-served:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		srv.Close()
	}
	return nil
}
