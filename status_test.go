package hostbreaker

// Tests of what a Transport shows of its state: Snapshot.

import (
	"strings"
	"testing"
	"testing/synctest"
	"time"
)

func TestSnapshotIsSorted(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c, tr := client(t, newFakeHosts(status(200)), Config{})
		for _, u := range []string{"https://b.test/", "https://a.test/", "https://c.test/"} {
			for _, role := range []string{RoleLanding, "", RoleArtifact} {
				get(t, c, role, u)
			}
		}
		tr.Open("z.test", time.Minute, "")
		var got []string
		for _, s := range tr.Snapshot() {
			got = append(got, s.Host+"/"+s.Role)
		}
		want := "a.test/,a.test/artifact,a.test/landing,b.test/,b.test/artifact,b.test/landing,c.test/,c.test/artifact,c.test/landing,z.test/"
		if strings.Join(got, ",") != want {
			t.Errorf("snapshot order:\n got %s\nwant %s", strings.Join(got, ","), want)
		}
	})
}
