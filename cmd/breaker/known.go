package main

// This file holds the check that open and close make before writing: does
// the store know the host at all? A typo ("nonexistent.example") would
// otherwise be "closed" with exit status 0.

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/hostbreaker/hostbreaker"
)

// knownWindow is how far back the journal is read for a host's events.
const knownWindow = 24 * time.Hour

// checkKnown returns an error unless the store knows host: a record of it
// (a cooldown, a trip, a reset), a state a process published, a tuned
// override of it, or an event of it in the journal's last knownWindow. The
// error names the known hosts closest to host, if any. force skips the
// check.
func checkKnown(ctx context.Context, s hostbreaker.Store, host string, force bool) error {
	if force {
		return nil
	}
	known := map[string]bool{}
	recs, err := s.Records(ctx)
	if err != nil {
		return err
	}
	for _, r := range recs {
		known[r.Host] = true
	}
	states, err := s.States(ctx)
	if err != nil {
		return err
	}
	for _, ps := range states {
		known[ps.Host] = true
	}
	ov, err := s.Overrides(ctx)
	if err != nil {
		return err
	}
	for k := range ov {
		known[k] = true
	}
	if !known[host] {
		events, err := s.Events(ctx, now().Add(-knownWindow))
		if err != nil {
			return err
		}
		for _, ev := range events {
			known[ev.Host] = true
		}
	}
	if known[host] {
		return nil
	}
	msg := fmt.Sprintf("the store knows nothing of %s (no record, published state, tuned override or event in the last %v); nothing written; -f forces it",
		host, knownWindow)
	if near := nearest(host, known); len(near) > 0 {
		msg += "; did you mean " + strings.Join(near, " or ") + "?"
	}
	return fmt.Errorf("%s", msg)
}

// nearest returns the known hosts within an edit distance of 2 of host, at
// most three, closest first.
func nearest(host string, known map[string]bool) []string {
	type cand struct {
		name string
		d    int
	}
	var cs []cand
	for k := range known {
		if k == "" || strings.HasPrefix(k, "*") {
			continue
		}
		if d := editDistance(host, k); d <= 2 {
			cs = append(cs, cand{k, d})
		}
	}
	slices.SortFunc(cs, func(a, b cand) int {
		if a.d != b.d {
			return a.d - b.d
		}
		return strings.Compare(a.name, b.name)
	})
	var out []string
	for _, c := range cs[:min(len(cs), 3)] {
		out = append(out, c.name)
	}
	return out
}

// editDistance returns the Damerau–Levenshtein distance (adjacent swaps
// count 1) between a and b, by bytes.
func editDistance(a, b string) int {
	prev2 := make([]int, len(b)+1)
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
			if i > 1 && j > 1 && a[i-1] == b[j-2] && a[i-2] == b[j-1] {
				cur[j] = min(cur[j], prev2[j-2]+1)
			}
		}
		prev2, prev, cur = prev, cur, prev2
	}
	return prev[len(b)]
}
