//go:build !unix

package credsource

import "os/exec"

// killGroupOnCancel keeps the default of exec.CommandContext on this platform: a timeout
// kills the helper but not the processes it started.
func killGroupOnCancel(cmd *exec.Cmd) {}
