//go:build linux

package peercred

import (
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// loopbackPair returns the server and client ends of a TCP connection on addr.
func loopbackPair(t testing.TB, network, addr string) (server, client net.Conn) {
	t.Helper()
	ln, err := net.Listen(network, addr)
	if err != nil {
		t.Skipf("listen on %s: %v", addr, err)
	}
	t.Cleanup(func() { ln.Close() })
	return acceptDial(t, ln, func() (net.Conn, error) { return net.Dial(network, ln.Addr().String()) })
}

func acceptDial(t testing.TB, ln net.Listener, dial func() (net.Conn, error)) (server, client net.Conn) {
	t.Helper()
	client, err := dial()
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { client.Close() })
	server, err = ln.Accept()
	if err != nil {
		t.Fatalf("accept: %v", err)
	}
	t.Cleanup(func() { server.Close() })
	return server, client
}

func TestKernelTCPLoopback(t *testing.T) {
	tests := []struct {
		name       string
		network    string
		addr       string
		resolvePID bool
		wantPID    int
	}{
		{name: "ipv4", network: "tcp4", addr: "127.0.0.1:0"},
		{name: "ipv4 with pid", network: "tcp4", addr: "127.0.0.1:0", resolvePID: true, wantPID: os.Getpid()},
		{name: "ipv4 other loopback address", network: "tcp4", addr: "127.0.0.2:0"},
		{name: "ipv6", network: "tcp6", addr: "[::1]:0"},
		{name: "ipv6 with pid", network: "tcp6", addr: "[::1]:0", resolvePID: true, wantPID: os.Getpid()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			server, _ := loopbackPair(t, tt.network, tt.addr)
			checker := &Kernel{ResolvePID: tt.resolvePID}
			got, err := checker.PeerCred(server)
			if err != nil {
				t.Fatalf("PeerCred: %v", err)
			}
			if got.UID != uint32(os.Getuid()) {
				t.Errorf("UID = %d, want %d", got.UID, os.Getuid())
			}
			if got.PID != tt.wantPID {
				t.Errorf("PID = %d, want %d", got.PID, tt.wantPID)
			}
		})
	}
}

func TestProcNetLookup(t *testing.T) {
	for _, addr := range []string{"127.0.0.1:0", "[::1]:0"} {
		t.Run(addr, func(t *testing.T) {
			server, _ := loopbackPair(t, "tcp", addr)
			sock, err := procNetLookup(server.RemoteAddr().(*net.TCPAddr), server.LocalAddr().(*net.TCPAddr))
			if err != nil {
				t.Fatalf("procNetLookup: %v", err)
			}
			if sock.uid != uint32(os.Getuid()) {
				t.Errorf("uid = %d, want %d", sock.uid, os.Getuid())
			}
			viaNetlink, err := lookupTCP(server.RemoteAddr().(*net.TCPAddr), server.LocalAddr().(*net.TCPAddr))
			if err != nil {
				t.Fatalf("lookupTCP: %v", err)
			}
			if sock != viaNetlink {
				t.Errorf("/proc/net found %+v, sock_diag found %+v", sock, viaNetlink)
			}
		})
	}
}

// TestKernelTCPMappedIPv4 connects over AF_INET6 sockets with IPv4-mapped addresses, as a
// dual-stack client or listener does, and from a plain AF_INET client to such a listener.
func TestKernelTCPMappedIPv4(t *testing.T) {
	ln := mappedListener(t)
	port := ln.Addr().(*net.TCPAddr).Port
	clients := map[string]func() (net.Conn, error){
		"ipv4 client":   func() (net.Conn, error) { return net.Dial("tcp4", "127.0.0.1:"+strconv.Itoa(port)) },
		"mapped client": func() (net.Conn, error) { return dialMapped(port) },
	}
	for name, dial := range clients {
		t.Run(name, func(t *testing.T) {
			server, _ := acceptDial(t, ln, dial)
			got, err := (&Kernel{ResolvePID: true}).PeerCred(server)
			if err != nil {
				t.Fatalf("PeerCred: %v", err)
			}
			if got.UID != uint32(os.Getuid()) || got.PID != os.Getpid() {
				t.Errorf("PeerCred = %+v, want UID %d and PID %d", got, os.Getuid(), os.Getpid())
			}
		})
	}
}

