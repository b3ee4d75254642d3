package main

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/hostbreaker/hostbreaker"
)

const closeUsage = `Usage: breaker close [-store URL] [-f] HOST

Resets HOST in every process that shares the store: its cooldowns are
deleted, and each process clears them and closes the host's breakers within
its poll interval. A host the store knows nothing of (no record, published
state, tuned override or journal event in the last 24 hours) is refused
with exit status 1: a typo must not say "closed". -f forces it.

HOST is a host name with an optional port, or a URL, normalized as the
Transports key hosts: a URL's default port is dropped (https://h:443/ is h),
a port given without a scheme is kept (h:443 is not h).
`

func runClose(ctx context.Context, args []string, stdout, stderr io.Writer) (err error) {
	c := newCommand("close", closeUsage)
	force := c.fs.Bool("f", false, "write even if the store knows nothing of HOST")
	pos, err := c.parse(args, stdout)
	if errors.Is(err, errHelp) {
		return nil
	} else if err != nil {
		return err
	}
	if pos == "" {
		return usagef(c.fullUsage(), "close: missing HOST")
	}
	host, err := hostArg("close", pos)
	if err != nil {
		return err
	}

	err = c.withStore(ctx, stderr, *force, func(ctx context.Context, s hostbreaker.Store) error {
		if err := checkKnown(ctx, s, host, *force); err != nil {
			return err
		}
		_, err := hostbreaker.ResetHost(ctx, s, now(), host, source())
		return err
	})
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(stdout, "closed %s: every process sharing the store resets it within its poll interval\n", host)
	return err
}
