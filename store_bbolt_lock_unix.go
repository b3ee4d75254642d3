//go:build unix

package hostbreaker

import (
	"context"
	"errors"
	"os"
	"syscall"
	"time"
)

// lockTurnFile takes the exclusive lock of a turns file, waiting until ctx
// is done. A turn holds it for microseconds, so a wait is short: it polls
// from 20 µs, doubling up to a millisecond.
func lockTurnFile(ctx context.Context, f *os.File) error {
	fd := int(f.Fd())
	for wait := 20 * time.Microsecond; ; wait = min(2*wait, time.Millisecond) {
		err := syscall.Flock(fd, syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) && !errors.Is(err, syscall.EINTR) {
			return err
		}
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		}
	}
}

// unlockTurnFile releases the lock lockTurnFile took.
func unlockTurnFile(f *os.File) {
	_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
}
