//go:build unix

package credsource

import (
	"os/exec"
	"syscall"
)

// killGroupOnCancel starts the helper as the leader of a new process group and makes a
// timeout or a cancellation kill the whole group. Killing only the helper would leave the
// processes it started, such as the commands of a shell script, running with the output
// pipes open.
func killGroupOnCancel(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error {
		// Cancel runs only while the helper has not been waited for, so its process
		// group still exists and the id cannot have been reused.
		return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	}
}
