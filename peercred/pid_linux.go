//go:build linux

package peercred

import (
	"errors"
	"os"
	"slices"
	"strconv"
	"sync"

	"golang.org/x/sys/unix"
)

// maxLinkLength fits the target of a /proc/PID/fd link to a socket, "socket:[N]" with a
// 64-bit N. Longer targets (file paths) are cut short and cannot match.
const maxLinkLength = 32

var errPIDNotFound = errors.New("no process holds the socket")

// findSocketOwner returns the first process owned by uid that has the socket inode open.
// Processes of other users are skipped by the owner of /proc/PID, so the scan visits a
// fraction of the system.
//
// NOTE: the kernel makes /proc/PID of a non-dumpable process (setuid programs, or a
// process that called prctl(PR_SET_DUMPABLE, 0)) owned by root, so such a peer gets PID 0.
func findSocketOwner(uid uint32, inode uint64) (int, error) {
	target := "socket:[" + strconv.FormatUint(inode, 10) + "]"
	var link [maxLinkLength]byte

	// Most connections come from a few long-lived processes (a service and its pool), so
	// the processes that owned recent peers are checked before the whole of /proc.
	for _, pid := range recentOwners.list() {
		dir := "/proc/" + strconv.Itoa(pid)
		var st unix.Stat_t
		if unix.Stat(dir, &st) == nil && st.Uid == uid && holdsSocket(dir+"/fd", target, link[:]) {
			recentOwners.add(pid)
			return pid, nil
		}
	}

	proc, err := os.Open("/proc")
	if err != nil {
		return 0, err
	}
	names, err := proc.Readdirnames(-1)
	proc.Close()
	if err != nil {
		return 0, err
	}

	for _, name := range names {
		pid, err := strconv.Atoi(name)
		if err != nil || pid <= 0 {
			continue
		}
		dir := "/proc/" + name
		var st unix.Stat_t
		if unix.Stat(dir, &st) != nil || st.Uid != uid {
			continue
		}
		if holdsSocket(dir+"/fd", target, link[:]) {
			recentOwners.add(pid)
			return pid, nil
		}
	}
	return 0, errPIDNotFound
}

// maxRecentOwners bounds the processes tried before a full scan, so a miss costs at most
// this many extra directory reads.
const maxRecentOwners = 8

// recentOwners lists the PIDs that owned recent peers, most recent first.
var recentOwners ownerList

type ownerList struct {
	mu   sync.Mutex
	pids []int
}

func (l *ownerList) list() []int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.pids)
}

func (l *ownerList) add(pid int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if i := slices.Index(l.pids, pid); i >= 0 {
		l.pids = slices.Delete(l.pids, i, i+1)
	}
	l.pids = slices.Insert(l.pids, 0, pid)
	if len(l.pids) > maxRecentOwners {
		l.pids = l.pids[:maxRecentOwners]
	}
}

func holdsSocket(fdDir, target string, link []byte) bool {
	dir, err := os.Open(fdDir)
	if err != nil {
		return false // the process exited, or its fds are not readable by this user
	}
	fds, err := dir.Readdirnames(-1)
	dir.Close()
	if err != nil {
		return false
	}
	for _, fd := range fds {
		n, err := unix.Readlink(fdDir+"/"+fd, link)
		if err == nil && string(link[:n]) == target {
			return true
		}
	}
	return false
}
