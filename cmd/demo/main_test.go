package main

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestRun runs a short demo (the sick periods scale with -duration) into a
// buffer, as into a pipe: it checks that the output has one table of the
// hostbreaker phase, one summary and one conclusion, and that hostbreaker
// spared the sick hosts without hurting the healthy one.
func TestRun(t *testing.T) {
	if testing.Short() {
		t.Skip("runs for about 6 s")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var out, errOut bytes.Buffer
	start := time.Now()
	err := run(ctx, []string{"-duration", "3s", "-workers", "4"}, &out, &errOut)
	t.Logf("run took %v; output:\n%s", time.Since(start).Round(time.Millisecond), out.String())
	if err != nil {
		t.Fatalf("run: %v (stderr: %s)", err, errOut.String())
	}
	if errOut.Len() > 0 {
		t.Errorf("unexpected stderr: %s", errOut.String())
	}

	// Progress blocks and the live table start with "… reached the
	// servers: healthy N, …".
	if n := strings.Count(out.String(), "reached the servers:"); n != 1 {
		t.Errorf("%d progress blocks or tables, want the one table of the hostbreaker phase", n)
	}
	if n := countLines(out.String(), "host role state until reason requests ok failed neutral rejected"); n != 1 {
		t.Errorf("%d live table headers, want 1", n)
	}
	// Every row of the live table adds up, and the healthy host has no
	// failure: the requests in flight when the phase ends are cancelled
	// (neutral), not failed by a deadline.
	_, table, _ := strings.Cut(out.String(), "reached the servers:")
	table, _, _ = strings.Cut(table, "events:")
	rowsSeen := 0
	for line := range strings.Lines(table) {
		f := strings.Fields(line)
		if len(f) != 10 || !slices.Contains(hostNames[:], f[0]) {
			continue
		}
		rowsSeen++
		var n [5]int64
		for i := range n {
			v, err := strconv.ParseInt(f[5+i], 10, 64)
			if err != nil {
				t.Fatalf("live row %q: %v", line, err)
			}
			n[i] = v
		}
		if n[0] != n[1]+n[2]+n[3]+n[4] {
			t.Errorf("live row %q: requests %d != ok + failed + neutral + rejected", line, n[0])
		}
		if f[0] == "healthy" && n[2] != 0 {
			t.Errorf("live row %q: the healthy host failed %d requests", line, n[2])
		}
	}
	if rowsSeen < 3 {
		t.Errorf("live table: %d host rows, want at least 3", rowsSeen)
	}
	for _, s := range []string{"Summary:", "Conclusion:"} {
		if n := strings.Count(out.String(), s); n != 1 {
			t.Errorf("%q appears %d times, want once", s, n)
		}
	}

	rows := summaryRows(t, out.String())
	for _, name := range hostNames {
		if _, ok := rows[name]; !ok {
			t.Fatalf("summary does not name host %q", name)
		}
	}
	for _, name := range []string{"flaky", "limited"} {
		if r := rows[name]; r.hb >= r.plain {
			t.Errorf("%s: hostbreaker sent %d requests, plain %d; want strictly fewer", name, r.hb, r.plain)
		}
	}
	if r := rows["healthy"]; r.plain == 0 || r.hb*10 < r.plain*8 {
		t.Errorf("healthy: hostbreaker sent %d requests, plain %d; want at least 80%%", r.hb, r.plain)
	}
}

// TestRunQuiet checks that -quiet prints no table but the summary's.
func TestRunQuiet(t *testing.T) {
	if testing.Short() {
		t.Skip("runs for about 2 s")
	}
	var out, errOut bytes.Buffer
	if err := run(context.Background(), []string{"-duration", "1s", "-workers", "2", "-quiet"}, &out, &errOut); err != nil {
		t.Fatalf("run: %v (stderr: %s)", err, errOut.String())
	}
	if strings.Contains(out.String(), "reached the servers:") || strings.Count(out.String(), "Summary:") != 1 ||
		strings.Count(out.String(), "Conclusion:") != 1 {
		t.Errorf("-quiet output:\n%s", out.String())
	}
}

// countLines returns how many lines of out have the words of line.
func countLines(out, line string) int {
	n := 0
	for l := range strings.Lines(out) {
		if strings.Join(strings.Fields(l), " ") == line {
			n++
		}
	}
	return n
}

type hits struct{ plain, hb int64 }

// summaryRows parses the rows of the summary table: host, role, sick for,
// requests that reached the server without then with hostbreaker, ….
func summaryRows(t *testing.T, out string) map[string]hits {
	t.Helper()
	_, table, ok := strings.Cut(out, "Summary:")
	if !ok {
		t.Fatal("no summary in the output")
	}
	rows := make(map[string]hits)
	for line := range strings.Lines(table) {
		f := strings.Fields(line)
		if len(f) < 5 {
			continue
		}
		for _, name := range hostNames {
			if f[0] != name {
				continue
			}
			plain, err1 := strconv.ParseInt(f[3], 10, 64)
			hb, err2 := strconv.ParseInt(f[4], 10, 64)
			if err := errors.Join(err1, err2); err != nil {
				t.Fatalf("summary row %q: %v", line, err)
			}
			rows[name] = hits{plain, hb}
		}
	}
	return rows
}

func TestRunBadFlags(t *testing.T) {
	for _, args := range [][]string{{"-workers", "0"}, {"-duration", "-1s"}, {"extra"}, {"-nope"}} {
		var out, errOut bytes.Buffer
		err := run(context.Background(), args, &out, &errOut)
		if !errors.As(err, new(usageError)) {
			t.Errorf("run(%q) = %v, want a usage error", args, err)
		}
		if errOut.Len() == 0 {
			t.Errorf("run(%q) printed nothing on stderr", args)
		}
	}
}

// TestEventLines: an event's attributes are printed in the record's order,
// the same every run, and a rate "change" to the same value (at the
// precision shown) is not printed.
func TestEventLines(t *testing.T) {
	l := &live{start: time.Unix(100, 0), names: map[string]string{"127.0.0.1:1": "limited"}}
	e := &eventLog{live: l}
	rec := func(msg string, attrs ...slog.Attr) {
		r := slog.NewRecord(time.Unix(101, 0), slog.LevelInfo, msg, 0)
		r.AddAttrs(attrs...)
		if err := e.Handle(context.Background(), r); err != nil {
			t.Fatal(err)
		}
	}
	for range 20 {
		rec("hostbreaker: something else", slog.String("host", "127.0.0.1:1"), slog.String("b", "2"), slog.String("a", "1"), slog.Int("c", 3))
	}
	rec("hostbreaker: host rate limit changed", slog.String("host", "127.0.0.1:1"), slog.Float64("rate", 0.5), slog.Float64("previous_rate", 0.50001), slog.String("why", "fleet"))
	rec("hostbreaker: host rate limit changed", slog.String("host", "127.0.0.1:1"), slog.Float64("rate", 0.8), slog.Float64("previous_rate", 0.5), slog.String("why", "throttled"))
	lines := e.all()
	for _, line := range lines[:20] {
		if line != " 1.0s  something else host=127.0.0.1:1 b=2 a=1 c=3" {
			t.Fatalf("line %q", line)
		}
	}
	if got := lines[20:]; len(got) != 1 || got[0] != " 1.0s  limited: rate 0.5 -> 0.8 r/s (throttled)" {
		t.Errorf("rate lines %q", got)
	}
}
