package hostbreaker

import (
	"testing"
	"time"
)

func TestTransportPolicy(t *testing.T) {
	cfg := Config{Defaults: Policy{FailMax: 4, Roles: map[string]Policy{RoleMetadata: {TrialCalls: 2}}},
		Hosts: map[string]Policy{"a.test": {ResetTimeout: 30 * time.Second}}}
	tr, err := NewTransport(nil, WithConfig(cfg))
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	p, err := tr.Policy("https://A.test:443/x", RoleMetadata)
	if err != nil {
		t.Fatal(err)
	}
	if p.FailMax != 4 || p.ResetTimeout != 30*time.Second || p.TrialCalls != 2 || p.SuccessThreshold != 1 ||
		p.Roles != nil || len(p.FailureStatuses) == 0 {
		t.Fatalf("Policy = %+v", p)
	}
	if err := tr.UpdateHostPolicy("a.test", Policy{FailMax: 7}); err != nil {
		t.Fatal(err)
	}
	if p, _ := tr.Policy("a.test", ""); p.FailMax != 7 || p.ResetTimeout != 30*time.Second {
		t.Fatalf("after UpdateHostPolicy: %+v", p)
	}
	if _, err := tr.Policy("", ""); err == nil {
		t.Fatal("Policy of an empty host: no error")
	}
}
