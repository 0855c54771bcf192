package replication

import (
	"fmt"
	"strings"
)

// splitAddr turns a log channel address into a network and address:
// "unix:/path/to.sock" (or a path starting with / or .) is a unix socket,
// anything else host:port over TCP.
func splitAddr(addr string) (network, address string, err error) {
	switch {
	case addr == "":
		return "", "", fmt.Errorf("empty log channel address: give unix:/path/to.sock or host:port")
	case strings.HasPrefix(addr, "unix:"):
		return "unix", strings.TrimPrefix(addr, "unix:"), nil
	case strings.HasPrefix(addr, "/") || strings.HasPrefix(addr, "."):
		return "unix", addr, nil
	case strings.HasPrefix(addr, "tcp:"):
		return "tcp", strings.TrimPrefix(addr, "tcp:"), nil
	case strings.Contains(addr, ":"):
		return "tcp", addr, nil
	}
	return "", "", fmt.Errorf("log channel address %q: want unix:/path/to.sock or host:port", addr)
}
