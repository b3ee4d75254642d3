package main

import (
	"fmt"
	"os"
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
	r, err := runProcs(variant{name: "hostbreaker+bbolt", c: hb, store: "bbolt"}, o)
	if err != nil {
		t.Fatalf("nginx procs / hostbreaker+bbolt: %v", err)
	}
	if r.Skipped != "" || r.Reached == 0 || *r.GoodputPct == 0 || r.Procs != 2 {
		t.Errorf("nginx procs / hostbreaker+bbolt: %+v", r)
	}
}
