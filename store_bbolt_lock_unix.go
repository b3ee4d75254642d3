//go:build unix

package hostbreaker

import (
	"errors"
	"os"
	"syscall"
)

// lockTurnFile tries to take the exclusive lock of a turns file, without
// waiting: false when another open file holds it.
func lockTurnFile(f *os.File) (bool, error) {
	err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, syscall.EWOULDBLOCK), errors.Is(err, syscall.EINTR):
		return false, nil
	}
	return false, err
}

// unlockTurnFile releases the lock lockTurnFile took.
func unlockTurnFile(f *os.File) {
	_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
}
