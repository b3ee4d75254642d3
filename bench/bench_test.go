package main

import (
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestMain lets the test binary be a client process of scenario 7, which
// re-executes os.Executable with childFlag.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == childFlag {
		if err := runChild(os.Args[2:], os.Stdout); err != nil {
			fmt.Fprintf(os.Stderr, "bench child: %v\n", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// TestSmoke runs scenarios 1 and 2 briefly against every client. It checks
// only that they ran and counted something, and that hostbreaker wasted
// fewer requests than bare in scenario 1.
func TestSmoke(t *testing.T) {
	o := options{each: time.Second, workers: 4, openFor: 60 * time.Second}
	wasted := map[string]int64{}
	for _, c := range clients {
		r, err := runOutage(c, o)
		if err != nil {
			t.Fatalf("outage / %s: %v", c.name, err)
		}
		if r.Reached == 0 || r.Wasted == nil || *r.Wasted == 0 {
			t.Errorf("outage / %s: counted nothing: %+v", c.name, r)
		} else {
			wasted[c.name] = *r.Wasted
		}
		r, err = runStorm(c, o)
		if err != nil {
			t.Fatalf("storm / %s: %v", c.name, err)
		}
		if r.Reached == 0 || r.Got429 == nil || *r.Got429 == 0 {
			t.Errorf("storm / %s: counted nothing: %+v", c.name, r)
		}
	}
	if wasted["hostbreaker"] >= wasted["bare"] {
		t.Errorf("outage: hostbreaker wasted %d requests, bare %d", wasted["hostbreaker"], wasted["bare"])
	}
}

// TestSmokeNginx runs scenario 6 for 1 s against bare and hostbreaker, and
// scenario 7 with two processes of hostbreaker sharing a bbolt file. It
// checks that nginx counted 200s and, from bare, 429s, and that the
// processes reported. It needs nginx, which .ci/run installs.
func TestSmokeNginx(t *testing.T) {
	if _, err := nginxBinary(); err != nil {
		t.Fatal(err)
	}
	o := options{duration: time.Second, timeout: 2 * time.Second, workers: 4, procs: 2, openFor: 60 * time.Second}
	for _, name := range []string{"bare", "hostbreaker"} {
		c, _ := clientNamed(name)
		r, err := runNginxBurst0(c, o)
		if err != nil {
			t.Fatalf("nginx burst 0 / %s: %v", name, err)
		}
		if r.Skipped != "" || r.Reached == 0 || *r.GoodputPct == 0 {
			t.Errorf("nginx burst 0 / %s: no 200 counted: %+v", name, r)
		}
		if name == "bare" && *r.Got429 == 0 {
			t.Errorf("nginx burst 0 / bare: no 429 counted: %+v", r)
		}
	}
	hb, _ := clientNamed("hostbreaker")
	r, err := runProcs(limitBurst5, variant{name: "hostbreaker+bbolt", c: hb, store: "bbolt"}, o)
	if err != nil {
		t.Fatalf("nginx procs / hostbreaker+bbolt: %v", err)
	}
	if r.Skipped != "" || r.Reached == 0 || *r.GoodputPct == 0 || r.Procs != 2 {
		t.Errorf("nginx procs / hostbreaker+bbolt: %+v", r)
	}
}

// TestSmokeLearning runs the learning scenarios 8 to 12 for 1.5 s against
// bare and hostbreaker, the scenarios side by side. It checks only that
// they ran and produced numbers: the server counted 200s and, from bare,
// 429s, and hostbreaker's learnt rate was sampled. It needs nginx and
// haproxy, which .ci/run installs.
func TestSmokeLearning(t *testing.T) {
	if _, err := nginxBinary(); err != nil {
		t.Fatal(err)
	}
	if _, err := haproxyBinary(); err != nil {
		t.Fatal(err)
	}
	o := options{duration: 1500 * time.Millisecond, timeout: 2 * time.Second, workers: 2, openFor: 60 * time.Second}
	for _, s := range scenarios {
		if n, err := strconv.Atoi(s.id); err != nil || n < 8 || s.variants != nil { // 13 runs processes, as 7
			continue
		}
		t.Run(s.name, func(t *testing.T) {
			t.Parallel()
			for _, name := range []string{"bare", "hostbreaker"} {
				c, _ := clientNamed(name)
				r, err := s.run(variant{name: name, c: c}, o)
				if err != nil {
					t.Fatalf("%s: %v", name, err)
				}
				learnt := "-"
				if r.LearntMin != nil && r.LearntMax != nil {
					learnt = fmt.Sprintf("%.2f to %.2f r/s (%d samples)", *r.LearntMin, *r.LearntMax, r.LearntSamples)
				}
				t.Logf("%s: reached %d, served %s, 429s %s, goodput %s %%, learnt %s, in %.1fs",
					name, r.Reached, num(r.Served), num(r.Got429), pct(r.GoodputPct), learnt, r.Elapsed)
				if r.Skipped != "" || r.Served == nil || r.Got429 == nil || r.GoodputPct == nil || r.AllowedRate == 0 {
					t.Errorf("%s: missing numbers: %+v", name, r)
					continue
				}
				if name == "bare" && (*r.Served == 0 || *r.Got429 == 0) {
					t.Errorf("bare: want 200s and 429s: %+v", r)
				}
				if name == "hostbreaker" && (r.LearntSettle == nil || r.LearntSamples == 0 || r.LearntMin == nil || r.LearntMax == nil) {
					t.Errorf("hostbreaker: learnt rate not sampled: %+v", r)
				}
			}
		})
	}
}

// TestTargetsNameScenarios checks that every target names a scenario of
// the table: a target with a mistyped name would never be printed.
func TestTargetsNameScenarios(t *testing.T) {
	for _, tg := range targets {
		if !slices.ContainsFunc(scenarios, func(s scenario) bool { return s.name == tg.scenario }) {
			t.Errorf("target for %q: no such scenario", tg.scenario)
		}
	}
}

// TestPrintLearningTargets checks the target and learnt-rate lines of a
// learning scenario on made-up results: each clause judged on its numbers,
// and a run too short to sample the learnt rate reported as not measured.
func TestPrintLearningTargets(t *testing.T) {
	const sc = "10 haproxy 5/1s window, no RA"
	rs := []Result{
		{Scenario: sc, Client: "bare", Served: ptr[int64](5), Got429: ptr[int64](100000), GoodputPct: ptr(3.3), AllowedRate: 5},
		{Scenario: sc, Client: "hostbreaker", Served: ptr[int64](130), Got429: ptr[int64](30), GoodputPct: ptr(86.7), AllowedRate: 5,
			LearntMin: ptr(2.5), LearntMax: ptr(5.5), LearntSamples: 20, LearntSettle: ptr(10.0), Elapsed: 30},
	}
	var b strings.Builder
	printLearnt(&b, rs)
	printTargets(&b, rs, options{duration: 30 * time.Second})
	out := b.String()
	for _, want := range []string{
		"  10 haproxy 5/1s window, no RA: from 10s on, min 2.50 r/s (0.50x), max 5.50 r/s (1.10x) of 5 r/s allowed, 20 samples\n",
		"  MET      10 haproxy 5/1s window, no RA, hostbreaker on its defaults: goodput 86.7 % (want >= 80 %)\n",
		"  MET      10 haproxy 5/1s window, no RA, hostbreaker on its defaults: 30 429s (want <= 1 % of bare's 100000 = 1000.0)\n",
		"  NOT MET  10 haproxy 5/1s window, no RA, hostbreaker on its defaults: 30 429s for 130 served (want <= 1 per 5 served = 26.0)\n",
		"  NOT MET  10 haproxy 5/1s window, no RA, hostbreaker on its defaults: learnt rate 2.50 to 5.50 r/s after 10s = 0.50x to 1.10x of 5 r/s (want 0.6x to 1.2x)\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q; it is:\n%s", want, out)
		}
	}

	rs[1].LearntMin, rs[1].LearntMax, rs[1].LearntSamples, rs[1].Elapsed = nil, nil, 0, 1.5
	b.Reset()
	printLearnt(&b, rs)
	printTargets(&b, rs, options{duration: 1500 * time.Millisecond})
	out = b.String()
	for _, want := range []string{
		"  10 haproxy 5/1s window, no RA: no sample from 10s on (the run lasted 1.5s)\n",
		"  NOT MEASURED  10 haproxy 5/1s window, no RA: no sample of the learnt rate after 10s (the run lasted 1.5s)\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q; it is:\n%s", want, out)
		}
	}
}
