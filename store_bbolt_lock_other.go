//go:build !unix

package hostbreaker

import (
	"errors"
	"os"
)

// lockTurnFile fails where there is no flock: a bbolt store's processes
// pace alone, each at its share, and send to a new host as they come.
func lockTurnFile(*os.File) (bool, error) {
	return false, errors.New("shared turns need flock, which this system lacks")
}

func unlockTurnFile(*os.File) {}
