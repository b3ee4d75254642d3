package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/hostbreaker/hostbreaker"
)

const openUsage = `Usage: breaker open [-store URL] [-f] HOST [-for DURATION] [-reason TEXT]

Pauses HOST (every role) in every process that shares the store: their
Transports reject its requests with reason "manual" until the time is up or
"breaker close HOST". A host the store knows nothing of (no record,
published state, tuned override or journal event in the last 24 hours) is
refused with exit status 1, so that a typo pauses nothing; -f pauses it
all the same (a host not yet met).

HOST is a host name with an optional port, or a URL, normalized as the
Transports key hosts: a URL's default port is dropped (https://h:443/ is h),
a port given without a scheme is kept (h:443 is not h).
`

func runOpen(ctx context.Context, args []string, stdout, stderr io.Writer) (err error) {
	c := newCommand("open", openUsage)
	force := c.fs.Bool("f", false, "write even if the store knows nothing of HOST")
	d := c.fs.Duration("for", 5*time.Minute, "how long to pause the host; > 0")
	reason := c.fs.String("reason", "", "why, for whoever runs show (the record's note)")
	pos, err := c.parse(args, stdout)
	if errors.Is(err, errHelp) {
		return nil
	} else if err != nil {
		return err
	}
	if pos == "" {
		return usagef(c.fullUsage(), "open: missing HOST")
	}
	if *d <= 0 {
		return usagef(c.fullUsage(), "open: -for must be positive, not %v", *d)
	}
	if *d > hostbreaker.MaxOpen {
		return usagef(c.fullUsage(), "open: -for %v is longer than %v", *d, hostbreaker.MaxOpen)
	}
	host, err := hostArg("open", pos)
	if err != nil {
		return err
	}

	var r hostbreaker.Record
	err = c.withStore(ctx, stderr, *force, func(ctx context.Context, s hostbreaker.Store) (err error) {
		if err := checkKnown(ctx, s, host, *force); err != nil {
			return err
		}
		r, err = hostbreaker.OpenHost(ctx, s, now(), host, *d, *reason, source())
		return err
	})
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(stdout, "opened %s for %v until %s\n", host, *d, r.Until.UTC().Format(time.RFC3339))
	return err
}
