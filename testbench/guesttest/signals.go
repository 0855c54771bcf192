package guesttest

import (
	"os"
	"os/signal"
	"strconv"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// SignalStorm sends SIGUSR1 (caught and dropped) to every thread of this
// process every period until the returned stop is called: whichever thread
// runs a vCPU sees KVM_RUN return EINTR at arbitrary guest instructions, as
// any stray signal can cause in production.
func SignalStorm(t testing.TB, period time.Duration) (stop func()) {
	t.Helper()
	sigs := make(chan os.Signal, 64)
	signal.Notify(sigs, unix.SIGUSR1)
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-sigs:
			case <-done:
				return
			}
		}
	}()
	go func() {
		defer wg.Done()
		tick := time.NewTicker(period)
		defer tick.Stop()
		pid := unix.Getpid()
		for {
			select {
			case <-done:
				return
			case <-tick.C:
			}
			tasks, err := os.ReadDir("/proc/self/task")
			if err != nil {
				continue
			}
			for _, task := range tasks {
				if tid, err := strconv.Atoi(task.Name()); err == nil {
					_ = unix.Tgkill(pid, tid, unix.SIGUSR1)
				}
			}
		}
	}()
	var once sync.Once
	return func() {
		once.Do(func() {
			close(done)
			wg.Wait()
			signal.Stop(sigs)
		})
	}
}
