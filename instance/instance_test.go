package instance

import "testing"

func TestGuestNetworkArgs(t *testing.T) {
	for _, c := range []struct{ ip, gw, want string }{
		{"", "", ""},
		{"dhcp", "", "ftvm.ip=dhcp"},
		{"192.168.127.2/24", "", "ftvm.ip=192.168.127.2/24 ftvm.gw=192.168.127.1"},
		{"10.0.0.5/8", "10.0.0.254", "ftvm.ip=10.0.0.5/8 ftvm.gw=10.0.0.254"},
	} {
		got, err := guestNetworkArgs(c.ip, c.gw)
		if err != nil || got != c.want {
			t.Errorf("guestNetworkArgs(%q, %q) = %q, %v; want %q", c.ip, c.gw, got, err, c.want)
		}
	}
	for _, bad := range [][2]string{{"192.168.127.2", ""}, {"fe80::1/64", ""}, {"192.168.127.2/24", "10.0.0.1"}, {"", "192.168.127.1"}, {"nonsense", ""}} {
		if _, err := guestNetworkArgs(bad[0], bad[1]); err == nil {
			t.Errorf("guestNetworkArgs(%q, %q) accepted", bad[0], bad[1])
		}
	}
}
