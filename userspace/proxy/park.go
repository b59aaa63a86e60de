package proxy

import (
	"log/slog"
	"sync"

	"golang.org/x/sys/unix"
)

// parker holds the parked directions of every relay in one epoll set
// and resumes each on a fresh goroutine when its socket is readable (or
// hung up). The descriptor stays registered with Go's own poller too;
// this set only says when to start reading again.
type parker struct {
	epfd int
	mu   sync.Mutex
	dirs map[int32]*direction // by source descriptor
	err  error                // the epoll set could not be made: never park
}

var (
	parkerOnce sync.Once
	parkerInst *parker
)

// theParker is the process's parker, started on first use.
func theParker() *parker {
	parkerOnce.Do(func() {
		p := &parker{dirs: map[int32]*direction{}}
		p.epfd, p.err = unix.EpollCreate1(unix.EPOLL_CLOEXEC)
		if p.err != nil {
			slog.Warn("proxy: no epoll set; idle sessions keep their goroutines", "err", p.err)
		} else {
			go p.loop()
		}
		parkerInst = p
	})
	return parkerInst
}

// park registers d; false when the session was cut meanwhile or the set
// is unusable (the caller then finishes d). If src is already readable
// the set reports it at once, so no wake-up is lost between the read
// timing out and this.
func (p *parker) park(d *direction) bool {
	if p.err != nil {
		return false
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if d.r.aborted {
		return false
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLONESHOT, Fd: int32(d.fd)}
	if err := unix.EpollCtl(p.epfd, unix.EPOLL_CTL_ADD, d.fd, &ev); err != nil {
		slog.Warn("proxy: cannot park a relay direction", "err", err)
		return false
	}
	d.parked = true
	p.dirs[int32(d.fd)] = d
	return true
}

// remove takes d out of the set; p.mu is held and d is parked.
func (p *parker) remove(d *direction) {
	unix.EpollCtl(p.epfd, unix.EPOLL_CTL_DEL, d.fd, nil)
	delete(p.dirs, int32(d.fd))
	d.parked = false
}

func (p *parker) loop() {
	events := make([]unix.EpollEvent, 128)
	for {
		n, err := unix.EpollWait(p.epfd, events, -1)
		if err != nil {
			if err == unix.EINTR {
				continue
			}
			slog.Error("proxy: epoll_wait failed; parked sessions stall", "err", err)
			return
		}
		p.mu.Lock()
		var wake []*direction
		for _, ev := range events[:n] {
			// A stale event for a descriptor already removed (and maybe
			// reused) finds nothing or wakes a direction early: harmless,
			// it reads, finds nothing, and parks again.
			if d := p.dirs[ev.Fd]; d != nil {
				p.remove(d)
				wake = append(wake, d)
			}
		}
		p.mu.Unlock()
		for _, d := range wake {
			go d.run()
		}
	}
}

// Parked is how many relay directions are parked right now, in the whole
// process (a session idle both ways counts two).
func Parked() int {
	p := theParker()
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.dirs)
}
