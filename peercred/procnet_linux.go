//go:build linux

package peercred

import (
	"bufio"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"strconv"
	"strings"
)

// procNetTables are the kernel's TCP tables, read when sock_diag is unavailable.
var procNetTables = []string{"/proc/net/tcp", "/proc/net/tcp6"}

// maxProcNetLine bounds one line of /proc/net/tcp. The kernel pads IPv4 lines to 150
// bytes, and IPv6 lines are about 180.
const maxProcNetLine = 4096

// procNetLookup scans /proc/net/tcp and /proc/net/tcp6 for the socket whose local end is
// client and remote end is server.
func procNetLookup(client, server *net.TCPAddr) (socketInfo, error) {
	for _, path := range procNetTables {
		f, err := os.Open(path)
		if errors.Is(err, fs.ErrNotExist) {
			continue // tcp6 is missing on kernels without IPv6
		}
		if err != nil {
			return socketInfo{}, err
		}
		sock, err := scanProcNet(f, client, server)
		f.Close()
		if err == nil {
			return sock, nil
		}
		if !errors.Is(err, errSocketNotFound) {
			return socketInfo{}, fmt.Errorf("%s: %w", path, err)
		}
	}
	return socketInfo{}, errSocketNotFound
}

// scanProcNet reads a table in the format of /proc/net/tcp: a header line, then one socket
// per line with the fields "sl local_address rem_address st tx_queue:rx_queue tr:tm->when
// retrnsmt uid timeout inode ...".
func scanProcNet(r io.Reader, client, server *net.TCPAddr) (socketInfo, error) {
	scanner := bufio.NewScanner(r)
	scanner.Buffer(make([]byte, 0, 512), maxProcNetLine)
	scanner.Scan() // header
	for scanner.Scan() {
		fields := strings.Fields(scanner.Text())
		if len(fields) < 10 {
			continue
		}
		localIP, localPort, err := parseProcNetAddr(fields[1])
		if err != nil || localPort != client.Port || !localIP.Equal(client.IP) {
			continue
		}
		remoteIP, remotePort, err := parseProcNetAddr(fields[2])
		if err != nil || remotePort != server.Port || !remoteIP.Equal(server.IP) {
			continue
		}

		state, err := strconv.ParseUint(fields[3], 16, 8)
		if err != nil {
			return socketInfo{}, fmt.Errorf("invalid state %q", fields[3])
		}
		switch state {
		case tcpStateListen, tcpStateTimeWait, tcpStateSynRecv, tcpStateNewSynRecv:
			continue
		}
		uid, err := strconv.ParseUint(fields[7], 10, 32)
		if err != nil {
			return socketInfo{}, fmt.Errorf("invalid uid %q", fields[7])
		}
		inode, err := strconv.ParseUint(fields[9], 10, 64)
		if err != nil {
			return socketInfo{}, fmt.Errorf("invalid inode %q", fields[9])
		}
		if inode == 0 {
			return socketInfo{}, fmt.Errorf("%w: the peer closed its socket", errSocketNotFound)
		}
		return socketInfo{uid: uint32(uid), inode: inode}, nil
	}
	if err := scanner.Err(); err != nil {
		return socketInfo{}, err
	}
	return socketInfo{}, errSocketNotFound
}

// parseProcNetAddr parses "0100007F:1F90". The kernel prints each 32-bit word of the
// address with %08X in host byte order, and the port in hexadecimal.
func parseProcNetAddr(s string) (net.IP, int, error) {
	addrHex, portHex, ok := strings.Cut(s, ":")
	if !ok || (len(addrHex) != 8 && len(addrHex) != 32) {
		return nil, 0, fmt.Errorf("invalid address %q", s)
	}
	raw, err := hex.DecodeString(addrHex)
	if err != nil {
		return nil, 0, fmt.Errorf("invalid address %q", s)
	}
	port, err := strconv.ParseUint(portHex, 16, 16)
	if err != nil {
		return nil, 0, fmt.Errorf("invalid port in %q", s)
	}
	ip := make(net.IP, len(raw))
	for i := 0; i < len(raw); i += 4 {
		binary.NativeEndian.PutUint32(ip[i:i+4], binary.BigEndian.Uint32(raw[i:i+4]))
	}
	return ip, int(port), nil
}
