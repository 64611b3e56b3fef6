//go:build unix

package credsource

import (
	"io/fs"
	"syscall"
)

func identityOf(info fs.FileInfo) fileIdentity {
	id := fileIdentity{modTime: info.ModTime(), size: info.Size()}
	if st, ok := info.Sys().(*syscall.Stat_t); ok {
		id.inode = uint64(st.Ino)
	}
	return id
}