// mappedListener listens on an AF_INET6 socket bound to ::ffff:127.0.0.1, which the net
// package cannot create because it picks AF_INET for IPv4 addresses.
func mappedListener(t *testing.T) net.Listener {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Skipf("AF_INET6 socket: %v", err)
	}
	f := os.NewFile(uintptr(fd), "mapped-listener")
	defer f.Close()
	sa := &unix.SockaddrInet6{Addr: [16]byte{10: 0xff, 11: 0xff, 12: 127, 15: 1}}
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 0); err != nil {
		t.Fatal(err)
	}
	if err := unix.Bind(fd, sa); err != nil {
		t.Skipf("bind ::ffff:127.0.0.1: %v", err)
	}
	if err := unix.Listen(fd, 8); err != nil {
		t.Fatal(err)
	}
	ln, err := net.FileListener(f)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

func dialMapped(port int) (net.Conn, error) {
	fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(fd), "mapped-client")
	defer f.Close()
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 0); err != nil {
		return nil, err
	}
	sa := &unix.SockaddrInet6{Port: port, Addr: [16]byte{10: 0xff, 11: 0xff, 12: 127, 15: 1}}
	if err := unix.Connect(fd, sa); err != nil {
		return nil, err
	}
	return net.FileConn(f)
}

func TestKernelUnixSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "peer.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	server, _ := acceptDial(t, ln, func() (net.Conn, error) { return net.Dial("unix", path) })

	got, err := (&Kernel{}).PeerCred(server)
	if err != nil {
		t.Fatalf("PeerCred: %v", err)
	}
	if want := (Cred{UID: uint32(os.Getuid()), PID: os.Getpid()}); got != want {
		t.Errorf("PeerCred = %+v, want %+v", got, want)
	}
}

// TestKernelOtherUser runs the client as UID 65534 and expects its UID and PID.
func TestKernelOtherUser(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("running a client as another user needs root")
	}
	setpriv, err := exec.LookPath("setpriv")
	if err != nil {
		t.Skip("setpriv not found")
	}
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Skip("bash not found")
	}
	tests := []struct{ name, listen, connect string }{
		{name: "ipv4", listen: "127.0.0.1:0", connect: "127.0.0.1"},
		{name: "ipv6", listen: "[::1]:0", connect: "::1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ln, err := net.Listen("tcp", tt.listen)
			if err != nil {
				t.Skipf("listen on %s: %v", tt.listen, err)
			}
			defer ln.Close()
			port := ln.Addr().(*net.TCPAddr).Port
			// exec keeps one process holding the socket, so its PID is the one started here.
			script := "exec 3<>/dev/tcp/" + tt.connect + "/" + strconv.Itoa(port) + "; exec sleep 10"
			cmd := exec.Command(setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", bash, "-c", script)
			if err := cmd.Start(); err != nil {
				t.Fatalf("start client: %v", err)
			}
			defer func() {
				_ = cmd.Process.Kill()
				_ = cmd.Wait()
			}()

			ln.(*net.TCPListener).SetDeadline(time.Now().Add(10 * time.Second))
			server, err := ln.Accept()
			if err != nil {
				t.Fatalf("accept: %v", err)
			}
			defer server.Close()
			got, err := (&Kernel{ResolvePID: true}).PeerCred(server)
			if err != nil {
				t.Fatalf("PeerCred: %v", err)
			}
			if got.UID != 65534 {
				t.Errorf("UID = %d, want 65534", got.UID)
			}
			if got.PID != cmd.Process.Pid {
				t.Errorf("PID = %d, want %d", got.PID, cmd.Process.Pid)
			}
		})
	}
}

