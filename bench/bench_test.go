package main

import (
	"testing"
	"time"
)

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