func TestKernelUnknownPeer(t *testing.T) {
	t.Run("closed client", func(t *testing.T) {
		server, client := loopbackPair(t, "tcp4", "127.0.0.1:0")
		client.Close()
		// The closed client socket becomes an orphan in FIN_WAIT2 or disappears.
		_, err := (&Kernel{}).PeerCred(server)
		if !errors.Is(err, ErrUnknownPeer) {
			t.Errorf("error = %v, want ErrUnknownPeer", err)
		}
	})
	t.Run("closed server conn", func(t *testing.T) {
		server, _ := loopbackPair(t, "tcp4", "127.0.0.1:0")
		server.Close()
		if _, err := (&Kernel{}).PeerCred(server); !errors.Is(err, ErrUnknownPeer) {
			t.Errorf("error = %v, want ErrUnknownPeer", err)
		}
	})
	t.Run("closed unix conn", func(t *testing.T) {
		a, b, err := socketPair()
		if err != nil {
			t.Fatal(err)
		}
		b.Close()
		a.Close()
		if _, err := (&Kernel{}).PeerCred(a); !errors.Is(err, ErrUnknownPeer) {
			t.Errorf("error = %v, want ErrUnknownPeer", err)
		}
	})
	t.Run("non-loopback peer", func(t *testing.T) {
		local := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 5432}
		for _, ip := range []net.IP{net.IPv4(192, 0, 2, 1), net.ParseIP("2001:db8::1"), net.ParseIP("::ffff:192.0.2.1")} {
			_, err := (&Kernel{}).tcpAddrPeerCred(local, &net.TCPAddr{IP: ip, Port: 40000})
			if !errors.Is(err, ErrUnknownPeer) {
				t.Errorf("peer %s: error = %v, want ErrUnknownPeer", ip, err)
			}
		}
	})
	t.Run("unsupported type", func(t *testing.T) {
		a, b := net.Pipe()
		defer a.Close()
		defer b.Close()
		if _, err := (&Kernel{}).PeerCred(a); !errors.Is(err, ErrUnknownPeer) {
			t.Errorf("error = %v, want ErrUnknownPeer", err)
		}
	})
	t.Run("no such socket", func(t *testing.T) {
		_, err := lookupTCP(&net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 1}, &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 2})
		if !errors.Is(err, errSocketNotFound) {
			t.Errorf("error = %v, want errSocketNotFound", err)
		}
	})
}

// wrappedConn exposes the conn it wraps through NetConn, as *tls.Conn does.
type wrappedConn struct{ net.Conn }

func (c wrappedConn) NetConn() net.Conn { return c.Conn }

func TestKernelWrappedConn(t *testing.T) {
	server, _ := loopbackPair(t, "tcp4", "127.0.0.1:0")
	got, err := (&Kernel{}).PeerCred(wrappedConn{wrappedConn{server}})
	if err != nil {
		t.Fatalf("PeerCred: %v", err)
	}
	if got.UID != uint32(os.Getuid()) {
		t.Errorf("UID = %d, want %d", got.UID, os.Getuid())
	}
}

func socketPair() (*net.UnixConn, *net.UnixConn, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, err
	}
	conns := make([]*net.UnixConn, 2)
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "socketpair")
		c, err := net.FileConn(f)
		f.Close()
		if err != nil {
			return nil, nil, err
		}
		conns[i] = c.(*net.UnixConn)
	}
	return conns[0], conns[1], nil
}

func BenchmarkPeerCred(b *testing.B) {
	cases := []struct {
		name    string
		network string
		addr    string
		checker *Kernel
	}{
		{name: "tcp4 uid", network: "tcp4", addr: "127.0.0.1:0", checker: &Kernel{}},
		{name: "tcp4 uid and pid", network: "tcp4", addr: "127.0.0.1:0", checker: &Kernel{ResolvePID: true}},
		{name: "tcp6 uid", network: "tcp6", addr: "[::1]:0", checker: &Kernel{}},
	}
	for _, bc := range cases {
		b.Run(bc.name, func(b *testing.B) {
			server, _ := loopbackPair(b, bc.network, bc.addr)
			for b.Loop() {
				if _, err := bc.checker.PeerCred(server); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
	b.Run("tcp4 proc fallback", func(b *testing.B) {
		server, _ := loopbackPair(b, "tcp4", "127.0.0.1:0")
		client, local := server.RemoteAddr().(*net.TCPAddr), server.LocalAddr().(*net.TCPAddr)
		for b.Loop() {
			if _, err := procNetLookup(client, local); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("unix", func(b *testing.B) {
		a, c, err := socketPair()
		if err != nil {
			b.Fatal(err)
		}
		defer a.Close()
		defer c.Close()
		for b.Loop() {
			if _, err := (&Kernel{}).PeerCred(a); err != nil {
				b.Fatal(err)
			}
		}
	})
}
